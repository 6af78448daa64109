# cython: language_level=3
"""im2col + GEMM convolution kernels, Cython backend (mirrors ``kernels/numba/im2col.py``).

The convolution of one image and one group is a matrix product once the input is unfolded
into a column matrix ``col`` whose row ``(c, r, s)`` holds, for every output pixel, the input
value that tap ``(r, s)`` of channel ``c`` reads (zero where the tap falls in the padding)::

    forward      y_g  (K_g x P)        = W_g (K_g x C_g R S) @ col_g (C_g R S x P)
    grad_weight  gW_g^T (C_g R S x K_g) += col_g @ gY_g^T, transposed once at the end
    grad_input   col_g (C_g R S x P)   = W_g^T @ gY_g, then col2im folds col back onto gX
                 (adding up the taps that read the same input pixel)

with ``P = out_h * out_w``. Rows are ordered ``(c, r, s)``, the memory order of the weight,
so ``W_g`` is the weight array itself with no copy. The GEMMs are the row-major ``gemm`` of
``blas.pxd`` (SciPy's sgemm/dgemm); transposes are flags, ``beta = 1`` accumulates the
weight gradient over images and adds the forward GEMM onto the bias written beforehand.
The weight gradient is summed transposed because SciPy's OpenBLAS ran ``col @ gY^T``
5-60% faster than ``gY @ col^T`` on the conv shapes (1 thread, development machine).

Layouts, chunking and the workspace policy are shared by both backends and described in
``fastconv/kernels/im2col_plan.py``.

Threads: every parallel loop is a ``prange`` over (image, channel, row) units that each own
their output, so results do not depend on the thread count. The GIL is released for the
whole computation. BLAS is never called inside a parallel region; it runs its own threads,
set with the others by ``fastconv.set_num_threads``.
"""

import numpy as np

from cython.parallel cimport prange

from fastconv.threads import get_num_threads

from fastconv.kernels.cython.blas cimport floating, gemm
from fastconv.kernels.cython.microkernels cimport copy_run

from fastconv.kernels import im2col_plan as _plan_module
from fastconv.kernels.im2col_plan import (CACHE_TARGET_BYTES, SHORT_ROW, WIDE_BELOW_PIXELS, WIDE_COLUMNS,
                                         Plan, band_table as _band_table, fold_block as _fold_block,
                                         is_plain_pointwise as _is_plain_pointwise,
                                         plan as _plan, tap_columns as _tap_columns, workspace as _workspace,
                                         workspace_cache_bytes as _workspace_cache_bytes)

# Rows shorter than this go as vectors (``copy_run``): a C value, read without the GIL.
cdef Py_ssize_t _short_row = SHORT_ROW


ctypedef struct Geometry:
    Py_ssize_t n, c, h, w, k, r, s
    Py_ssize_t sh, sw, pt, pl, dh, dw, groups, oh, ow
    const Py_ssize_t* taps  # (S, 2) from _tap_columns, set where the fold needs it
    const Py_ssize_t* bands  # (nbands, 5) from _band_table
    Py_ssize_t nbands
    Py_ssize_t fold_units  # im2col_plan.FOLD_UNITS


# ---------------------------------------------------------------- planning and workspace

cdef Geometry _geometry(p):
    """The call's sizes as one struct."""
    cdef Geometry g
    g.n, g.c, g.h, g.w, g.k, g.r, g.s = p.n, p.c, p.h, p.w, p.k, p.r, p.s
    g.sh, g.sw, g.pt, g.pl, g.dh, g.dw = p.stride_h, p.stride_w, p.pad_top, p.pad_left, p.dil_h, p.dil_w
    g.groups, g.oh, g.ow = p.groups, p.out_h, p.out_w
    g.taps = NULL
    g.bands = NULL
    g.nbands = 0
    g.fold_units = _plan_module.FOLD_UNITS  # read per call, like the plan's other constants
    return g


# ---------------------------------------------------------------- unfold / fold loops

cdef inline void _valid_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size,
                              Py_ssize_t out_size, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Output indices ``o`` in ``[lo, hi)`` with ``0 <= o * stride + offset < size``.

    Both ends lie in ``[0, out_size]``, ``lo <= hi``: a tap that reads only padding gets an
    empty range (it must not zero-fill past the end of its output row).
    """
    cdef Py_ssize_t last = size - 1 - offset
    lo[0] = 0 if offset >= 0 else min(out_size, (-offset + stride - 1) // stride)
    hi[0] = 0 if last < 0 else min(out_size, last // stride + 1)
    if hi[0] < lo[0]:
        hi[0] = lo[0]


cdef inline void _unfold_unit(const floating* x, floating* col, Py_ssize_t t, Py_ssize_t n0,
                              Py_ssize_t oy0, Py_ssize_t oy1, Py_ssize_t img_stride,
                              Py_ssize_t row_stride, const Geometry* g) noexcept nogil:
    """Unit ``t`` = (image b, channel ci, kernel row i) of ``_unfold``."""
    cdef Py_ssize_t b = t // (g.c * g.r)
    cdef Py_ssize_t ci = (t // g.r) % g.c
    cdef Py_ssize_t i = t % g.r
    cdef Py_ssize_t j, oy, ox, off, d, src, dst, oy_lo, oy_hi, ox_lo, ox_hi
    cdef Py_ssize_t ow = g.ow, sw = g.sw
    cdef const floating* xs = x + ((n0 + b) * g.c + ci) * g.h * g.w
    _valid_range(i * g.dh - g.pt, g.sh, g.h, g.oh, &oy_lo, &oy_hi)
    oy_lo = min(max(oy_lo, oy0), oy1)
    oy_hi = max(min(oy_hi, oy1), oy_lo)
    for j in range(g.s):
        off = j * g.dw - g.pl
        _valid_range(off, sw, g.w, ow, &ox_lo, &ox_hi)
        dst = b * img_stride + ((ci * g.r + i) * g.s + j) * row_stride - oy0 * ow
        for d in range(dst + oy0 * ow, dst + oy_lo * ow):  # rows that read the top padding
            col[d] = 0
        for d in range(dst + oy_hi * ow, dst + oy1 * ow):  # ... and the bottom padding
            col[d] = 0
        if sw == 1 and ox_lo == 0 and ox_hi == ow:
            # The whole row reads inside the image (no padding columns): a plain copy of OW
            # values per row, without the per-row edge loops.
            for oy in range(oy_lo, oy_hi):
                d = dst + oy * ow
                src = (oy * g.sh + i * g.dh - g.pt) * g.w + off
                if ow < _short_row:
                    copy_run(xs + src, col + d, ow)
                    continue
                for ox in range(ow):
                    col[d + ox] = xs[src + ox]
            continue
        for oy in range(oy_lo, oy_hi):
            d = dst + oy * ow
            src = (oy * g.sh + i * g.dh - g.pt) * g.w + off
            for ox in range(ox_lo):
                col[d + ox] = 0
            if sw == 1 and ox_hi - ox_lo < _short_row:
                copy_run(xs + src + ox_lo, col + d + ox_lo, ox_hi - ox_lo)
            elif sw == 1:
                for ox in range(ox_lo, ox_hi):
                    col[d + ox] = xs[src + ox]
            elif sw == 2:  # a constant stride vectorises
                for ox in range(ox_lo, ox_hi):
                    col[d + ox] = xs[src + ox * 2]
            else:
                for ox in range(ox_lo, ox_hi):
                    col[d + ox] = xs[src + ox * sw]
            for ox in range(ox_hi, ow):
                col[d + ox] = 0


cdef void _unfold(const floating* x, floating* col, Py_ssize_t n0, Py_ssize_t nb,
                  Py_ssize_t oy0, Py_ssize_t oy1, Py_ssize_t img_stride, Py_ssize_t row_stride,
                  const Geometry* g, int nthreads) noexcept nogil:
    """Column matrix of output rows ``[oy0, oy1)`` of images ``n0 .. n0+nb-1``.

    col[b*img_stride + ((c*R + i)*S + j)*row_stride + (oy-oy0)*OW + ox] = x[n0+b, c, iy, ix],
    zero where (iy, ix) is padding. One parallel unit per (image, channel, kernel row).
    """
    cdef Py_ssize_t t
    for t in prange(nb * g.c * g.r, schedule="static", num_threads=nthreads):
        _unfold_unit(x, col, t, n0, oy0, oy1, img_stride, row_stride, g)


cdef inline void _fold_unit(const floating* col, floating* gx, Py_ssize_t t, Py_ssize_t n0,
                            const Py_ssize_t* band, Py_ssize_t img_stride, Py_ssize_t row_stride,
                            Py_ssize_t block, const Geometry* g) noexcept nogil:
    """Unit ``t`` = (image b, channel ci, block of input rows) of ``_fold``."""
    cdef Py_ssize_t oy0 = band[0], oy1 = band[1], iy0 = band[2], iy1 = band[3], zero_from = band[4]
    cdef Py_ssize_t nblk = (iy1 - iy0 + block - 1) // block
    cdef Py_ssize_t b = t // (g.c * nblk)
    cdef Py_ssize_t ci = (t // nblk) % g.c
    cdef Py_ssize_t ya = iy0 + (t % nblk) * block
    cdef Py_ssize_t yb = min(iy1, ya + block)
    cdef Py_ssize_t i, j, q, oy, lo, hi, off, off_y, tlo, thi
    cdef Py_ssize_t sw = g.sw, sh = g.sh, ow = g.ow, w = g.w
    cdef floating* plane = gx + ((n0 + b) * g.c + ci) * g.h * w
    cdef floating* dst
    cdef const floating* src
    cdef const floating* src_row
    for q in range(max(ya, zero_from) * w, max(yb, zero_from) * w):
        plane[q] = 0
    for i in range(g.r):
        off_y = i * g.dh - g.pt
        # output rows of the band whose tap row i reads an input row in [ya, yb)
        lo = max(oy0, (max(ya - off_y, 0) + sh - 1) // sh)
        hi = min(oy1, (max(yb - off_y, 0) + sh - 1) // sh)
        for j in range(g.s):
            src_row = col + b * img_stride + ((ci * g.r + i) * g.s + j) * row_stride - oy0 * ow
            off = j * g.dw - g.pl
            tlo, thi = g.taps[2 * j], g.taps[2 * j + 1]
            for oy in range(lo, hi):
                src = src_row + oy * ow
                dst = plane + (oy * sh + off_y) * w + off
                if sw == 1:
                    for q in range(tlo, thi):
                        dst[q] += src[q]
                else:
                    for q in range(tlo, thi):
                        dst[q * sw] += src[q]


cdef inline Py_ssize_t _fold_block_rows(const Geometry* g, Py_ssize_t nb,
                                        const Py_ssize_t* band) noexcept nogil:
    """Input rows per parallel unit of the fold of ``band`` (``im2col_plan.fold_block``)."""
    cdef Py_ssize_t nrows = band[3] - band[2]
    cdef Py_ssize_t planes = nb * g.c
    cdef Py_ssize_t split
    if planes >= g.fold_units or nrows <= 1:
        return max(1, nrows)
    split = min(nrows, (g.fold_units + planes - 1) // planes)
    return (nrows + split - 1) // split


cdef void _fold(const floating* col, floating* gx, Py_ssize_t n0, Py_ssize_t nb,
                const Py_ssize_t* band, Py_ssize_t img_stride, Py_ssize_t row_stride,
                const Geometry* g, int nthreads) noexcept nogil:
    """col2im of output rows ``[oy0, oy1)``: add their col entries onto the input rows they read.

    ``band = (oy0, oy1, iy0, iy1, zero_from)`` (``_band_table``): the band's fold owns input
    rows ``[iy0, iy1)``; rows from ``zero_from`` on are seen for the first time and start at
    zero. ``col`` holds rows ``(c, i, j)`` of ``(oy1 - oy0) * OW`` entries, laid out like
    ``_unfold``'s.

    One parallel unit per (image, channel, block of input rows, ``_fold_block_rows``): it owns those rows
    of ``gx`` and streams through the col rows ``(c, i, j)`` in order, adding each output row
    onto the input row it read. Every ``gx`` element gets its terms in the order (band, i, j)
    whatever the blocking or thread count, so the sums are reproducible.
    """
    cdef Py_ssize_t t
    cdef Py_ssize_t block = _fold_block_rows(g, nb, band)
    cdef Py_ssize_t nblk = (band[3] - band[2] + block - 1) // block
    for t in prange(nb * g.c * nblk, schedule="static", num_threads=nthreads):
        _fold_unit(col, gx, t, n0, band, img_stride, row_stride, block, g)


cdef inline void _copy_row(const floating* src, floating* dst, Py_ssize_t count) noexcept nogil:
    cdef Py_ssize_t q
    for q in range(count):
        dst[q] = src[q]


cdef void _scatter(const floating* wide, floating* y, const floating* bias, Py_ssize_t n0,
                   Py_ssize_t nb, Py_ssize_t k, Py_ssize_t pixels, int nthreads) noexcept nogil:
    """y[n0+b, kk, :] = wide[kk, b*P:(b+1)*P] (+ bias[kk] unless NULL); ``wide`` is (K, nb*P)."""
    cdef Py_ssize_t t, q, b, kk
    cdef floating bv
    cdef const floating* src
    cdef floating* dst
    for t in prange(nb * k, schedule="static", num_threads=nthreads):
        b = t // k
        kk = t % k
        src = wide + kk * nb * pixels + b * pixels
        dst = y + ((n0 + b) * k + kk) * pixels
        if bias != NULL:
            bv = bias[kk]
            for q in range(pixels):
                dst[q] = src[q] + bv
        else:
            _copy_row(src, dst, pixels)


cdef void _gather(const floating* gy, floating* wide, Py_ssize_t n0, Py_ssize_t nb,
                  Py_ssize_t k, Py_ssize_t pixels, int nthreads) noexcept nogil:
    """wide[kk, b*P:(b+1)*P] = gy[n0+b, kk, :]: the chunk's gradients side by side."""
    cdef Py_ssize_t t, b, kk
    for t in prange(nb * k, schedule="static", num_threads=nthreads):
        b = t // k
        kk = t % k
        _copy_row(gy + ((n0 + b) * k + kk) * pixels, wide + kk * nb * pixels + b * pixels, pixels)


cdef void _fill_bias(floating* y, const floating* bias, Py_ssize_t n0, Py_ssize_t nb,
                     Py_ssize_t k, Py_ssize_t pixels, int nthreads) noexcept nogil:
    """y[n0+b, kk, :] = bias[kk] for the images of one chunk (a GEMM with beta=1 adds onto it)."""
    cdef Py_ssize_t t, q, kk
    cdef floating bv
    cdef floating* dst
    for t in prange(nb * k, schedule="static", num_threads=nthreads):
        kk = t % k
        dst = y + ((n0 + t // k) * k + kk) * pixels
        bv = bias[kk]
        for q in range(pixels):
            dst[q] = bv


# ---------------------------------------------------------------- GEMM drivers

cdef void _forward_impl(const floating* x, const floating* w, const floating* bias,
                        floating* y, floating* col, floating* extra, const Geometry* g,
                        Py_ssize_t chunk, bint wide, int nthreads) noexcept nogil:
    """y (N, K, P) <- conv(x, w (K, C_g R S)) chunk by chunk (and band by band)."""
    cdef Py_ssize_t pixels = g.oh * g.ow
    cdef Py_ssize_t kg = g.k // g.groups
    cdef Py_ssize_t crs = (g.c // g.groups) * g.r * g.s
    cdef Py_ssize_t n0, nb, b, gi, bi, cols, oy0, oy1
    cdef floating beta = 0 if bias == NULL else 1
    n0 = 0
    while n0 < g.n:  # one chunk per pass (a variable-step range would not compile to C)
        nb = min(chunk, g.n - n0)
        if wide:
            cols = nb * pixels
            _unfold(x, col, n0, nb, 0, g.oh, pixels, cols, g, nthreads)
            for gi in range(g.groups):
                gemm(False, False, <int>kg, <int>cols, <int>crs, <floating>1.0,
                     w + gi * kg * crs, <int>crs, col + gi * crs * cols, <int>cols,
                     <floating>0.0, extra + gi * kg * cols, <int>cols)
            _scatter(extra, y, bias, n0, nb, g.k, pixels, nthreads)
            n0 += nb
            continue
        if bias != NULL:
            _fill_bias(y, bias, n0, nb, g.k, pixels, nthreads)  # the GEMMs add onto it
        for bi in range(g.nbands):  # bands of output rows (one band: whole images)
            oy0, oy1 = g.bands[5 * bi], g.bands[5 * bi + 1]
            cols = (oy1 - oy0) * g.ow
            _unfold(x, col, n0, nb, oy0, oy1, g.c * g.r * g.s * cols, cols, g, nthreads)
            for b in range(nb):
                for gi in range(g.groups):
                    gemm(False, False, <int>kg, <int>cols, <int>crs, <floating>1.0,
                         w + gi * kg * crs, <int>crs, col + (b * g.groups + gi) * crs * cols,
                         <int>cols, beta, y + ((n0 + b) * g.k + gi * kg) * pixels + oy0 * g.ow,
                         <int>pixels)
        n0 += nb


cdef void _grad_input_impl(const floating* gy, const floating* w, floating* gx, floating* col,
                           floating* extra, const Geometry* g, Py_ssize_t chunk, bint wide,
                           int nthreads) noexcept nogil:
    """gx <- col2im(W^T @ gY) chunk by chunk (and band by band)."""
    cdef Py_ssize_t pixels = g.oh * g.ow
    cdef Py_ssize_t kg = g.k // g.groups
    cdef Py_ssize_t crs = (g.c // g.groups) * g.r * g.s
    cdef Py_ssize_t n0, nb, b, gi, bi, cols, oy0
    n0 = 0
    while n0 < g.n:  # one chunk per pass (a variable-step range would not compile to C)
        nb = min(chunk, g.n - n0)
        if wide:
            cols = nb * pixels
            _gather(gy, extra, n0, nb, g.k, pixels, nthreads)
            for gi in range(g.groups):
                gemm(True, False, <int>crs, <int>cols, <int>kg, <floating>1.0,
                     w + gi * kg * crs, <int>crs, extra + gi * kg * cols, <int>cols,
                     <floating>0.0, col + gi * crs * cols, <int>cols)
            _fold(col, gx, n0, nb, g.bands, pixels, cols, g, nthreads)  # the one band
            n0 += nb
            continue
        for bi in range(g.nbands):  # bands of output rows (one band: whole images)
            oy0 = g.bands[5 * bi]
            cols = (g.bands[5 * bi + 1] - oy0) * g.ow
            for b in range(nb):
                for gi in range(g.groups):
                    gemm(True, False, <int>crs, <int>cols, <int>kg, <floating>1.0,
                         w + gi * kg * crs, <int>crs,
                         gy + ((n0 + b) * g.k + gi * kg) * pixels + oy0 * g.ow, <int>pixels,
                         <floating>0.0, col + (b * g.groups + gi) * crs * cols, <int>cols)
            _fold(col, gx, n0, nb, g.bands + 5 * bi, g.c * g.r * g.s * cols, cols, g, nthreads)
        n0 += nb


cdef void _transpose_into(const floating* gwt, floating* gw, const Geometry* g,
                          Py_ssize_t crs, int nthreads) noexcept nogil:
    """gw[gi*K_g + kk, q] = gwt[gi, q, kk]: the (C_g R S, K_g) products back in weight order."""
    cdef Py_ssize_t kg = g.k // g.groups
    cdef Py_ssize_t row, q
    cdef const floating* src
    for row in prange(g.k, schedule="static", num_threads=nthreads):
        src = gwt + (row // kg) * crs * kg + row % kg
        for q in range(crs):
            gw[row * crs + q] = src[q * kg]


cdef void _grad_weight_impl(const floating* gy, const floating* x, floating* gw, floating* gwt,
                            floating* col, floating* extra, const Geometry* g, Py_ssize_t chunk,
                            bint wide, int nthreads) noexcept nogil:
    """gw (K, C_g R S) <- sum over images of gY @ col^T, chunk by chunk (and band by band).

    Computed transposed, gwt_g (C_g R S x K_g) += col_g @ gY_g^T with beta=1, and
    transposed once at the end: SciPy's OpenBLAS ran that orientation 5-60% faster.
    """
    cdef Py_ssize_t pixels = g.oh * g.ow
    cdef Py_ssize_t kg = g.k // g.groups
    cdef Py_ssize_t crs = (g.c // g.groups) * g.r * g.s
    cdef Py_ssize_t n0, nb, b, gi, bi, cols, oy0, oy1
    cdef floating beta = 0
    n0 = 0
    while n0 < g.n:  # one chunk per pass (a variable-step range would not compile to C)
        nb = min(chunk, g.n - n0)
        if wide:
            cols = nb * pixels
            _unfold(x, col, n0, nb, 0, g.oh, pixels, cols, g, nthreads)
            _gather(gy, extra, n0, nb, g.k, pixels, nthreads)
            for gi in range(g.groups):
                gemm(False, True, <int>crs, <int>kg, <int>cols, <floating>1.0,
                     col + gi * crs * cols, <int>cols, extra + gi * kg * cols, <int>cols,
                     beta, gwt + gi * crs * kg, <int>kg)
            beta = 1
            n0 += nb
            continue
        for bi in range(g.nbands):  # bands of output rows (one band: whole images)
            oy0, oy1 = g.bands[5 * bi], g.bands[5 * bi + 1]
            cols = (oy1 - oy0) * g.ow
            _unfold(x, col, n0, nb, oy0, oy1, g.c * g.r * g.s * cols, cols, g, nthreads)
            for b in range(nb):
                for gi in range(g.groups):
                    gemm(False, True, <int>crs, <int>kg, <int>cols, <floating>1.0,
                         col + (b * g.groups + gi) * crs * cols, <int>cols,
                         gy + ((n0 + b) * g.k + gi * kg) * pixels + oy0 * g.ow, <int>pixels,
                         beta, gwt + gi * crs * kg, <int>kg)
                beta = 1
        n0 += nb
    _transpose_into(gwt, gw, g, crs, nthreads)


# 1x1, stride 1, unpadded: GEMMs on the arrays as they are ((N, channels, H W) layouts).

cdef void _forward_pointwise(const floating* x, const floating* w, const floating* bias,
                             floating* y, const Geometry* g, int nthreads) noexcept nogil:
    cdef Py_ssize_t hw = g.h * g.w
    cdef Py_ssize_t cg = g.c // g.groups
    cdef Py_ssize_t kg = g.k // g.groups
    cdef Py_ssize_t i, gi
    cdef floating beta = 0
    if bias != NULL:
        _fill_bias(y, bias, 0, g.n, g.k, hw, nthreads)
        beta = 1
    for i in range(g.n):
        for gi in range(g.groups):
            gemm(False, False, <int>kg, <int>hw, <int>cg, <floating>1.0, w + gi * kg * cg, <int>cg,
                 x + (i * g.c + gi * cg) * hw, <int>hw, beta, y + (i * g.k + gi * kg) * hw, <int>hw)


cdef void _grad_input_pointwise(const floating* gy, const floating* w, floating* gx,
                                const Geometry* g) noexcept nogil:
    cdef Py_ssize_t hw = g.h * g.w
    cdef Py_ssize_t cg = g.c // g.groups
    cdef Py_ssize_t kg = g.k // g.groups
    cdef Py_ssize_t i, gi
    for i in range(g.n):
        for gi in range(g.groups):
            gemm(True, False, <int>cg, <int>hw, <int>kg, <floating>1.0, w + gi * kg * cg, <int>cg,
                 gy + (i * g.k + gi * kg) * hw, <int>hw, <floating>0.0,
                 gx + (i * g.c + gi * cg) * hw, <int>hw)


cdef void _grad_weight_pointwise(const floating* gy, const floating* x, floating* gw,
                                 floating* gwt, const Geometry* g, int nthreads) noexcept nogil:
    cdef Py_ssize_t hw = g.h * g.w
    cdef Py_ssize_t cg = g.c // g.groups
    cdef Py_ssize_t kg = g.k // g.groups
    cdef Py_ssize_t i, gi
    cdef floating beta = 0
    for i in range(g.n):
        for gi in range(g.groups):
            gemm(False, True, <int>cg, <int>kg, <int>hw, <floating>1.0,
                 x + (i * g.c + gi * cg) * hw, <int>hw, gy + (i * g.k + gi * kg) * hw, <int>hw,
                 beta, gwt + gi * cg * kg, <int>kg)
        beta = 1
    _transpose_into(gwt, gw, g, cg, nthreads)


# ---------------------------------------------------------------- typed entry points
# Fused-type def functions: Cython picks the float or double version from the arrays.
# ``bands`` is ``_band_table`` of the call's plan (unused by the 1x1 fast path).

def _forward(const floating[::1] x, const floating[::1] w, const floating[::1] bias, bint has_bias,
             floating[::1] y, floating[::1] ws, Py_ssize_t col_elems, p,
             const Py_ssize_t[:, ::1] bands, Py_ssize_t chunk, bint wide, bint pointwise,
             int nthreads):
    cdef Geometry g = _geometry(p)
    g.bands, g.nbands = &bands[0, 0], bands.shape[0]
    cdef const floating* bptr = &bias[0] if has_bias else NULL
    cdef floating* wsptr = &ws[0] if ws.shape[0] > 0 else NULL
    with nogil:
        if pointwise:
            _forward_pointwise(&x[0], &w[0], bptr, &y[0], &g, nthreads)
        else:
            _forward_impl(&x[0], &w[0], bptr, &y[0], wsptr, wsptr + col_elems, &g, chunk, wide,
                          nthreads)


def _grad_input(const floating[::1] gy, const floating[::1] w, floating[::1] gx,
                floating[::1] ws, Py_ssize_t col_elems, p, const Py_ssize_t[:, ::1] bands,
                Py_ssize_t chunk, bint wide, bint pointwise, int nthreads):
    cdef Geometry g = _geometry(p)
    cdef const Py_ssize_t[:, ::1] taps = _tap_columns(p)
    g.taps = &taps[0, 0]
    g.bands, g.nbands = &bands[0, 0], bands.shape[0]
    cdef floating* wsptr = &ws[0] if ws.shape[0] > 0 else NULL
    with nogil:
        if pointwise:
            _grad_input_pointwise(&gy[0], &w[0], &gx[0], &g)
        else:
            _grad_input_impl(&gy[0], &w[0], &gx[0], wsptr, wsptr + col_elems, &g, chunk, wide,
                             nthreads)


def _grad_weight(const floating[::1] gy, const floating[::1] x, floating[::1] gw,
                 floating[::1] gwt, floating[::1] ws, Py_ssize_t col_elems, p,
                 const Py_ssize_t[:, ::1] bands, Py_ssize_t chunk, bint wide, bint pointwise,
                 int nthreads):
    cdef Geometry g = _geometry(p)
    g.bands, g.nbands = &bands[0, 0], bands.shape[0]
    cdef floating* wsptr = &ws[0] if ws.shape[0] > 0 else NULL
    with nogil:
        if pointwise:
            _grad_weight_pointwise(&gy[0], &x[0], &gw[0], &gwt[0], &g, nthreads)
        else:
            _grad_weight_impl(&gy[0], &x[0], &gw[0], &gwt[0], wsptr, wsptr + col_elems, &g, chunk,
                              wide, nthreads)


# ---------------------------------------------------------------- public kernels

def _prepare(p, dtype):
    """``(pointwise, plan, band table, workspace)`` for a call."""
    if _is_plain_pointwise(p):
        plan = Plan(False, 1, p.out_h, 0, 0)
        return True, plan, _band_table(p, p.out_h), np.empty(0, dtype)
    plan = _plan(p)
    return False, plan, _band_table(p, plan.rows), _workspace(plan.col_elems + plan.extra_elems, dtype)


def conv2d_forward(x, weight, bias, y, params):
    """y (N, K, OH, OW) = x (N, C, H, W) conv weight (K, C/groups, R, S) + bias (K,) or None.

    All arrays C-contiguous float32 or float64 (the dtype of ``params``).
    """
    nthreads = get_num_threads()
    pointwise, plan, bands, ws = _prepare(params, x.dtype)
    has_bias = bias is not None
    b = bias if has_bias else np.empty(0, x.dtype)
    _forward(x.reshape(-1), weight.reshape(-1), b, has_bias, y.reshape(-1), ws, plan.col_elems,
             params, bands, plan.chunk, plan.wide, pointwise, nthreads)


def conv2d_grad_input(grad_output, weight, grad_input, params):
    """grad_input (N, C, H, W) from grad_output (N, K, OH, OW) and weight (K, C/groups, R, S)."""
    nthreads = get_num_threads()
    pointwise, plan, bands, ws = _prepare(params, grad_input.dtype)
    _grad_input(grad_output.reshape(-1), weight.reshape(-1), grad_input.reshape(-1), ws,
                plan.col_elems, params, bands, plan.chunk, plan.wide, pointwise, nthreads)


def conv2d_grad_weight(grad_output, x, grad_weight, params):
    """grad_weight (K, C/groups, R, S) from grad_output (N, K, OH, OW) and x (N, C, H, W)."""
    nthreads = get_num_threads()
    pointwise, plan, bands, ws = _prepare(params, x.dtype)
    gwt = np.empty(grad_weight.size, x.dtype)  # the transposed sums, (groups, C_g R S, K_g)
    _grad_weight(grad_output.reshape(-1), x.reshape(-1), grad_weight.reshape(-1), gwt, ws,
                 plan.col_elems, params, bands, plan.chunk, plan.wide, pointwise, nthreads)
