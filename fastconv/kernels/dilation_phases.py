"""A dilated stride-1 convolution as an ordinary one on the images' phases.

With dilation ``d`` (stride 1), output row ``oh`` reads padded input rows ``oh + d*r``: all
of the same phase ``oh mod d``. So the outputs of phase ``i`` (rows ``i, i+d, i+2d, ...``) are
an ordinary (dilation 1) correlation of the padded input's rows ``i, i+d, i+2d, ...`` with the
same filter, and likewise across columns. Stacking the ``d_h * d_w`` phase images along the
batch axis turns the layer into one undilated, unpadded convolution of
``(d_h*d_w*N, C, A+R-1, B+S-1)`` images, ``A = ceil(OH / d_h)``, ``B = ceil(OW / d_w)``:
the same multiplies, now in a shape the Winograd kernels take (3x3, stride 1). Phases with one
row or column fewer than ``A`` or ``B`` get zeros there, whose outputs are dropped.
The phase images of a chunk of the batch at a time (``image_chunks``) stay within
``fastconv.limits.workspace_limit_bytes()``; a single image larger than that still runs.

Every padded input position belongs to exactly one phase image, so the gradient of the split
is a plain scatter (``merge_input``), and the output's split and merge are each other's
inverse. The copies cost one pass over the input and one over the output (about 10% of
``dilated_3x3_d2``'s Winograd forward); the buffers are reused between calls.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import numpy as np

from .. import limits
from .winograd_tables import WorkspacePool

#: Phase images reused between calls (per calling thread), as the Winograd V/M buffers.
WORKSPACE = WorkspacePool()


def dilated(dilation: Tuple[int, int]) -> bool:
    return tuple(dilation) != (1, 1)


def phase_output_shape(out_hw: Tuple[int, int], dilation: Tuple[int, int]) -> Tuple[int, int]:
    """``(A, B)``: the output size of every phase (the largest phase's)."""
    return -(-out_hw[0] // dilation[0]), -(-out_hw[1] // dilation[1])


def phase_array(name: str, shape: Tuple[int, int, int, int], dilation: Tuple[int, int],
                phase_hw: Tuple[int, int], dtype) -> np.ndarray:
    """An uninitialised (d_h*d_w*N, C, *phase_hw) array for the phases of an (N, C, H, W) one.

    A view of the reused buffer ``name``: its contents last until the next call with that name.
    """
    count = dilation[0] * dilation[1] * shape[0] * shape[1] * phase_hw[0] * phase_hw[1]
    limits.check_allocation((count,), np.dtype(dtype).itemsize, f"the phase images ({name})")
    flat = WORKSPACE.get("phases_" + name, count, dtype)[:count]
    return flat.reshape(dilation[0] * dilation[1] * shape[0], shape[1], *phase_hw)


def image_chunks(n_images: int, image_bytes: int) -> Iterator[slice]:
    """Slices of the batch whose phase arrays, ``image_bytes`` per image, fit the workspace limit."""
    per_chunk = max(1, limits.workspace_limit_bytes() // max(image_bytes, 1))
    for start in range(0, n_images, per_chunk):
        yield slice(start, min(start + per_chunk, n_images))


def _spans(n_in: int, pad: int, d: int, n_sub: int) -> Iterator[Tuple[int, int, int, int]]:
    """Per phase ``i``: ``(i, lo, hi, first)``: phase rows ``lo:hi`` hold input rows
    ``first, first + d, ...`` (row ``a`` of phase ``i`` is padded row ``i + d*a``); the others
    are padding."""
    for i in range(d):
        lo = min(n_sub, max(0, -(-(pad - i) // d)))
        hi = max(lo, min(n_sub, (n_in - 1 + pad - i) // d + 1))
        yield i, lo, hi, i + d * lo - pad


def split_input(x: np.ndarray, pad_tl: Tuple[int, int], dilation: Tuple[int, int],
                sub_hw: Tuple[int, int], name: str = "x") -> np.ndarray:
    """x (N, C, H, W) -> its zero-padded phase images (d_h*d_w*N, C, sub_h, sub_w).

    Image ``(i*d_w + j)*N + n`` holds padded rows ``i, i+d_h, ...`` and columns
    ``j, j+d_w, ...`` of image ``n``, padding ``pad_tl`` on the top and left and zeros
    wherever the padded input ends. The result is a view of a reused buffer named ``name``.
    """
    (dh, dw), (sh, sw) = dilation, sub_hw
    n, c, h, w = x.shape
    z = phase_array(name, x.shape, dilation, sub_hw, x.dtype).reshape(dh, dw, n, c, sh, sw)
    for i, r0, r1, first_row in _spans(h, pad_tl[0], dh, sh):
        for j, c0, c1, first_col in _spans(w, pad_tl[1], dw, sw):
            part = z[i, j]
            part[:, :, :r0] = 0
            part[:, :, r1:] = 0
            part[:, :, r0:r1, :c0] = 0
            part[:, :, r0:r1, c1:] = 0
            part[:, :, r0:r1, c0:c1] = x[:, :, first_row:first_row + dh * (r1 - r0):dh,
                                         first_col:first_col + dw * (c1 - c0):dw]
    return z.reshape(dh * dw * n, c, sh, sw)


def merge_input(gz: np.ndarray, gx: np.ndarray, pad_tl: Tuple[int, int], dilation: Tuple[int, int]) -> None:
    """The adjoint of ``split_input``: gx (N, C, H, W) = the phase images' values at x's positions.

    Each input position lies in exactly one phase image, so this is a copy, not a sum.
    """
    (dh, dw), (n, c, h, w) = dilation, gx.shape
    sh, sw = gz.shape[2:]
    gz = gz.reshape(dh, dw, n, c, sh, sw)
    for i, r0, r1, first_row in _spans(h, pad_tl[0], dh, sh):
        for j, c0, c1, first_col in _spans(w, pad_tl[1], dw, sw):
            gx[:, :, first_row:first_row + dh * (r1 - r0):dh,
               first_col:first_col + dw * (c1 - c0):dw] = gz[i, j, :, :, r0:r1, c0:c1]


def split_output(y: np.ndarray, dilation: Tuple[int, int], name: str = "y") -> np.ndarray:
    """y (N, K, OH, OW) -> its phases (d_h*d_w*N, K, A, B), zeros where a phase is short.

    The inverse of ``merge_output``; used for grad_output. A view of a reused buffer.
    """
    (dh, dw), (n, k, oh, ow) = dilation, y.shape
    a, b = phase_output_shape((oh, ow), dilation)
    z = phase_array(name, y.shape, dilation, (a, b), y.dtype).reshape(dh, dw, n, k, a, b)
    for i in range(dh):
        rows = len(range(i, oh, dh))
        for j in range(dw):
            cols = len(range(j, ow, dw))
            z[i, j, :, :, rows:] = 0
            z[i, j, :, :, :rows, cols:] = 0
            z[i, j, :, :, :rows, :cols] = y[:, :, i::dh, j::dw]
    return z.reshape(dh * dw * n, k, a, b)


def merge_output(yz: np.ndarray, y: np.ndarray, dilation: Tuple[int, int]) -> None:
    """y (N, K, OH, OW) from its phases (d_h*d_w*N, K, A, B); rows past OH are dropped."""
    (dh, dw), (n, k, oh, ow) = dilation, y.shape
    yz = yz.reshape(dh, dw, n, k, *yz.shape[2:])
    for i in range(dh):
        rows = len(range(i, oh, dh))
        for j in range(dw):
            y[:, :, i::dh, j::dw] = yz[i, j, :, :, :rows, :len(range(j, ow, dw))]
