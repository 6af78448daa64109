"""Max and average pooling kernels in Numba, forward and backward (PyTorch semantics).

Parallel tasks are chunks of whole (image, channel) planes: planes are independent, so
backward scatters (overlapping windows included) never race, and every element is computed
in a fixed order whatever the thread count. A prange body is one call on a chunk of planes
(Numba optimises a plain function far better than an inlined parallel body, and per-call
costs are paid once per chunk).

Max pooling: padding is never a candidate (windows are clipped to the input); within a
window ``v > best`` keeps the first maximum in row-major order and a NaN always replaces the
current best, so the last NaN gives the index and NaN propagates. Indices are flat offsets
into each H*W plane, as PyTorch returns them. 2x2 windows with stride 2 and no padding have
their own path; all others are reduced row segments first, then down the window rows.

Average pooling sums a window's rows element-wise (vectorised), then each output's columns,
in float64; ``count_include_pad`` picks the divisor (window size, or the number of real
elements in the clipped window). Global average pooling (window = plane, no padding) sums
each flat plane with lane-wise partial sums and fills the plane directly in backward.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import threads
from ._runtime import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, use_configured_threads
from .microkernels import avg2x2_row, spread_pairs

_NO_INDICES = np.zeros((1, 1, 1), dtype=np.int64)


def _planes(a, rows, cols):
    """View (n, c, rows, cols) as (n*c, rows, cols): no copy for C-contiguous arrays."""
    return a.reshape(-1, rows, cols)


def _plane_chunks(planes):
    """Planes per task: a few tasks per thread, so per-task workspaces are allocated rarely."""
    return max(1, planes // (8 * threads.get_num_threads()))


# ---------------------------------------------------------------- max pooling
#
# The window order (row-major; a candidate wins if it is greater or NaN) makes "combine" an
# associative operation, so a window can be reduced row segment by row segment: first every
# input row's horizontal window segments, then those per-row winners down the window rows.
# Both steps are element-wise passes over output columns that LLVM vectorises, provided
# they are branch-free selects that store into a DIFFERENT buffer than they read: an
# in-place ``a[t] = v if m else a[t]`` becomes a masked store, which is slow on AMD cores.
# Data-dependent branches would mispredict about half the time on real data (measured
# 40 ns per output against 3 ns branch-free).

def max_pool2d_forward(x, y, indices, p):
    """y (n, c, out_h, out_w) = window maxima of x (n, c, h, w); indices (int64, like y) or None.

    float32 or float64; NaN wins over numbers, ties keep the first maximum (row-major).
    """
    xs = _planes(x, p.h, p.w)
    ys = _planes(y, p.out_h, p.out_w)
    want = indices is not None
    use_configured_threads()
    if (p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w) == (2, 2, 2, 2, 0, 0):
        idx = _planes(indices, p.out_h, p.out_w) if want else _NO_INDICES
        _max2x2_forward(xs, ys, idx, want, _plane_chunks(xs.shape[0]))
    elif p.h * p.w >= 2 ** 31:
        # The separable path tracks indices in int32 scratch; planes this large (8 GiB of
        # float32 each) go to the NumPy oracle rather than overflow.
        from ... import reference

        reference.max_pool2d_forward(x, y, indices, p)
    else:
        # Indices are tracked in int32 scratch and written out only when asked for.
        idx = _planes(indices, p.out_h, p.out_w) if want else np.empty((1, p.out_h, p.out_w), np.int64)
        _max_forward(xs, ys, idx, want, _plane_chunks(xs.shape[0]), p.kernel_h, p.kernel_w,
                     p.stride_h, p.stride_w, p.pad_h, p.pad_w)


@njit(**PARALLEL_JIT_OPTIONS)
def _max2x2_forward(x, y, idx, want, chunk):
    """2x2 windows, stride 2, no padding: four candidates per output, no clipping."""
    planes = x.shape[0]
    for t in prange((planes + chunk - 1) // chunk):
        # The body of every prange here is one call on a chunk of planes: Numba optimises a
        # plain function far better than an inlined parallel loop body (measured 10x on this
        # loop), and per-call costs (array views are reference counted) are paid per chunk.
        q0 = t * chunk
        q1 = min(planes, q0 + chunk)
        for q in range(q0, q1):
            if want:
                _max2x2_plane_idx(x, y, idx, q)
            else:
                _max2x2_plane(x, y, q)


@njit(**JIT_OPTIONS)
def _max2x2_plane(x, y, q):
    out_h, out_w = y.shape[1], y.shape[2]
    for oh in range(out_h):
        r0 = x[q, 2 * oh]
        r1 = x[q, 2 * oh + 1]
        yr = y[q, oh]
        for ow in range(out_w):
            best = r0[2 * ow]
            v = r0[2 * ow + 1]
            best = v if (v > best) | (v != v) else best
            v = r1[2 * ow]
            best = v if (v > best) | (v != v) else best
            v = r1[2 * ow + 1]
            best = v if (v > best) | (v != v) else best
            yr[ow] = best


@njit(**JIT_OPTIONS)
def _max2x2_plane_idx(x, y, idx, q):
    """The maximum first (branch-free selects), then its position by arithmetic on equalities.

    A number maximum sits at the first window element equal to it (-0.0 == 0.0 is the same
    tie the scan made); a NaN maximum at the last NaN, found by the rare branch below.
    """
    w = x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    for oh in range(out_h):
        r0 = x[q, 2 * oh]
        r1 = x[q, 2 * oh + 1]
        yr = y[q, oh]
        ir = idx[q, oh]
        base = 2 * oh * w
        for ow in range(out_w):
            j = 2 * ow
            a = r0[j]
            b = r0[j + 1]
            c = r1[j]
            d = r1[j + 1]
            best = a
            best = b if (b > best) | (b != b) else best
            best = c if (c > best) | (c != c) else best
            best = d if (d > best) | (d != d) else best
            yr[ow] = best
            if best == best:
                ea = np.int64(a != best)
                eb = np.int64(b != best)
                ec = np.int64(c != best)
                ir[ow] = base + j + ea * (1 + eb * (w - 1 + ec))
            elif d != d:
                ir[ow] = base + j + w + 1
            elif c != c:
                ir[ow] = base + j + w
            elif b != b:
                ir[ow] = base + j + 1
            else:
                ir[ow] = base + j


@njit(**PARALLEL_JIT_OPTIONS)
def _max_forward(x, y, idx, want, chunk, kh, kw, sh, sw, ph, pw):
    """Any window, stride and padding; each task reduces a chunk of planes."""
    planes = x.shape[0]
    for t in prange((planes + chunk - 1) // chunk):
        _max_planes(x, y, idx, want, t * chunk, min(planes, (t + 1) * chunk), kh, kw, sh, sw, ph, pw)


@njit(**JIT_OPTIONS)
def _max_planes(x, y, idx, want, q0, q1, kh, kw, sh, sw, ph, pw):
    h, w = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    # Per input row: the winner of every output column's window segment and its flat index.
    hv = np.empty((h, out_w), dtype=x.dtype)
    hi = np.empty((h, out_w), dtype=np.int32)
    tv = np.empty((2, out_w), dtype=x.dtype)
    ti = np.empty((2, out_w), dtype=np.int32)
    ev = np.empty(out_w + 1, dtype=x.dtype)
    od = np.empty(out_w + 1, dtype=x.dtype)
    for q in range(q0, q1):
        plane = x[q]
        for i in range(h):
            _row_segments(plane[i], hv[i], hi[i], i * w, kw, sw, pw, ev, od)
        for oh in range(out_h):
            i0 = oh * sh - ph
            i_lo = max(i0, 0)
            i_hi = min(i0 + kh, h)
            # Window rows in order, ping-ponging between two scratch rows (fresh stores).
            src_v = hv[i_lo]
            src_i = hi[i_lo]
            cur = 0
            for i in range(i_lo + 1, i_hi):
                _combine(src_v, src_i, hv[i], hi[i], tv[cur], ti[cur])
                src_v = tv[cur]
                src_i = ti[cur]
                cur = 1 - cur
            yr = y[q, oh]
            for t in range(out_w):
                yr[t] = src_v[t]
            if want:
                ir = idx[q, oh]
                for t in range(out_w):
                    ir[t] = src_i[t]


@njit(inline="always", **JIT_OPTIONS)
def _pick(m, b, a):
    """``b if m else a`` for int32 by bit masking: LLVM vectorises this form well, while the
    equivalent select of integers compiled to scalar code (measured 5x slower)."""
    mask = -np.int32(m)
    return a ^ ((a ^ b) & mask)


@njit(inline="always", **JIT_OPTIONS)
def _combine(av, ai, bv, bi, ov, oi):
    """(ov, oi) = a, unless b wins (b > a, or b is NaN); b comes later in window order."""
    for t in range(ov.size):
        a = av[t]
        b = bv[t]
        ia = ai[t]  # loaded unconditionally: a load inside the select would need a masked load
        ib = bi[t]
        m = (b > a) | (b != b)
        ov[t] = b if m else a
        oi[t] = _pick(m, ib, ia)


@njit(inline="always", **JIT_OPTIONS)
def _row_segments(row, vo, io, base, kw, sw, pw, ev, od):
    """vo[ow], io[ow] = winner of row[ow*sw - pw : ow*sw - pw + kw] (clipped) and its base + column."""
    w = row.size
    out_w = vo.size
    # Output columns whose segment lies fully inside the row: no clipping there.
    lo = min(out_w, (pw + sw - 1) // sw)
    hi = max(lo, min(out_w, (w - kw + pw) // sw + 1))
    for ow in range(lo):
        _segment_clipped(row, vo, io, base, ow, kw, sw, pw)
    for ow in range(hi, out_w):
        _segment_clipped(row, vo, io, base, ow, kw, sw, pw)
    if hi == lo:
        return
    a = lo * sw - pw
    r = row[a:]
    v = vo[lo:hi]
    ix = io[lo:hi]
    n = hi - lo
    b0 = np.int32(base + a)  # int32 index lanes: twice as many per vector as int64
    # Constant strides let LLVM vectorise (interleaved loads); the general loop does not.
    if kw == 3 and sw == 2:
        # Split the row into even and odd columns first: three unit-stride loads per output
        # beat three stride-2 loads (measured 2-3x).
        for k in range(n):
            ev[k] = r[2 * k]
            od[k] = r[2 * k + 1]
        ev[n] = r[2 * n]
        for t in range(n):
            best = ev[t]
            c = od[t]
            m = (c > best) | (c != c)
            best = c if m else best
            bi = np.int32(m)
            c = ev[t + 1]
            m = (c > best) | (c != c)
            best = c if m else best
            bi = _pick(m, np.int32(2), bi)
            v[t] = best
            ix[t] = b0 + np.int32(2 * t) + bi
    elif kw == 3 and sw == 1:
        for t in range(n):
            best = r[t]
            bi = b0 + np.int32(t)
            c = r[t + 1]
            m = (c > best) | (c != c)
            best = c if m else best
            bi = bi + np.int32(m)
            c = r[t + 2]
            m = (c > best) | (c != c)
            best = c if m else best
            bi = _pick(m, b0 + np.int32(t + 2), bi)
            v[t] = best
            ix[t] = bi
    elif kw == 2 and sw == 1:
        for t in range(n):
            best = r[t]
            c = r[t + 1]
            m = (c > best) | (c != c)
            v[t] = c if m else best
            ix[t] = b0 + np.int32(t) + np.int32(m)
    else:
        for t in range(n):
            j = t * sw
            best = r[j]
            bi = b0 + np.int32(j)
            for dj in range(1, kw):
                c = r[j + dj]
                m = (c > best) | (c != c)
                best = c if m else best
                bi = _pick(m, b0 + np.int32(j + dj), bi)
            v[t] = best
            ix[t] = bi


@njit(inline="always", **JIT_OPTIONS)
def _segment_clipped(row, vo, io, base, ow, kw, sw, pw):
    j0 = ow * sw - pw
    j_lo = max(j0, 0)
    j_hi = min(j0 + kw, row.size)
    best = row[j_lo]
    bi = j_lo
    for j in range(j_lo + 1, j_hi):
        c = row[j]
        if c > best or c != c:
            best = c
            bi = j
    vo[ow] = best
    io[ow] = base + bi


def max_pool2d_backward(grad_output, indices, grad_input, p) -> int:
    """grad_input (n, c, h, w): grad_output (n, c, out_h, out_w) added at each window's argmax.

    ``indices`` (int64, like grad_output) are flat offsets into each H*W plane; overlapping
    windows (stride < window) accumulate. Returns the number of indices outside the plane,
    which are skipped (checked here, where every index is read anyway).
    """
    use_configured_threads()
    gys = grad_output.reshape(-1, p.out_h * p.out_w)
    return _max_backward(gys, indices.reshape(-1, p.out_h * p.out_w), grad_input.reshape(-1, p.h * p.w),
                         _plane_chunks(gys.shape[0]))


@njit(**PARALLEL_JIT_OPTIONS)
def _max_backward(gy, idx, gx, chunk):
    planes = gy.shape[0]
    bad = 0
    for t in prange((planes + chunk - 1) // chunk):
        bad += _max_backward_planes(gy, idx, gx, t * chunk, min(planes, (t + 1) * chunk))
    return bad


@njit(**JIT_OPTIONS)
def _max_backward_planes(gy, idx, gx, q0, q1):
    """Zero each plane, then add every grad_output value at its argmax (in output order);
    returns how many indices lie outside the plane (skipped)."""
    bad = 0
    n = gx.shape[1]
    for q in range(q0, q1):
        gx[q, :] = 0
        for o in range(gy.shape[1]):
            i = idx[q, o]
            if 0 <= i < n:
                gx[q, i] += gy[q, o]
            else:
                bad += 1
    return bad


# ---------------------------------------------------------------- average pooling

def avg_pool2d_forward(x, y, p):
    """y (n, c, out_h, out_w) = window means of x (n, c, h, w) (float32 or float64)."""
    use_configured_threads()
    if (p.kernel_h, p.kernel_w, p.pad_h, p.pad_w) == (p.h, p.w, 0, 0):
        # Global average pooling: one flat sum per plane.
        flat = x.reshape(-1, p.h * p.w)
        if threads.numba_threads() == 1:
            _global_avg_serial(flat, y.reshape(-1))
        else:
            _global_avg_forward(flat, y.reshape(-1), _plane_chunks(flat.shape[0]))
        return
    xs = _planes(x, p.h, p.w)
    _avg_forward(xs, _planes(y, p.out_h, p.out_w), _plane_chunks(xs.shape[0]), p.disjoint_2x2, p.kernel_h,
                 p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.count_include_pad)


@njit(**PARALLEL_JIT_OPTIONS)
def _avg_forward(x, y, chunk, fast, kh, kw, sh, sw, ph, pw, include_pad):
    """``fast``: PoolParams.disjoint_2x2 (the 2x2/stride-2 path applies)."""
    planes = x.shape[0]
    for t in prange((planes + chunk - 1) // chunk):
        q0 = t * chunk
        q1 = min(planes, q0 + chunk)
        if fast:
            _avg2x2_planes(x, y, q0, q1)
        else:
            _avg_planes(x, y, q0, q1, kh, kw, sh, sw, ph, pw, include_pad)


# Indexing note for the loops below: the vectorised loops index row views with the bare loop
# variable (``r[2 * t]``). An index such as ``base + t`` makes Numba emit its negative-index
# wraparound select per element, which LLVM cannot vectorise (measured 4-5x slower).

@njit(**JIT_OPTIONS)
def _avg2x2_planes(x, y, q0, q1):
    """2x2 windows, stride 2, no padding: four elements per output, no clipping."""
    h, w = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    for q in range(q0, q1):
        for oh in range(out_h):
            r0 = (q * h + 2 * oh) * w
            avg2x2_row(xf, r0, r0 + w, out_w, yf, (q * out_h + oh) * out_w)


@njit(inline="always", **JIT_OPTIONS)
def _interior(size, out, k, stride, pad):
    """Output indices [lo, hi) whose windows lie fully inside [0, size) along one axis."""
    lo = min(out, (pad + stride - 1) // stride)
    hi = max(lo, min(out, (size - k + pad) // stride + 1))
    return lo, hi


@njit(**JIT_OPTIONS)
def _avg_planes(x, y, q0, q1, kh, kw, sh, sw, ph, pw, include_pad):
    """Any window/stride/padding: per output row, the column sums of its window rows (one
    vectorised pass per row, in the input dtype), then each output sums kw of them."""
    dt = y.dtype.type
    h, w = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    col = np.empty(w, dtype=y.dtype)
    lo, hi = _interior(w, out_w, kw, sw, pw)
    n = hi - lo
    c = col[max(lo * sw - pw, 0):]     # column under interior output lo, window column 0
    for q in range(q0, q1):
        for oh in range(out_h):
            r0 = max(oh * sh - ph, 0)
            r1 = min(oh * sh - ph + kh, h)
            xr = x[q, r0]
            for j in range(w):
                col[j] = xr[j]
            for i in range(r0 + 1, r1):
                xr = x[q, i]
                for j in range(w):
                    col[j] += xr[j]
            yr = y[q, oh]
            for ow in range(lo):
                yr[ow] = _avg_clipped(col, ow, kh, kw, sw, pw, r1 - r0, include_pad)
            for ow in range(hi, out_w):
                yr[ow] = _avg_clipped(col, ow, kh, kw, sw, pw, r1 - r0, include_pad)
            d = dt(kh * kw) if include_pad else dt((r1 - r0) * kw)
            yo = yr[lo:]
            # Literal strides and widths: LLVM vectorises these with de-interleaved loads.
            if kw == 3 and sw == 2:
                for t in range(n):
                    yo[t] = (c[2 * t] + c[2 * t + 1] + c[2 * t + 2]) / d
            elif kw == 3 and sw == 1:
                for t in range(n):
                    yo[t] = (c[t] + c[t + 1] + c[t + 2]) / d
            elif kw == 2 and sw == 2:
                for t in range(n):
                    yo[t] = (c[2 * t] + c[2 * t + 1]) / d
            elif kw == 2 and sw == 1:
                for t in range(n):
                    yo[t] = (c[t] + c[t + 1]) / d
            else:
                for t in range(n):
                    s = c[t * sw]
                    for dj in range(1, kw):
                        s += c[t * sw + dj]
                    yo[t] = s / d


@njit(inline="always", **JIT_OPTIONS)
def _avg_clipped(col, ow, kh, kw, sw, pw, rows, include_pad):
    """A border output: its window's column sums clipped to the row, over its divisor."""
    c0 = max(ow * sw - pw, 0)
    c1 = min(ow * sw - pw + kw, col.size)
    s = col[c0]
    for j in range(c0 + 1, c1):
        s += col[j]
    d = kh * kw if include_pad else rows * (c1 - c0)
    return s / col.dtype.type(d)


_FLUSH = 8192  # elements summed in the input dtype before going into the float64 total


@njit(**PARALLEL_JIT_OPTIONS)
def _global_avg_forward(x, y, chunk):
    planes = x.shape[0]
    for t in prange((planes + chunk - 1) // chunk):
        _global_avg_planes(x, y, t * chunk, min(planes, (t + 1) * chunk))


@njit(**JIT_OPTIONS)
def _global_avg_serial(x, y):
    """One thread: the same per-plane sums without a parallel region (its launch costs more
    than a small global pool itself)."""
    _global_avg_planes(x, y, 0, x.shape[0])


# ``reassoc`` only (no nnan/ninf: NaN and Inf still propagate through every sum) lets LLVM
# split the plane sum into vector partial sums, which plain IEEE order forbids; the order
# is fixed by the compiled code and the plane size, never by the thread count. (Scalar
# partial sums written out by hand stay scalar in Numba: measured 2-3x slower.)
@njit(fastmath={"reassoc"}, **JIT_OPTIONS)
def _global_avg_planes(x, y, q0, q1):
    """y[q] = mean of plane q: blocks of up to _FLUSH elements summed in the input dtype
    (vectorised) and added into a float64 total; the m % 8 tail summed on its own, so the
    vector loop has no scalar remainder on planes such as 7x7 (6 x 8 + 1).

    x[q, i] rather than a row view per plane: a view costs ~40 ns, a 7x7 plane ~10 ns.
    """
    m = x.shape[1]
    dt = x.dtype.type
    nfull = m - m % 8
    for q in range(q0, q1):
        total = 0.0
        for j in range(0, nfull, _FLUSH):
            part = dt(0)
            for i in range(j, min(nfull, j + _FLUSH)):
                part += x[q, i]
            total += part
        tail = dt(0)
        for i in range(nfull, m):
            tail += x[q, i]
        y[q] = (total + tail) / m


def avg_pool2d_backward(grad_output, grad_input, p):
    """grad_input (n, c, h, w): each grad_output (n, c, out_h, out_w) value spread over its window."""
    use_configured_threads()
    if (p.kernel_h, p.kernel_w, p.pad_h, p.pad_w) == (p.h, p.w, 0, 0):
        flat = grad_input.reshape(-1, p.h * p.w)
        _global_avg_backward(grad_output.reshape(-1), flat, _plane_chunks(flat.shape[0]))
        return
    gys = _planes(grad_output, p.out_h, p.out_w)
    _avg_backward(gys, _planes(grad_input, p.h, p.w), _plane_chunks(gys.shape[0]), p.disjoint_2x2,
                  p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.count_include_pad)


@njit(**PARALLEL_JIT_OPTIONS)
def _avg_backward(gy, gx, chunk, fast, kh, kw, sh, sw, ph, pw, include_pad):
    """``fast``: PoolParams.disjoint_2x2 (the 2x2/stride-2 path applies)."""
    planes = gy.shape[0]
    for t in prange((planes + chunk - 1) // chunk):
        q0 = t * chunk
        q1 = min(planes, q0 + chunk)
        if fast:
            _avg2x2_backward_planes(gy, gx, q0, q1)
        else:
            _avg_backward_planes(gy, gx, q0, q1, kh, kw, sh, sw, ph, pw, include_pad)


@njit(**JIT_OPTIONS)
def _avg2x2_backward_planes(gy, gx, q0, q1):
    """Disjoint 2x2 windows: every covered element is written once (no zeroing pass); an odd
    last row/column lies in no window and gets 0. ``+ 0`` turns a -0.0 share into +0.0, as
    adding it to a zeroed gradient does.

    Each output row's shares are doubled (``spread_pairs``) into both input rows, as in the
    Cython twin (MNIST pool2 0.83-0.86x, pool1 0.90-0.93x the time of doubling them into a
    scratch row copied to both, at 1 and 2 threads).
    """
    h, w = gx.shape[1], gx.shape[2]
    out_h, out_w = gy.shape[1], gy.shape[2]
    gyf = gy.reshape(-1)
    gxf = gx.reshape(-1)
    for q in range(q0, q1):
        for oh in range(out_h):
            r0 = (q * h + 2 * oh) * w
            g0 = (q * out_h + oh) * out_w
            spread_pairs(gyf, g0, out_w, gxf, r0)
            spread_pairs(gyf, g0, out_w, gxf, r0 + w)
            if w > 2 * out_w:
                gxf[r0 + w - 1] = 0
                gxf[r0 + 2 * w - 1] = 0
        if h > 2 * out_h:
            gx[q, h - 1, :] = 0


@njit(**JIT_OPTIONS)
def _avg_backward_planes(gy, gx, q0, q1, kh, kw, sh, sw, ph, pw, include_pad):
    """Any window/stride/padding, as a gather: every grad_input element is written once.

    First each output row's shares are spread along the columns into a row of ``spread``
    (out_h, w) (a scatter into a small buffer that stays in cache); then grad_input row i is
    the sum of the spread rows of the output rows whose windows cover it (1 or 2 rows for a
    3x3 stride-2 window): a vectorised pass with no read-modify-write of grad_input.
    """
    dt = gx.dtype.type
    h, w = gx.shape[1], gx.shape[2]
    out_h, out_w = gy.shape[1], gy.shape[2]
    spread = np.empty((out_h, w), dtype=gx.dtype)
    share = np.empty(out_w, dtype=gx.dtype)
    lo, hi = _interior(w, out_w, kw, sw, pw)
    n = hi - lo
    si = share[lo:]
    a = max(lo * sw - pw, 0)
    for q in range(q0, q1):
        for oh in range(out_h):
            rows = min(oh * sh - ph + kh, h) - max(oh * sh - ph, 0)
            g = gy[q, oh]
            for ow in range(lo):
                share[ow] = g[ow] / dt(_divisor(ow, w, kh, kw, sw, pw, rows, include_pad))
            for ow in range(hi, out_w):
                share[ow] = g[ow] / dt(_divisor(ow, w, kh, kw, sw, pw, rows, include_pad))
            # Interior outputs share one divisor per row: a vectorised division.
            d = dt(kh * kw) if include_pad else dt(rows * kw)
            gi = g[lo:]
            for t in range(n):
                si[t] = gi[t] / d
            sr = spread[oh]
            for j in range(w):
                sr[j] = 0
            sa = sr[a:]
            if kw == 3 and sw == 2 and n > 0:
                # Gather: column 2t+1 of the interior lies in window t only, column 2t in
                # windows t-1 and t (written once, no read-modify-write).
                for t in range(n):
                    sa[2 * t + 1] = si[t]
                sa[0] = si[0]
                for t in range(1, n):
                    sa[2 * t] = si[t - 1] + si[t]
                sa[2 * n] = si[n - 1]
            else:
                # One pass per window column: distinct outputs hit distinct elements in a pass.
                for dj in range(kw):
                    sa = sr[a + dj:]
                    if sw == 2:
                        for t in range(n):
                            sa[2 * t] += si[t]
                    elif sw == 1:
                        for t in range(n):
                            sa[t] += si[t]
                    else:
                        for t in range(n):
                            sa[t * sw] += si[t]
            for ow in range(lo):
                _spread_clipped(sr, share[ow], ow, kw, sw, pw)
            for ow in range(hi, out_w):
                _spread_clipped(sr, share[ow], ow, kw, sw, pw)
        for i in range(h):
            # Output rows whose window covers input row i: oh*sh - ph <= i < oh*sh - ph + kh.
            first = max((i + ph - kh) // sh + 1, 0)
            last = min((i + ph) // sh, out_h - 1)
            gr = gx[q, i]
            if first > last:
                for j in range(w):
                    gr[j] = 0
            elif first == last:
                s0 = spread[first]
                for j in range(w):
                    gr[j] = s0[j]
            else:
                s0 = spread[first]
                s1 = spread[first + 1]
                for j in range(w):
                    gr[j] = s0[j] + s1[j]
                for r in range(first + 2, last + 1):
                    s0 = spread[r]
                    for j in range(w):
                        gr[j] += s0[j]


@njit(inline="always", **JIT_OPTIONS)
def _divisor(ow, w, kh, kw, sw, pw, rows, include_pad):
    """Divisor of a border output of a row whose window has ``rows`` real rows, in the
    gradient dtype: the window size, or the number of real elements in it."""
    c0 = max(ow * sw - pw, 0)
    c1 = min(ow * sw - pw + kw, w)
    return rows * (c1 - c0) if not include_pad else kh * kw


@njit(inline="always", **JIT_OPTIONS)
def _spread_clipped(sr, s, ow, kw, sw, pw):
    for j in range(max(ow * sw - pw, 0), min(ow * sw - pw + kw, sr.size)):
        sr[j] += s


@njit(**PARALLEL_JIT_OPTIONS)
def _global_avg_backward(gy, gx, chunk):
    planes = gx.shape[0]
    for t in prange((planes + chunk - 1) // chunk):
        _global_avg_backward_planes(gy, gx, t * chunk, min(planes, (t + 1) * chunk))


@njit(**JIT_OPTIONS)
def _global_avg_backward_planes(gy, gx, q0, q1):
    """Every element of plane q gets grad_output[q] / plane size."""
    m = gx.shape[1]
    for q in range(q0, q1):
        v = gy[q] / m
        row = gx[q]
        for i in range(m):
            row[i] = v
