"""A strided convolution's grad_input as stride-1 correlations, one per phase of the input.

With stride ``s`` and dilation 1, output row ``oh`` reads padded input rows ``u = oh*s + r``.
The input rows of one phase ``i = u mod s`` therefore receive only the filter rows ``r = i,
i + s, i + 2s, ...``: row ``u = i + s*q`` gets ``grad_output[q - j] * w[i + s*j]`` summed over
``j``. That is a stride-1 correlation of grad_output, zero-padded by ``M - 1`` rows on top
(``M`` the phase's filter rows), with those rows flipped, and likewise across columns; with
channels swapped per group as for a stride-1 grad_input. The ``s_h * s_w`` phase planes are
computed in ``dilation_phases``' layout (phase ``(i, j)`` of image ``n`` is image
``(i*s_w + j)*N + n``) by the backend's forward kernel and interleaved into grad_input by the
backend's ``merge_phases`` step. A phase without filter taps (a 1x1 filter at stride 2) is
zero.

Every product of the scatter that grad_input is by definition is made once, plus products of
the weights with grad_output's zero border: exact for finite weights only (0 * inf is NaN),
so ``applies`` asks for them. Against the scatter, whose every grad_output value adds into
R*S places of a padded plane, this is the forward kernels' register-blocked gather (3x3
stride 2, 64 -> 128 on 56x56: 8.2 ms for the four phases against 92 ms, 1 thread).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import dilation_phases
from ..params import ConvParams


def applies(p: ConvParams, weight: np.ndarray) -> bool:
    """Whether grad_input of ``p`` goes by phases: strided, undilated, finite weights."""
    return ((p.stride_h, p.stride_w) != (1, 1) and (p.dil_h, p.dil_w) == (1, 1)
            and bool(np.isfinite(weight).all()))


def grad_input(forward: Callable, merge_phases: Callable, grad_output: np.ndarray, weight: np.ndarray,
               grad_input: np.ndarray, p: ConvParams, workers: int) -> None:
    """grad_input (N, C, H, W) of the strided layer ``p`` from grad_output (N, K, OH, OW).

    ``forward`` is a backend's ``conv2d_forward(x, weight, bias, y, params)``, ``merge_phases``
    its ``merge_phases`` step (``dilation_phases.merge``). All arrays C-contiguous, one dtype.
    """
    sh, sw = p.stride_h, p.stride_w
    # Phase planes tall enough for every input row (u = pad_top + y < s*A), and never
    # shorter than grad_output, so that the bottom and right paddings are >= 0.
    a = max(-(-(p.h + p.pad_top) // sh), p.out_h)
    b = max(-(-(p.w + p.pad_left) // sw), p.out_w)
    g, kg, cg = p.groups, p.k_per_group, p.c_per_group
    grouped = weight.reshape(g, kg, cg, p.r, p.s)
    # Per phase: its filter taps, flipped and channel-swapped (None: a phase without taps).
    phase_filters = []
    for i in range(sh):
        for j in range(sw):
            taps = grouped[..., i::sh, j::sw]
            mh, mw = taps.shape[-2:]
            phase_filters.append(None if mh == 0 or mw == 0 else np.ascontiguousarray(
                taps[..., ::-1, ::-1].transpose(0, 2, 1, 3, 4)).reshape(p.c, kg, mh, mw))
    # The phase planes of a chunk of images at a time, within the workspace limit (as the
    # dilation phases' chunks).
    per_image = sh * sw * p.c * a * b * np.dtype(grad_input.dtype).itemsize
    for s in dilation_phases.image_chunks(p.n, per_image):
        n = s.stop - s.start
        z = dilation_phases.phase_array("stride_grad_input", grad_input[s].shape, (sh, sw), (a, b),
                                        grad_input.dtype)
        for f, flipped in enumerate(phase_filters):
            part = z[f * n:(f + 1) * n]
            if flipped is None:
                part[...] = 0
                continue
            mh, mw = flipped.shape[-2:]
            phase = ConvParams(n=n, c=p.k, h=p.out_h, w=p.out_w, k=p.c, r=mh, s=mw, stride_h=1, stride_w=1,
                               pad_top=mh - 1, pad_bottom=a - p.out_h, pad_left=mw - 1, pad_right=b - p.out_w,
                               dil_h=1, dil_w=1, groups=g, dtype=p.dtype)
            forward(grad_output[s], flipped, None, part, phase)
        dilation_phases.merge(merge_phases, z, grad_input[s], (p.pad_top, p.pad_left), (sh, sw), workers)
