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
is a plain scatter (``merge``), and an output's split and merge are each other's inverse.
The copies are each backend's compiled ``split_phases`` / ``merge_phases`` steps, parallel
over planes: one pass over the input and one over the output; the buffers are reused
between calls.
"""
from __future__ import annotations

from typing import Callable, Iterator, Tuple

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


def split(kernel: Callable, x: np.ndarray, pad_tl: Tuple[int, int], dilation: Tuple[int, int],
          sub_hw: Tuple[int, int], workers: int, name: str) -> np.ndarray:
    """x (N, C, H, W) -> its zero-padded phase images (d_h*d_w*N, C, sub_h, sub_w).

    Image ``(i*d_w + j)*N + n`` holds padded rows ``i, i+d_h, ...`` and columns
    ``j, j+d_w, ...`` of image ``n``, padding ``pad_tl`` on the top and left and zeros
    wherever the padded input ends. ``kernel`` is a backend's ``split_phases`` step. The
    result is a view of the reused buffer ``name``. With ``pad_tl`` (0, 0) and the phase
    output shape this splits an output (grad_output), which ``merge`` inverts.
    """
    z = phase_array(name, x.shape, dilation, sub_hw, x.dtype)
    kernel(x, z, pad_tl[0], pad_tl[1], dilation[0], dilation[1], workers)
    return z


def merge(kernel: Callable, z: np.ndarray, out: np.ndarray, pad_tl: Tuple[int, int],
          dilation: Tuple[int, int], workers: int) -> None:
    """out (N, C, H, W) = the values of its phase images z at its own positions.

    Each position lies in exactly one phase image, so this is a copy, not a sum: ``split``'s
    adjoint (grad_input from the phases' gradient) and, with ``pad_tl`` (0, 0), its inverse
    (an output from its phases). ``kernel`` is a backend's ``merge_phases`` step.
    """
    kernel(z, out, pad_tl[0], pad_tl[1], dilation[0], dilation[1], workers)
