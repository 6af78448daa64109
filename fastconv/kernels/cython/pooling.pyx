"""Max and average pooling kernels (Cython + OpenMP), forward and backward.

The Numba twin is ``fastconv/kernels/numba/pooling.py`` (same public functions, same fast
paths). Every kernel is parallel over the ``n*c`` planes: a plane's outputs and its gradient
are written by one thread only, so overlapping windows (stride < window) accumulate without
races and results do not depend on the thread count.

Semantics are PyTorch's (see ``fastconv.reference``): padding is never a candidate of a max,
``v > best or v != v`` keeps the first maximum in row-major window order and lets a NaN win
(the last NaN of a window gives the index), average pooling divides by the window size or,
with ``count_include_pad=False``, by the number of real elements in the window.

Fast paths:

* 2x2 windows, stride 2, no padding (the LeNet/MNIST pool): the maximum is a plain max
  chain of the four candidates and its index the first candidate equal to it, branch-free
  and vectorised; a row that holds a NaN is redone with the exact NaN rule. Rows are
  computed into local buffers (no runtime alias checks on short rows).
* Other windows: interior outputs (whole window inside the input) of a row are computed
  together, one window row at a time with the running maximum (or sum) in registers and
  literal strides 1 and 2 (de-interleaved loads, not gathers); only border outputs clip
  their windows one by one.
* Global average pooling (the window is the whole plane): a plane sum with vector partial
  sums, and a plane fill for the backward.
* Backward of max pooling: each plane is zeroed and scattered into while it is in cache
  (one pass over memory); average pooling with disjoint 2x2 windows writes every gradient
  element once instead.
"""
import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset

from fastconv.kernels.cython.blas cimport floating
from fastconv.kernels.cython.max2x2 cimport max2x2_row
from fastconv.kernels.cython.microkernels cimport avg2x2_row, spread_pairs
from fastconv.kernels.cython.openmp cimport omp_get_thread_num

from fastconv.threads import get_num_threads

cdef enum:
    TILE = 256      # outputs of one row handled together in the vectorised interior
    LANES = 8       # partial sums of the global average (one AVX register of float32)
    WIDE = 32       # 4 x LANES: independent add chains for large planes
    FLUSH = 256     # blocks a float32 lane sums before it goes into the double total
    NARROW_ROW = 8  # 2x2 max-pool rows with fewer outputs than this run scalar


cdef struct Pool:
    Py_ssize_t planes, h, w, out_h, out_w, kh, kw, sh, sw, ph, pw
    bint include_pad
    bint disjoint_2x2       # PoolParams.disjoint_2x2: the 2x2/stride-2 fast paths apply


cdef inline Py_ssize_t _first_inside(Py_ssize_t pad, Py_ssize_t stride) noexcept nogil:
    """Smallest output index whose window starts inside the input (start = o*stride - pad >= 0)."""
    return (pad + stride - 1) // stride


cdef inline Py_ssize_t _end_inside(Py_ssize_t size, Py_ssize_t out, Py_ssize_t k,
                                   Py_ssize_t stride, Py_ssize_t pad) noexcept nogil:
    """One past the largest output index whose window ends inside the input."""
    cdef Py_ssize_t e
    if size - k + pad < 0:
        return 0
    e = (size - k + pad) // stride + 1
    return e if e < out else out


# ---------------------------------------------------------------- max forward

cdef void _max2x2_plane(const floating* x, floating* y, int64_t* idx, const Pool* p) noexcept nogil:
    """2x2 windows, stride 2, no padding: candidates a, b (top row), c, d (bottom row).

    Rows of NARROW_ROW to TILE outputs are computed into local buffers (which cannot alias
    x, so the short row loops need no runtime alias checks) and copied out in runs of up to
    TILE outputs; MNIST pool1's 13-wide rows took 1.06-1.18x the time written in place.
    """
    cdef floating ob[TILE]
    cdef int64_t oi[TILE]
    cdef Py_ssize_t w = p.w, out_h = p.out_h, out_w = p.out_w
    cdef Py_ssize_t oh, ow, oh0, nrows, o, n, rows_per_run = TILE // out_w if out_w <= TILE else 1
    cdef const floating* r0
    cdef const floating* r1
    cdef floating* yr
    cdef int64_t* ir
    cdef floating a, b, c, d, best
    cdef int64_t k, base
    cdef bint m
    if out_w > TILE or out_w < NARROW_ROW:
        # Very wide rows, and rows too narrow for the vectorised loop (MNIST pool2's 5
        # outputs, where the copy out of the buffer cost 0.14x the time): straight into
        # the output.
        for oh in range(out_h):
            max2x2_row(x + 2 * oh * w, w, out_w, y + oh * out_w,
                        idx + oh * out_w if idx != NULL else <int64_t*>NULL, 2 * oh * w, 2, w)
        return
    oh0 = 0
    while oh0 < out_h:
        nrows = out_h - oh0
        if nrows > rows_per_run:
            nrows = rows_per_run
        for oh in range(oh0, oh0 + nrows):
            max2x2_row(x + 2 * oh * w, w, out_w, ob + (oh - oh0) * out_w,
                        &oi[(oh - oh0) * out_w] if idx != NULL else <int64_t*>NULL, 2 * oh * w, 2, w)
        n = nrows * out_w
        for o in range(n):
            y[oh0 * out_w + o] = ob[o]
        if idx != NULL:
            for o in range(n):
                idx[oh0 * out_w + o] = oi[o]
        oh0 += nrows


cdef void _max_window(const floating* x, floating* y, int64_t* idx, const Pool* p,
                      Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    """One output with its window clipped to the input (border outputs)."""
    cdef Py_ssize_t r0 = oh * p.sh - p.ph, c0 = ow * p.sw - p.pw
    cdef Py_ssize_t r1 = r0 + p.kh, c1 = c0 + p.kw, i, j
    cdef floating best, v
    cdef int64_t at
    if r0 < 0:
        r0 = 0
    if c0 < 0:
        c0 = 0
    if r1 > p.h:
        r1 = p.h
    if c1 > p.w:
        c1 = p.w
    best = x[r0 * p.w + c0]
    at = r0 * p.w + c0
    for i in range(r0, r1):
        for j in range(c0, c1):
            v = x[i * p.w + j]
            if (v > best) | (v != v):
                best = v
                at = i * p.w + j
    y[oh * p.out_w + ow] = best
    if idx != NULL:
        idx[oh * p.out_w + ow] = at


cdef inline void _max_row(const floating* xr, Py_ssize_t step, Py_ssize_t kw, Py_ssize_t n,
                          floating* best, int64_t* at, int64_t pos, bint first,
                          bint want) noexcept nogil:
    """One window row (offsets 0..kw-1, in order) across n outputs: output c compares
    xr[c*step + j] (flat position pos + c*step + j) with its running maximum.

    The running maximum stays in a register across the row's offsets. Called with literal
    ``step`` and ``kw`` (1, 2, 3), so once inlined the offset loop unrolls and the output loop
    vectorises with contiguous or de-interleaved loads instead of gathers.
    """
    cdef Py_ssize_t c, j
    cdef floating v, b
    cdef int64_t a
    cdef bint m
    if first and not want:
        for c in range(n):
            b = xr[c * step]
            for j in range(1, kw):
                v = xr[c * step + j]
                b = v if (v > b) | (v != v) else b
            best[c] = b
    elif not want:
        for c in range(n):
            b = best[c]
            for j in range(kw):
                v = xr[c * step + j]
                b = v if (v > b) | (v != v) else b
            best[c] = b
    elif first:
        for c in range(n):
            b = xr[c * step]
            a = pos + c * step
            for j in range(1, kw):
                v = xr[c * step + j]
                m = (v > b) | (v != v)
                b = v if m else b
                a = pos + c * step + j if m else a
            best[c] = b
            at[c] = a
    else:
        for c in range(n):
            b = best[c]
            a = at[c]
            for j in range(kw):
                v = xr[c * step + j]
                m = (v > b) | (v != v)
                b = v if m else b
                a = pos + c * step + j if m else a
            best[c] = b
            at[c] = a


cdef inline void _max_row_any(const floating* xr, Py_ssize_t step, Py_ssize_t kw, Py_ssize_t n,
                              floating* best, int64_t* at, int64_t pos, bint first,
                              bint want) noexcept nogil:
    """``_max_row`` with the stride and row width as literals where they are common."""
    cdef Py_ssize_t j
    if kw == 2:
        if step == 1:
            _max_row(xr, 1, 2, n, best, at, pos, first, want)
        elif step == 2:
            _max_row(xr, 2, 2, n, best, at, pos, first, want)
        else:
            _max_row(xr, step, 2, n, best, at, pos, first, want)
    elif kw == 3:
        if step == 1:
            _max_row(xr, 1, 3, n, best, at, pos, first, want)
        elif step == 2:
            _max_row(xr, 2, 3, n, best, at, pos, first, want)
        else:
            _max_row(xr, step, 3, n, best, at, pos, first, want)
    else:
        # Other widths: one offset at a time (the running maximum goes through memory).
        for j in range(kw):
            if step == 1:
                _max_row(xr + j, 1, 1, n, best, at, pos + j, first and j == 0, want)
            else:
                _max_row(xr + j, step, 1, n, best, at, pos + j, first and j == 0, want)


cdef void _max_plane(const floating* x, floating* y, int64_t* idx, const Pool* p) noexcept nogil:
    """Any window/stride/padding. Interior outputs of a row are processed together, window row
    by window row in order (the same comparison order as one window at a time)."""
    cdef floating best[TILE]
    cdef int64_t at[TILE]
    cdef Py_ssize_t h = p.h, w = p.w, out_h = p.out_h, out_w = p.out_w
    cdef Py_ssize_t kh = p.kh, kw = p.kw, sh = p.sh, sw = p.sw, ph = p.ph, pw = p.pw
    cdef Py_ssize_t oh, ow, ow0, n, i, r0, r1, c, pos
    cdef Py_ssize_t ow_lo = _first_inside(pw, sw)
    cdef Py_ssize_t ow_hi = _end_inside(w, out_w, kw, sw, pw)
    cdef bint want = idx != NULL
    if ow_hi < ow_lo:
        ow_hi = ow_lo
    for oh in range(out_h):
        for ow in range(0, ow_lo if ow_lo < out_w else out_w):
            _max_window(x, y, idx, p, oh, ow)
        for ow in range(ow_hi if ow_hi > ow_lo else ow_lo, out_w):
            _max_window(x, y, idx, p, oh, ow)
        r0 = oh * sh - ph
        r1 = r0 + kh
        if r0 < 0:
            r0 = 0
        if r1 > h:
            r1 = h
        ow0 = ow_lo
        while ow0 < ow_hi:
            n = ow_hi - ow0
            if n > TILE:
                n = TILE
            for i in range(r0, r1):
                pos = i * w + ow0 * sw - pw        # input under output ow0, window column 0
                _max_row_any(x + pos, sw, kw, n, best, at, pos, i == r0, want)
            for c in range(n):
                y[oh * out_w + ow0 + c] = best[c]
            if want:
                for c in range(n):
                    idx[oh * out_w + ow0 + c] = at[c]
            ow0 += n


cdef void _max_forward(const floating* x, floating* y, int64_t* idx, const Pool* p,
                       int nthreads) noexcept nogil:
    cdef Py_ssize_t q, in_plane = p.h * p.w, out_plane = p.out_h * p.out_w
    for q in prange(p.planes, num_threads=nthreads, schedule="static"):
        if p.disjoint_2x2:
            _max2x2_plane(x + q * in_plane, y + q * out_plane,
                          idx + q * out_plane if idx != NULL else NULL, p)
        else:
            _max_plane(x + q * in_plane, y + q * out_plane,
                       idx + q * out_plane if idx != NULL else NULL, p)


# ---------------------------------------------------------------- max backward

cdef Py_ssize_t _max_scatter_plane(const floating* gy, const int64_t* at, floating* gx,
                                   const Pool* p) noexcept nogil:
    """gx = 0, then gx[at[o]] += gy[o] for every output o of the plane, in output order;
    returns how many offsets lie outside [0, h*w) (skipped).

    A small plane is zeroed whole right before its scatter, so it is still in L1 for the
    adds (one pass over memory).
    """
    cdef Py_ssize_t o, out_plane = p.out_h * p.out_w, bad = 0
    cdef uint64_t n = p.h * p.w
    cdef int64_t i
    memset(gx, 0, p.h * p.w * sizeof(floating))
    for o in range(out_plane):
        i = at[o]
        if <uint64_t>i < n:          # unsigned: a negative offset is huge
            gx[i] += gy[o]
        else:
            bad += 1
    return bad


cdef Py_ssize_t _max_scatter_rows(const floating* gy, const int64_t* at, floating* gx,
                                  const Pool* p) noexcept nogil:
    """``_max_scatter_plane`` for planes larger than L1 (e.g. 112x112): rows are zeroed
    lazily, up to the row of the first index that reaches past the rows zeroed so far, so
    the adds land in rows just zeroed and still in L1 (measured 1.25x faster on 112x112
    planes, 2-4x slower on small ones, hence two functions); rows no index reached are
    zeroed at the end.
    """
    cdef Py_ssize_t o, w = p.w, done = 0, row, bad = 0
    cdef uint64_t n = p.h * p.w
    cdef int64_t i
    for o in range(p.out_h * p.out_w):
        i = at[o]
        if <uint64_t>i >= n:
            bad += 1
            continue
        if i >= done * w:
            row = i // w + 1
            memset(gx + done * w, 0, (row - done) * w * sizeof(floating))
            done = row
        gx[i] += gy[o]
    if done < p.h:
        memset(gx + done * w, 0, (p.h - done) * w * sizeof(floating))
    return bad


cdef Py_ssize_t _max_backward(const floating* gy, const int64_t* idx, floating* gx, const Pool* p,
                              int nthreads) noexcept nogil:
    """One thread per plane, so windows that share an input element accumulate without races.
    Returns the number of indices outside their plane (skipped): checked here, where every
    index is read anyway, rather than in a separate pass.

    (Writing each element once for disjoint 2x2 windows, after checking that every index
    lies in its window, measured 2x slower than zeroing the small plane and scattering.)
    """
    cdef Py_ssize_t q, in_plane = p.h * p.w, out_plane = p.out_h * p.out_w, bad = 0
    cdef bint large = in_plane * sizeof(floating) > 16384
    for q in prange(p.planes, num_threads=nthreads, schedule="static"):
        if large:
            bad += _max_scatter_rows(gy + q * out_plane, idx + q * out_plane, gx + q * in_plane, p)
        else:
            bad += _max_scatter_plane(gy + q * out_plane, idx + q * out_plane, gx + q * in_plane, p)
    return bad


# ---------------------------------------------------------------- average forward

cdef inline Py_ssize_t _divisor(const Pool* p, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    """Window size, or with count_include_pad=False the number of real elements in it."""
    cdef Py_ssize_t r0, r1, c0, c1
    if p.include_pad:
        return p.kh * p.kw
    r0 = oh * p.sh - p.ph
    c0 = ow * p.sw - p.pw
    r1 = r0 + p.kh
    c1 = c0 + p.kw
    if r0 < 0:
        r0 = 0
    if c0 < 0:
        c0 = 0
    if r1 > p.h:
        r1 = p.h
    if c1 > p.w:
        c1 = p.w
    return (r1 - r0) * (c1 - c0)


cdef void _avg_window(const floating* x, floating* y, const Pool* p,
                      Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    cdef Py_ssize_t r0 = oh * p.sh - p.ph, c0 = ow * p.sw - p.pw
    cdef Py_ssize_t r1 = r0 + p.kh, c1 = c0 + p.kw, i, j
    cdef floating total = 0
    if r0 < 0:
        r0 = 0
    if c0 < 0:
        c0 = 0
    if r1 > p.h:
        r1 = p.h
    if c1 > p.w:
        c1 = p.w
    for i in range(r0, r1):
        for j in range(c0, c1):
            total = total + x[i * p.w + j]
    y[oh * p.out_w + ow] = total / <floating>_divisor(p, oh, ow)


cdef inline void _add_row(const floating* xr, Py_ssize_t step, Py_ssize_t kw, Py_ssize_t n,
                          floating* acc) noexcept nogil:
    """acc[c] += xr[c*step + j] for j = 0..kw-1 in order (literal step/kw, like ``_max_row``)."""
    cdef Py_ssize_t c, j
    cdef floating t
    for c in range(n):
        t = acc[c]
        for j in range(kw):
            t = t + xr[c * step + j]
        acc[c] = t


cdef void _avg_plane(const floating* x, floating* y, const Pool* p) noexcept nogil:
    """Window sums in row-major order; interior outputs of a row together (vectorised)."""
    cdef floating acc[TILE]
    cdef Py_ssize_t h = p.h, w = p.w, out_h = p.out_h, out_w = p.out_w
    cdef Py_ssize_t kh = p.kh, kw = p.kw, sh = p.sh, sw = p.sw, ph = p.ph, pw = p.pw
    cdef Py_ssize_t oh, ow, ow0, n, i, j, r0, r1, c
    cdef Py_ssize_t ow_lo = _first_inside(pw, sw)
    cdef Py_ssize_t ow_hi = _end_inside(w, out_w, kw, sw, pw)
    cdef const floating* xr
    cdef floating d
    if ow_hi < ow_lo:
        ow_hi = ow_lo
    for oh in range(out_h):
        for ow in range(0, ow_lo if ow_lo < out_w else out_w):
            _avg_window(x, y, p, oh, ow)
        for ow in range(ow_hi if ow_hi > ow_lo else ow_lo, out_w):
            _avg_window(x, y, p, oh, ow)
        r0 = oh * sh - ph
        r1 = r0 + kh
        if r0 < 0:
            r0 = 0
        if r1 > h:
            r1 = h
        # Interior columns share one divisor per row (the rows may still be clipped).
        d = kh * kw if p.include_pad else (r1 - r0) * kw
        ow0 = ow_lo
        while ow0 < ow_hi:
            n = ow_hi - ow0
            if n > TILE:
                n = TILE
            for c in range(n):
                acc[c] = 0
            for i in range(r0, r1):
                xr = x + i * w + ow0 * sw - pw
                if kw == 2 and sw == 1:
                    _add_row(xr, 1, 2, n, acc)
                elif kw == 2 and sw == 2:
                    _add_row(xr, 2, 2, n, acc)
                elif kw == 3 and sw == 1:
                    _add_row(xr, 1, 3, n, acc)
                elif kw == 3 and sw == 2:
                    _add_row(xr, 2, 3, n, acc)
                else:
                    for j in range(kw):
                        if sw == 1:
                            _add_row(xr + j, 1, 1, n, acc)
                        else:
                            _add_row(xr + j, sw, 1, n, acc)
            for c in range(n):
                y[oh * out_w + ow0 + c] = acc[c] / d
            ow0 += n


cdef void _avg2x2_plane(const floating* x, floating* y, const Pool* p) noexcept nogil:
    """Disjoint 2x2 windows, one output row per ``avg2x2_row`` (vector permutes: the
    compiler left 5-wide rows, MNIST pool2's, to scalar code)."""
    cdef Py_ssize_t oh, w = p.w
    for oh in range(p.out_h):
        avg2x2_row(x + 2 * oh * w, x + (2 * oh + 1) * w, p.out_w, y + oh * p.out_w)


cdef floating _plane_mean(const floating* x, Py_ssize_t n) noexcept nogil:
    """Global average of one contiguous plane, summed in a fixed order (float32 accuracy: a
    lane sums at most FLUSH blocks before it goes into a double total).

    Large planes: WIDE = 4 x LANES partial sums (four independent vector add chains: one
    chain is bound by the add latency, measured 1.6x slower on 56x56 planes), folded to
    LANES. Then blocks of LANES (small planes such as 7x7 and 14x14 take only this path;
    their planes are independent, so out-of-order execution overlaps them), then the
    < LANES tail elements one by one.
    """
    cdef floating wide[WIDE]
    cdef floating part[LANES]
    cdef floating tail = 0
    cdef double total = 0
    cdef Py_ssize_t i, j, l, stop, nwide = n - n % WIDE if n >= 8 * WIDE else 0
    cdef Py_ssize_t nfull = n - n % LANES
    j = 0
    while j < nwide:
        stop = j + FLUSH * WIDE
        if stop > nwide:
            stop = nwide
        for l in range(WIDE):
            wide[l] = 0
        for i in range(j, stop, 32):  # 32 == WIDE
            for l in range(WIDE):
                wide[l] += x[i + l]
        for l in range(LANES):
            wide[l] = (wide[l] + wide[l + LANES]) + (wide[l + 2 * LANES] + wide[l + 3 * LANES])
        total += ((wide[0] + wide[4]) + (wide[1] + wide[5])) + ((wide[2] + wide[6]) + (wide[3] + wide[7]))
        j = stop
    while j < nfull:
        stop = j + FLUSH * LANES
        if stop > nfull:
            stop = nfull
        for l in range(LANES):
            part[l] = 0
        for i in range(j, stop, 8):  # 8 == LANES
            for l in range(LANES):
                part[l] += x[i + l]
        total += ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]))
        j = stop
    for i in range(nfull, n):
        tail += x[i]
    return <floating>((total + tail) / n)


cdef void _avg_forward(const floating* x, floating* y, const Pool* p, int nthreads) noexcept nogil:
    cdef Py_ssize_t q, in_plane = p.h * p.w, out_plane = p.out_h * p.out_w
    cdef bint whole = p.kh == p.h and p.kw == p.w and p.ph == 0 and p.pw == 0
    for q in prange(p.planes, num_threads=nthreads, schedule="static"):
        if whole:
            y[q] = _plane_mean(x + q * in_plane, in_plane)
        elif p.disjoint_2x2:
            _avg2x2_plane(x + q * in_plane, y + q * out_plane, p)
        else:
            _avg_plane(x + q * in_plane, y + q * out_plane, p)


# ---------------------------------------------------------------- average backward

cdef void _avg_backward_plane(const floating* gy, floating* gx, floating* spread, floating* share,
                              const Pool* p) noexcept nogil:
    """Any window/stride/padding, as a gather: every grad_input element is written once.

    First each output row's shares are spread along the columns into a row of ``spread``
    (out_h x w scratch, a scatter into a small buffer that stays in cache); then grad_input
    row i is the sum of the spread rows of the output rows whose windows cover it (1 or 2
    rows for a 3x3 stride-2 window): a vectorised pass with no read-modify-write of grad_input.
    """
    cdef Py_ssize_t h = p.h, w = p.w, out_h = p.out_h, out_w = p.out_w
    cdef Py_ssize_t kh = p.kh, kw = p.kw, sh = p.sh, sw = p.sw, ph = p.ph, pw = p.pw
    cdef Py_ssize_t oh, ow, t, j, dj, i, r, rows, first, last
    cdef Py_ssize_t lo = _first_inside(pw, sw)
    cdef Py_ssize_t hi = _end_inside(w, out_w, kw, sw, pw)
    cdef Py_ssize_t n, a
    cdef const floating* g
    cdef floating* sr
    cdef floating* sa
    cdef floating* si
    cdef floating* gr
    cdef const floating* s0
    cdef const floating* s1
    cdef floating d
    if lo > out_w:
        lo = out_w
    if hi < lo:
        hi = lo
    n = hi - lo
    a = lo * sw - pw
    if a < 0:
        a = 0
    si = share + lo
    for oh in range(out_h):
        rows = min(oh * sh - ph + kh, h) - max(oh * sh - ph, 0)    # real rows of the window
        g = gy + oh * out_w
        for ow in range(lo):
            share[ow] = g[ow] / <floating>_divisor(p, oh, ow)
        for ow in range(hi, out_w):
            share[ow] = g[ow] / <floating>_divisor(p, oh, ow)
        # Interior outputs share one divisor per row: a vectorised division.
        d = kh * kw if p.include_pad else rows * kw
        for t in range(n):
            si[t] = g[lo + t] / d
        sr = spread + oh * w
        for j in range(w):
            sr[j] = 0
        sa = sr + a
        if kw == 3 and sw == 2 and n > 0:
            # Column 2t+1 of the interior lies in window t only, column 2t in windows t-1
            # and t: written once each, no read-modify-write.
            for t in range(n):
                sa[2 * t + 1] = si[t]
            sa[0] = si[0]
            for t in range(1, n):
                sa[2 * t] = si[t - 1] + si[t]
            sa[2 * n] = si[n - 1]
        else:
            # One pass per window column: distinct outputs hit distinct elements in a pass.
            for dj in range(kw):
                if sw == 2:
                    for t in range(n):
                        sa[2 * t + dj] += si[t]
                elif sw == 1:
                    for t in range(n):
                        sa[t + dj] += si[t]
                else:
                    for t in range(n):
                        sa[t * sw + dj] += si[t]
        for ow in range(lo):
            _spread_clipped(sr, share[ow], ow, p)
        for ow in range(hi, out_w):
            _spread_clipped(sr, share[ow], ow, p)
    for i in range(h):
        # Output rows whose window covers input row i: oh*sh - ph <= i < oh*sh - ph + kh.
        first = _floordiv(i + ph - kh, sh) + 1
        if first < 0:
            first = 0
        last = (i + ph) // sh
        if last > out_h - 1:
            last = out_h - 1
        gr = gx + i * w
        if first > last:
            for j in range(w):
                gr[j] = 0
        elif first == last:
            s0 = spread + first * w
            for j in range(w):
                gr[j] = s0[j]
        else:
            s0 = spread + first * w
            s1 = s0 + w
            for j in range(w):
                gr[j] = s0[j] + s1[j]
            for r in range(first + 2, last + 1):
                s0 = spread + r * w
                for j in range(w):
                    gr[j] += s0[j]


cdef inline Py_ssize_t _floordiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """a // b rounded towards minus infinity (C division truncates; b > 0)."""
    cdef Py_ssize_t q = a // b
    if (a % b != 0) and (a < 0):
        q -= 1
    return q


cdef inline void _spread_clipped(floating* sr, floating s, Py_ssize_t ow, const Pool* p) noexcept nogil:
    cdef Py_ssize_t j, c0 = ow * p.sw - p.pw, c1 = c0 + p.kw
    if c0 < 0:
        c0 = 0
    if c1 > p.w:
        c1 = p.w
    for j in range(c0, c1):
        sr[j] += s


cdef void _avg2x2_backward_plane(const floating* gy, floating* gx, const Pool* p) noexcept nogil:
    """Disjoint 2x2 windows: every covered element is written once (no zeroing pass); an odd
    last row/column lies in no window and gets 0. ``+ 0`` turns a -0.0 share into +0.0, as
    adding it to a zeroed gradient does. Each output row's shares are doubled
    (``spread_pairs``) into both input rows: copying the top row down right after its stores
    waited for them (MNIST pool2 backward 0.79-0.89x the time of that, at 1 and 2 threads)."""
    cdef Py_ssize_t oh, w = p.w
    cdef floating* r0
    for oh in range(p.out_h):
        r0 = gx + 2 * oh * w
        spread_pairs(gy + oh * p.out_w, p.out_w, r0)
        spread_pairs(gy + oh * p.out_w, p.out_w, r0 + w)
        if w > 2 * p.out_w:
            r0[w - 1] = 0
            r0[2 * w - 1] = 0
    if p.h > 2 * p.out_h:
        memset(gx + (p.h - 1) * w, 0, w * sizeof(floating))


cdef void _avg_backward(const floating* gy, floating* gx, floating* ws, Py_ssize_t ws_stride,
                        const Pool* p, int nthreads) noexcept nogil:
    """``ws`` holds ``ws_stride`` elements per thread: the spread rows (out_h x w) and one row
    of shares (out_w) of the general path."""
    cdef Py_ssize_t q, i, in_plane = p.h * p.w, out_plane = p.out_h * p.out_w
    cdef bint whole = p.kh == p.h and p.kw == p.w and p.ph == 0 and p.pw == 0
    cdef floating share
    cdef floating* g
    cdef floating* mine
    for q in prange(p.planes, num_threads=nthreads, schedule="static"):
        if whole:
            share = gy[q] / in_plane
            g = gx + q * in_plane
            for i in range(in_plane):
                g[i] = share
        elif p.disjoint_2x2:
            _avg2x2_backward_plane(gy + q * out_plane, gx + q * in_plane, p)
        else:
            mine = ws + omp_get_thread_num() * ws_stride
            _avg_backward_plane(gy + q * out_plane, gx + q * in_plane, mine, mine + p.out_h * p.w, p)


# ---------------------------------------------------------------- Python-level wrappers

cdef Pool _pool(p):
    cdef Pool g
    g.planes = p.n * p.c
    g.h = p.h; g.w = p.w; g.out_h = p.out_h; g.out_w = p.out_w
    g.kh = p.kernel_h; g.kw = p.kernel_w; g.sh = p.stride_h; g.sw = p.stride_w
    g.ph = p.pad_h; g.pw = p.pad_w
    g.include_pad = p.count_include_pad
    g.disjoint_2x2 = p.disjoint_2x2
    return g


cdef void _max_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, indices, p,
                              int nthreads):
    cdef Pool g = _pool(p)
    cdef int64_t[:, :, :, ::1] idx_v
    cdef int64_t* at = NULL
    if indices is not None:
        idx_v = indices
        at = &idx_v[0, 0, 0, 0]
    with nogil:
        _max_forward(&x[0, 0, 0, 0], &y[0, 0, 0, 0], at, &g, nthreads)


cdef Py_ssize_t _max_pool2d_backward(const floating[:, :, :, ::1] gy, const int64_t[:, :, :, ::1] idx,
                                     floating[:, :, :, ::1] gx, p, int nthreads):
    cdef Pool g = _pool(p)
    cdef Py_ssize_t bad
    with nogil:
        bad = _max_backward(&gy[0, 0, 0, 0], &idx[0, 0, 0, 0], &gx[0, 0, 0, 0], &g, nthreads)
    return bad


cdef void _avg_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, p, int nthreads):
    cdef Pool g = _pool(p)
    with nogil:
        _avg_forward(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &g, nthreads)


cdef void _avg_pool2d_backward(const floating[:, :, :, ::1] gy, floating[:, :, :, ::1] gx, p,
                               floating[::1] ws, Py_ssize_t ws_stride, int nthreads):
    cdef Pool g = _pool(p)
    with nogil:
        _avg_backward(&gy[0, 0, 0, 0], &gx[0, 0, 0, 0], &ws[0], ws_stride, &g, nthreads)


def max_pool2d_forward(x, y, indices, p):
    """y (n, c, out_h, out_w) = window maxima of x (n, c, h, w); ``indices`` (int64, shape of y)
    receives each maximum's flat offset in its h*w plane, or is None (then not computed)."""
    cdef int nthreads = get_num_threads()
    if x.dtype == np.float32:
        _max_pool2d_forward[float](x, y, indices, p, nthreads)
    else:
        _max_pool2d_forward[double](x, y, indices, p, nthreads)


def max_pool2d_backward(grad_output, indices, grad_input, p):
    """grad_input (n, c, h, w) = grad_output (n, c, out_h, out_w) added at the int64 ``indices``
    (flat offsets into each h*w plane); overlapping windows accumulate. Returns the number of
    indices outside their plane, which are skipped."""
    cdef int nthreads = get_num_threads()
    if grad_output.dtype == np.float32:
        return _max_pool2d_backward[float](grad_output, indices, grad_input, p, nthreads)
    return _max_pool2d_backward[double](grad_output, indices, grad_input, p, nthreads)


def avg_pool2d_forward(x, y, p):
    """y (n, c, out_h, out_w) = window means of x (n, c, h, w), divisor per count_include_pad."""
    cdef int nthreads = get_num_threads()
    if x.dtype == np.float32:
        _avg_pool2d_forward[float](x, y, p, nthreads)
    else:
        _avg_pool2d_forward[double](x, y, p, nthreads)


def avg_pool2d_backward(grad_output, grad_input, p):
    """grad_input (n, c, h, w): each grad_output (n, c, out_h, out_w) value divided by its
    window's divisor and added over the window."""
    cdef int nthreads = get_num_threads()
    # Per-thread scratch of the general path (spread rows and shares), padded to 64 bytes.
    ws_stride = ((p.out_h * p.w + p.out_w + 15) // 16) * 16
    ws = np.empty(ws_stride * nthreads, grad_output.dtype)
    if grad_output.dtype == np.float32:
        _avg_pool2d_backward[float](grad_output, grad_input, p, ws, ws_stride, nthreads)
    else:
        _avg_pool2d_backward[double](grad_output, grad_input, p, ws, ws_stride, nthreads)
