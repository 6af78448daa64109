"""Direct convolution kernels in Numba: forward, grad_input, grad_weight, grad_bias.

Everything rests on one layout idea ("wide rows"): an accumulator whose rows are as wide as
the rows of the data it reads lines up with that data, so ALL output rows of a band are
computed by one long contiguous pass per group of kernel taps,

    acc[t] += sum_s w[r, s] * src[t + r * dil_h * row_width + s * dil_w]

The columns past ``out_w`` in each accumulator row are garbage and are never stored (or
summed, for the weight gradient). The innermost loop is then a long unit-stride loop without
bounds checks, which LLVM vectorises; output rows alone (26 pixels for MNIST) would be too
short for that. Three ways to get ``src``:

* stride-1 path (``_s1_*``), no copies: ``src`` is the input plane itself (row width w).
  A kernel row's pass covers the output rows whose input row exists. The pass wraps around
  row ends only in border columns (where a tap falls into left/right padding); those are
  recomputed exactly afterwards, column by column. When ``out_w == w`` ("same") the
  accumulator IS the output plane. Used when there are no border columns or when a group
  has a single output channel (depthwise), i.e. when a padded copy could not be shared.
* band path (``_forward_tasks``), one input channel per group: a band of input rows is
  copied with its zero padding into a buffer exactly as wide as the output rows need; any
  stride and dilation. With stride 1 (the first layers), each output row of up to TAP_ROWS
  channels is one ``tap_block`` run (``microkernels.py``) straight into y.
* tap-plane path (``_planes_forward_tasks``), several input channels per group: the Cython
  twin's layout (``direct_plan.py``). A chunk of input channels is copied into zero-bordered
  planes (phase planes for strided layers); every tap (channel, kernel row, kernel column)
  is then one offset, and ``tap_block`` sums TAP_ROWS channels x runs of outputs over all
  the chunk's taps in registers (0.03-0.4x the time of per-channel accumulator passes).
  Stride-1 rows that would waste over an eighth of their width are copied as column-shifted
  planes instead (``direct_plan.shifted_pays``): outputs in y's own order, no tile (LeNet
  conv2 forward 0.80x, MNIST conv2 0.89x, their grad_input 0.81-0.91x the time).

Register blocking: taps are applied three at a time, and 3x3 kernels in one nine-tap pass
(nine loads and one store per output, the sum in registers); bands are sized so that
accumulators and input rows stay in L1; one input band serves a block of output channels.

* forward: parallel over (image, group, block of output channels), tasks run in chunks.
* grad_input, stride 1: a forward convolution of grad_output with the flipped, transposed
  weights (padding ``dil * (r - 1) - pad``, possibly negative = cropping). Other strides:
  each (image, input channel) task scatters grad_output rows into its own padded plane.
* grad_weight: tasks of (group, filter block, batch chunk) on ``dot_block`` over the tap
  planes (``_dots_gw_task``; 0.03-0.3x the time of the per-filter-entry accumulator rows it
  replaced). Depthwise (stride and dilation 1): one task per filter, its dot products
  summed in registers (``_plane_gw_task``).
* grad_bias: one task per output channel.

Every output element is computed by exactly one task in a fixed order: results are the same
bit for bit whatever the thread count. No fastmath: NaN and Inf propagate.

Numba specifics that shaped the code: a possibly negative index (``a[i + off]``) is checked
for wraparound, and that alone stops vectorisation, so loops index views with ``range``
indices; a runtime tap offset inside a fused loop also stopped it, so dilation 1 has its own
loops; a prange body is a single call (an inlined parallel body optimised far worse).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._runtime import (JIT_OPTIONS, PARALLEL_JIT_OPTIONS, prefetch_lines, prefetch_lines_for_write,
                       use_configured_threads)
from .microkernels import (DOT_ROWS, STENCIL_ROWS, TAP_ROWS, TAP_VECTORS, VECTOR_BYTES, copy_run, dot_block,
                           split_pairs, stencil3x3_rows, tap_block)
from .pooling import _max2x2_plane_idx
from ... import threads
from .. import direct_plan, stride_phases
from ..direct_plan import ONE_BY_ONE_TILE

#: Bytes of accumulators + input band one task keeps hot (L1 is 32 KiB on common x86 cores).
_BAND_BYTES = 28 * 1024
#: ``tap_block`` runs per tile of the tap-plane path (256 float32 positions with 64-byte
#: vectors): fewer, longer row copies in and out of y (0.8-0.9x the time of one-run tiles).
_TILE_BLOCKS = 4
#: Rows the one-channel 3x3 kernels (``_plane3x3``, ``_plane3x3_gw``) copy into their padded
#: buffer ahead of the rows they read: a row read right after its copy waits for the copy's
#: stores, which its unaligned loads cannot take forwarded (depthwise 3x3 forward 0.93-0.97x,
#: grad weight 0.86-0.90x the time with 2 rows ahead; 4 and 8 measured the same as 2).
_COPY_AHEAD = 2
#: Output rows per ``dot_block`` call of the depthwise grad weight, each call right after the
#: copy of the input rows it reads: reads of the two planes (input, grad_output) then overlap,
#: where a whole-plane copy first read one stream at a time (0.80x the time on data not in
#: cache, 0.91x on data in cache, with ``dot_block``'s nine-tap block; 2 and 8 rows slower).
_GW_ROWS = 4


# ---------------------------------------------------------------- inner passes

@njit(**JIT_OPTIONS)
def _taps_unit(acc, a0, band, b0, wrow, dw, n):
    """acc[a0 : a0+n] += sum_s wrow[s] * band[b0 + s*dw : ... + n]  (unit output stride)."""
    taps = wrow.size
    s = 0
    while s < taps:
        m = min(3, taps - s)
        _taps_group(acc, a0, band, b0 + s * dw, wrow, s, m, dw, n)
        s += m


@njit(**JIT_OPTIONS)
def _taps_group(acc, a0, src, b0, wrow, s, m, dw, n):
    """acc[a0 + i] += sum_{j < m} wrow[s + j] * src[b0 + j*dw + i] for i < n, m <= 3.

    Three taps per pass: one load and store of the accumulator per three multiply-adds.
    """
    out = acc[a0:a0 + n]
    if m == 3:
        w0 = wrow[s]
        w1 = wrow[s + 1]
        w2 = wrow[s + 2]
        if dw == 1:
            # Known neighbouring offsets: one source view, fewer overlap checks for LLVM.
            p = src[b0:b0 + n + 2]
            for i in range(n):
                out[i] += w0 * p[i] + w1 * p[i + 1] + w2 * p[i + 2]
        else:
            p0 = src[b0:b0 + n]
            p1 = src[b0 + dw:b0 + dw + n]
            p2 = src[b0 + 2 * dw:b0 + 2 * dw + n]
            for i in range(n):
                out[i] += w0 * p0[i] + w1 * p1[i] + w2 * p2[i]
    elif m == 2:
        w0 = wrow[s]
        w1 = wrow[s + 1]
        p0 = src[b0:b0 + n]
        p1 = src[b0 + dw:b0 + dw + n]
        for i in range(n):
            out[i] += w0 * p0[i] + w1 * p1[i]
    else:
        w0 = wrow[s]
        p0 = src[b0:b0 + n]
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
            for j in range(wp):
                dst[j] = 0
            continue
        for j in range(j_lo):
            dst[j] = 0
        # Views, then indices from range(): a possibly negative index such as j + col0 is
        # wraparound-checked, and that check alone keeps a loop from vectorising.
        src = plane[ih, j_lo + col0:j_hi + col0]
        d = dst[j_lo:j_hi]
        for j in range(j_hi - j_lo):
            d[j] = src[j]
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


@njit(**JIT_OPTIONS)
def _band_kernel(acc, band, wk, bh, wp, sh, sw, dh, dw, out_w, assign):
    """acc (+)= band (*) wk (r, s) for a band of ``bh`` output rows (``assign``: overwrite).

    Stride 1: a 3x3 kernel in one nine-tap pass; other kernels two kernel rows per pass.
    """
    kr, ks = wk.shape
    n = (bh - 1) * wp + out_w
    if sh == 1 and sw == 1 and kr == 3 and ks == 3:
        _taps9(acc, 0, band, 0, wk, dh * wp, dw, n, assign)
        return
    if sh == 1 and sw == 1 and kr == 5 and ks == 5 and dw == 1 and assign:
        _taps25(acc, band, wk, dh * wp, n)
        return
    if assign:
        acc[:n] = 0
    if sh == 1 and sw == 1:
        rs = dh * wp
        for r in range(0, kr - 1, 2):
            s = 0
            while s < ks:
                m = min(3, ks - s)
                _taps_rows2(acc, band, r * rs + s * dw, rs, wk[r], wk[r + 1], s, m, dw, n)
                s += m
        if kr % 2 == 1:
            _taps_unit(acc, 0, band, (kr - 1) * rs, wk[kr - 1], dw, n)
        return
    for r in range(kr):
        _band_pass(acc, 0, band, wk[r], r * dh * wp, bh, wp, sh, sw, dw, out_w)


@njit(fastmath={"contract"}, **JIT_OPTIONS)
def _taps25(acc, src, wk, rs, n):
    """acc[i] = sum_{r,s<5} wk[r, s] * src[r*rs + s + i] for i < n: a 5x5 kernel (LeNet's
    first layer) in one pass, the sum in registers (two kernel rows per pass kept the
    accumulator in memory: 3 loads and stores of it per output; 0.78x the time), one FMA
    per term (``contract``: rounding only, NaN and Inf propagate)."""
    out = acc[:n]
    w00, w01, w02, w03, w04 = wk[0, 0], wk[0, 1], wk[0, 2], wk[0, 3], wk[0, 4]
    w10, w11, w12, w13, w14 = wk[1, 0], wk[1, 1], wk[1, 2], wk[1, 3], wk[1, 4]
    w20, w21, w22, w23, w24 = wk[2, 0], wk[2, 1], wk[2, 2], wk[2, 3], wk[2, 4]
    w30, w31, w32, w33, w34 = wk[3, 0], wk[3, 1], wk[3, 2], wk[3, 3], wk[3, 4]
    w40, w41, w42, w43, w44 = wk[4, 0], wk[4, 1], wk[4, 2], wk[4, 3], wk[4, 4]
    p0 = src[:n + 4]
    p1 = src[rs:rs + n + 4]
    p2 = src[2 * rs:2 * rs + n + 4]
    p3 = src[3 * rs:3 * rs + n + 4]
    p4 = src[4 * rs:4 * rs + n + 4]
    for i in range(n):
        out[i] = ((w00 * p0[i] + w01 * p0[i + 1] + w02 * p0[i + 2] + w03 * p0[i + 3] + w04 * p0[i + 4])
                  + (w10 * p1[i] + w11 * p1[i + 1] + w12 * p1[i + 2] + w13 * p1[i + 3] + w14 * p1[i + 4])
                  + (w20 * p2[i] + w21 * p2[i + 1] + w22 * p2[i + 2] + w23 * p2[i + 3] + w24 * p2[i + 4])
                  + (w30 * p3[i] + w31 * p3[i + 1] + w32 * p3[i + 2] + w33 * p3[i + 3] + w34 * p3[i + 4])
                  + (w40 * p4[i] + w41 * p4[i + 1] + w42 * p4[i + 2] + w43 * p4[i + 3] + w44 * p4[i + 4]))


@njit(**JIT_OPTIONS)
def _taps_rows2(acc, src, b0, rs, wa, wb, s, m, dw, n):
    """acc[i] += sum_{j<m} wa[s+j] src[b0 + j*dw + i] + wb[s+j] src[b0 + rs + j*dw + i].

    Two kernel rows per accumulator load and store (up to six taps)."""
    out = acc[:n]
    span = n + (m - 1) * dw
    p = src[b0:b0 + span]
    q = src[b0 + rs:b0 + rs + span]
    if m == 3 and dw == 1:
        a0, a1, a2 = wa[s], wa[s + 1], wa[s + 2]
        c0, c1, c2 = wb[s], wb[s + 1], wb[s + 2]
        for i in range(n):
            out[i] += (a0 * p[i] + a1 * p[i + 1] + a2 * p[i + 2]) + (c0 * q[i] + c1 * q[i + 1] + c2 * q[i + 2])
    elif m == 2 and dw == 1:
        a0, a1 = wa[s], wa[s + 1]
        c0, c1 = wb[s], wb[s + 1]
        for i in range(n):
            out[i] += (a0 * p[i] + a1 * p[i + 1]) + (c0 * q[i] + c1 * q[i + 1])
    else:
        for j in range(m):
            # Dilated: one tap pair per pass (views at fixed offsets keep the loop simple).
            pa = src[b0 + j * dw:b0 + j * dw + n]
            qa = src[b0 + rs + j * dw:b0 + rs + j * dw + n]
            a0 = wa[s + j]
            c0 = wb[s + j]
            for i in range(n):
                out[i] += a0 * pa[i] + c0 * qa[i]


# ---------------------------------------------------------------- forward core

@njit(**PARALLEL_JIT_OPTIONS)
def _forward_core(x, weight, bias, has_bias, y, groups, sh, sw, pt, pl, dh, dw, kblock, band_h, chunk):
    """y = x (*) weight (+ bias) for one input channel per group (the band path).

    ``pt``/``pl`` may be negative (the input is cropped instead of padded). ``kblock`` output
    channels share each copied input band; bands hold ``band_h`` output rows. Tasks are
    (image, group, channel block) triples, run ``chunk`` at a time per parallel iteration.
    """
    kg = weight.shape[0] // groups
    n_tasks = x.shape[0] * groups * ((kg + kblock - 1) // kblock)
    for t in prange((n_tasks + chunk - 1) // chunk):
        # One call per iteration: Numba optimises a plain function much better than an
        # inlined parallel loop body, and buffers are allocated once per chunk of tasks.
        _forward_tasks(x, weight, bias, has_bias, y, t * chunk, min(n_tasks, (t + 1) * chunk),
                       groups, sh, sw, pt, pl, dh, dw, kblock, band_h)


@njit(**JIT_OPTIONS)
def _forward_tasks(x, weight, bias, has_bias, y, t0, t1, groups, sh, sw, pt, pl, dh, dw, kblock, band_h):
    """Tasks t0 .. t1-1: output channels [k0, k0 + nk) of one image and group, band by band."""
    k_all, cg, kr, ks = weight.shape
    out_h, out_w = y.shape[2], y.shape[3]
    kg = k_all // groups
    n_kb = (kg + kblock - 1) // kblock
    wp = (out_w - 1) * sw + (ks - 1) * dw + 1
    band_rows = (band_h - 1) * sh + (kr - 1) * dh + 1
    band_len = (band_h - 1) * wp + out_w
    band = np.empty(band_rows * wp, dtype=x.dtype)
    acc = np.empty(band_len, dtype=y.dtype)
    taps = kr * ks
    offs = np.empty(taps, dtype=np.intp)
    for t in range(taps):
        offs[t] = (t // ks) * dh * wp + (t % ks) * dw
    wf = weight.reshape(-1)
    yf = y.reshape(-1)
    seg = TAP_VECTORS * (VECTOR_BYTES // y.itemsize)
    for task in range(t0, t1):
        n = task // (groups * n_kb)
        g = (task // n_kb) % groups
        kb = task % n_kb
        k0 = g * kg + kb * kblock
        nk = min(kblock, kg - kb * kblock)
        for oh0 in range(0, out_h, band_h):
            bh = min(band_h, out_h - oh0)
            rows = (bh - 1) * sh + (kr - 1) * dh + 1
            if sh == 1 and sw == 1:
                # One input channel feeds every output channel of the group: each output row
                # of TAP_ROWS channels at a time, straight into y, the sums in registers over
                # all the taps (``tap_block``: a tap's band vectors serve all those channels).
                _copy_band(x[n, g], band, oh0 - pt, -pl, rows, wp)
                for i in range(bh):
                    q = 0
                    while q < nk:
                        nq = min(TAP_ROWS, nk - q)
                        y0 = ((n * k_all + k0 + q) * out_h + oh0 + i) * out_w
                        j = 0
                        while j < out_w:
                            cnt = min(seg, out_w - j)
                            tap_block(wf, (k0 + q) * taps, taps, band, i * wp + j, offs, taps, yf, y0 + j,
                                      out_h * out_w, cnt, bias, k0 + q if has_bias else 0, True, nq)
                            j += cnt
                        q += nq
            else:
                # Strided: finish one output channel at a time so a single accumulator stays in L1.
                _copy_band(x[n, g], band, oh0 * sh - pt, -pl, rows, wp)
                for j in range(nk):
                    _band_kernel(acc, band, weight[k0 + j, 0], bh, wp, sh, sw, dh, dw, out_w, True)
                    _store_rows(acc, y[n, k0 + j], oh0, bh, wp, bias, k0 + j, has_bias)


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


def _chunk(n_tasks):
    """Tasks per parallel iteration (``direct_plan.tasks_per_take``): per-iteration costs
    (buffer allocation, reference counting of views) stay negligible."""
    return direct_plan.tasks_per_take(n_tasks, threads.get_num_threads())


def _forward_blocking(n_tasks_per_block, kg, wp, kr, sh, dh, itemsize):
    """(kblock, band_h) for ``_forward_core``: enough tasks for the threads, bands in cache."""
    nthreads = threads.get_num_threads()
    kblock = kg
    # Split channel blocks when images x groups alone cannot feed every thread.
    while kblock > 1 and n_tasks_per_block * -(-kg // kblock) < 2 * nthreads:
        kblock = (kblock + 1) // 2
    per_row = (wp + sh * wp) * itemsize
    fixed = (kr - 1) * dh * wp * itemsize
    band_h = max(1, (_BAND_BYTES - fixed) // max(per_row, 1))
    return kblock, band_h


def _run_forward(x, weight, bias, y, groups, sh, sw, pt, pl, dh, dw, plane_ok=True):
    n, _, _, w = x.shape
    k, cg, kr, ks = weight.shape
    out_h, out_w = y.shape[2], y.shape[3]
    # Without a padded copy, border columns cost a scalar recomputation; with one, the copy
    # is shared by all output channels of the group. No copy when there are no border
    # columns, or when one output channel per group could not share it.
    borderless = pl <= 0 and w + pl - (ks - 1) * dw >= out_w
    if plane_ok and _plane3x3_applies(cg, groups, kr, ks, sh, sw, dh, dw):
        _run_plane3x3(x, weight, bias, y, groups, pt, pl)
        return
    if cg > 1:
        _run_planes_forward(x, weight, bias if bias is not None else np.zeros(k, dtype=y.dtype), y, groups,
                            sh, sw, pt, pl, dh, dw)
        return
    # One input channel and several output channels per group (the first layers) go to the
    # band path's ``tap_block`` rows (0.71-0.86x the time of the tap-plane path).
    taps_pay = k // groups > 1 and sh == 1 and sw == 1
    if not taps_pay and _s1_applies(sh, sw, out_w, w) and (borderless or k // groups == 1):
        _run_s1_forward(x, weight, bias, y, groups, pt, pl, dh, dw)
        return
    wp = (out_w - 1) * sw + (ks - 1) * dw + 1
    kblock, band_h = _forward_blocking(n * groups, k // groups, wp, kr, sh, dh, y.itemsize)
    band_h = min(band_h, out_h)
    has_bias = bias is not None
    # Without a bias, zeros for every channel: ``tap_block`` starts rows of sums from them.
    b = bias if has_bias else np.zeros(k, dtype=y.dtype)
    n_tasks = n * groups * -(-(k // groups) // kblock)
    use_configured_threads()
    _forward_core(x, weight, b, has_bias, y, groups, sh, sw, pt, pl, dh, dw, kblock, band_h,
                  _chunk(n_tasks))


# ---------------------------------------------------------------- copied tap planes
#
# Several input channels per group, any stride and dilation (see the module docstring).
# Column-shifted planes and output rows of at least one whole ``tap_block`` block are summed
# straight into y; shorter rows as tiles of "wide" positions oh*wq + ow of the planes, whose
# real outputs are then copied into y.

@njit(**JIT_OPTIONS)
def _tap_rows(left):
    """Output channels for the next ``tap_block``: blocks of at most TAP_ROWS as equal as
    possible (6 channels as 3 + 3, not 4 + 2: two channels' sums are too few chains for the
    FMA latency; as ``_channel_block`` in the Cython twin)."""
    blocks = (left + TAP_ROWS - 1) // TAP_ROWS
    return (left + blocks - 1) // blocks


@njit(**JIT_OPTIONS)
def _copy_planes(x, n, c0, nc, ws, ps, hq, wq, sh, sw, top, left):
    """ws[c*ps:(c+1)*ps] = the sh*sw phase planes (hq x wq each) of channel c0 + c of image n
    (c < nc) placed at (top, left) of the padded plane: phase (a, b) holds padded pixel
    (y*sh + a, x*sw + b) at (y, x). Only input pixels are written (the zero border stays),
    those of a negative top/left or past the planes' extent are cropped."""
    h, w = x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    i_lo, i_hi = max(0, -top), min(h, hq * sh - top)
    j_lo, j_hi = max(0, -left), min(w, wq * sw - left)
    for c in range(nc):
        s0 = ((n * x.shape[1]) + c0 + c) * h * w
        for i in range(i_lo, i_hi):
            pi = i + top
            row0 = c * ps + ((pi % sh) * sw * hq + pi // sh) * wq
            if sw == 2:
                # Column j goes to phase (j + left) % 2 at (j + left) // 2: every other
                # column of the run to one phase row, the rest to the other, in one pass.
                e = j_lo + left
                split_pairs(xf, s0 + i * w + j_lo, j_hi - j_lo, ws,
                            row0 + (e % 2) * hq * wq + e // 2, row0 + ((e + 1) % 2) * hq * wq + (e + 1) // 2)
                continue
            for b in range(sw):
                j0 = j_lo + (b - j_lo - left) % sw      # first column landing in phase b
                if j0 >= j_hi:
                    continue
                cnt = (j_hi - j0 + sw - 1) // sw
                d = row0 + b * hq * wq + (j0 + left) // sw
                if sw == 1:
                    copy_run(xf, s0 + i * w + j0, ws, d, cnt)
                    continue
                src = xf[s0 + i * w + j0:s0 + i * w + j_hi]
                dst = ws[d:d + cnt]
                for m in range(cnt):
                    dst[m] = src[m * sw]


@njit(**JIT_OPTIONS)
def _copy_shifted(x, n, c0, nc, ws, hp, out_w, ks, dw, top, left):
    """ws[(c*ks + s)*hp*out_w:] = the hp x out_w window of channel c0 + c of image n's padded
    plane (x at top/left) that starts at column s*dw, for c < nc and s < ks: a stride-1 tap
    (c, r, s) then reads ``r*dh*out_w`` into plane (c, s) at the output's own index
    oh*out_w + ow. Only input pixels are written (the zero border stays)."""
    h, w = x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    i_lo, i_hi = max(0, -top), min(h, hp - top)
    for c in range(nc):
        s0 = ((n * x.shape[1]) + c0 + c) * h * w
        for s in range(ks):
            # Output column ow reads input column ow + s*dw - left.
            j_lo = max(0, left - s * dw)
            j_hi = min(out_w, w + left - s * dw)
            if j_hi <= j_lo:
                continue
            for i in range(i_lo, i_hi):
                copy_run(xf, s0 + i * w + j_lo + s * dw - left, ws, ((c * ks + s) * hp + i + top) * out_w + j_lo,
                         j_hi - j_lo)


@njit(**JIT_OPTIONS)
def _taps(wf, w0, w_stride, src, s0, offs, t0, t1, acc, a0, a_stride, count, init, i0, first, rows, chunk):
    """``tap_block`` over taps t0 .. t1-1, ``chunk`` at a time (the input lines a chunk reads
    stay in L1 for the next block of channels); tap 0 starts from init if first."""
    t = t0
    while t < t1:
        m = min(chunk, t1 - t)
        tap_block(wf, w0 + t, w_stride, src, s0, offs[t:t + m], m, acc, a0, a_stride, count, init, i0,
                  first and t == 0, rows)
        t += m


@njit(**JIT_OPTIONS)
def _tile_move(tile, seg, yf, y0, out_plane, rows, j0, m, wq, out_w, load):
    """Between the tile (rows x seg: wide positions j0 .. j0+m-1) and the real outputs they
    hold in y (planes of out_plane from y0): into the tile if ``load``, else out of it."""
    oh = j0 // wq
    ow = j0 - oh * wq
    i = 0
    while i < m:
        run = min(wq - ow, m - i)
        real = min(run, out_w - ow)
        if real > 0:
            for q in range(rows):
                at = y0 + q * out_plane + oh * out_w + ow
                if load:
                    copy_run(yf, at, tile, q * seg + i, real)
                else:
                    copy_run(tile, q * seg + i, yf, at, real)
        i += run
        oh += 1
        ow = 0


@njit(**PARALLEL_JIT_OPTIONS)
def _planes_forward_core(x, weight, bias, y, groups, sh, sw, pt, pl, hq, wq, cb, offs, kbt, shifted, dw, tap_chunk,
                         chunk):
    """y = x (*) weight + bias over copied tap planes; tasks are (image, group, block of kbt
    output channels), run ``chunk`` at a time per parallel iteration."""
    kg = weight.shape[0] // groups
    n_tasks = x.shape[0] * groups * ((kg + kbt - 1) // kbt)
    for t in prange((n_tasks + chunk - 1) // chunk):
        _planes_forward_tasks(x, weight, bias, y, t * chunk, min(n_tasks, (t + 1) * chunk), groups, sh, sw, pt, pl,
                              hq, wq, cb, offs, kbt, shifted, dw, tap_chunk)


@njit(**JIT_OPTIONS)
def _planes_forward_tasks(x, weight, bias, y, t0, t1, groups, sh, sw, pt, pl, hq, wq, cb, offs, kbt, shifted, dw,
                          tap_chunk):
    """Tasks t0 .. t1-1 of ``_planes_forward_core``, chunk of cb input channels by chunk;
    ``tap_chunk`` taps per ``tap_block`` call (``direct_plan.tap_chunk``)."""
    k_all, cg, kr, ks = weight.shape
    out_h, out_w = y.shape[2], y.shape[3]
    kg = k_all // groups
    nkb = (kg + kbt - 1) // kbt
    rs = kr * ks
    crs = cg * rs
    ps = ks * hq * out_w if shifted else sh * sw * hq * wq
    out_plane = out_h * out_w
    lanes = VECTOR_BYTES // y.itemsize
    seg = TAP_VECTORS * lanes
    # Runs summed straight into y (no tile): planes as wide as the output (column-shifted, or
    # 1x1 read in place) are one run in y's own order; rows of at least one whole block whose
    # last vector wastes no more lanes than a wide row has extra columns are a run each.
    # Shorter rows go through the tile.
    if shifted or wq == out_w:
        runs, run = 1, out_plane
    elif out_w >= seg and (out_w + lanes - 1) // lanes * lanes <= wq:
        runs, run = out_h, out_w
    else:
        runs, run = 0, 0
    length = (out_h - 1) * wq + out_w
    # Unpadded stride-1 planes are read in place: x's channel planes are laid out as copies would be.
    in_place = not shifted and sh == 1 and sw == 1 and pt == 0 and pl == 0 and hq == x.shape[2] and wq == x.shape[3]
    ws = np.zeros(0 if in_place else cb * ps, dtype=x.dtype)      # zero borders, written once
    src = x.reshape(-1) if in_place else ws
    base = 0
    tile_len = _TILE_BLOCKS * seg
    tile = np.empty(TAP_ROWS * tile_len, dtype=y.dtype)
    wf = weight.reshape(-1)
    yf = y.reshape(-1)
    for task in range(t0, t1):
        kb = task % nkb
        grp = (task // nkb) % groups
        n = task // (nkb * groups)
        k0 = grp * kg + kb * kbt
        nk = min(kbt, kg - kb * kbt)
        cc = 0
        while cc < cg:
            ncb = min(cb, cg - cc)
            if in_place:
                base = (n * x.shape[1] + grp * cg + cc) * ps
            elif shifted:
                _copy_shifted(x, n, grp * cg + cc, ncb, ws, hq, out_w, ks, dw, pt, pl)
            else:
                _copy_planes(x, n, grp * cg + cc, ncb, ws, ps, hq, wq, sh, sw, pt, pl)
            ntaps = ncb * rs
            first = cc == 0
            if runs > 0:
                # Runs summed straight into y, seg outputs at a time for every block of
                # channels while the input lines they read are in L1 (see ``runs`` above).
                # A 1x1 filter's taps each read another input plane: one tap chunk at a time
                # for all the blocks of channels (``direct_plan.ONE_BY_ONE_TILE``); other
                # filters every tap per block.
                if rs == 1 and ntaps > tap_chunk:
                    tile_n, span = ONE_BY_ONE_TILE, tap_chunk
                else:
                    tile_n, span = seg, ntaps
                for oh in range(runs):
                    j = 0
                    while j < run:
                        cnt = min(tile_n, run - j)
                        t = 0
                        while t < ntaps:
                            mt = min(span, ntaps - t)
                            kk = 0
                            while kk < nk:
                                nq = _tap_rows(nk - kk)
                                for i in range(j, j + cnt, seg):    # tap_block takes seg outputs at most
                                    _taps(wf, (k0 + kk) * crs + cc * rs, crs, src, base + oh * wq + i, offs, t,
                                          t + mt, yf, (n * k_all + k0 + kk) * out_plane + oh * out_w + i, out_plane,
                                          min(seg, j + cnt - i), bias, k0 + kk, first, nq, tap_chunk)
                                kk += nq
                            t += mt
                        j += cnt
            else:
                j0 = 0
                while j0 < length:
                    m = min(tile_len, length - j0)
                    kk = 0
                    while kk < nk:
                        nq = _tap_rows(nk - kk)
                        y0 = (n * k_all + k0 + kk) * out_plane
                        if not first:
                            _tile_move(tile, tile_len, yf, y0, out_plane, nq, j0, m, wq, out_w, True)
                        j = 0
                        while j < m:
                            cnt = min(seg, m - j)
                            _taps(wf, (k0 + kk) * crs + cc * rs, crs, src, base + j0 + j, offs, 0, ntaps, tile, j,
                                  tile_len, cnt, bias, k0 + kk, first, nq, tap_chunk)
                            j += cnt
                        _tile_move(tile, tile_len, yf, y0, out_plane, nq, j0, m, wq, out_w, False)
                        kk += nq
                    j0 += m
            cc += ncb


def _tap_planes(out_h, out_w, cg, kr, ks, sh, sw, dh, dw):
    """(hq, wq, cb, offs): the phase planes (hq x wq each, sh*sw per channel) that the outputs
    read, the input channels copied at once and their taps' offsets (``direct_plan``)."""
    hq = -(-((out_h - 1) * sh + (kr - 1) * dh + 1) // sh)
    wq = -(-((out_w - 1) * sw + (ks - 1) * dw + 1) // sw)
    ps = sh * sw * hq * wq
    cb = direct_plan.channel_chunk(cg, ps, kr * ks)
    return hq, wq, cb, direct_plan.tap_offsets(cb, kr, ks, dh, dw, sh, sw, hq, wq, ps)


def _run_planes_forward(x, weight, bias, y, groups, sh, sw, pt, pl, dh, dw):
    """Plan (``direct_plan``) and run ``_planes_forward_core``; ``bias`` is never None."""
    n = x.shape[0]
    k, cg, kr, ks = weight.shape
    hq, wq, cb, offs = _tap_planes(y.shape[2], y.shape[3], cg, kr, ks, sh, sw, dh, dw)
    out_w = y.shape[3]
    shifted = direct_plan.shifted_pays(sh, sw, wq, out_w)
    if shifted:
        cb = direct_plan.channel_chunk(cg, ks * hq * out_w, kr * ks)
        offs = direct_plan.shifted_tap_offsets(cb, kr, ks, dh, hq, out_w)
    kbt = direct_plan.task_block(n * groups, k // groups, threads.get_num_threads(), TAP_ROWS)
    n_tasks = n * groups * -(-(k // groups) // kbt)
    use_configured_threads()
    _planes_forward_core(x, weight, bias, y, groups, sh, sw, pt, pl, hq, wq, cb, offs, kbt, shifted, dw,
                         direct_plan.tap_chunk(kr * ks), _chunk(n_tasks))


# ---------------------------------------------------------------- stride 1, no copies
#
# With stride 1 and out_w <= w, an accumulator whose rows are w wide (the input's own row
# width) lines up with the input plane itself: output (oh, ow) of kernel row r and tap s reads
# flat input element t + (r*dil_h - pad_top)*w + s*dil_w - pad_left, t = oh*w + ow. So every
# kernel row is one flat pass over the input plane, restricted to the output rows whose input
# row exists; no padded copy is made. A pass wraps around row ends only in the border columns
# (where some tap falls into the padding), which are then recomputed exactly. When out_w == w
# ("same" convolutions) the accumulator is the output plane itself: no copy-out either.

def _s1_applies(sh, sw, out_w, w):
    return sh == 1 and sw == 1 and out_w <= w


@njit(**PARALLEL_JIT_OPTIONS)
def _s1_forward_core(x, weight, bias, has_bias, y, groups, pt, pl, dh, dw, kblock, band_h, chunk):
    kg = weight.shape[0] // groups
    n_tasks = x.shape[0] * groups * ((kg + kblock - 1) // kblock)
    for t in prange((n_tasks + chunk - 1) // chunk):
        _s1_forward_tasks(x, weight, bias, has_bias, y, t * chunk, min(n_tasks, (t + 1) * chunk),
                          groups, pt, pl, dh, dw, kblock, band_h)


@njit(**JIT_OPTIONS)
def _s1_forward_tasks(x, weight, bias, has_bias, y, t0, t1, groups, pt, pl, dh, dw, kblock, band_h):
    """Tasks t0 .. t1-1, each (image, group, block of output channels), band by band."""
    h, w = x.shape[2], x.shape[3]
    k_all, cg, kr, ks = weight.shape
    out_h, out_w = y.shape[2], y.shape[3]
    kg = k_all // groups
    n_kb = (kg + kblock - 1) // kblock
    in_place = out_w == w
    has_borders = pl > 0 or w + pl - (ks - 1) * dw < out_w
    acc = np.empty((1 if in_place else kblock, band_h * w), dtype=y.dtype)
    for task in range(t0, t1):
        n = task // (groups * n_kb)
        g = (task // n_kb) % groups
        kb = task % n_kb
        k0 = g * kg + kb * kblock
        nk = min(kblock, kg - kb * kblock)
        c0 = g * cg
        for oh0 in range(0, out_h, band_h):
            oh1 = min(out_h, oh0 + band_h)
            length = (oh1 - oh0 - 1) * w + out_w
            for ci in range(cg):
                xf = x[n, c0 + ci].reshape(h * w)
                for j in range(nk):
                    tgt = _s1_target(y, acc, n, k0 + j, j, oh0, length, in_place)
                    _s1_accumulate(tgt, xf, weight[k0 + j, ci], oh0, oh1, h, w, out_w, pt, pl, dh, dw,
                                   ci == 0)
            for j in range(nk):
                k = k0 + j
                tgt = _s1_target(y, acc, n, k, j, oh0, length, in_place)
                if has_borders:
                    _s1_borders(tgt, x, n, c0, weight[k], oh0, oh1, h, w, out_w, pt, pl, dh, dw)
                b = bias[k] if has_bias else bias[0] * 0
                if in_place:
                    if has_bias:
                        for i in range(length):
                            tgt[i] += b
                else:
                    _copy_out(tgt, y[n, k].reshape(out_h * out_w), oh0, oh1 - oh0, w, out_w, b)


@njit(inline="always", **JIT_OPTIONS)
def _copy_out(acc, yf, oh0, rows, w, out_w, b):
    """yf[(oh0 + i)*out_w + j] = acc[i*w + j] + b: the accumulator's rows are w wide.

    Unsigned indices: Numba checks signed ones for wraparound, which costs vectorisation
    (and views per row cost reference counting), and these rows are short.
    """
    uw = np.uint64(w)
    uo = np.uint64(out_w)
    base = np.uint64(oh0) * uo
    for i in range(rows):
        ui = np.uint64(i)
        a0 = ui * uw
        o0 = base + ui * uo
        for j in range(out_w):
            uj = np.uint64(j)
            yf[o0 + uj] = acc[a0 + uj] + b


@njit(inline="always", **JIT_OPTIONS)
def _s1_target(y, acc, n, k, j, oh0, length, in_place):
    """The accumulator of output channel k for the band: y's own rows, or acc row j."""
    if in_place:
        w = y.shape[3]
        return y[n, k].reshape(y.shape[2] * w)[oh0 * w:oh0 * w + length]
    return acc[j, :length]


@njit(**JIT_OPTIONS)
def _s1_accumulate(tgt, xf, wk, oh0, oh1, h, w, out_w, pt, pl, dh, dw, first):
    """tgt (+)= one input plane (*) wk (r, s) for output rows [oh0, oh1) (band-local flat index).

    ``first``: tgt holds garbage and is overwritten (no separate zeroing pass). Elements the
    passes skip are border columns, which ``_s1_borders`` recomputes afterwards.
    """
    kr, ks = wk.shape
    nx = xf.size
    fa = oh0
    fb = oh0
    if kr == 3 and ks == 3:
        # 3x3: all nine taps in one pass over the rows where every kernel row is inside the
        # input: nine loads and one store per output, the accumulator stays in registers.
        fa = min(oh1, max(oh0, pt))
        fb = max(fa, min(oh1, h + pt - 2 * dh))
        if fb > fa:
            base = (oh0 - pt) * w - pl
            a = max((fa - oh0) * w, -base)
            b = min((fb - 1 - oh0) * w + out_w, nx - (base + 2 * dh * w + 2 * dw))
            if b > a:
                _taps9(tgt, a, xf, a + base, wk, dh * w, dw, b - a, first)
    if first:
        # Rows the fused pass did not cover are accumulated kernel row by kernel row.
        for i in range((fa - oh0) * w):
            tgt[i] = 0
        for i in range((fb - oh0) * w, tgt.size):
            tgt[i] = 0
    for r in range(kr):
        for part in range(2):
            # The rows outside [fa, fb): above it, then below it.
            pa = oh0 if part == 0 else fb
            pb = fa if part == 0 else oh1
            ra = max(pa, pt - r * dh)
            rb = min(pb, h + pt - r * dh)
            if ra >= rb:
                continue
            lo = (ra - oh0) * w
            hi = (rb - 1 - oh0) * w + out_w
            base = (oh0 + r * dh - pt) * w - pl
            wrow = wk[r]
            s = 0
            while s < ks:
                m = min(3, ks - s)
                # Keep every read inside the plane; what this trims is border columns only.
                a = max(lo, -(base + s * dw))
                b = min(hi, nx - (base + (s + m - 1) * dw))
                if b > a:
                    _taps_group(tgt, a, xf, a + base + s * dw, wrow, s, m, dw, b - a)
                s += m


@njit(**JIT_OPTIONS)
def _taps9(acc, a0, src, b0, wk, rs, dw, n, assign):
    """acc[a0 + i] (+)= sum_{r,s<3} wk[r, s] * src[b0 + r*rs + s*dw + i] for i < n."""
    out = acc[a0:a0 + n]
    w00, w01, w02 = wk[0, 0], wk[0, 1], wk[0, 2]
    w10, w11, w12 = wk[1, 0], wk[1, 1], wk[1, 2]
    w20, w21, w22 = wk[2, 0], wk[2, 1], wk[2, 2]
    p0 = src[b0:b0 + n + 2 * dw]
    p1 = src[b0 + rs:b0 + rs + n + 2 * dw]
    p2 = src[b0 + 2 * rs:b0 + 2 * rs + n + 2 * dw]
    if dw == 1:
        if assign:
            for i in range(n):
                out[i] = ((w00 * p0[i] + w01 * p0[i + 1] + w02 * p0[i + 2])
                          + (w10 * p1[i] + w11 * p1[i + 1] + w12 * p1[i + 2])
                          + (w20 * p2[i] + w21 * p2[i + 1] + w22 * p2[i + 2]))
        else:
            for i in range(n):
                out[i] += ((w00 * p0[i] + w01 * p0[i + 1] + w02 * p0[i + 2])
                           + (w10 * p1[i] + w11 * p1[i + 1] + w12 * p1[i + 2])
                           + (w20 * p2[i] + w21 * p2[i + 1] + w22 * p2[i + 2]))
    else:
        d2 = 2 * dw
        if assign:
            for i in range(n):
                out[i] = ((w00 * p0[i] + w01 * p0[i + dw] + w02 * p0[i + d2])
                          + (w10 * p1[i] + w11 * p1[i + dw] + w12 * p1[i + d2])
                          + (w20 * p2[i] + w21 * p2[i + dw] + w22 * p2[i + d2]))
        else:
            for i in range(n):
                out[i] += ((w00 * p0[i] + w01 * p0[i + dw] + w02 * p0[i + d2])
                           + (w10 * p1[i] + w11 * p1[i + dw] + w12 * p1[i + d2])
                           + (w20 * p2[i] + w21 * p2[i + dw] + w22 * p2[i + d2]))


@njit(**JIT_OPTIONS)
def _s1_borders(tgt, x, n, c0, wk, oh0, oh1, h, w, out_w, pt, pl, dh, dw):
    """Recompute exactly the output columns where some tap reads padding (the flat passes
    wrapped around the row there): column by column, tap by tap, down the rows with no
    bounds checks. wk is (c/groups, r, s)."""
    cg, kr, ks = wk.shape
    ow_a = min(max(0, pl), out_w)
    ow_b = max(ow_a, min(out_w, w + pl - (ks - 1) * dw))
    if ow_a == 0 and ow_b == out_w:
        return
    for ow in range(out_w):
        if ow_a <= ow < ow_b:
            continue
        for i in range(oh1 - oh0):
            tgt[i * w + ow] = 0
        for ci in range(cg):
            xf = x[n, c0 + ci].reshape(h * w)
            for r in range(kr):
                ra = max(oh0, pt - r * dh)
                rb = min(oh1, h + pt - r * dh)
                for s in range(ks):
                    iw = ow - pl + s * dw
                    if iw < 0 or iw >= w:
                        continue
                    wv = wk[ci, r, s]
                    for oh in range(ra, rb):
                        tgt[(oh - oh0) * w + ow] += wv * xf[(oh - pt + r * dh) * w + iw]


def _run_s1_forward(x, weight, bias, y, groups, pt, pl, dh, dw):
    n, _, _, w = x.shape
    k = weight.shape[0]
    out_h = y.shape[2]
    kg = k // groups
    kblock = 1      # one input channel per group here: nothing for channels to share
    # Accumulators of a band stay in L1 (the input plane streams through once per band).
    band_h = max(1, min(out_h, _BAND_BYTES // (kblock * w * y.itemsize)))
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=y.dtype)
    n_tasks = n * groups * -(-kg // kblock)
    use_configured_threads()
    _s1_forward_core(x, weight, b, has_bias, y, groups, pt, pl, dh, dw, kblock, band_h, _chunk(n_tasks))


# ---------------------------------------------------------------- one input channel, 3x3
#
# Depthwise layers (and channel multipliers: one input channel per group, groups > 1), 3x3,
# stride and dilation 1: each task owns whole output planes. The input plane is copied row
# by row, just before first use, into a zero-bordered buffer (the border is written once per
# buffer: the copied window is the same for every plane), and two output rows are computed
# per pass straight into y with the nine weights in registers. Rows of out_w elements with
# all taps at fixed offsets: no border fix-up, no wide accumulator, no copy-out. The Cython
# twins are ``_plane3x3`` / ``_plane3x3_gw`` in direct.pyx; the sums are formed in the same
# order there.

def _plane3x3_applies(cg, groups, kr, ks, sh, sw, dh, dw):
    # groups > 1: the C = 1 first layers (groups 1) keep the band path, which shares one
    # padded band among all their output channels.
    return cg == 1 and groups > 1 and kr == 3 and ks == 3 and sh == 1 and sw == 1 and dh == 1 and dw == 1


def _plane_gw_applies(cg, kr, ks, sh, sw, dh, dw, checked):
    # Unlike the forward, groups == 1 too: a C = 1 first layer's filters each take r*s dot
    # products over the batch, which vectorise into lane sums in registers here, while the
    # band path keeps its per-tap accumulator rows in memory (MNIST conv1 0.4x, LeNet conv1
    # 0.5x the time). Filters other than 3x3 have only the flat runs, so they come here
    # only when the whole input was ``checked`` finite.
    return cg == 1 and sh == 1 and sw == 1 and dh == 1 and dw == 1 and (checked or (kr == 3 and ks == 3))


@njit(**JIT_OPTIONS)
def _plane_copy_row(xf, h, w, padf, wp, a, pt, pl):
    """Row ``a`` of the zero-bordered buffer ``padf`` (rows of wp) from the flat plane ``xf``
    (h x w, placed at row pt, column pl; negative = cropped)."""
    i = a - pt
    if i < 0 or i >= h:
        return
    j0 = max(0, -pl)
    j1 = min(w, wp - pl)
    if j1 <= j0:
        return
    copy_run(xf, i * w + j0, padf, a * wp + j0 + pl, j1 - j0)


@njit(**JIT_OPTIONS)
def _plane_copy_rows(xf, h, w, padf, wp, filled, end, pt, pl):
    """Rows ``filled`` .. ``end - 1`` of ``padf`` (``_plane_copy_row``); the rows now filled."""
    while filled < end:
        _plane_copy_row(xf, h, w, padf, wp, filled, pt, pl)
        filled += 1
    return filled


@njit(**JIT_OPTIONS)
def _plane3x3(padf, xs, x0, h, w, wk, b, ys, y0, out_h, out_w, pt, pl, ahead):
    """ys[y0:] (out_h x out_w) = b + 3x3 correlation of the plane xs[x0:] (h x w) zero-padded
    by (pt, pl); xs and ys are the flat input and output. ``ahead``: the next task reads the
    next input plane (else the same one).

    ``padf`` is a flat (out_h + 2) x (out_w + 2) buffer whose border is already zero; the
    plane's rows are copied into it ``_COPY_AHEAD`` rows before they are first read.
    STENCIL_ROWS output rows per ``stencil3x3_rows`` pass (``microkernels.py``) share their
    input rows' loads; the sum is formed tap after tap with one FMA per term, as gcc forms
    the Cython twin's. The next input plane and the next output rows are requested a block
    ahead, as the Cython twin's (the hardware prefetchers start over at every plane).
    """
    wp = out_w + 2
    wf = wk.reshape(9)
    plane = h * w
    xf = xs[x0:x0 + plane]
    filled = 0
    oh = 0
    while oh < out_h:
        rows = min(STENCIL_ROWS, out_h - oh)
        filled = _plane_copy_rows(xf, h, w, padf, wp, filled, min(oh + rows + 2 + _COPY_AHEAD, out_h + 2),
                                  pt, pl)
        if ahead:
            prefetch_lines(xs, x0 + plane + oh * plane // out_h, x0 + plane + (oh + rows) * plane // out_h)
        yo = y0 + oh * out_w
        prefetch_lines_for_write(ys, yo + rows * out_w, yo + 2 * rows * out_w)
        if rows == STENCIL_ROWS:
            stencil3x3_rows(wf, 0, padf, oh * wp, wp, ys, yo, out_w, out_w, b, STENCIL_ROWS)
        elif rows == 3:
            stencil3x3_rows(wf, 0, padf, oh * wp, wp, ys, yo, out_w, out_w, b, 3)
        elif rows == 2:
            stencil3x3_rows(wf, 0, padf, oh * wp, wp, ys, yo, out_w, out_w, b, 2)
        else:
            stencil3x3_rows(wf, 0, padf, oh * wp, wp, ys, yo, out_w, out_w, b, 1)
        oh += rows


@njit(**PARALLEL_JIT_OPTIONS)
def _plane3x3_core(x, weight, bias, has_bias, y, groups, pt, pl, chunk):
    """y = x (*) weight (+ bias), one task per (image, output channel), ``chunk`` per iteration."""
    n_tasks = y.shape[0] * y.shape[1]
    for t in prange((n_tasks + chunk - 1) // chunk):
        _plane3x3_tasks(x, weight, bias, has_bias, y, t * chunk, min(n_tasks, (t + 1) * chunk), groups, pt, pl)


@njit(**JIT_OPTIONS)
def _plane3x3_tasks(x, weight, bias, has_bias, y, t0, t1, groups, pt, pl):
    h, w = x.shape[2], x.shape[3]
    k_all = weight.shape[0]
    kg = k_all // groups
    out_h, out_w = y.shape[2], y.shape[3]
    padf = np.zeros((out_h + 2) * (out_w + 2), dtype=x.dtype)
    xs = x.reshape(-1)
    ys = y.reshape(-1)
    for task in range(t0, t1):
        n = task // k_all
        k = task % k_all
        # ``bias`` is a one-element zero array when there is none (same dtype as y).
        b = bias[k] if has_bias else bias[0]
        _plane3x3(padf, xs, (n * x.shape[1] + k // kg) * h * w, h, w, weight[k, 0], b,
                  ys, task * out_h * out_w, out_h, out_w, pt, pl, (k + 1) % kg == 0)


def _run_plane3x3(x, weight, bias, y, groups, pt, pl):
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=y.dtype)
    use_configured_threads()
    _plane3x3_core(x, weight, b, has_bias, y, groups, pt, pl, _chunk(y.shape[0] * y.shape[1]))


@njit(fastmath={"reassoc", "contract"}, **JIT_OPTIONS)
def _plane3x3_gw(gf, padf, xf, h, w, out_h, out_w, pt, pl, sums):
    """sums[t] += sum over the plane of grad_output gf (out_h x out_w, flat) x the input xf
    (h x w, flat, zero-padded by pt, pl) shifted by tap t (3x3, stride 1).

    ``fastmath={"reassoc"}``: the nine dot products may be reordered so that they vectorise
    into lane partial sums; reassociation keeps NaN and Inf intact (``contract``: one FMA per
    term, depthwise grad weight 0.90-0.93x the time). ``padf`` as for ``_plane3x3``; two
    grad_output rows per pass share their input rows.
    """
    wp = out_w + 2
    uwp = np.uint64(wp)
    one = np.uint64(1)
    two = np.uint64(2)
    # Start from sums[] itself: the accumulators keep the kernel's dtype.
    s0, s1, s2 = sums[0], sums[1], sums[2]
    s3, s4, s5 = sums[3], sums[4], sums[5]
    s6, s7, s8 = sums[6], sums[7], sums[8]
    filled = 0
    oh = 0
    while oh + 2 <= out_h:
        filled = _plane_copy_rows(xf, h, w, padf, wp, filled, min(oh + 4 + _COPY_AHEAD, out_h + 2), pt, pl)
        p0 = np.uint64(oh * wp)
        p1 = p0 + uwp
        p2 = p1 + uwp
        p3 = p2 + uwp
        q0 = np.uint64(oh * out_w)
        q1 = q0 + np.uint64(out_w)
        for i in range(out_w):
            ui = np.uint64(i)
            ga = gf[q0 + ui]
            gb = gf[q1 + ui]
            s0 += ga * padf[p0 + ui] + gb * padf[p1 + ui]
            s1 += ga * padf[p0 + ui + one] + gb * padf[p1 + ui + one]
            s2 += ga * padf[p0 + ui + two] + gb * padf[p1 + ui + two]
            s3 += ga * padf[p1 + ui] + gb * padf[p2 + ui]
            s4 += ga * padf[p1 + ui + one] + gb * padf[p2 + ui + one]
            s5 += ga * padf[p1 + ui + two] + gb * padf[p2 + ui + two]
            s6 += ga * padf[p2 + ui] + gb * padf[p3 + ui]
            s7 += ga * padf[p2 + ui + one] + gb * padf[p3 + ui + one]
            s8 += ga * padf[p2 + ui + two] + gb * padf[p3 + ui + two]
        oh += 2
    sums[0], sums[1], sums[2] = s0, s1, s2
    sums[3], sums[4], sums[5] = s3, s4, s5
    sums[6], sums[7], sums[8] = s6, s7, s8
    if oh < out_h:
        # The odd last row: a flat run of out_w outputs (it reads no column past its own row).
        filled = _plane_copy_rows(xf, h, w, padf, wp, filled, out_h + 2, pt, pl)
        _plane3x3_gw_flat(gf[oh * out_w:(oh + 1) * out_w], padf[oh * wp:], out_w, wp, sums)


@njit(**JIT_OPTIONS)
def _widen_rows(src, rows, cols, dst, width):
    """dst[i*width + j] = src[i*cols + j] for i < rows, j < cols (dst's other columns kept)."""
    uc = np.uint64(cols)
    uw = np.uint64(width)
    for i in range(rows):
        ui = np.uint64(i)
        s0 = ui * uc
        d0 = ui * uw
        for j in range(cols):
            uj = np.uint64(j)
            dst[d0 + uj] = src[s0 + uj]


@njit(fastmath={"reassoc", "contract"}, **JIT_OPTIONS)
def _plane3x3_gw_flat(gwf, padf, n, wp, sums):
    """sums[r*3 + s] += sum_{i < n} gwf[i] * padf[i + r*wp + s]: ``_plane3x3_gw`` over the
    whole plane as one run of wide rows (``gwf``: grad_output rows widened to ``wp`` with
    zeros, ``padf`` the zero-bordered input, rows of ``wp``). One long loop vectorises where
    rows of out_w (26 for MNIST) left most of the work to the scalar remainder; a zero
    column meets a neighbouring row's input, so only for finite inputs (0 * inf = NaN).
    ``contract``: one FMA per term (rounding only; 0.93x the time on MNIST conv1)."""
    uwp = np.uint64(wp)
    u2 = np.uint64(2) * uwp
    one = np.uint64(1)
    two = np.uint64(2)
    s0, s1, s2 = sums[0], sums[1], sums[2]
    s3, s4, s5 = sums[3], sums[4], sums[5]
    s6, s7, s8 = sums[6], sums[7], sums[8]
    for i in range(n):
        ui = np.uint64(i)
        g = gwf[ui]
        s0 += g * padf[ui]
        s1 += g * padf[ui + one]
        s2 += g * padf[ui + two]
        s3 += g * padf[ui + uwp]
        s4 += g * padf[ui + uwp + one]
        s5 += g * padf[ui + uwp + two]
        s6 += g * padf[ui + u2]
        s7 += g * padf[ui + u2 + one]
        s8 += g * padf[ui + u2 + two]
    sums[0], sums[1], sums[2] = s0, s1, s2
    sums[3], sums[4], sums[5] = s3, s4, s5
    sums[6], sums[7], sums[8] = s6, s7, s8


@njit(fastmath={"reassoc", "contract"}, **JIT_OPTIONS)
def _dots_flat(gwf, src, n, off, m, sums, t):
    """sums[t + j] += sum_{i < n} gwf[i] * src[off + j + i] for taps j < m (5 or 1) of one
    kernel row: ``_plane3x3_gw_flat`` for filters of other sizes. Five taps per run share
    each grad_output load (LeNet's 5x5: 0.86x the time of 3 + 2); other widths take what
    is left one tap per run."""
    uo = np.uint64(off)
    s0 = sums[t]
    if m == 5:
        one = np.uint64(1)
        two = np.uint64(2)
        three = np.uint64(3)
        four = np.uint64(4)
        s1 = sums[t + 1]
        s2 = sums[t + 2]
        s3 = sums[t + 3]
        s4 = sums[t + 4]
        for i in range(n):
            ui = np.uint64(i) + uo
            g = gwf[np.uint64(i)]
            s0 += g * src[ui]
            s1 += g * src[ui + one]
            s2 += g * src[ui + two]
            s3 += g * src[ui + three]
            s4 += g * src[ui + four]
        sums[t + 1] = s1
        sums[t + 2] = s2
        sums[t + 3] = s3
        sums[t + 4] = s4
    else:
        for i in range(n):
            s0 += gwf[np.uint64(i)] * src[np.uint64(i) + uo]
    sums[t] = s0


@njit(**PARALLEL_JIT_OPTIONS)
def _plane_gw_core(gy, x, gw, groups, pt, pl, checked):
    """One task per filter k: its r*s sums over every image, in image order."""
    for k in prange(gw.shape[0]):
        _plane_gw_task(gy, x, gw, k, groups, pt, pl, checked)


@njit(**JIT_OPTIONS)
def _plane_gw_task(gy, x, gw, k, groups, pt, pl, checked):
    """Filter k (one input channel) of any r x s, stride and dilation 1.

    The dot products run over whole planes of wide rows ("flat") where that is exact: for
    3x3, on "valid" planes found finite here (then the plane is its own padded copy, and
    the check is one pass over it in cache); for other sizes always (``checked``: the
    caller found the whole input finite). Padded 3x3 planes go row by row (``dot_block`` on
    a few rows at a time, each right after its input rows are copied), which measured faster
    there than a padded copy plus a flat run (depthwise 3x3).
    """
    h, w = x.shape[2], x.shape[3]
    kr, ks = gw.shape[2], gw.shape[3]
    kg = gw.shape[0] // groups
    out_h, out_w = gy.shape[2], gy.shape[3]
    wp = out_w + ks - 1
    unpadded = pt == 0 and pl == 0 and w == wp and h == out_h + kr - 1
    three = kr == 3 and ks == 3
    padf = np.zeros((out_h + kr - 1) * wp, dtype=x.dtype)
    # Widened grad_output rows for the flat runs only (padded 3x3 planes never take them).
    gwf = np.zeros(out_h * wp if unpadded or not three else 0, dtype=gy.dtype)
    sums = np.zeros(kr * ks, dtype=np.float64)
    part = np.empty(kr * ks, dtype=gw.dtype)
    n_flat = (out_h - 1) * wp + out_w
    n_lanes = VECTOR_BYTES // gy.itemsize
    lanes = np.empty(9 * n_lanes, dtype=gy.dtype)
    offs = np.empty(9, dtype=np.intp)
    for t in range(9):
        offs[t] = (t // 3) * wp + t % 3
    gyf = gy.reshape(-1)
    xs = x.reshape(-1)
    for n in range(x.shape[0]):
        # Per-image sums in the kernel's dtype (lane partial sums over one plane), added up
        # across images in float64.
        part[:] = 0
        xf = x[n, k // kg].reshape(h * w)
        if three and not (unpadded and (checked or _finite(xf))):
            # The zero-bordered plane, then its nine dot products with grad_output's rows as
            # runs of out_w, the last vector of each masked (LLVM's loop over a 56-wide row
            # left its tail to scalar code).
            lanes[:] = 0
            filled = 0
            oh = 0
            while oh < out_h:
                nr = min(_GW_ROWS, out_h - oh)
                filled = _plane_copy_rows(xf, h, w, padf, wp, filled, min(oh + nr + 2 + _COPY_AHEAD, out_h + 2),
                                          pt, pl)
                if n + 1 < x.shape[0]:
                    # The next image's planes, a share per block, as the Cython twin: 0.77-0.87x
                    # the time on data not in cache, 1.07x on data in L3 (the x plane alone:
                    # 0.94-0.97x and level).
                    g1 = ((n + 1) * gy.shape[1] + k) * out_h * out_w
                    prefetch_lines(gyf, g1 + oh * out_w, g1 + (oh + nr) * out_w)
                    x1 = ((n + 1) * x.shape[1] + k // kg) * h * w
                    prefetch_lines(xs, x1 + oh * h * w // out_h, x1 + (oh + nr) * h * w // out_h)
                dot_block(gyf, ((n * gy.shape[1] + k) * out_h + oh) * out_w, 0, out_w, padf, oh * wp, wp, offs, 9,
                          lanes, 0, 0, out_w, nr, 1)
                oh += nr
            for t in range(9):
                for lane in range(n_lanes):
                    part[t] += lanes[t * n_lanes + lane]
        else:
            _widen_rows(gy[n, k].reshape(out_h * out_w), out_h, out_w, gwf, wp)
            src = xf
            if not unpadded:
                for a in range(out_h + kr - 1):
                    _plane_copy_row(xf, h, w, padf, wp, a, pt, pl)
                src = padf
            if three:
                _plane3x3_gw_flat(gwf, src, n_flat, wp, part)
            else:
                for r in range(kr):
                    s = 0
                    while s < ks:
                        m = 5 if ks - s >= 5 else 1
                        _dots_flat(gwf, src, n_flat, r * wp + s, m, part, r * ks + s)
                        s += m
        for t in range(kr * ks):
            sums[t] += part[t]
    for t in range(kr * ks):
        gw[k, 0, t // ks, t % ks] = sums[t]


@njit(fastmath={"reassoc"}, **JIT_OPTIONS)
def _finite(xf):
    """Whether every element of xf is finite: v - v is 0 for those, NaN for Inf and NaN
    (a sum that vectorises, unlike a loop that stops at the first hit)."""
    s = xf.dtype.type(0)
    for i in range(xf.size):
        s += xf[i] - xf[i]
    return s == 0


# ---------------------------------------------------------------- conv + ReLU + 2x2 max pool
#
# The first layer of the MNIST/LeNet models is a one-input-channel 3x3 convolution followed
# by ReLU and a 2x2 max pool. Fused, each output plane is computed by ``_plane3x3_wide`` into a
# per-task buffer that stays in L1 and pooled from there: the full-size convolution output
# (4x the result) is never written to memory nor read back; where each maximum was is kept
# as a one-byte window code (not max_pool2d's int64 offsets: 8x less to write and read
# back). Backward scatters the masked pooled gradient into an L1 plane and runs
# ``_plane3x3_gw`` on it, so neither the full-size gradient nor the pool's backward pass
# exists either. The Cython twins are ``_conv_relu_pool_*`` in direct.pyx.

@njit(**JIT_OPTIONS)
def _plane3x3_wide(padf, wp, convf, out_h, out_w, wk, b):
    """convf (out_h rows of ``wp``, the last ``wp - out_w`` columns garbage) = b + 3x3
    correlation of the padded plane ``padf`` (rows of ``wp``).

    One contiguous loop over the wide plane instead of out_h short rows (MNIST's 26-pixel
    rows leave a third of each vector pass to scalar remainders). The sum is formed in
    ``_plane3x3``'s order.
    """
    w0, w1, w2 = wk[0, 0], wk[0, 1], wk[0, 2]
    w3, w4, w5 = wk[1, 0], wk[1, 1], wk[1, 2]
    w6, w7, w8 = wk[2, 0], wk[2, 1], wk[2, 2]
    one = np.uint64(1)
    two = np.uint64(2)
    r1 = np.uint64(wp)
    r2 = np.uint64(2 * wp)
    for j in range((out_h - 1) * wp + out_w):
        uj = np.uint64(j)
        v = b + w0 * padf[uj] + w1 * padf[uj + one] + w2 * padf[uj + two]
        v = v + w3 * padf[uj + r1] + w4 * padf[uj + r1 + one] + w5 * padf[uj + r1 + two]
        convf[uj] = v + w6 * padf[uj + r2] + w7 * padf[uj + r2 + one] + w8 * padf[uj + r2 + two]


@njit(**PARALLEL_JIT_OPTIONS)
def _conv_relu_pool_core(x, weight, bias, has_bias, y, codes, groups, pt, pl, out_h, out_w, chunk):
    """One task per (image, group), ``chunk`` per iteration: its output planes, pooled as they
    are made; y and codes are (n * k, rows, cols) views."""
    n_tasks = x.shape[0] * groups
    for t in prange((n_tasks + chunk - 1) // chunk):
        _conv_relu_pool_tasks(x, weight, bias, has_bias, y, codes, t * chunk, min(n_tasks, (t + 1) * chunk),
                              groups, pt, pl, out_h, out_w)


@njit(**JIT_OPTIONS)
def _conv_relu_pool_tasks(x, weight, bias, has_bias, y, codes, t0, t1, groups, pt, pl, out_h, out_w):
    k_all = weight.shape[0]
    kg = k_all // groups
    wp = out_w + 2
    padf = np.zeros((out_h + 2) * wp, dtype=x.dtype)
    conv = np.empty((1, out_h, wp), dtype=x.dtype)
    convf = conv.reshape(out_h * wp)
    valid = conv[:, :, :out_w]  # what the pool reads: indices count in rows of out_w
    ph, pw = y.shape[1], y.shape[2]
    idx = np.empty((1, ph, pw), dtype=np.int64)
    for task in range(t0, t1):
        n = task // groups
        grp = task % groups
        _conv_relu_pool_task(x, weight, bias, has_bias, y, codes, n, grp, kg, padf, wp, convf, valid, idx,
                             pt, pl, out_h, out_w)


@njit(**JIT_OPTIONS)
def _conv_relu_pool_task(x, weight, bias, has_bias, y, codes, n, grp, kg, padf, wp, convf, valid, idx,
                         pt, pl, out_h, out_w):
    h, w = x.shape[2], x.shape[3]
    k_all = weight.shape[0]
    xf = x[n, grp].reshape(h * w)
    for a in range(out_h + 2):
        _plane_copy_row(xf, h, w, padf, wp, a, pt, pl)
    ph, pw = y.shape[1], y.shape[2]
    for k in range(grp * kg, (grp + 1) * kg):
        b = bias[k] if has_bias else bias[0]
        _plane3x3_wide(padf, wp, convf, out_h, out_w, weight[k, 0], b)
        q = n * k_all + k
        _max2x2_plane_idx(valid, y[q:q + 1], idx, 0)
        yq, cq = y[q], codes[q]
        for i in range(ph):
            for j in range(pw):
                v = yq[i, j]
                # np.maximum(v, 0): NaN stays NaN (as the unfused ReLU).
                yq[i, j] = v if (v >= 0) | (v != v) else 0
                # The offset in the window, 0, 1, out_w or out_w + 1, as a code 0-3.
                r = idx[0, i, j] - 2 * (i * out_w + j)
                below = r >= out_w
                cq[i, j] = np.uint8(2 * below + r - below * out_w)


@njit(**PARALLEL_JIT_OPTIONS)
def _conv_relu_pool_gw_core(gy, y, codes, x, gw, gb, groups, pt, pl, out_h, out_w):
    """One task per filter k: its nine sums and its bias sum over every image, in image order."""
    for k in prange(gw.shape[0]):
        _conv_relu_pool_gw_task(gy, y, codes, x, gw, gb, k, groups, pt, pl, out_h, out_w)


@njit(fastmath={"reassoc"}, **JIT_OPTIONS)
def _plane_sum(plane):
    """Sum of a flat plane in its dtype (reordered into vector lanes; NaN/Inf kept)."""
    total = plane.dtype.type(0)
    for i in range(plane.shape[0]):
        total += plane[i]
    return total


@njit(**JIT_OPTIONS)
def _conv_relu_pool_gw_task(gy, y, codes, x, gw, gb, k, groups, pt, pl, out_h, out_w):
    h, w = x.shape[2], x.shape[3]
    kg = gw.shape[0] // groups
    padf = np.zeros((out_h + 2) * (out_w + 2), dtype=x.dtype)
    plane = np.zeros(out_h * out_w, dtype=x.dtype)  # the full-size gradient, one plane at a time
    sums = np.zeros(9, dtype=np.float64)
    part = np.empty(9, dtype=gw.dtype)
    bsum = 0.0
    zero = plane.dtype.type(0)
    for n in range(x.shape[0]):
        g2, y2, c2 = gy[n, k], y[n, k], codes[n, k]
        for i in range(g2.shape[0]):
            for j in range(g2.shape[1]):
                c = c2[i, j]
                # The ReLU's mask, read from the pooled output: a select, not a branch
                # (on real data y > 0 is a coin flip).
                plane[2 * (i * out_w + j) + (c >> 1) * out_w + (c & 1)] = g2[i, j] if y2[i, j] > 0 else zero
        part[:] = 0
        _plane3x3_gw(plane, padf, x[n, k // kg].reshape(h * w), h, w, out_h, out_w, pt, pl, part)
        for t in range(9):
            sums[t] += part[t]
        bsum += _plane_sum(plane)
        plane[:] = 0
    for t in range(9):
        gw[k, 0, t // 3, t % 3] = sums[t]
    gb[k] = bsum


def conv2d_relu_max_pool2d_forward(x, weight, bias, y, codes, p):
    """y (n, k, out_h // 2, out_w // 2) = relu(2x2 max pool of conv2d(x, weight, bias)).

    ``codes`` (uint8, like y): where each window's maximum is, 0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right (``max_pool2d``'s rule: the first maximum, a NaN wins).
    One input channel per group, 3x3, stride and dilation 1 (``fastconv.fused.fuses``);
    float32 or float64, C-contiguous.
    """
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=y.dtype)
    use_configured_threads()
    # (n * k, rows, cols) views: plane q = n * k + k_index, as the pooling kernels take them.
    _conv_relu_pool_core(x, weight, b, has_bias, y.reshape(-1, y.shape[2], y.shape[3]),
                         codes.reshape(-1, y.shape[2], y.shape[3]), p.groups, p.pad_top,
                         p.pad_left, p.out_h, p.out_w, _chunk(p.n * p.groups))


def conv2d_relu_max_pool2d_grad_weight(grad_output, output, codes, x, grad_weight, grad_bias, p):
    """grad_weight (k, 1, 3, 3) and grad_bias (k,) of ``conv2d_relu_max_pool2d_forward`` from
    the pooled grad_output, its output (the ReLU's mask ``output > 0``) and window codes
    (uint8, each < 4)."""
    gb = grad_bias if grad_bias is not None else np.empty(grad_weight.shape[0], dtype=np.float64)
    use_configured_threads()
    _conv_relu_pool_gw_core(grad_output, output, codes, x, grad_weight, gb, p.groups,
                            p.pad_top, p.pad_left, p.out_h, p.out_w)


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
        # The plane path multiplies the zero border of grad_output by the weights: exact for
        # finite weights, but 0 * inf = NaN where the scatter (and PyTorch) has none.
        _run_forward(grad_output, flipped, None, grad_input, g, 1, 1,
                     p.dil_h * (p.r - 1) - p.pad_top, p.dil_w * (p.s - 1) - p.pad_left, p.dil_h, p.dil_w,
                     plane_ok=bool(np.isfinite(weight).all()))
        return
    use_configured_threads()
    if stride_phases.applies(p, weight):
        # The stride-1 gather per phase of the input (``kernels/stride_phases.py``), as Cython.
        # Imported here: the Winograd module's import takes ~80 ms, which no other direct call needs.
        from .winograd import _merge_phases

        stride_phases.grad_input(conv2d_forward, _merge_phases, grad_output, weight, grad_input, p,
                                 threads.numba_threads())
        return
    _grad_input_scatter(grad_output, weight, grad_input, p.groups, p.stride_h, p.stride_w,
                        p.pad_top, p.pad_left, p.dil_h, p.dil_w)


@njit(**PARALLEL_JIT_OPTIONS)
def _grad_input_scatter(gy, weight, gx, groups, sh, sw, pt, pl, dh, dw):
    """Strided grad_input: each (image, input channel) task scatters into its own padded plane."""
    for task in prange(gx.shape[0] * gx.shape[1]):
        _grad_input_task(gy, weight, gx, task, groups, sh, sw, pt, pl, dh, dw)


@njit(**JIT_OPTIONS)
def _grad_input_task(gy, weight, gx, task, groups, sh, sw, pt, pl, dh, dw):
    _, c_all, h, w = gx.shape
    out_h, out_w = gy.shape[2], gy.shape[3]
    k_all, cg, kr, ks = weight.shape
    kg = k_all // groups
    hp = max((out_h - 1) * sh + (kr - 1) * dh + 1, pt + h)
    wp = max((out_w - 1) * sw + (ks - 1) * dw + 1, pl + w)
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
                    _scatter_row(plane, base + s * dw, sw, weight[k, ci, r, s], row)
    out = gx[n, c]
    for ih in range(h):
        src = plane[(ih + pt) * wp + pl:(ih + pt) * wp + pl + w]
        dst = out[ih]
        for iw in range(w):
            dst[iw] = src[iw]


@njit(**JIT_OPTIONS)
def _scatter_row(plane, o, sw, wv, row):
    """plane[o + i*sw] += wv * row[i]."""
    dst = plane[o:]
    if sw == 2:
        for i in range(row.size):
            dst[2 * i] += wv * row[i]
    else:
        for i in range(row.size):
            dst[i * sw] += wv * row[i]


def conv2d_grad_weight(grad_output, x, grad_weight, p):
    """grad_weight (k, c/groups, r, s) = sum over batch and pixels of grad_output x shifted input."""
    sh, sw, dh, dw = p.stride_h, p.stride_w, p.dil_h, p.dil_w
    # One input and one output channel per group (depthwise), stride and dilation 1: the
    # plane path's dot products in registers. 3x3 checks its planes itself; other filter
    # sizes take its flat runs on finite inputs only.
    if p.c_per_group == 1 and p.k_per_group == 1:
        checked = (p.r, p.s) != (3, 3) and bool(_finite(x.reshape(-1)))
        if _plane_gw_applies(p.c_per_group, p.r, p.s, sh, sw, dh, dw, checked):
            use_configured_threads()
            _plane_gw_core(grad_output, x, grad_weight, p.groups, p.pad_top, p.pad_left, checked)
            return
    _run_dots_gw(grad_output, x, grad_weight, p)


# ---------------------------------------------------------------- grad_weight on dot_block
#
# Every layer but the depthwise ones on the plane path: tasks of (group, block of filters,
# batch chunk) as in the Cython twin (``_grad_weight_task``). A task copies each image's
# input planes (a channel chunk at a time, with zero padding, phase-split when strided: the
# forward's tap planes) once for all its filters and runs ``dot_block``
# (``microkernels.py``): up to DOT_ROWS filters x DOT_TAPS taps of lane sums in registers
# over a span of positions, added up in a fixed order at the end.

#: Filters per grad_weight task: they share its copies of the input planes.
_DOTS_FILTERS = 8
#: Positions per ``dot_block`` call of the weight gradient (as FC_DOT_SPAN in the Cython twin).
_DOT_SPAN = 512


def _batch_chunks(n, groups, kg, kbt, weight_elems):
    """How many batch chunks grad_weight sums separately (then adds in order): a function of
    the shape only, never of the thread count, so results are reproducible; enough tasks for
    a few threads, bounded partial buffers (the Cython twin's rule)."""
    units = groups * -(-kg // kbt)
    nc = max(1, min(n, -(-16 // units)))
    while nc > 1 and nc * weight_elems > (1 << 22):
        nc //= 2
    return nc


@njit(**JIT_OPTIONS)
def _filter_block(left):
    """Filters for the next ``dot_block``: DOT_ROWS, but 5 and 6 go as 3 + 2 and 3 + 3 (two
    filters' six sums are too few chains for the FMA latency; as in the Cython twin)."""
    if left == 5 or left == 6:
        return 3
    return min(left, DOT_ROWS)


@njit(**PARALLEL_JIT_OPTIONS)
def _dots_gw_core(gy, x, part, groups, sh, sw, pt, pl, hq, wq, cb, offs, kbt, nc, wide):
    """part[chunk, k] = filter k's gradient over the batch chunk's images."""
    kg = part.shape[1] // groups
    n_tasks = groups * ((kg + kbt - 1) // kbt) * nc
    for task in prange(n_tasks):
        _dots_gw_task(gy, x, part, task, groups, sh, sw, pt, pl, hq, wq, cb, offs, kbt, nc, wide)


@njit(**JIT_OPTIONS)
def _dots_gw_task(gy, x, part, task, groups, sh, sw, pt, pl, hq, wq, cb, offs, kbt, nc, wide):
    """Group, block of kbt filters, batch chunk: every (filter, tap) dot product over the
    chunk's images, as ``dot_block`` lane sums over the copied tap planes of a channel chunk
    (see ``_planes_forward_tasks``), then the lanes added in a fixed order."""
    n_all, k_all, out_h, out_w = gy.shape
    kg = k_all // groups
    nkb = (kg + kbt - 1) // kbt
    cg, kr, ks = part.shape[2], part.shape[3], part.shape[4]
    rs = kr * ks
    crs = cg * rs
    ps = sh * sw * hq * wq
    nci = task % nc
    kb = (task // nc) % nkb
    grp = task // (nc * nkb)
    n0, n1 = nci * n_all // nc, (nci + 1) * n_all // nc
    k0 = grp * kg + kb * kbt
    nk = min(kbt, kg - kb * kbt)
    lanes_n = VECTOR_BYTES // gy.itemsize
    in_place = sh == 1 and sw == 1 and pt == 0 and pl == 0 and hq == x.shape[2] and wq == x.shape[3]
    ws = np.zeros(0 if in_place else cb * ps, dtype=x.dtype)      # zero borders, written once
    src = x.reshape(-1) if in_place else ws
    base = 0
    lanes = np.zeros(nk * crs * lanes_n, dtype=gy.dtype)
    gyf = gy.reshape(-1)
    gplane = out_h * wq
    gws = np.zeros(nk * gplane if wide else 0, dtype=gy.dtype)     # zero extra columns, written once
    length = (out_h - 1) * wq + out_w
    span_rows = max(1, _DOT_SPAN // out_w)
    for n in range(n0, n1):
        if wide:
            for q in range(nk):
                for oh in range(out_h):
                    copy_run(gyf, ((n * k_all + k0 + q) * out_h + oh) * out_w, gws, q * gplane + oh * wq, out_w)
        cc = 0
        while cc < cg:
            ncb = min(cb, cg - cc)
            if in_place:
                base = (n * x.shape[1] + grp * cg + cc) * ps
            else:
                _copy_planes(x, n, grp * cg + cc, ncb, ws, ps, hq, wq, sh, sw, pt, pl)
            q = 0
            while q < nk:
                nq = _filter_block(nk - q)
                li = (q * crs + cc * rs) * lanes_n
                # Spans of about _DOT_SPAN positions: their grad_output and input lines stay
                # in L1 for all the groups of taps.
                if wide:
                    i0 = 0
                    while i0 < length:
                        m = min(_DOT_SPAN, length - i0)
                        dot_block(gws, q * gplane + i0, gplane, 0, src, base + i0, 0, offs, ncb * rs, lanes, li,
                                  crs * lanes_n, m, 1, nq)
                        i0 += m
                else:
                    # One run per output row: its last vector masked, so no position pairs a
                    # zero with an input value (exact for Inf/NaN inputs).
                    r0 = 0
                    while r0 < out_h:
                        nr = min(span_rows, out_h - r0)
                        dot_block(gyf, ((n * k_all + k0 + q) * out_h + r0) * out_w, out_h * out_w, out_w, src,
                                  base + r0 * wq, wq, offs, ncb * rs, lanes, li, crs * lanes_n, out_w, nr, nq)
                        r0 += nr
                q += nq
            cc += ncb
    for q in range(nk):
        for t in range(crs):
            at = (q * crs + t) * lanes_n
            total = lanes[at]
            for l in range(1, lanes_n):     # a fixed order: the same sum for any thread count
                total += lanes[at + l]
            part[nci, k0 + q, t // rs, (t // ks) % kr, t % ks] = total


def _run_dots_gw(grad_output, x, grad_weight, p):
    sh, sw, dh, dw = p.stride_h, p.stride_w, p.dil_h, p.dil_w
    hq, wq, cb, offs = _tap_planes(p.out_h, p.out_w, p.c_per_group, p.r, p.s, sh, sw, dh, dw)
    kbt = min(_DOTS_FILTERS, p.k_per_group)
    nc = _batch_chunks(p.n, p.groups, p.k_per_group, kbt, grad_weight.size)
    part = np.empty((nc,) + grad_weight.shape, dtype=grad_weight.dtype)
    use_configured_threads()
    # One run per plane instead of one per row where rows end in a part-filled vector and the
    # plane takes no more vectors (MNIST conv1 0.94x, LeNet conv1 0.80x, ResNet 64@56 0.90x
    # the time; CIFAR conv1's 32-wide rows fill their vectors, and 1.26x as one run). The
    # run pairs grad_output's zero extra columns with input values: finite inputs only.
    lanes = VECTOR_BYTES // grad_output.itemsize
    length = (p.out_h - 1) * wq + p.out_w
    wide = (wq != p.out_w and p.out_w % lanes != 0 and -(-length // lanes) <= p.out_h * -(-p.out_w // lanes)
            and bool(_finite(x.reshape(-1))))
    _dots_gw_core(grad_output, x, part, p.groups, sh, sw, p.pad_top, p.pad_left, hq, wq, cb, offs, kbt, nc, wide)
    total = part[0].copy()
    for i in range(1, nc):     # a fixed order: reproducible
        total += part[i]
    grad_weight[...] = total


def conv2d_grad_bias(grad_output, grad_bias, p):
    """grad_bias (k,) = grad_output (n, k, out_h, out_w) summed over batch and pixels."""
    use_configured_threads()
    _grad_bias_core(grad_output.reshape(p.n, p.k, p.out_h * p.out_w), grad_bias)


@njit(**PARALLEL_JIT_OPTIONS)
def _grad_bias_core(gy, gb):
    for k in prange(gy.shape[1]):
        _grad_bias_task(gy, gb, k)


@njit(**JIT_OPTIONS)
def _grad_bias_task(gy, gb, k):
    """Add the planes element-wise (vectorises), then sum that row in float64."""
    n_img, _, m = gy.shape
    acc = np.zeros(m, dtype=np.float64)
    for n in range(n_img):
        src = gy[n, k]
        for i in range(m):
            acc[i] += src[i]
    total = 0.0
    for i in range(m):
        total += acc[i]
    gb[k] = total
