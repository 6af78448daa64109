"""Max and average pooling kernels in Numba, forward and backward (PyTorch semantics).

Every kernel runs one task per (image, channel) plane in parallel: planes are independent,
so backward scatters (overlapping windows included) never race, and each element is
computed in a fixed order whatever the thread count.

Max pooling: padding is never a candidate (windows are clipped to the input); within a
window ``v > best`` keeps the first maximum in row-major order and a NaN always replaces the
current best, so the last NaN gives the index and NaN propagates. Indices are flat offsets
into each H*W plane, as PyTorch returns them.

Average pooling sums a window's rows first (element-wise over the row: vectorised) and then
each output's columns, in float64; global average pooling (window = plane) is the same code
with one output. ``count_include_pad`` picks the divisor: the window size, or the number of
real elements in the clipped window.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._runtime import PARALLEL_JIT_OPTIONS, use_configured_threads

_NO_INDICES = np.zeros((1, 1, 1), dtype=np.int64)


def _planes(a, rows, cols):
    """View (n, c, rows, cols) as (n*c, rows, cols): no copy for C-contiguous arrays."""
    return a.reshape(-1, rows, cols)


# ---------------------------------------------------------------- max pooling

def max_pool2d_forward(x, y, indices, p):
    """y (n, c, out_h, out_w) = window maxima of x (n, c, h, w); indices (int64, like y) or None.

    float32 or float64; NaN wins over numbers, ties keep the first maximum (row-major).
    """
    xs = _planes(x, p.h, p.w)
    ys = _planes(y, p.out_h, p.out_w)
    want = indices is not None
    idx = _planes(indices, p.out_h, p.out_w) if want else _NO_INDICES
    use_configured_threads()
    if (p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w) == (2, 2, 2, 2, 0, 0):
        _max2x2_forward(xs, ys, idx, want)
    else:
        _max_forward(xs, ys, idx, want, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w)


@njit(**PARALLEL_JIT_OPTIONS)
def _max2x2_forward(x, y, idx, want):
    """2x2 windows, stride 2, no padding: four candidates per output, no clipping."""
    planes, h, w = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    for q in prange(planes):
        for oh in range(out_h):
            r0 = x[q, 2 * oh]
            r1 = x[q, 2 * oh + 1]
            yr = y[q, oh]
            base = 2 * oh * w
            if want:
                ir = idx[q, oh]
                for ow in range(out_w):
                    j = 2 * ow
                    best = r0[j]
                    bi = base + j
                    v = r0[j + 1]
                    if v > best or v != v:
                        best = v
                        bi = base + j + 1
                    v = r1[j]
                    if v > best or v != v:
                        best = v
                        bi = base + w + j
                    v = r1[j + 1]
                    if v > best or v != v:
                        best = v
                        bi = base + w + j + 1
                    yr[ow] = best
                    ir[ow] = bi
            else:
                for ow in range(out_w):
                    j = 2 * ow
                    best = r0[j]
                    v = r0[j + 1]
                    if v > best or v != v:
                        best = v
                    v = r1[j]
                    if v > best or v != v:
                        best = v
                    v = r1[j + 1]
                    if v > best or v != v:
                        best = v
                    yr[ow] = best


@njit(**PARALLEL_JIT_OPTIONS)
def _max_forward(x, y, idx, want, kh, kw, sh, sw, ph, pw):
    """Any window, stride and padding: each window clipped to the input before the search."""
    planes, h, w = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    neg_inf = -np.inf
    for q in prange(planes):
        for oh in range(out_h):
            i0 = oh * sh - ph
            i_lo = max(i0, 0)
            i_hi = min(i0 + kh, h)
            for ow in range(out_w):
                j0 = ow * sw - pw
                j_lo = max(j0, 0)
                j_hi = min(j0 + kw, w)
                best = neg_inf
                bi = i_lo * w + j_lo
                for i in range(i_lo, i_hi):
                    row = x[q, i]
                    for j in range(j_lo, j_hi):
                        v = row[j]
                        if v > best or v != v:
                            best = v
                            bi = i * w + j
                y[q, oh, ow] = best
                if want:
                    idx[q, oh, ow] = bi


def max_pool2d_backward(grad_output, indices, grad_input, p):
    """grad_input (n, c, h, w): grad_output (n, c, out_h, out_w) added at each window's argmax.

    ``indices`` (int64, like grad_output) are flat offsets into each H*W plane; overlapping
    windows (stride < window) accumulate.
    """
    use_configured_threads()
    _max_backward(grad_output.reshape(-1, p.out_h * p.out_w), indices.reshape(-1, p.out_h * p.out_w),
                  grad_input.reshape(-1, p.h * p.w))


@njit(**PARALLEL_JIT_OPTIONS)
def _max_backward(gy, idx, gx):
    planes, m = gy.shape
    for q in prange(planes):
        plane = gx[q]
        plane[:] = 0
        g = gy[q]
        ix = idx[q]
        for o in range(m):
            plane[ix[o]] += g[o]


# ---------------------------------------------------------------- average pooling

def avg_pool2d_forward(x, y, p):
    """y (n, c, out_h, out_w) = window means of x (n, c, h, w) (float32 or float64)."""
    use_configured_threads()
    _avg_forward(_planes(x, p.h, p.w), _planes(y, p.out_h, p.out_w), p.kernel_h, p.kernel_w,
                 p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.count_include_pad)


@njit(**PARALLEL_JIT_OPTIONS)
def _avg_forward(x, y, kh, kw, sh, sw, ph, pw, include_pad):
    planes, h, w = x.shape
    out_h, out_w = y.shape[1], y.shape[2]
    for q in prange(planes):
        colsum = np.empty(w, dtype=np.float64)
        for oh in range(out_h):
            i0 = oh * sh - ph
            i_lo = max(i0, 0)
            i_hi = min(i0 + kh, h)
            # Column sums of the window's rows: one vectorised pass per row.
            colsum[:] = 0.0
            for i in range(i_lo, i_hi):
                row = x[q, i]
                for j in range(w):
                    colsum[j] += row[j]
            yr = y[q, oh]
            for ow in range(out_w):
                j0 = ow * sw - pw
                j_lo = max(j0, 0)
                j_hi = min(j0 + kw, w)
                total = 0.0
                for j in range(j_lo, j_hi):
                    total += colsum[j]
                if include_pad:
                    div = kh * kw
                else:
                    div = (i_hi - i_lo) * (j_hi - j_lo)
                yr[ow] = total / div


def avg_pool2d_backward(grad_output, grad_input, p):
    """grad_input (n, c, h, w): each grad_output (n, c, out_h, out_w) value spread over its window."""
    use_configured_threads()
    _avg_backward(_planes(grad_output, p.out_h, p.out_w), _planes(grad_input, p.h, p.w), p.kernel_h,
                  p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.count_include_pad)


@njit(**PARALLEL_JIT_OPTIONS)
def _avg_backward(gy, gx, kh, kw, sh, sw, ph, pw, include_pad):
    planes, h, w = gx.shape
    out_h, out_w = gy.shape[1], gy.shape[2]
    for q in prange(planes):
        plane = gx[q]
        plane[:] = 0
        share = np.empty(w, dtype=np.float64)
        for oh in range(out_h):
            i0 = oh * sh - ph
            i_lo = max(i0, 0)
            i_hi = min(i0 + kh, h)
            # This output row's shares spread over the columns, then added to each window row.
            share[:] = 0.0
            g = gy[q, oh]
            for ow in range(out_w):
                j0 = ow * sw - pw
                j_lo = max(j0, 0)
                j_hi = min(j0 + kw, w)
                if include_pad:
                    div = kh * kw
                else:
                    div = (i_hi - i_lo) * (j_hi - j_lo)
                v = g[ow] / div
                for j in range(j_lo, j_hi):
                    share[j] += v
            for i in range(i_lo, i_hi):
                row = plane[i]
                for j in range(w):
                    row[j] += share[j]
