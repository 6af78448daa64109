"""Direct convolution kernels (Cython + OpenMP), forward and the three gradients.

The Numba twin is ``fastconv/kernels/numba/direct.py``: same public functions, same split
into a shared correlation core, a scatter kernel for strided grad_input, a grad_weight core
and a grad_bias reduction.

How the loops are laid out (why it is fast):

* **Taps.** A convolution output is ``bias + sum over taps t = (c, r, s) of w[k, t] * src_t``
  where ``src_t`` is the input plane ``c`` shifted by ``(r*dil_h, s*dil_w)``. Each tap is one
  pointer offset ``toff[t]`` into a (padded) plane buffer, so a tap is the same thing whether
  it walks channels (1x1 convolutions), kernel positions (one input channel, depthwise) or both.
* **Wide rows.** With unit strides, output pixel ``(oh, ow)`` reads the padded plane at
  ``oh*Wp + ow + toff[t]``. Indexing the output by ``j = oh*Wp + ow`` ("wide" rows of
  ``Wp >= out_w`` columns) makes every tap ONE contiguous run over the whole plane; the
  ``Wp - out_w`` extra columns per row compute values that are never stored. Small planes
  such as MNIST's 26x26 then give long vector loops instead of 26-element rows.
* **Strides.** A stride-(sh, sw) correlation is a stride-1 correlation of the sh*sw
  "phase planes" of the padded input (phase (a, b) holds pixels (i*sh + a, j*sw + b)): tap
  (r, s) reads one phase plane at a fixed shift. Copying the input into phase planes gives
  strided layers the same unit-stride wide-row kernels, with the same tap order.
* **Padding** is handled once per plane by copying it into a zero-bordered buffer (zeroed
  once per call; only the interior is rewritten), so the inner loops have no bounds checks
  at all; unpadded stride-1 convolutions read ``x`` in place.
* **Register blocking.** Up to 4 output channels at a time are summed by ``tap_block``
  (``microkernels.pxd``): blocks of 3 vectors x 4 channels hold their sums in the 12 spare
  AVX registers through all the taps, so a tap costs 3 input loads and 4 weight broadcasts
  for 12 FMAs, with no accumulator traffic. Output rows of at least 3 vectors whose last
  vector wastes no more lanes than a wide row's extra columns are summed straight into
  ``y``; shorter rows are summed as ``TILE`` wide positions in a local tile whose real
  outputs are then copied into their rows of ``y``.
* **One input and one output channel per group, 3x3 (depthwise layers).** ``_plane3x3``
  keeps the nine weights in registers for a whole plane and computes two output rows per
  pass straight into ``y``; the padded rows are copied just before first use, so the reads
  of the input overlap the arithmetic. ``_plane3x3_gw`` is its grad_weight twin (nine dot
  products in vector lanes carried over the whole batch). A single input channel feeding
  several filters (the C = 1 first layers) goes to ``tap_block``/``dot_block`` instead,
  which reuse each input load for 4 filters: MNIST conv1's forward 0.86x the time of the
  plane path, its grad_weight 0.55-0.62x.
* **Gradients.** grad_input with stride 1 is the same correlation applied to the padded
  grad_output with flipped, transposed filters (a gather: every task owns its outputs), so
  it gets every fast path of the forward; strided grad_input scatters into private phase
  planes per (image, channel) with unit-stride updates, then interleaves them. grad_weight
  is a set of dot products per filter entry, summed by ``dot_block`` (3 taps x 4 filters
  in registers) into vector-lane partial sums carried over a batch chunk's images and added
  in a fixed order at the end; each task owns its filter entries, and the batch is split
  into a number of chunks fixed by the shape alone, so the result is bit-identical for any
  thread count.

No ``-ffast-math``: NaN and Inf propagate as IEEE arithmetic says. Every output element's
sum is formed in the same order whatever the thread count or blocking.
"""
import numpy as np

from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memset

from fastconv.kernels.cython.blas cimport floating
from fastconv.kernels.cython.max2x2 cimport max2x2_row
from fastconv.kernels.cython.openmp cimport omp_get_thread_num
from fastconv.kernels.cython.microkernels cimport (FC_DOT_LANES_F32, FC_DOT_LANES_F64, FC_DOT_SPAN, FC_STENCIL_ROWS,
                                                   FC_TAP_ROWS, FC_VECTOR_BYTES, copy_run, dot_block,
                                                   split_pairs, stencil3x3_rows, tap_block)

from fastconv.kernels import direct_plan, stride_phases
from fastconv.kernels.cython.winograd import _merge_phases
from fastconv.threads import get_num_threads

cdef enum:
    TILE = 256        # outputs per tile (per output channel)
    GW_FILTERS = 16    # filters per grad_weight task that copies its input planes
    LANES = 8         # independent partial sums of a dot product (one AVX vector of float)
    COPY_AHEAD = 2        # rows the one-channel 3x3 kernels copy ahead of what they read (numba/direct.py)


# Rows go into the planes with ``copy_run`` (vectors, the last one masked). The strided
# (not stride-2) phase copy writes "dst = src * unit" with this runtime 1.0: exact for every
# value (NaN, Inf and -0.0 included), but it keeps gcc from turning the loop into a memcpy
# call, whose call overhead exceeds the copy itself for rows of a few dozen elements.
cdef double _UNIT = float(np.ones(1)[0])

# Outputs per tile of a 1x1 filter with several tap chunks, as planned for both backends (a C
# value: read without the GIL).
cdef Py_ssize_t _one_by_one_tile = direct_plan.ONE_BY_ONE_TILE


cdef extern from *:
    void __builtin_prefetch(const void* address, int write, int locality) noexcept nogil


cdef struct Geometry:
    # A stride-s correlation: src (n, c, h, w) -> dst (n, k, out_h, out_w) in groups.
    Py_ssize_t n, c, h, w, k, groups, cg, kg, r, s
    Py_ssize_t sh, sw, dh, dw
    Py_ssize_t top, left, hp, wp      # where the source sits in its padded plane (hp x wp)
    Py_ssize_t out_h, out_w
    Py_ssize_t cb                     # channels per chunk (padded planes copied together)
    Py_ssize_t kbt                    # output channels per task
    Py_ssize_t nkb                    # ceil(kg / kbt)
    Py_ssize_t nc                     # batch chunks (grad_weight only)
    Py_ssize_t ps                     # elements between consecutive planes of the tap source
    bint copy                         # padded copies needed (else the source is read in place)
    bint plane3x3                     # one input channel per group, 3x3, stride/dilation 1
    bint phased                       # stride > 1: the source is split into phase planes
    bint rows                         # grad_weight: dot products row by row (see below)
    bint shifted                      # column-shifted planes (direct_plan), hq x out_w each
    Py_ssize_t hq                     # rows of a column-shifted plane
    Py_ssize_t tap_chunk              # taps per tap_block call (direct_plan.tap_chunk)


# ---------------------------------------------------------------- helpers

cdef inline void _copy_interior(const floating* src, Py_ssize_t hs, Py_ssize_t ws,
                                floating* dst, Py_ssize_t hd, Py_ssize_t wd,
                                Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """Copy src (hs x ws) into dst (hd x wd) at (top, left), clipped to dst.

    Only the covered part of dst is written: the workspaces are zeroed once per call and
    the zero border is never overwritten, so each plane costs one row copy per row.
    ``top``/``left`` may be negative (the source is cropped), as grad_input needs when the
    forward padding exceeds the kernel extent.
    """
    cdef Py_ssize_t a, b
    cdef Py_ssize_t a0 = top if top > 0 else 0
    cdef Py_ssize_t a1 = top + hs if top + hs < hd else hd
    cdef Py_ssize_t b0 = left if left > 0 else 0
    cdef Py_ssize_t b1 = left + ws if left + ws < wd else wd
    cdef floating* row
    cdef const floating* s
    if b1 <= b0:
        return
    for a in range(a0, a1):
        row = dst + a * wd
        s = src + (a - top) * ws - left
        copy_run(s + b0, row + b0, b1 - b0)


cdef void _copy_phases(const floating* src, Py_ssize_t h, Py_ssize_t w, floating* dst,
                       Py_ssize_t hq, Py_ssize_t wq, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """Split the padded plane (src placed at top/left) into sh*sw phase planes of hq x wq:
    phase (a, b) holds padded pixels (i*sh + a, j*sw + b) at (i, j).

    A stride-(sh, sw) correlation of the padded plane is then a stride-1 correlation of the
    phase planes (tap (r, s) reads phase ((r*dh) % sh, (s*dw) % sw) shifted by
    ((r*dh) // sh, (s*dw) // sw)), so strided layers get the contiguous wide-row kernels.
    Only real pixels are written; the zero padding positions are never touched.
    """
    cdef Py_ssize_t i, pi, a, qi, b, j0, qj0, cnt, m
    cdef floating* row
    cdef const floating* s
    cdef floating unit = <floating>_UNIT
    for i in range(h):
        pi = i + top
        a = pi % sh
        qi = pi // sh
        if sw == 2 and left >= 0:
            # Column j goes to phase (j + left) % 2 at (j + left) // 2: the even columns to
            # one phase row, the odd to the other, in one pass over the input row.
            row = dst + (a * 2 * hq + qi) * wq
            split_pairs(src + i * w, w, row + (left % 2) * hq * wq + left // 2,
                        row + ((left + 1) % 2) * hq * wq + (left + 1) // 2)
            continue
        for b in range(sw):
            j0 = ((b - left) % sw + sw) % sw         # first column j with (j + left) % sw == b
            if j0 >= w:
                continue
            cnt = (w - j0 + sw - 1) // sw
            qj0 = (j0 + left) // sw
            row = dst + ((a * sw + b) * hq + qi) * wq + qj0
            s = src + i * w + j0
            for m in range(cnt):
                row[m] = s[m * sw] * unit


cdef void _copy_shifted(const floating* src, Py_ssize_t h, Py_ssize_t w, floating* dst,
                        Py_ssize_t hq, Py_ssize_t out_w, Py_ssize_t s, Py_ssize_t dw,
                        Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """dst[j*hq*out_w:] = the hq x out_w window of the padded plane (src, h x w, at top/left)
    that starts at column j*dw, for filter columns j < s (``direct_plan.shifted_tap_offsets``).
    Only input pixels are written: the zero border stays."""
    cdef Py_ssize_t j, i, lo, hi
    cdef Py_ssize_t i0 = max(0, -top), i1 = min(h, hq - top)
    cdef const floating* row
    cdef floating* out
    for j in range(s):
        # Output column o reads input column o + j*dw - left.
        lo = max(0, left - j * dw)
        hi = min(out_w, w + left - j * dw)
        for i in range(i0, i1):
            row = src + i * w + j * dw - left
            out = dst + (j * hq + i + top) * out_w
            if hi > lo:
                copy_run(row + lo, out + lo, hi - lo)


cdef inline void _prefetch_lines(const floating* p, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """Ask for the cache lines of p[start:stop] to be read a while later: into L2, where lines
    asked for a whole plane ahead do not push the working set out of L1. A hint: it never
    faults, so the range may reach past an array's end. As ``prefetch_lines`` in
    numba/_runtime.py."""
    cdef Py_ssize_t i = start
    while i < stop:
        __builtin_prefetch(p + i, 0, 2)
        i += 64 // sizeof(floating)


cdef inline void _prefetch_lines_for_write(floating* p, Py_ssize_t start, Py_ssize_t stop) noexcept nogil:
    """``_prefetch_lines`` for lines about to be written (fetched in the exclusive state)."""
    cdef Py_ssize_t i = start
    while i < stop:
        __builtin_prefetch(p + i, 1, 3)
        i += 64 // sizeof(floating)


cdef inline void _copy_row(const floating* raw, Py_ssize_t h, Py_ssize_t w, Py_ssize_t top,
                           Py_ssize_t left, floating* dst, Py_ssize_t wp, Py_ssize_t a) noexcept nogil:
    """Row ``a`` of the padded plane ``dst`` (zero border already in place) from ``raw``."""
    cdef Py_ssize_t sa = a - top, b
    cdef Py_ssize_t b0 = left if left > 0 else 0
    cdef Py_ssize_t b1 = left + w if left + w < wp else wp
    cdef floating* row = dst + a * wp
    cdef const floating* s = raw + sa * w - left
    if sa < 0 or sa >= h or b1 <= b0:
        return
    copy_run(s + b0, row + b0, b1 - b0)


cdef inline Py_ssize_t _copy_rows(const floating* raw, Py_ssize_t h, Py_ssize_t w, Py_ssize_t top,
                                  Py_ssize_t left, floating* dst, Py_ssize_t wp, Py_ssize_t filled,
                                  Py_ssize_t end) noexcept nogil:
    """Rows ``filled`` .. ``end - 1`` of the padded plane (``_copy_row``); the rows now filled."""
    while filled < end:
        _copy_row(raw, h, w, top, left, dst, wp, filled)
        filled += 1
    return filled


cdef inline void _tile_load(floating* a, const floating* dst, Py_ssize_t j0, Py_ssize_t n,
                            Py_ssize_t wq, Py_ssize_t out_w) noexcept nogil:
    """a[i] = output j0 + i of a plane stored (out_h, out_w) but indexed by wide rows of wq."""
    cdef Py_ssize_t j = j0, end = j0 + n, oh, ow, row_end, valid_end, i
    while j < end:
        oh = j // wq
        ow = j - oh * wq
        row_end = (oh + 1) * wq
        if row_end > end:
            row_end = end
        valid_end = oh * wq + out_w
        if valid_end > row_end:
            valid_end = row_end
        if valid_end > j:
            copy_run(dst + oh * out_w + (j - oh * wq), a + (j - j0), valid_end - j)
        for i in range(valid_end if valid_end > j else j, row_end):
            a[i - j0] = 0
        j = row_end


cdef inline Py_ssize_t _next_segment(Py_ssize_t* i, Py_ssize_t* oh, Py_ssize_t* ow, Py_ssize_t n,
                                     Py_ssize_t wq, Py_ssize_t out_w,
                                     Py_ssize_t* count) noexcept nogil:
    """Walk a tile of wide-row outputs row by row: the next run of valid (column < out_w)
    outputs starts at tile index i[0] and plane index (returned); its length goes to count[0].
    Returns -1 when the tile is done."""
    cdef Py_ssize_t c, start
    while i[0] < n:
        c = out_w - ow[0]
        if c > n - i[0]:
            c = n - i[0]
        if c > 0:
            start = oh[0] * out_w + ow[0]
            count[0] = c
            return start
        i[0] += wq - ow[0]
        ow[0] = 0
        oh[0] += 1
    return -1


cdef inline void _advance_row(Py_ssize_t* i, Py_ssize_t* oh, Py_ssize_t* ow,
                              Py_ssize_t wq) noexcept nogil:
    i[0] += wq - ow[0]
    ow[0] = 0
    oh[0] += 1


cdef inline void _tile_store(const floating* a, floating* dst, Py_ssize_t j0, Py_ssize_t n,
                             Py_ssize_t wq, Py_ssize_t out_w) noexcept nogil:
    """The real outputs of a tile (``_tile_load``'s layout) into their rows of ``dst``."""
    cdef Py_ssize_t si = 0, soh = j0 // wq, sow = j0 - soh * wq, start, count
    while True:
        start = _next_segment(&si, &soh, &sow, n, wq, out_w, &count)
        if start < 0:
            break
        copy_run(a + si, dst + start, count)
        _advance_row(&si, &soh, &sow, wq)


cdef inline void _taps(const floating* src, const Py_ssize_t* toff, Py_ssize_t ntaps,
                       const floating* wr, Py_ssize_t wstride, Py_ssize_t nq,
                       floating* acc, Py_ssize_t astride, Py_ssize_t n,
                       const floating* init, Py_ssize_t chunk) noexcept nogil:
    """``tap_block`` ``chunk`` taps at a time (the input lines those taps read for one block
    stay in L1 for the next block); the first chunk starts from ``init`` unless NULL."""
    cdef Py_ssize_t t = 0, m
    while t < ntaps:
        m = ntaps - t
        if m > chunk:
            m = chunk
        tap_block(nq, src, toff + t, m, wr + t, wstride, acc, astride, n, init if t == 0 else NULL)
        t += m


cdef void _tile(const floating* src, const Py_ssize_t* toff, Py_ssize_t ntaps,
                const floating* wr, Py_ssize_t wstride, Py_ssize_t nq, const floating* init,
                floating* dst, Py_ssize_t dstride, Py_ssize_t j0, Py_ssize_t n,
                Py_ssize_t wq, Py_ssize_t out_w, Py_ssize_t chunk) noexcept nogil:
    """``nq`` (1-FC_TAP_ROWS) output channels x ``n`` (<= TILE) outputs: y_q[j] = s_q + sum_t w_q[t] * src[i + toff[t]].

    Output i of the tile is output ``j0 + i`` of planes indexed by wide rows of ``wq``
    columns, of which the first ``out_w`` are real. s_q is ``init[q]`` (the bias, or 0),
    or with ``init`` NULL the value already in ``dst`` (an earlier channel chunk). Channel
    q's weights are ``wr + q*wstride`` and its plane ``dst + q*dstride``. The sums are made
    in a local tile, then the real outputs are copied to ``dst``.
    """
    cdef floating acc[FC_TAP_ROWS * TILE]
    cdef Py_ssize_t q
    # The output lines are requested for writing now, while the taps are summed: written in
    # one burst at the end, their misses otherwise stalled the copy (a fifth of the CIFAR
    # conv1 forward time).
    cdef Py_ssize_t p0 = (j0 // wq) * out_w, p1 = ((j0 + n - 1) // wq + 1) * out_w
    for q in range(nq):
        _prefetch_lines_for_write(dst + q * dstride, p0, p1)
    if init == NULL:
        for q in range(nq):
            _tile_load(acc + q * TILE, dst + q * dstride, j0, n, wq, out_w)
    _taps(src, toff, ntaps, wr, wstride, nq, acc, TILE, n, init, chunk)
    for q in range(nq):
        _tile_store(acc + q * TILE, dst + q * dstride, j0, n, wq, out_w)


# ---------------------------------------------------------------- correlation core

cdef void _plane3x3(const floating* src, Py_ssize_t wp, floating* y, Py_ssize_t out_h,
                    Py_ssize_t out_w, const floating* w, floating b, const floating* raw,
                    Py_ssize_t h, Py_ssize_t wr, Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    """y (out_h x out_w) = b + 3x3 correlation (stride 1, dilation 1) of a plane with row
    stride ``wp`` (already padded, or unpadded when there is no padding).

    The one-input-channel fast path (depthwise layers, and first layers with C = 1):
    FC_STENCIL_ROWS output rows per ``stencil3x3_rows`` call (``microkernels.pxd``) share
    their input rows' loads; the sum is formed tap after tap in tap order, as ``tap_block``
    forms it. As the Numba twin's ``_plane3x3``.

    With ``raw`` set, ``src`` is a zero-bordered workspace whose rows are copied from the
    unpadded plane ``raw`` (h x wr, placed at top/left) just before they are first needed,
    so the memory reads of the copy overlap the arithmetic on the rows already there.

    Memory-bound on data not in cache (12.8 MB in and out for the depthwise layer): the
    lines of the next input plane and of the next output rows are requested a block ahead
    (depthwise forward and grad input 0.78-0.90x the time on data not in cache). The
    hardware prefetchers follow a stream within a page but start over at every plane.
    """
    cdef Py_ssize_t oh = 0, rows, filled = 0, plane = h * wr
    while oh < out_h:
        rows = min(<Py_ssize_t>FC_STENCIL_ROWS, out_h - oh)
        if raw != NULL:
            filled = _copy_rows(raw, h, wr, top, left, <floating*>src, wp, filled,
                                min(oh + rows + 2 + COPY_AHEAD, out_h + 2))
            # The next plane (the next task's, or the next image's) a share per block.
            _prefetch_lines(raw + plane, oh * plane // out_h, (oh + rows) * plane // out_h)
        # The next block's output lines, flat (the last block asks for the next plane's
        # first rows): a store to a line not in cache otherwise waited for its read.
        _prefetch_lines_for_write(y, (oh + rows) * out_w, (oh + 2 * rows) * out_w)
        stencil3x3_rows(rows, w, b, src + oh * wp, wp, y + oh * out_w, out_w, out_w)
        oh += rows


cdef inline Py_ssize_t _channel_block(Py_ssize_t left) noexcept nogil:
    """Output channels (filters) for the next ``dot_block`` call when ``left`` remain: 4, but
    5 and 6 go as 3 + 2 and 3 + 3. A block of 2 channels holds 6 sums, too few chains to
    cover the FMA latency, so 3 + 3 beats 4 + 2 (6 channels: LeNet conv2's grad_input 0.95x
    the time, LeNet conv1's forward and grad_weight 0.97x). The blocking changes no result."""
    if left == 5 or left == 6:
        return 3
    return left if left < 4 else 4


cdef inline Py_ssize_t _tap_rows(Py_ssize_t left) noexcept nogil:
    """Output channels for the next ``tap_block`` call: blocks of at most FC_TAP_ROWS as
    equal as possible (with 4: 5 and 6 as 3 + 2 and 3 + 3, as ``_channel_block``; the Numba
    twin's rule). The blocking changes no result."""
    cdef Py_ssize_t blocks = (left + FC_TAP_ROWS - 1) // FC_TAP_ROWS
    return (left + blocks - 1) // blocks


cdef void _forward_task(const Geometry* g, Py_ssize_t task, const floating* x, const floating* w,
                        const floating* bias, floating* y, const Py_ssize_t* toff,
                        floating* ws) noexcept nogil:
    """One task of ``_forward_core``: image n, group, block of ``kbt`` output channels."""
    cdef Py_ssize_t kb = task % g.nkb
    cdef Py_ssize_t rest = task // g.nkb
    cdef Py_ssize_t grp = rest % g.groups
    cdef Py_ssize_t n = rest // g.groups
    cdef Py_ssize_t k0 = grp * g.kg + kb * g.kbt
    cdef Py_ssize_t nk = g.kg - kb * g.kbt
    cdef Py_ssize_t rs = g.r * g.s, crs = g.cg * g.r * g.s
    cdef Py_ssize_t out_plane = g.out_h * g.out_w, in_plane = g.h * g.w
    cdef const floating* x_img = x + (n * g.c + grp * g.cg) * in_plane
    cdef floating* y_blk
    cdef const floating* w_blk = w + k0 * crs
    cdef const floating* base
    cdef floating zeros[FC_TAP_ROWS]    # the starting sums when there is no bias
    cdef Py_ssize_t vl = FC_VECTOR_BYTES // sizeof(floating)    # lanes of tap_block's vectors
    cdef Py_ssize_t cc, ncb, c, ntaps, length, j0, m, kk, nq, oh, ow0, runs, run, t, mt, tile, span
    cdef bint first
    for kk in range(FC_TAP_ROWS):
        zeros[kk] = 0
    if nk > g.kbt:
        nk = g.kbt
    y_blk = y + (n * g.k + k0) * out_plane
    cc = 0
    while cc < g.cg:
        ncb = g.cg - cc
        if ncb > g.cb:
            ncb = g.cb
        if g.plane3x3:
            # One input channel: each output plane in one pass over the (padded) plane,
            # whose rows the first pass copies as it goes.
            for kk in range(nk):
                _plane3x3(<const floating*>ws if g.copy else x_img, g.wp, y_blk + kk * out_plane, g.out_h,
                          g.out_w, w_blk + kk * crs, bias[k0 + kk] if bias != NULL else 0,
                          x_img if g.copy and kk == 0 else NULL, g.h, g.w, g.top, g.left)
            break
        if g.shifted:
            for c in range(ncb):
                _copy_shifted(x_img + (cc + c) * in_plane, g.h, g.w, ws + c * g.ps, g.hq, g.out_w, g.s,
                              g.dw, g.top, g.left)
            base = ws
        elif g.copy:
            for c in range(ncb):
                if g.phased:
                    _copy_phases(x_img + (cc + c) * in_plane, g.h, g.w, ws + c * g.ps,
                                 g.hp, g.wp, g.sh, g.sw, g.top, g.left)
                else:
                    _copy_interior(x_img + (cc + c) * in_plane, g.h, g.w, ws + c * g.ps,
                                   g.hp, g.wp, g.top, g.left)
            base = ws
        else:
            base = x_img + cc * in_plane
        ntaps = ncb * rs
        first = cc == 0
        # Runs summed straight into y (no tile to fill and copy out): planes as wide as the
        # output (column-shifted, or 1x1 read in place) are one run in y's own order; rows of
        # at least one 3-vector block whose last vector wastes no more lanes than a wide row
        # has extra columns are a run each (CIFAR conv1 0.74x, the 7x7 stem 0.82x the time of
        # tiles; a 28-wide row, 3x3 stride 2 on 56x56 with 29-wide phase planes, stays with
        # tiles: its half-empty last vector made it 17% slower). Output row oh reads
        # base[oh*wp + ow + toff[t]]; TILE outputs at a time go through every block of
        # channels while the input lines they read are in L1.
        if g.shifted or g.wp == g.out_w:
            runs = 1
            run = out_plane
        elif g.out_w >= 3 * vl and (g.out_w + vl - 1) // vl * vl <= g.wp:
            runs = g.out_h
            run = g.out_w
        else:
            runs = 0
        if runs > 0:
            # A 1x1 filter's taps each read another input plane: one tap chunk at a time for
            # all the blocks of output channels (``direct_plan.ONE_BY_ONE_TILE``); other
            # filters every tap for one block, then the next.
            if rs == 1 and ntaps > g.tap_chunk:
                tile, span = _one_by_one_tile, g.tap_chunk
            else:
                tile, span = TILE, ntaps
            for oh in range(runs):
                j0 = 0
                while j0 < run:
                    m = min(tile, run - j0)
                    t = 0
                    while t < ntaps:
                        mt = min(span, ntaps - t)
                        kk = 0
                        while kk < nk:
                            nq = _tap_rows(nk - kk)
                            _taps(base + oh * g.wp + j0, toff + t, mt, w_blk + kk * crs + cc * rs + t, crs, nq,
                                  y_blk + kk * out_plane + oh * g.out_w + j0, out_plane, m,
                                  (bias + k0 + kk if bias != NULL else zeros) if first and t == 0 else NULL,
                                  g.tap_chunk)
                            kk += nq
                        t += mt
                    j0 += m
            cc += ncb
            continue
        # Short rows: one run per plane, output j = oh*wp + ow reading base[j + toff[t]]
        # (unit steps; a strided layer reads its phase planes), in tiles.
        length = (g.out_h - 1) * g.wp + g.out_w
        j0 = 0
        while j0 < length:
            m = length - j0
            if m > TILE:
                m = TILE
            kk = 0
            while kk < nk:
                nq = _tap_rows(nk - kk)
                _tile(base + j0, toff, ntaps, w_blk + kk * crs + cc * rs, crs, nq,
                      (bias + k0 + kk if bias != NULL else zeros) if first else NULL,
                      y_blk + kk * out_plane, out_plane, j0, m, g.wp, g.out_w, g.tap_chunk)
                kk += nq
            j0 += m
        cc += ncb


cdef void _forward_core(const Geometry* g, const floating* x, const floating* w,
                        const floating* bias, floating* y, const Py_ssize_t* toff,
                        floating* ws, Py_ssize_t ws_stride, Py_ssize_t chunk, int nthreads) noexcept nogil:
    """y = correlation of x with w (+ bias), parallel over (image, group, output-channel block),
    ``chunk`` consecutive tasks per take (``direct_plan.tasks_per_take``).

    Each task writes its own output planes, so there are no races; ``ws`` holds one padded
    plane buffer of ``ws_stride`` elements per thread.
    """
    cdef Py_ssize_t ntasks = g.n * g.groups * g.nkb
    cdef Py_ssize_t task
    for task in prange(ntasks, num_threads=nthreads, schedule="dynamic", chunksize=chunk):
        _forward_task(g, task, x, w, bias, y, toff, ws + omp_get_thread_num() * ws_stride)


# ---------------------------------------------------------------- strided grad_input (scatter)

cdef void _grad_input_scatter_task(const Geometry* g, Py_ssize_t task, const floating* gy,
                                   const floating* w, floating* gx, floating* ws) noexcept nogil:
    """Image n, input channel c: add every tap's contribution into private phase planes.

    The padded gradient plane is held as sh*sw phase planes (as ``_copy_phases`` lays out
    an input), where tap (r, s) of output row oh lands on one contiguous run: every update
    is a unit-stride axpy. The planes are interleaved back into grad_input at the end.
    """
    cdef Py_ssize_t c = task % g.c
    cdef Py_ssize_t n = task // g.c
    cdef Py_ssize_t grp = c // g.cg, cl = c - grp * g.cg
    cdef Py_ssize_t out_plane = g.out_h * g.out_w, qplane = g.hp * g.wp
    cdef Py_ssize_t kk, k, r, s, oh, ow, i, pi, b, j0, cnt, m
    cdef floating wv
    cdef floating* dst
    cdef floating* base
    cdef const floating* src
    cdef const floating* gy_k
    cdef const floating* row
    memset(ws, 0, g.ps * sizeof(floating))
    for kk in range(g.kg):
        k = grp * g.kg + kk
        gy_k = gy + (n * g.k + k) * out_plane
        for r in range(g.r):
            for s in range(g.s):
                wv = w[((k * g.cg + cl) * g.r + r) * g.s + s]
                base = (ws + (((r * g.dh) % g.sh) * g.sw + (s * g.dw) % g.sw) * qplane
                        + ((r * g.dh) // g.sh) * g.wp + (s * g.dw) // g.sw)
                for oh in range(g.out_h):
                    dst = base + oh * g.wp
                    src = gy_k + oh * g.out_w
                    for ow in range(g.out_w):
                        dst[ow] = dst[ow] + wv * src[ow]
    # grad_input pixel (i, j) is padded pixel (i + top, j + left).
    dst = gx + (n * g.c + c) * g.h * g.w
    for i in range(g.h):
        pi = i + g.top
        for b in range(g.sw):
            j0 = ((b - g.left) % g.sw + g.sw) % g.sw
            if j0 >= g.w:
                continue
            cnt = (g.w - j0 + g.sw - 1) // g.sw
            row = (ws + ((pi % g.sh) * g.sw + b) * qplane + (pi // g.sh) * g.wp
                   + (j0 + g.left) // g.sw)
            for m in range(cnt):
                dst[i * g.w + j0 + m * g.sw] = row[m]


cdef void _grad_input_scatter(const Geometry* g, const floating* gy, const floating* w,
                              floating* gx, floating* ws, Py_ssize_t ws_stride,
                              int nthreads) noexcept nogil:
    cdef Py_ssize_t task
    for task in prange(g.n * g.c, num_threads=nthreads, schedule="dynamic"):
        _grad_input_scatter_task(g, task, gy, w, gx, ws + omp_get_thread_num() * ws_stride)


# ---------------------------------------------------------------- grad_weight (dot products)

cdef void _plane3x3_gw(const floating* gyp, Py_ssize_t out_h, Py_ssize_t out_w,
                       const floating* src, Py_ssize_t wp, floating* p, const floating* raw,
                       Py_ssize_t h, Py_ssize_t wr, Py_ssize_t top, Py_ssize_t left,
                       const floating* next_g, const floating* next_x) noexcept nogil:
    """p[t*LANES + l] += lane l of sum over the plane of grad_output x input shifted by tap t.

    The one-input-channel grad_weight path (depthwise and C = 1 layers, 3x3, stride and
    dilation 1): ``src`` is the (padded) input plane with row stride ``wp``, ``gyp`` the
    (out_h x out_w) grad_output plane, read in place. The nine dot products keep LANES
    partial sums each in registers across the whole plane (the caller carries them over
    images and adds the lanes once at the end), and two grad_output rows are taken per pass
    so that they share their input rows. ``raw``: as for ``_plane3x3`` (rows of the padded
    input copied just before first use). ``next_g`` and ``next_x`` (each or NULL): the next
    image's grad_output and input planes, requested a share per pass as ``_plane3x3`` does
    (0.86-0.92x the time on data not in cache); the input plane by one filter's pass only.
    """
    cdef floating q[9][LANES]
    cdef const floating* g0
    cdef const floating* g1
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef const floating* r3
    cdef floating ga, gb
    cdef Py_ssize_t nfull = out_w - out_w % LANES
    cdef Py_ssize_t t, l, i, oh, filled = 0
    for t in range(9):
        for l in range(LANES):
            q[t][l] = p[t * LANES + l]
    oh = 0
    while oh + 2 <= out_h:
        if raw != NULL:
            filled = _copy_rows(raw, h, wr, top, left, <floating*>src, wp, filled,
                                min(oh + 4 + COPY_AHEAD, out_h + 2))
        if next_g != NULL:
            _prefetch_lines(next_g, oh * out_w, (oh + 2) * out_w)
        if next_x != NULL:
            _prefetch_lines(next_x, oh * (h * wr) // out_h, (oh + 2) * (h * wr) // out_h)
        g0 = gyp + oh * out_w
        g1 = g0 + out_w
        r0 = src + oh * wp
        r1 = r0 + wp
        r2 = r1 + wp
        r3 = r2 + wp
        for i in range(0, nfull, 8):  # 8 == LANES
            for l in range(LANES):
                ga = g0[i + l]
                gb = g1[i + l]
                q[0][l] += ga * r0[i + l]; q[0][l] += gb * r1[i + l]
                q[1][l] += ga * r0[i + l + 1]; q[1][l] += gb * r1[i + l + 1]
                q[2][l] += ga * r0[i + l + 2]; q[2][l] += gb * r1[i + l + 2]
                q[3][l] += ga * r1[i + l]; q[3][l] += gb * r2[i + l]
                q[4][l] += ga * r1[i + l + 1]; q[4][l] += gb * r2[i + l + 1]
                q[5][l] += ga * r1[i + l + 2]; q[5][l] += gb * r2[i + l + 2]
                q[6][l] += ga * r2[i + l]; q[6][l] += gb * r3[i + l]
                q[7][l] += ga * r2[i + l + 1]; q[7][l] += gb * r3[i + l + 1]
                q[8][l] += ga * r2[i + l + 2]; q[8][l] += gb * r3[i + l + 2]
        for i in range(nfull, out_w):
            l = i - nfull
            ga = g0[i]
            gb = g1[i]
            q[0][l] += ga * r0[i]; q[0][l] += gb * r1[i]
            q[1][l] += ga * r0[i + 1]; q[1][l] += gb * r1[i + 1]
            q[2][l] += ga * r0[i + 2]; q[2][l] += gb * r1[i + 2]
            q[3][l] += ga * r1[i]; q[3][l] += gb * r2[i]
            q[4][l] += ga * r1[i + 1]; q[4][l] += gb * r2[i + 1]
            q[5][l] += ga * r1[i + 2]; q[5][l] += gb * r2[i + 2]
            q[6][l] += ga * r2[i]; q[6][l] += gb * r3[i]
            q[7][l] += ga * r2[i + 1]; q[7][l] += gb * r3[i + 1]
            q[8][l] += ga * r2[i + 2]; q[8][l] += gb * r3[i + 2]
        oh += 2
    if oh < out_h:
        if raw != NULL:
            filled = _copy_rows(raw, h, wr, top, left, <floating*>src, wp, filled, out_h + 2)
        g0 = gyp + oh * out_w
        r0 = src + oh * wp
        r1 = r0 + wp
        r2 = r1 + wp
        for i in range(0, nfull, 8):  # 8 == LANES
            for l in range(LANES):
                ga = g0[i + l]
                q[0][l] += ga * r0[i + l]
                q[1][l] += ga * r0[i + l + 1]
                q[2][l] += ga * r0[i + l + 2]
                q[3][l] += ga * r1[i + l]
                q[4][l] += ga * r1[i + l + 1]
                q[5][l] += ga * r1[i + l + 2]
                q[6][l] += ga * r2[i + l]
                q[7][l] += ga * r2[i + l + 1]
                q[8][l] += ga * r2[i + l + 2]
        for i in range(nfull, out_w):
            l = i - nfull
            ga = g0[i]
            q[0][l] += ga * r0[i]
            q[1][l] += ga * r0[i + 1]
            q[2][l] += ga * r0[i + 2]
            q[3][l] += ga * r1[i]
            q[4][l] += ga * r1[i + 1]
            q[5][l] += ga * r1[i + 2]
            q[6][l] += ga * r2[i]
            q[7][l] += ga * r2[i + 1]
            q[8][l] += ga * r2[i + 2]
    for t in range(9):
        for l in range(LANES):
            p[t * LANES + l] = q[t][l]


cdef void _grad_weight_task(const Geometry* g, Py_ssize_t task, const floating* gy,
                            const floating* x, floating* part, const Py_ssize_t* toff,
                            floating* ws) noexcept nogil:
    """Group, block of ``kbt`` filters, batch chunk: dot products over that chunk's images.

    ``ws`` holds the wide copies of the block's grad_output planes (zero in the extra
    columns, so those positions add nothing), the padded input planes (when copied), then
    ``dot_block``'s lane sums of every (filter, tap) dot product.
    """
    cdef Py_ssize_t nci = task % g.nc
    cdef Py_ssize_t rest = task // g.nc
    cdef Py_ssize_t kb = rest % g.nkb
    cdef Py_ssize_t grp = rest // g.nkb
    cdef Py_ssize_t n0 = nci * g.n // g.nc, n1 = (nci + 1) * g.n // g.nc
    cdef Py_ssize_t k0 = grp * g.kg + kb * g.kbt
    cdef Py_ssize_t nk = g.kg - kb * g.kbt
    cdef Py_ssize_t rs = g.r * g.s, crs = g.cg * g.r * g.s
    cdef Py_ssize_t out_plane = g.out_h * g.out_w, in_plane = g.h * g.w
    cdef Py_ssize_t gplane = g.out_h * g.wp
    cdef floating* out = part + (nci * g.k + k0) * crs
    cdef floating* gws = ws
    cdef floating* xws = ws + g.kbt * gplane
    cdef const floating* gy_blk
    cdef const floating* gp
    cdef const floating* x_img
    cdef const floating* base
    cdef Py_ssize_t gstride, n, kk, nq, cc, ncb, c, ntaps, oh, a
    cdef Py_ssize_t length = (g.out_h - 1) * g.wp + g.out_w   # wide positions of a plane
    cdef Py_ssize_t span_rows = max(1, FC_DOT_SPAN // g.out_w)
    cdef floating lanes[4][9 * LANES]
    cdef floating total
    cdef Py_ssize_t t, l
    # dot_block's lane sums, carried over the chunk's images (L per dot product).
    cdef Py_ssize_t nl = FC_DOT_LANES_F32 if floating is float else FC_DOT_LANES_F64
    cdef floating* dots = xws + (g.cb * g.ps if g.copy else 0)
    if nk > g.kbt:
        nk = g.kbt
    if g.plane3x3:
        # One input channel, 3x3: lane partial sums carried over the chunk's images.
        for kk in range(nk):
            for a in range(9 * LANES):
                lanes[kk][a] = 0
        for n in range(n0, n1):
            x_img = x + (n * g.c + grp * g.cg) * in_plane
            gy_blk = gy + (n * g.k + k0) * out_plane
            for kk in range(nk):
                _plane3x3_gw(gy_blk + kk * out_plane, g.out_h, g.out_w,
                             <const floating*>xws if g.copy else x_img, g.wp, lanes[kk],
                             x_img if g.copy and kk == 0 else NULL, g.h, g.w, g.top, g.left,
                             gy_blk + (g.k + kk) * out_plane if n + 1 < n1 else NULL,
                             x_img + g.c * in_plane if n + 1 < n1 and kk == 0 else NULL)
        for kk in range(nk):
            for t in range(9):
                total = 0
                for l in range(LANES):
                    total = total + lanes[kk][t * LANES + l]
                out[kk * 9 + t] = total
        return
    for a in range(nk * crs * nl):
        dots[a] = 0
    for n in range(n0, n1):
        gy_blk = gy + (n * g.k + k0) * out_plane
        gp = gy_blk
        gstride = out_plane
        if g.wp != g.out_w and not g.rows:
            for kk in range(nk):
                _copy_interior(gy_blk + kk * out_plane, g.out_h, g.out_w, gws + kk * gplane,
                             g.out_h, g.wp, 0, 0)
            gp = gws
            gstride = gplane
        x_img = x + (n * g.c + grp * g.cg) * in_plane
        cc = 0
        while cc < g.cg:
            ncb = g.cg - cc
            if ncb > g.cb:
                ncb = g.cb
            if g.copy:
                for c in range(ncb):
                    if g.phased:
                        _copy_phases(x_img + (cc + c) * in_plane, g.h, g.w, xws + c * g.ps,
                                     g.hp, g.wp, g.sh, g.sw, g.top, g.left)
                    else:
                        _copy_interior(x_img + (cc + c) * in_plane, g.h, g.w, xws + c * g.ps,
                                       g.hp, g.wp, g.top, g.left)
                base = xws
            else:
                base = x_img + cc * in_plane
            ntaps = ncb * rs
            kk = 0
            while kk < nk:
                nq = _channel_block(nk - kk)
                if g.rows:
                    # One run per output row, its last vector masked (no extra columns), in
                    # spans of about FC_DOT_SPAN positions whose lines stay in L1.
                    oh = 0
                    while oh < g.out_h:
                        dot_block(nq, gp + kk * gstride + oh * g.out_w, gstride, base + oh * g.wp,
                                  toff, ntaps, g.out_w, dots + (kk * crs + cc * rs) * nl, crs * nl,
                                  min(span_rows, g.out_h - oh), g.out_w, g.wp)
                        oh += span_rows
                else:
                    dot_block(nq, gp + kk * gstride, gstride, base, toff, ntaps, length,
                              dots + (kk * crs + cc * rs) * nl, crs * nl, 1, 0, 0)
                kk += nq
            cc += ncb
    for a in range(nk * crs):
        total = 0
        for l in range(nl):    # a fixed order: the same sum for any thread count
            total = total + dots[a * nl + l]
        out[a] = total


cdef void _grad_weight_core(const Geometry* g, const floating* gy, const floating* x,
                            floating* part, const Py_ssize_t* toff, floating* ws,
                            Py_ssize_t ws_stride, int nthreads) noexcept nogil:
    """part[chunk] = grad_weight of each batch chunk, parallel over (group, filter block, chunk)."""
    cdef Py_ssize_t task
    for task in prange(g.groups * g.nkb * g.nc, num_threads=nthreads, schedule="dynamic"):
        _grad_weight_task(g, task, gy, x, part, toff, ws + omp_get_thread_num() * ws_stride)


# ---------------------------------------------------------------- grad_bias

cdef floating _channel_sum(const floating* gy, Py_ssize_t kk, Py_ssize_t n, Py_ssize_t k,
                           Py_ssize_t plane) noexcept nogil:
    """Sum of grad_output[:, kk] with LANES partial sums, added in a fixed order."""
    cdef Py_ssize_t img, i, l, nfull = plane - plane % LANES
    cdef floating p[LANES]
    cdef floating total = 0
    cdef const floating* src
    for l in range(LANES):
        p[l] = 0
    for img in range(n):
        src = gy + (img * k + kk) * plane
        for i in range(0, nfull, 8):  # 8 == LANES
            for l in range(LANES):
                p[l] += src[i + l]
        for i in range(nfull, plane):
            p[i - nfull] += src[i]
    for l in range(LANES):
        total = total + p[l]
    return total


cdef void _grad_bias_core(const floating* gy, floating* gb, Py_ssize_t n, Py_ssize_t k,
                          Py_ssize_t plane, int nthreads) noexcept nogil:
    """gb[k] = grad_output summed over images and pixels, parallel over channels."""
    cdef Py_ssize_t kk
    for kk in prange(k, num_threads=nthreads, schedule="static"):
        gb[kk] = _channel_sum(gy, kk, n, k, plane)


# ---------------------------------------------------------------- Python-level wrappers

cdef Geometry _geometry(Py_ssize_t n, Py_ssize_t c, Py_ssize_t h, Py_ssize_t w, Py_ssize_t k,
                        Py_ssize_t groups, Py_ssize_t r, Py_ssize_t s, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t top, Py_ssize_t left,
                        Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t out_h, Py_ssize_t out_w):
    cdef Geometry g
    g.n = n; g.c = c; g.h = h; g.w = w; g.k = k; g.groups = groups
    g.cg = c // groups; g.kg = k // groups; g.r = r; g.s = s
    g.sh = sh; g.sw = sw; g.dh = dh; g.dw = dw
    g.top = top; g.left = left; g.hp = hp; g.wp = wp
    g.out_h = out_h; g.out_w = out_w
    g.phased = sh > 1 or sw > 1
    g.copy = g.phased or not (top == 0 and left == 0 and hp == h and wp == w)
    if not g.copy:
        g.hp = h
        g.wp = w
    g.ps = g.hp * g.wp
    if g.phased:
        # Phase planes of the padded plane: hp, wp become their size, ps covers all of them.
        g.hp = (hp + sh - 1) // sh
        g.wp = (wp + sw - 1) // sw
        g.ps = sh * sw * g.hp * g.wp
    g.plane3x3 = not g.phased and g.cg == 1 and g.kg == 1 and r == 3 and s == 3 and dh == 1 and dw == 1
    g.cb = direct_plan.channel_chunk(g.cg, g.ps, r * s) if g.copy else g.cg
    g.kbt = g.kg
    g.nkb = 1
    g.nc = 1
    g.rows = False
    g.shifted = False
    g.hq = 0
    g.tap_chunk = direct_plan.tap_chunk(r * s)
    return g


cdef Geometry _forward_geometry(p):
    """The geometry of the forward correlation of ConvParams ``p`` (x -> y)."""
    return _geometry(p.n, p.c, p.h, p.w, p.k, p.groups, p.r, p.s, p.stride_h, p.stride_w,
                     p.dil_h, p.dil_w, p.pad_top, p.pad_left,
                     p.h + p.pad_top + p.pad_bottom, p.w + p.pad_left + p.pad_right, p.out_h, p.out_w)


cdef void _run_forward(Geometry* g, const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                       const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y, int nthreads):
    """The correlation core over checked arrays; workspace and tap offsets prepared here."""
    g.kbt = direct_plan.task_block(g.n * g.groups, g.kg, nthreads, FC_TAP_ROWS)
    g.nkb = (g.kg + g.kbt - 1) // g.kbt
    if not g.plane3x3 and direct_plan.shifted_pays(g.sh, g.sw, g.wp, g.out_w):
        g.shifted = True
        g.copy = True
        g.hq = g.out_h + (g.r - 1) * g.dh
        g.ps = g.s * g.hq * g.out_w
        g.cb = direct_plan.channel_chunk(g.cg, g.ps, g.r * g.s)
        toff = direct_plan.shifted_tap_offsets(g.cb, g.r, g.s, g.dh, g.hq, g.out_w)
    else:
        toff = direct_plan.tap_offsets(g.cb, g.r, g.s, g.dh, g.dw, g.sh, g.sw, g.hp, g.wp, g.ps)
    cdef Py_ssize_t[::1] toff_v = toff
    cdef Py_ssize_t ws_stride = g.cb * g.ps if g.copy else 0
    dtype = np.float32 if floating is float else np.float64
    workspace = np.zeros(max(1, nthreads * ws_stride), dtype=dtype)  # zero borders
    cdef floating[::1] ws_v = workspace
    cdef const floating* b = &bias[0] if has_bias else NULL
    cdef Py_ssize_t chunk = direct_plan.tasks_per_take(g.n * g.groups * g.nkb, nthreads)
    with nogil:
        _forward_core(g, &x[0, 0, 0, 0], &w[0, 0, 0, 0], b, &y[0, 0, 0, 0], &toff_v[0],
                      &ws_v[0], ws_stride, chunk, nthreads)


cdef void _conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, const floating[::1] bias,
                          bint has_bias, floating[:, :, :, ::1] y, p, int nthreads):
    cdef Geometry g = _forward_geometry(p)
    _run_forward(&g, x, w, bias, has_bias, y, nthreads)


cdef void _conv2d_grad_input(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] w,
                             floating[:, :, :, ::1] gx, p, int nthreads):
    cdef Geometry g
    cdef Py_ssize_t hp, wp, ws_stride, left, shared
    cdef floating[::1] ws_v
    cdef const floating[:, :, :, ::1] wt
    dtype = np.float32 if floating is float else np.float64
    # The gather multiplies the zero border of grad_output by the weights: exact for finite
    # weights, but 0 * inf = NaN where PyTorch has none. Non-finite weights take the scatter,
    # which only ever multiplies real grad_output values.
    if p.stride_h == 1 and p.stride_w == 1 and np.isfinite(np.asarray(w)).all():
        # gx = gy (zero-padded by the kernel extent minus the forward padding) correlated with
        # the flipped filters, transposed to (c, k/groups, r, s) within each group.
        hp = p.h + p.dil_h * (p.r - 1)
        wp = p.w + p.dil_w * (p.s - 1)
        # Zero borders of the padded grad_output rows: left, right.
        left = p.dil_w * (p.s - 1) - p.pad_left
        shared = min(left, p.dil_w * (p.s - 1) - p.pad_right)
        if shared > 0:
            # The right border shares its zeros with the next row's left border: a read past
            # the end of a row lands in the next row's first columns, which hold zeros, so
            # each row is ``shared`` columns narrower (and the plane gets that many zeros
            # after its last row). Fewer wide-row outputs to compute: LeNet conv2's
            # grad_input (14 wide, 5x5) 14 per row instead of 18 (0.83x the time).
            wp -= shared
        g = _geometry(p.n, p.k, p.out_h, p.out_w, p.c, p.groups, p.r, p.s, 1, 1,
                      p.dil_h, p.dil_w, p.dil_h * (p.r - 1) - p.pad_top, left, hp, wp, p.h, p.w)
        if shared > 0 and g.copy:
            g.ps += shared
        flipped = np.asarray(w).reshape(p.groups, p.k_per_group, p.c_per_group, p.r, p.s)[..., ::-1, ::-1]
        wt = np.ascontiguousarray(flipped.transpose(0, 2, 1, 3, 4)).reshape(
            p.c, p.k_per_group, p.r, p.s)
        _run_forward(&g, gy, wt, wt[0, 0, 0, :1], False, gx, nthreads)
        return
    g = _forward_geometry(p)
    ws_stride = g.ps       # one padded plane (as phase planes when the stride is > 1)
    ws_v = np.empty(nthreads * ws_stride, dtype=dtype)
    with nogil:
        _grad_input_scatter(&g, &gy[0, 0, 0, 0], &w[0, 0, 0, 0], &gx[0, 0, 0, 0], &ws_v[0],
                            ws_stride, nthreads)


def _batch_chunks(n, groups, kg, kbt, weight_elems):
    """How many batch chunks grad_weight sums separately (then adds in order).

    A function of the shape only, never of the thread count, so results are reproducible:
    enough (group, filter block, chunk) tasks for a few threads, bounded partial buffers.
    """
    units = groups * (-(-kg // kbt))
    nc = max(1, min(n, -(-16 // units)))
    while nc > 1 and nc * weight_elems > (1 << 22):
        nc //= 2
    return nc


cdef void _conv2d_grad_weight(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                              floating[:, :, :, ::1] gw, p, int nthreads):
    cdef Geometry g = _forward_geometry(p)
    # dot_block takes 4 filters at a time. Where the input planes are copied (padding,
    # stride), GW_FILTERS filters share a task and its copies (8 against 4: CIFAR conv1 6-9%
    # less time; 16 against 8: CIFAR conv1 0.83-0.87x at 1 thread, the 7x7 stem 0.96-0.97x,
    # level at 2); else 4 keep the lane sums in L1 (8 filters of LeNet's conv2 were 4-6% slower). The
    # one-input-channel path holds 4 filters' lanes in local arrays.
    g.kbt = min(GW_FILTERS if g.copy and not g.plane3x3 else 4, g.kg)
    g.nkb = (g.kg + g.kbt - 1) // g.kbt
    g.nc = _batch_chunks(g.n, g.groups, g.kg, g.kbt, gw.size)
    # One run per plane of wide rows (grad_output copied with zero extra columns) where
    # rows end in a part-filled vector and the plane takes no more vectors; otherwise one
    # run per output row (rows of whole vectors need no copy: the 7x7 stem's 112, CIFAR
    # conv1's 32). The wide runs pair the zero extra columns with real input values: exact
    # for finite inputs, but 0 * inf would be a NaN that PyTorch does not produce, so an
    # input holding Inf/NaN takes the rows. The Numba twin's rule (``_run_dots_gw``).
    cdef Py_ssize_t nl = FC_DOT_LANES_F32 if floating is float else FC_DOT_LANES_F64
    cdef Py_ssize_t length = (g.out_h - 1) * g.wp + g.out_w
    g.rows = g.wp != g.out_w and not g.plane3x3 and not (
        g.out_w % nl != 0 and (length + nl - 1) // nl <= g.out_h * ((g.out_w + nl - 1) // nl)
        and np.isfinite(np.asarray(x)).all())
    dtype = np.float32 if floating is float else np.float64
    toff = direct_plan.tap_offsets(g.cb, g.r, g.s, g.dh, g.dw, g.sh, g.sw, g.hp, g.wp, g.ps)
    cdef Py_ssize_t[::1] toff_v = toff
    # Per thread: wide grad_output copies, padded input planes, the dot products' lanes.
    cdef Py_ssize_t ws_stride = (g.kbt * g.out_h * g.wp + (g.cb * g.ps if g.copy else 0)
                                 + g.kbt * g.cg * g.r * g.s * FC_DOT_LANES_F32)
    cdef floating[::1] ws_v = np.zeros(max(1, nthreads * ws_stride), dtype=dtype)  # zero borders
    cdef floating[:, :, ::1] part_v
    if g.nc == 1:
        part_v = np.asarray(gw).reshape(1, p.k, -1)
    else:
        part_v = np.empty((g.nc, p.k, p.c_per_group * p.r * p.s), dtype=dtype)
    with nogil:
        _grad_weight_core(&g, &gy[0, 0, 0, 0], &x[0, 0, 0, 0], &part_v[0, 0, 0], &toff_v[0],
                          &ws_v[0], ws_stride, nthreads)
    if g.nc > 1:
        total = np.asarray(part_v)
        acc = total[0].copy()
        for i in range(1, g.nc):   # a fixed order: reproducible
            acc += total[i]
        np.asarray(gw).reshape(p.k, -1)[...] = acc


# ---------------------------------------------------------------- conv + ReLU + 2x2 max pool
#
# One-input-channel 3x3 layers followed by ReLU and a 2x2 max pool (the first layer of the
# MNIST/LeNet models): each output plane is made by ``_plane3x3_wide`` in a per-thread buffer
# that stays in L1 and pooled from there, so the full-size convolution output (4x the result) is
# never written to memory nor read back; where each maximum was is kept as a one-byte window
# code (not max_pool2d's int64 offsets: 8x less to write and read back). Backward scatters
# the masked pooled gradient into an L1 plane and runs ``_plane3x3_gw`` on it: no full-size
# gradient, no pool backward pass.
# The Numba twins are ``_conv_relu_pool_*`` in direct.py.

cdef void _plane3x3_wide(const floating* src, Py_ssize_t wp, floating* conv, Py_ssize_t out_h,
                         Py_ssize_t out_w, const floating* w, floating b) noexcept nogil:
    """conv (out_h rows of ``wp``, the last ``wp - out_w`` columns garbage) = b + 3x3
    correlation of the (padded) plane ``src`` with rows of ``wp``.

    One contiguous loop over the wide plane instead of out_h short rows: MNIST's 26-pixel
    rows leave a third of each vector pass to scalar remainders. The sum is formed in
    ``_plane3x3``'s order, so the values are the same bit for bit.
    """
    cdef floating w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4]
    cdef floating w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8]
    cdef const floating* r0 = src
    cdef const floating* r1 = src + wp
    cdef const floating* r2 = src + 2 * wp
    cdef Py_ssize_t j, length = (out_h - 1) * wp + out_w
    cdef floating v
    for j in range(length):
        v = b + w0 * r0[j] + w1 * r0[j + 1] + w2 * r0[j + 2]
        v = v + w3 * r1[j] + w4 * r1[j + 1] + w5 * r1[j + 2]
        conv[j] = v + w6 * r2[j] + w7 * r2[j + 1] + w8 * r2[j + 2]


cdef void _conv_relu_pool_task(const Geometry* g, Py_ssize_t task, const floating* x,
                               const floating* w, const floating* bias, floating* y,
                               uint8_t* code, floating* ws) noexcept nogil:
    """Image n, group grp: its output planes, pooled (with the ReLU) as they are made.

    ``ws``: the padded input plane (when there is padding), then one wide convolution plane.
    """
    cdef Py_ssize_t grp = task % g.groups, n = task // g.groups
    cdef Py_ssize_t ph = g.out_h // 2, pw = g.out_w // 2
    cdef Py_ssize_t pooled = ph * pw
    cdef const floating* x_img = x + (n * g.c + grp) * g.h * g.w   # one channel per group
    cdef floating* conv = ws + (g.hp * g.wp if g.copy else 0)
    cdef const floating* src = <const floating*>ws if g.copy else x_img
    cdef floating* yk
    cdef uint8_t* ck
    cdef Py_ssize_t kk, k, oh, o
    cdef floating v
    if g.copy:
        _copy_interior(x_img, g.h, g.w, ws, g.hp, g.wp, g.top, g.left)
    for kk in range(g.kg):
        k = grp * g.kg + kk
        _plane3x3_wide(src, g.wp, conv, g.out_h, g.out_w, w + k * 9,
                       bias[k] if bias != NULL else 0)
        yk = y + (n * g.k + k) * pooled
        ck = code + (n * g.k + k) * pooled
        for oh in range(ph):
            max2x2_row(conv + 2 * oh * g.wp, g.wp, pw, yk + oh * pw, ck + oh * pw, 0, 0, 2)
        for o in range(pooled):
            v = yk[o]
            yk[o] = v if (v >= 0) | (v != v) else 0   # np.maximum(v, 0): NaN stays NaN


cdef void _conv_relu_pool_core(const Geometry* g, const floating* x, const floating* w,
                               const floating* bias, floating* y, uint8_t* code, floating* ws,
                               Py_ssize_t ws_stride, int nthreads) noexcept nogil:
    cdef Py_ssize_t task
    for task in prange(g.n * g.groups, num_threads=nthreads, schedule="dynamic"):
        _conv_relu_pool_task(g, task, x, w, bias, y, code, ws + omp_get_thread_num() * ws_stride)


cdef void _conv_relu_pool_gw_task(const Geometry* g, Py_ssize_t k, const floating* gy,
                                  const floating* y, const uint8_t* code, const floating* x,
                                  floating* gw, double* gb, floating* ws) noexcept nogil:
    """Filter k over the whole batch: nine dot products in lanes, and the bias sum.

    ``ws``: the padded input plane (when there is padding), then a zero convolution plane
    into which each image's masked pooled gradient is scattered (and cleared after use).
    The mask is a select, not a branch: on real data ``y > 0`` is a coin flip.
    """
    cdef Py_ssize_t ph = g.out_h // 2, pw = g.out_w // 2
    cdef Py_ssize_t pooled = ph * pw
    cdef Py_ssize_t grp = k // g.kg
    cdef floating* plane = ws + (g.hp * g.wp if g.copy else 0)
    cdef floating lanes[9 * LANES]
    cdef floating bl[LANES]
    cdef const floating* x_img
    cdef const floating* gk
    cdef const floating* yk
    cdef const uint8_t* ck
    cdef floating total, v
    cdef Py_ssize_t n, o, oh, ow, t, l
    cdef uint8_t c
    for o in range(9 * LANES):
        lanes[o] = 0
    for l in range(LANES):
        bl[l] = 0
    for n in range(g.n):
        x_img = x + (n * g.c + grp) * g.h * g.w
        gk = gy + (n * g.k + k) * pooled
        yk = y + (n * g.k + k) * pooled
        ck = code + (n * g.k + k) * pooled
        for oh in range(ph):
            for ow in range(pw):
                o = oh * pw + ow
                c = ck[o]
                v = gk[o] if yk[o] > 0 else 0   # the ReLU's mask, read from the pooled output
                plane[2 * (oh * g.out_w + ow) + (c >> 1) * g.out_w + (c & 1)] = v
                bl[ow & (LANES - 1)] += v       # LANES (a power of two) independent sums
        _plane3x3_gw(plane, g.out_h, g.out_w, <const floating*>ws if g.copy else x_img, g.wp,
                     lanes, x_img if g.copy else NULL, g.h, g.w, g.top, g.left, NULL, NULL)
        memset(plane, 0, g.out_h * g.out_w * sizeof(floating))
    for t in range(9):
        total = 0
        for l in range(LANES):
            total = total + lanes[t * LANES + l]
        gw[k * 9 + t] = total
    total = 0
    for l in range(LANES):
        total = total + bl[l]
    gb[k] = total


cdef void _conv_relu_pool_gw_core(const Geometry* g, const floating* gy, const floating* y,
                                  const uint8_t* code, const floating* x, floating* gw,
                                  double* gb, floating* ws, Py_ssize_t ws_stride,
                                  int nthreads) noexcept nogil:
    cdef Py_ssize_t k
    for k in prange(g.k, num_threads=nthreads, schedule="dynamic"):
        _conv_relu_pool_gw_task(g, k, gy, y, code, x, gw, gb, ws + omp_get_thread_num() * ws_stride)


cdef void _conv_relu_pool_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                                  const floating[::1] bias, bint has_bias,
                                  floating[:, :, :, ::1] y, uint8_t[:, :, :, ::1] code, p,
                                  int nthreads):
    cdef Geometry g = _forward_geometry(p)
    cdef Py_ssize_t ws_stride = (g.hp * g.wp if g.copy else 0) + g.out_h * g.wp
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] ws_v = np.zeros(nthreads * ws_stride, dtype=dtype)  # zero borders
    cdef const floating* b = &bias[0] if has_bias else NULL
    with nogil:
        _conv_relu_pool_core(&g, &x[0, 0, 0, 0], &w[0, 0, 0, 0], b, &y[0, 0, 0, 0],
                             &code[0, 0, 0, 0], &ws_v[0], ws_stride, nthreads)


cdef void _conv_relu_pool_grad_weight(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] y,
                                      const uint8_t[:, :, :, ::1] code,
                                      const floating[:, :, :, ::1] x, floating[:, :, :, ::1] gw,
                                      double[::1] gb, p, int nthreads):
    cdef Geometry g = _forward_geometry(p)
    cdef Py_ssize_t ws_stride = (g.hp * g.wp if g.copy else 0) + g.out_h * g.out_w
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] ws_v = np.zeros(nthreads * ws_stride, dtype=dtype)  # zero borders, zero planes
    with nogil:
        _conv_relu_pool_gw_core(&g, &gy[0, 0, 0, 0], &y[0, 0, 0, 0], &code[0, 0, 0, 0],
                                &x[0, 0, 0, 0], &gw[0, 0, 0, 0], &gb[0], &ws_v[0], ws_stride,
                                nthreads)


def conv2d_relu_max_pool2d_forward(x, weight, bias, y, codes, p):
    """y (n, k, out_h // 2, out_w // 2) = relu(2x2 max pool of conv2d(x, weight, bias)).

    ``codes`` (uint8, like y): where each window's maximum is, 0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right (``max_pool2d``'s rule: the first maximum, a NaN wins).
    One input channel per group, 3x3, stride and dilation 1 (``fastconv.fused.fuses``);
    float32 or float64, C-contiguous. Parallel over (image, group).
    """
    cdef int nthreads = get_num_threads()
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=x.dtype)
    if x.dtype == np.float32:
        _conv_relu_pool_forward[float](x, weight, b, has_bias, y, codes, p, nthreads)
    else:
        _conv_relu_pool_forward[double](x, weight, b, has_bias, y, codes, p, nthreads)


def conv2d_relu_max_pool2d_grad_weight(grad_output, output, codes, x, grad_weight, grad_bias, p):
    """grad_weight (k, 1, 3, 3) and grad_bias (k,) or None of ``conv2d_relu_max_pool2d_forward``
    from the pooled grad_output, its output (the ReLU's mask ``output > 0``) and window codes
    (uint8, each < 4). Parallel over filters."""
    cdef int nthreads = get_num_threads()
    gb = np.zeros(p.k, dtype=np.float64)
    if x.dtype == np.float32:
        _conv_relu_pool_grad_weight[float](grad_output, output, codes, x, grad_weight, gb, p, nthreads)
    else:
        _conv_relu_pool_grad_weight[double](grad_output, output, codes, x, grad_weight, gb, p, nthreads)
    if grad_bias is not None:
        grad_bias[...] = gb


def conv2d_forward(x, weight, bias, y, p):
    """y (n, k, out_h, out_w) = x (n, c, h, w) cross-correlated with weight (k, c/groups, r, s) + bias (k,).

    float32 or float64, C-contiguous; ``bias`` may be None. Any stride, padding (per side),
    dilation and groups. Parallel over (image, group, block of output channels).
    """
    cdef int nthreads = get_num_threads()
    has_bias = bias is not None
    b = bias if has_bias else np.zeros(1, dtype=x.dtype)
    if x.dtype == np.float32:
        _conv2d_forward[float](x, weight, b, has_bias, y, p, nthreads)
    else:
        _conv2d_forward[double](x, weight, b, has_bias, y, p, nthreads)


def conv2d_grad_input(grad_output, weight, grad_input, p):
    """grad_input (n, c, h, w) from grad_output (n, k, out_h, out_w) and weight (k, c/groups, r, s).

    Stride 1: a gather (the forward core on padded grad_output with flipped filters), parallel
    over (image, group, block of input channels). Larger strides (undilated, finite weights):
    the same gather per phase of the input, interleaved (``kernels/stride_phases.py``). Else
    each (image, channel) task scatters into its own padded plane. No races in any.
    """
    cdef int nthreads = get_num_threads()
    if stride_phases.applies(p, weight):
        stride_phases.grad_input(conv2d_forward, _merge_phases, grad_output, weight, grad_input, p, nthreads)
        return
    if grad_output.dtype == np.float32:
        _conv2d_grad_input[float](grad_output, weight, grad_input, p, nthreads)
    else:
        _conv2d_grad_input[double](grad_output, weight, grad_input, p, nthreads)


def conv2d_grad_weight(grad_output, x, grad_weight, p):
    """grad_weight (k, c/groups, r, s) = sum over images and pixels of grad_output x shifted input.

    Parallel over (group, block of 4 filters, batch chunk); the number of batch chunks depends
    on the shape only, so the result is identical for every thread count.
    """
    cdef int nthreads = get_num_threads()
    if x.dtype == np.float32:
        _conv2d_grad_weight[float](grad_output, x, grad_weight, p, nthreads)
    else:
        _conv2d_grad_weight[double](grad_output, x, grad_weight, p, nthreads)


def conv2d_grad_bias(grad_output, grad_bias, p):
    """grad_bias (k,) = grad_output (n, k, out_h, out_w) summed over images and pixels."""
    cdef int nthreads = get_num_threads()
    cdef const float[:, :, :, ::1] gy32
    cdef const double[:, :, :, ::1] gy64
    cdef float[::1] gb32
    cdef double[::1] gb64
    cdef Py_ssize_t plane = p.out_h * p.out_w
    if grad_output.dtype == np.float32:
        gy32 = grad_output
        gb32 = grad_bias
        with nogil:
            _grad_bias_core(&gy32[0, 0, 0, 0], &gb32[0], gy32.shape[0], gy32.shape[1], plane, nthreads)
    else:
        gy64 = grad_output
        gb64 = grad_bias
        with nogil:
            _grad_bias_core(&gy64[0, 0, 0, 0], &gb64[0], gy64.shape[0], gy64.shape[1], plane, nthreads)
