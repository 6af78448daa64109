"""Direct convolution kernels in Numba: forward, grad_input, grad_weight, grad_bias.

Layout trick used throughout ("wide rows"): a band of input rows is copied, with its zero
padding, into a flat buffer whose rows are ``wp`` elements wide, where ``wp`` is exactly the
padded width the output row needs. An accumulator laid out with the same row width then
receives every output row of the band in ONE contiguous pass per kernel tap:

    acc[t] += w[r, s] * band[t + r * dil_h * wp + s * dil_w]     for t in 0 .. (bh-1)*wp + out_w

The ``wp - out_w`` columns at the end of each accumulator row are garbage and are never
copied out (or summed, for the weight gradient). So the innermost loop is a long unit-stride
loop with no bounds checks and no border special cases, which LLVM vectorises; padding costs
one copy of the input band, reused by every output channel and every tap. Short output rows
(26 pixels for MNIST) would vectorise badly on their own; the band pass is hundreds long.

Register blocking: taps are applied three at a time (one accumulator load/store per three
multiply-adds); a band of output rows is sized so that accumulators and the input band stay
in L1/L2, and one input band is reused for a block of output channels.

* forward: parallel over (image, group, block of output channels); every output element is
  computed by one task in a fixed order, so results do not depend on the thread count.
* grad_input, stride 1: a forward convolution of grad_output with the flipped, transposed
  weights (padding ``dil * (r - 1) - pad``, possibly negative = cropping). General stride:
  scatter each grad_output row into a padded grad_input plane owned by one (image, channel)
  task (no races).
* grad_weight: one task per filter entry (k, c): per-tap accumulator rows summed over the
  batch, then only their valid columns are added up (float64). Deterministic.
* grad_bias: one task per output channel.

Indexing always goes through slices of non-negative extent: Numba checks negative indices
for wraparound, and that check alone stops vectorisation of ``a[i + off]`` loops.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._runtime import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, use_configured_threads

#: Bytes of accumulators + input band one task keeps hot (L1 is 32 KiB on common x86 cores).
_BAND_BYTES = 28 * 1024
#: Output channels that share one copied input band when channels per group > 1.
_CHANNEL_BLOCK = 8


# ---------------------------------------------------------------- inner passes

@njit(**JIT_OPTIONS)
def _taps_unit(acc, a0, band, b0, wrow, dw, n):
    """acc[a0 : a0+n] += sum_s wrow[s] * band[b0 + s*dw : ... + n]  (unit output stride)."""
    out = acc[a0:a0 + n]
    taps = wrow.size
    s = 0
    while taps - s >= 3:
        w0 = wrow[s]
        w1 = wrow[s + 1]
        w2 = wrow[s + 2]
        o = b0 + s * dw
        p0 = band[o:o + n]
        p1 = band[o + dw:o + dw + n]
        p2 = band[o + 2 * dw:o + 2 * dw + n]
        for i in range(n):
            out[i] += w0 * p0[i] + w1 * p1[i] + w2 * p2[i]
        s += 3
    if taps - s == 2:
        w0 = wrow[s]
        w1 = wrow[s + 1]
        o = b0 + s * dw
        p0 = band[o:o + n]
        p1 = band[o + dw:o + dw + n]
        for i in range(n):
            out[i] += w0 * p0[i] + w1 * p1[i]
    elif taps - s == 1:
        w0 = wrow[s]
        o = b0 + s * dw
        p0 = band[o:o + n]
        for i in range(n):
            out[i] += w0 * p0[i]


@njit(**JIT_OPTIONS)
def _taps_strided(acc, a0, band, b0, wrow, dw, sw, n):
    """acc[a0 + i] += sum_s wrow[s] * band[b0 + s*dw + i*sw] for i < n (output stride sw)."""
    out = acc[a0:a0 + n]
    for s in range(wrow.size):
        w0 = wrow[s]
        o = b0 + s * dw
        p0 = band[o:o + (n - 1) * sw + 1:sw]
        for i in range(n):
            out[i] += w0 * p0[i]


@njit(**JIT_OPTIONS)
def _copy_band(plane, band, row0, col0, rows, wp):
    """band[i*wp + j] = plane[row0 + i, col0 + j], or 0 outside the plane (i < rows, j < wp)."""
    h, w = plane.shape
    j_lo = min(max(0, -col0), wp)
    j_hi = max(min(wp, w - col0), j_lo)
    for i in range(rows):
        dst = band[i * wp:(i + 1) * wp]
        ih = row0 + i
        if ih < 0 or ih >= h:
            dst[:] = 0
            continue
        src = plane[ih]
        for j in range(j_lo):
            dst[j] = 0
        for j in range(j_lo, j_hi):
            dst[j] = src[j + col0]
        for j in range(j_hi, wp):
            dst[j] = 0


@njit(**JIT_OPTIONS)
def _band_pass(acc, a0, band, wrow, r_off, bh, wp, sh, sw, dw, out_w):
    """One kernel row's taps into the accumulator rows of a band of ``bh`` output rows."""
    if sh == 1 and sw == 1:
        _taps_unit(acc, a0, band, r_off, wrow, dw, (bh - 1) * wp + out_w)
    elif sw == 1:
        for i in range(bh):
            _taps_unit(acc, a0 + i * wp, band, r_off + i * sh * wp, wrow, dw, out_w)
    else:
        for i in range(bh):
            _taps_strided(acc, a0 + i * wp, band, r_off + i * sh * wp, wrow, dw, sw, out_w)


# ---------------------------------------------------------------- forward core

@njit(**PARALLEL_JIT_OPTIONS)
def _forward_core(x, weight, bias, has_bias, y, groups, sh, sw, pt, pl, dh, dw, kblock, band_h):
    """y = x (*) weight (+ bias): the correlation that forward and grad_input (stride 1) share.

    ``pt``/``pl`` may be negative (the input is cropped instead of padded). ``kblock`` output
    channels share each copied input band; bands hold ``band_h`` output rows.
    """
    n_img, _, _, _ = x.shape
    k_all, cg, kr, ks = weight.shape
    out_h, out_w = y.shape[2], y.shape[3]
    kg = k_all // groups
    wp = (out_w - 1) * sw + (ks - 1) * dw + 1
    band_rows = (band_h - 1) * sh + (kr - 1) * dh + 1
    band_len = (band_h - 1) * wp + out_w
    n_kb = (kg + kblock - 1) // kblock
    acc_rows = 1 if cg == 1 else kblock
    for task in prange(n_img * groups * n_kb):
        n = task // (groups * n_kb)
        g = (task // n_kb) % groups
        kb = task % n_kb
        k0 = g * kg + kb * kblock
        nk = min(kblock, kg - kb * kblock)
        band = np.empty(band_rows * wp, dtype=x.dtype)
        acc = np.empty((acc_rows, band_len), dtype=y.dtype)
        for oh0 in range(0, out_h, band_h):
            bh = min(band_h, out_h - oh0)
            rows = (bh - 1) * sh + (kr - 1) * dh + 1
            length = (bh - 1) * wp + out_w
            if cg == 1:
                # One input channel feeds each output channel: finish one channel at a time
                # so a single accumulator row stays in L1.
                _copy_band(x[n, g], band, oh0 * sh - pt, -pl, rows, wp)
                for j in range(nk):
                    a = acc[0]
                    a[:length] = 0
                    for r in range(kr):
                        _band_pass(a, 0, band, weight[k0 + j, 0, r], r * dh * wp, bh, wp, sh, sw, dw, out_w)
                    _store_rows(a, y[n, k0 + j], oh0, bh, wp, bias, k0 + j, has_bias)
            else:
                for j in range(nk):
                    acc[j, :length] = 0
                for ci in range(cg):
                    _copy_band(x[n, g * cg + ci], band, oh0 * sh - pt, -pl, rows, wp)
                    for j in range(nk):
                        a = acc[j]
                        for r in range(kr):
                            _band_pass(a, 0, band, weight[k0 + j, ci, r], r * dh * wp, bh, wp, sh, sw, dw, out_w)
                for j in range(nk):
                    _store_rows(acc[j], y[n, k0 + j], oh0, bh, wp, bias, k0 + j, has_bias)


@njit(**JIT_OPTIONS)
def _store_rows(a, plane, oh0, bh, wp, bias, k, has_bias):
    """plane[oh0 + i, :] = a[i*wp : i*wp + out_w] (+ bias[k]) for the band's rows."""
    out_w = plane.shape[1]
    for i in range(bh):
        src = a[i * wp:i * wp + out_w]
        dst = plane[oh0 + i]
        if has_bias:
            b = bias[k]
            for j in range(out_w):
                dst[j] = src[j] + b
        else:
            for j in range(out_w):
                dst[j] = src[j]


def _forward_blocking(n_tasks_per_block, kg, cg, wp, out_w, kr, sh, dh, itemsize):
    """(kblock, band_h) for ``_forward_core``: enough tasks for the threads, bands in cache."""
    from ... import threads

    nthreads = threads.get_num_threads()
    kblock = kg if cg == 1 else min(kg, _CHANNEL_BLOCK)
    # Split channel blocks further when images x groups alone cannot feed every thread.
    while kblock > 1 and n_tasks_per_block * -(-kg // kblock) < 2 * nthreads:
        kblock = (kblock + 1) // 2
    acc_rows = 1 if cg == 1 else kblock
    per_row = (acc_rows * wp + sh * wp) * itemsize
    fixed = (kr - 1) * dh * wp * itemsize
    band_h = max(1, (_BAND_BYTES - fixed) // max(per_row, 1))
    return kblock, band_h


def _run_forward(x, weight, bias, y, groups, sh, sw, pt, pl, dh, dw):
    n, _, _, _ = x.shape
    k, cg, kr, ks = weight.shape
    out_h, out_w = y.shape[2], y.shape[3]
    wp = (out_w - 1) * sw + (ks - 1) * dw + 1
    kblock, band_h = _forward_blocking(n * groups, k // groups, cg, wp, out_w, kr, sh, dh, y.itemsize)
    band_h = min(band_h, out_h)
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=y.dtype)
    use_configured_threads()
    _forward_core(x, weight, b, has_bias, y, groups, sh, sw, pt, pl, dh, dw, kblock, band_h)


# ---------------------------------------------------------------- public kernels

def conv2d_forward(x, weight, bias, y, p):
    """y (n, k, out_h, out_w) = x (n, c, h, w) cross-correlated with weight (k, c/groups, r, s) + bias (k,).

    float32 or float64, all C-contiguous; every stride, padding, dilation and grouping.
    """
    _run_forward(x, weight, bias, y, p.groups, p.stride_h, p.stride_w, p.pad_top, p.pad_left,
                 p.dil_h, p.dil_w)


def conv2d_grad_input(grad_output, weight, grad_input, p):
    """grad_input (n, c, h, w) from grad_output (n, k, out_h, out_w) and weight (k, c/groups, r, s)."""
    if p.stride_h == 1 and p.stride_w == 1:
        # Full correlation with the flipped kernel: grad_input[c] = sum_k gy[k] (*) rot180(w[k, c]).
        g, cg, kg = p.groups, p.c_per_group, p.k_per_group
        flipped = weight[:, :, ::-1, ::-1].reshape(g, kg, cg, p.r, p.s)
        flipped = np.ascontiguousarray(flipped.transpose(0, 2, 1, 3, 4).reshape(p.c, kg, p.r, p.s))
        _run_forward(grad_output, flipped, None, grad_input, g, 1, 1,
                     p.dil_h * (p.r - 1) - p.pad_top, p.dil_w * (p.s - 1) - p.pad_left, p.dil_h, p.dil_w)
        return
    use_configured_threads()
    _grad_input_scatter(grad_output, weight, grad_input, p.groups, p.stride_h, p.stride_w,
                        p.pad_top, p.pad_left, p.dil_h, p.dil_w)


@njit(**PARALLEL_JIT_OPTIONS)
def _grad_input_scatter(gy, weight, gx, groups, sh, sw, pt, pl, dh, dw):
    """Strided grad_input: each (image, input channel) task scatters into its own padded plane."""
    n_img, c_all, h, w = gx.shape
    _, kg_out, out_h, out_w = gy.shape
    k_all, cg, kr, ks = weight.shape
    kg = k_all // groups
    hp = max((out_h - 1) * sh + (kr - 1) * dh + 1, pt + h)
    wp = max((out_w - 1) * sw + (ks - 1) * dw + 1, pl + w)
    for task in prange(n_img * c_all):
        n = task // c_all
        c = task % c_all
        g = c // cg
        ci = c % cg
        plane = np.zeros(hp * wp, dtype=gx.dtype)
        for kj in range(kg):
            k = g * kg + kj
            for oh in range(out_h):
                row = gy[n, k, oh]
                for r in range(kr):
                    base = (oh * sh + r * dh) * wp
                    for s in range(ks):
                        wv = weight[k, ci, r, s]
                        o = base + s * dw
                        dst = plane[o:o + (out_w - 1) * sw + 1:sw]
                        for ow in range(out_w):
                            dst[ow] += wv * row[ow]
        out = gx[n, c]
        for ih in range(h):
            src = plane[(ih + pt) * wp + pl:(ih + pt) * wp + pl + w]
            dst = out[ih]
            for iw in range(w):
                dst[iw] = src[iw]


def conv2d_grad_weight(grad_output, x, grad_weight, p):
    """grad_weight (k, c/groups, r, s) = sum over batch and pixels of grad_output x shifted input."""
    sh, sw, dh, dw = p.stride_h, p.stride_w, p.dil_h, p.dil_w
    wp = (p.out_w - 1) * sw + (p.s - 1) * dw + 1
    per_row = (p.r * p.s * wp + sh * wp + wp) * grad_weight.itemsize
    band_h = max(1, min(p.out_h, (_BAND_BYTES * 2) // per_row))
    use_configured_threads()
    _grad_weight_core(grad_output, x, grad_weight, p.groups, sh, sw, p.pad_top, p.pad_left, dh, dw, band_h)


@njit(**PARALLEL_JIT_OPTIONS)
def _grad_weight_core(gy, x, gw, groups, sh, sw, pt, pl, dh, dw, band_h):
    """One task per filter entry (k, c): per-tap accumulator rows over the batch, then a sum."""
    n_img = x.shape[0]
    k_all, cg, kr, ks = gw.shape
    out_h, out_w = gy.shape[2], gy.shape[3]
    kg = k_all // groups
    wp = (out_w - 1) * sw + (ks - 1) * dw + 1
    band_rows = (band_h - 1) * sh + (kr - 1) * dh + 1
    band_len = (band_h - 1) * wp + out_w
    for task in prange(k_all * cg):
        k = task // cg
        ci = task % cg
        c = (k // kg) * cg + ci
        band = np.empty(band_rows * wp, dtype=x.dtype)
        gband = np.zeros(band_len, dtype=x.dtype)
        acc = np.zeros((kr * ks, band_len), dtype=gw.dtype)
        for n in range(n_img):
            gplane = gy[n, k]
            for oh0 in range(0, out_h, band_h):
                bh = min(band_h, out_h - oh0)
                rows = (bh - 1) * sh + (kr - 1) * dh + 1
                _copy_band(x[n, c], band, oh0 * sh - pt, -pl, rows, wp)
                for i in range(bh):
                    src = gplane[oh0 + i]
                    dst = gband[i * wp:i * wp + out_w]
                    for j in range(out_w):
                        dst[j] = src[j]
                for r in range(kr):
                    for s in range(ks):
                        a = acc[r * ks + s]
                        off = r * dh * wp + s * dw
                        if sh == 1 and sw == 1:
                            _mul_acc(a, 0, gband, 0, band, off, (bh - 1) * wp + out_w)
                        elif sw == 1:
                            for i in range(bh):
                                _mul_acc(a, i * wp, gband, i * wp, band, off + i * sh * wp, out_w)
                        else:
                            for i in range(bh):
                                _mul_acc_strided(a, i * wp, gband, i * wp, band, off + i * sh * wp, sw, out_w)
        rows_used = min(band_h, out_h)
        for r in range(kr):
            for s in range(ks):
                a = acc[r * ks + s]
                total = 0.0
                for i in range(rows_used):
                    for j in range(out_w):
                        total += a[i * wp + j]
                gw[k, ci, r, s] = total


@njit(**JIT_OPTIONS)
def _mul_acc(acc, a0, g, g0, band, b0, n):
    """acc[a0 + i] += g[g0 + i] * band[b0 + i] for i < n."""
    out = acc[a0:a0 + n]
    gg = g[g0:g0 + n]
    xx = band[b0:b0 + n]
    for i in range(n):
        out[i] += gg[i] * xx[i]


@njit(**JIT_OPTIONS)
def _mul_acc_strided(acc, a0, g, g0, band, b0, sw, n):
    """acc[a0 + i] += g[g0 + i] * band[b0 + i*sw] for i < n."""
    out = acc[a0:a0 + n]
    gg = g[g0:g0 + n]
    xx = band[b0:b0 + (n - 1) * sw + 1:sw]
    for i in range(n):
        out[i] += gg[i] * xx[i]


def conv2d_grad_bias(grad_output, grad_bias, p):
    """grad_bias (k,) = grad_output (n, k, out_h, out_w) summed over batch and pixels."""
    use_configured_threads()
    _grad_bias_core(grad_output.reshape(p.n, p.k, p.out_h * p.out_w), grad_bias)


@njit(**PARALLEL_JIT_OPTIONS)
def _grad_bias_core(gy, gb):
    """Per channel: add the planes element-wise (vectorises), then sum that row in float64."""
    n_img, k_all, m = gy.shape
    for k in prange(k_all):
        acc = np.zeros(m, dtype=np.float64)
        for n in range(n_img):
            src = gy[n, k]
            for i in range(m):
                acc[i] += src[i]
        total = 0.0
        for i in range(m):
            total += acc[i]
        gb[k] = total
