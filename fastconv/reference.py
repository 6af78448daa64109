"""Slow, obviously-correct NumPy kernels: the test oracle and the always-available fallback.

Each function has the kernel signature of its op (see ``fastconv.kernels``): it receives
checked, C-contiguous arrays and the call's params, and writes every element of its output.
Convolutions loop over the kernel taps (r, s) and contract channels with ``einsum``, so the
memory they need is one strided view of the input per tap, never a full im2col matrix.
Pooling loops over window offsets with whole-array operations.

Max pooling follows PyTorch exactly: padding is never a candidate, ``>`` keeps the first
maximum of a window in row-major order, and a NaN wins over everything (the last NaN of the
window gives the index), so NaN propagates.
"""
from __future__ import annotations

import numpy as np

from .params import ConvParams, PoolParams


def _pad(x: np.ndarray, top: int, bottom: int, left: int, right: int, value=0.0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _tap(xp: np.ndarray, i: int, j: int, stride_h: int, stride_w: int, out_h: int, out_w: int) -> np.ndarray:
    """The strided view of padded ``xp`` that tap (i, j) reads for every output pixel."""
    return xp[:, :, i:i + stride_h * (out_h - 1) + 1:stride_h, j:j + stride_w * (out_w - 1) + 1:stride_w]


def _groups(p: ConvParams):
    for g in range(p.groups):
        yield (slice(g * p.c_per_group, (g + 1) * p.c_per_group),
               slice(g * p.k_per_group, (g + 1) * p.k_per_group))


# ---------------------------------------------------------------- convolution

def conv2d_forward(x, weight, bias, y, p: ConvParams) -> None:
    """y (n, k, out_h, out_w) = x (n, c, h, w) cross-correlated with weight (k, c/g, r, s) + bias."""
    xp = _pad(x, p.pad_top, p.pad_bottom, p.pad_left, p.pad_right)
    y[...] = 0
    for cs, ks in _groups(p):
        for r in range(p.r):
            for s in range(p.s):
                window = _tap(xp[:, cs], r * p.dil_h, s * p.dil_w, p.stride_h, p.stride_w, p.out_h, p.out_w)
                y[:, ks] += np.einsum("nchw,kc->nkhw", window, weight[ks, :, r, s], optimize=True)
    if bias is not None:
        y += bias[None, :, None, None]


def conv2d_grad_input(grad_output, weight, grad_input, p: ConvParams) -> None:
    """grad_input (n, c, h, w) of the forward above, given grad_output (n, k, out_h, out_w)."""
    gxp = np.zeros((p.n, p.c, p.h + p.pad_top + p.pad_bottom, p.w + p.pad_left + p.pad_right),
                   dtype=grad_input.dtype)
    for cs, ks in _groups(p):
        for r in range(p.r):
            for s in range(p.s):
                window = _tap(gxp[:, cs], r * p.dil_h, s * p.dil_w, p.stride_h, p.stride_w, p.out_h, p.out_w)
                window += np.einsum("nkhw,kc->nchw", grad_output[:, ks], weight[ks, :, r, s], optimize=True)
    grad_input[...] = gxp[:, :, p.pad_top:p.pad_top + p.h, p.pad_left:p.pad_left + p.w]


def conv2d_grad_weight(grad_output, x, grad_weight, p: ConvParams) -> None:
    """grad_weight (k, c/g, r, s) of the forward above."""
    xp = _pad(x, p.pad_top, p.pad_bottom, p.pad_left, p.pad_right)
    for cs, ks in _groups(p):
        for r in range(p.r):
            for s in range(p.s):
                window = _tap(xp[:, cs], r * p.dil_h, s * p.dil_w, p.stride_h, p.stride_w, p.out_h, p.out_w)
                grad_weight[ks, :, r, s] = np.einsum("nkhw,nchw->kc", grad_output[:, ks], window, optimize=True)


def conv2d_grad_bias(grad_output, grad_bias, p: ConvParams) -> None:
    """grad_bias (k,) = grad_output summed over batch and pixels."""
    grad_bias[...] = grad_output.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------- pooling

def _window_index_grid(p: PoolParams, i: int, j: int):
    """Input row/column of window offset (i, j) for every output pixel, shapes (out_h, 1) and (1, out_w)."""
    rows = np.arange(p.out_h)[:, None] * p.stride_h - p.pad_h + i
    cols = np.arange(p.out_w)[None, :] * p.stride_w - p.pad_w + j
    return rows, cols


def max_pool2d_forward(x, y, indices, p: PoolParams) -> None:
    """y (n, c, out_h, out_w) = window maxima; ``indices`` (same shape, int64) gets flat h*w offsets."""
    xp = _pad(x, p.pad_h, p.pad_h, p.pad_w, p.pad_w, value=-np.inf)
    first_rows, first_cols = _window_index_grid(p, 0, 0)
    best_index = np.broadcast_to(np.maximum(first_rows, 0) * p.w + np.maximum(first_cols, 0), y.shape).copy()
    best = np.full(y.shape, -np.inf, dtype=y.dtype)
    for i in range(p.kernel_h):
        for j in range(p.kernel_w):
            values = _tap(xp, i, j, p.stride_h, p.stride_w, p.out_h, p.out_w)
            rows, cols = _window_index_grid(p, i, j)
            # Padding is -inf: it never passes ">" and is never NaN, so it is never chosen.
            better = (values > best) | np.isnan(values)
            best = np.where(better, values, best)
            best_index = np.where(better, rows * p.w + cols, best_index)
    y[...] = best
    if indices is not None:
        indices[...] = best_index


def max_pool2d_backward(grad_output, indices, grad_input, p: PoolParams) -> int:
    """grad_input (n, c, h, w): each grad_output value added at its window's argmax.

    Returns the number of indices outside [0, h*w), which are skipped."""
    flat = grad_input.reshape(p.n * p.c, p.h * p.w)
    flat[...] = 0
    idx = indices.reshape(p.n * p.c, -1)
    inside = (idx >= 0) & (idx < p.h * p.w)
    rows = np.broadcast_to(np.arange(p.n * p.c)[:, None], idx.shape)
    np.add.at(flat, (rows[inside], idx[inside]), grad_output.reshape(p.n * p.c, -1)[inside])
    return int(inside.size - np.count_nonzero(inside))


def _avg_divisors(p: PoolParams) -> np.ndarray:
    """The divisor of every output pixel, shape (out_h, out_w)."""
    if p.count_include_pad:
        return np.full((p.out_h, p.out_w), float(p.kernel_h * p.kernel_w))
    rows, cols = _window_index_grid(p, 0, 0)
    valid_rows = np.minimum(rows + p.kernel_h, p.h) - np.maximum(rows, 0)
    valid_cols = np.minimum(cols + p.kernel_w, p.w) - np.maximum(cols, 0)
    return (valid_rows * valid_cols).astype(np.float64)


def avg_pool2d_forward(x, y, p: PoolParams) -> None:
    """y (n, c, out_h, out_w) = window sums / divisor (window size, or its non-padding part)."""
    xp = _pad(x, p.pad_h, p.pad_h, p.pad_w, p.pad_w)
    total = np.zeros(y.shape, dtype=np.float64)
    for i in range(p.kernel_h):
        for j in range(p.kernel_w):
            total += _tap(xp, i, j, p.stride_h, p.stride_w, p.out_h, p.out_w)
    y[...] = total / _avg_divisors(p)


def avg_pool2d_backward(grad_output, grad_input, p: PoolParams) -> None:
    """grad_input (n, c, h, w): each grad_output value spread evenly over its window."""
    share = grad_output / _avg_divisors(p)
    gxp = np.zeros((p.n, p.c, p.h + 2 * p.pad_h, p.w + 2 * p.pad_w), dtype=np.float64)
    for i in range(p.kernel_h):
        for j in range(p.kernel_w):
            _tap(gxp, i, j, p.stride_h, p.stride_w, p.out_h, p.out_w)[...] += share
    grad_input[...] = gxp[:, :, p.pad_h:p.pad_h + p.h, p.pad_w:p.pad_w + p.w]
