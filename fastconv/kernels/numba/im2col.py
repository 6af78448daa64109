"""im2col + GEMM convolution kernels, Numba backend (mirrors ``kernels/cython/im2col.pyx``).

The convolution of one image and one group is a matrix product once the input is unfolded
into a column matrix ``col`` whose row ``(c, r, s)`` holds, for every output pixel, the input
value that tap ``(r, s)`` of channel ``c`` reads (zero where the tap falls in the padding)::

    forward      y_g  (K_g x P)        = W_g (K_g x C_g R S) @ col_g (C_g R S x P)
    grad_weight  gW_g^T (C_g R S x K_g) += col_g @ gY_g^T, transposed once at the end
    grad_input   col_g (C_g R S x P)   = W_g^T @ gY_g, then col2im folds col back onto gX
                 (adding up the taps that read the same input pixel)

with ``P = out_h * out_w``. Rows are ordered ``(c, r, s)``, the memory order of the weight,
so ``W_g`` is the weight array itself, reshaped, with no copy; transposes are views that
BLAS reads with its transpose flags, never copies.

Where the work runs. The unfold (im2col), fold (col2im), scatter and gather loops are
``@njit(parallel=True)`` functions; the drivers are plain Python that call them and do the
GEMMs with ``np.matmul`` on ``(group, rows, cols)`` stacks (NumPy hands each matrix to its
BLAS). Measured on the development machine (1 thread): NumPy's OpenBLAS 0.3.31 ran these
GEMM shapes 15-25% faster than SciPy's OpenBLAS 0.3.30, which is what ``np.dot`` inside
``@njit`` calls; the Python overhead is a few calls per batch chunk.

Layouts, chunking and the workspace policy are shared by both backends and described in
``fastconv/kernels/im2col_plan.py``.

Threads: every parallel loop is a ``prange`` over (image, channel, row) units that each own
their output, so results do not depend on the thread count. BLAS is never called inside a
parallel region; it runs its own threads, set with the others by
``fastconv.set_num_threads``.
"""

import numpy as np
from numba import njit, prange, uintp

from ._runtime import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, use_configured_threads
from .microkernels import copy_run

from fastconv.kernels.im2col_plan import (CACHE_TARGET_BYTES, SHORT_ROW, WIDE_BELOW_PIXELS, WIDE_COLUMNS,
                                         Plan, band_table as _band_table, fold_block as _fold_block,
                                         is_plain_pointwise as _is_plain_pointwise,
                                         plan as _plan, tap_columns as _tap_columns, workspace as _workspace,
                                         workspace_cache_bytes as _workspace_cache_bytes)


# ---------------------------------------------------------------- planning and workspace

def _geometry(p):
    """The call's sizes as one tuple of ints (what the ``@njit`` functions unpack)."""
    return (p.n, p.c, p.h, p.w, p.k, p.r, p.s, p.stride_h, p.stride_w, p.pad_top, p.pad_left,
            p.dil_h, p.dil_w, p.groups, p.out_h, p.out_w)


# ---------------------------------------------------------------- unfold / fold loops

@njit(inline="always", **JIT_OPTIONS)
def _valid_range(offset, stride, size, out_size):
    """Output indices ``o`` in ``[lo, hi)`` with ``0 <= o * stride + offset < size``.

    Both ends lie in ``[0, out_size]``, ``lo <= hi``: a tap that reads only padding gets an
    empty range (it must not zero-fill past the end of its output row).
    """
    lo = 0 if offset >= 0 else min(out_size, (-offset + stride - 1) // stride)
    last = size - 1 - offset
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    if hi < lo:
        hi = lo
    return lo, hi


# Numba wraps negative indices of signed type (a test per access that also blocks
# vectorisation), so the loops below index with unsigned ``uintp`` values; the casts are
# free and every index is non-negative by construction. (On ResNet 256@14x14 the unfold
# ran 2.4x faster than with slice assignments, 1.3x faster than the Cython loops.)

@njit(**PARALLEL_JIT_OPTIONS)
def _unfold(x, col, n0, nb, oy0, oy1, img_stride, row_stride, geo):
    """Column matrix of output rows ``[oy0, oy1)`` of images ``n0 .. n0+nb-1``.

    col[b*img_stride + ((c*R + i)*S + j)*row_stride + (oy-oy0)*OW + ox] = x[n0+b, c, iy, ix],
    zero where (iy, ix) is padding. ``x`` and ``col`` are flat. One parallel unit per
    (image, channel, kernel row).
    """
    (_, c, h, w, _, r, s, sh, sw, pt, pl, dh, dw, _, oh, ow) = geo
    hw = h * w
    for t in prange(nb * c * r):
        b = t // (c * r)
        ci = (t // r) % c
        i = t % r
        src_plane = ((n0 + b) * c + ci) * hw
        oy_lo, oy_hi = _valid_range(i * dh - pt, sh, h, oh)
        oy_lo = min(max(oy_lo, oy0), oy1)
        oy_hi = max(min(oy_hi, oy1), oy_lo)
        for j in range(s):
            off = j * dw - pl
            ox_lo, ox_hi = _valid_range(off, sw, w, ow)
            dst = uintp(b * img_stride + ((ci * r + i) * s + j) * row_stride) - uintp(oy0 * ow)
            for q in range(uintp(oy0 * ow), uintp(oy_lo * ow)):  # rows that read the top padding
                col[dst + q] = 0
            for q in range(uintp(oy_hi * ow), uintp(oy1 * ow)):  # ... and the bottom padding
                col[dst + q] = 0
            src0 = src_plane + (i * dh - pt) * w + off  # + oy * sh * w: output row oy's source
            if sw == 1 and ox_lo == 0 and ox_hi == ow:
                # The whole row reads inside the image (no padding columns): a plain copy of
                # OW values per row, without the per-row edge loops (lenet_conv2, OW = 10:
                # 1.6x faster).
                if ow < SHORT_ROW:
                    for oy in range(oy_lo, oy_hi):
                        copy_run(x, uintp(src0 + oy * sh * w), col, dst + uintp(oy * ow), ow)
                    continue
                for oy in range(oy_lo, oy_hi):
                    d = dst + uintp(oy * ow)
                    src = uintp(src0 + oy * sh * w)
                    for q in range(uintp(ow)):
                        col[d + q] = x[src + q]
                continue
            for oy in range(oy_lo, oy_hi):
                d = dst + uintp(oy * ow)
                src = uintp(src0 + oy * sh * w)
                for q in range(uintp(ox_lo)):
                    col[d + q] = 0
                if sw == 1 and ox_hi - ox_lo < SHORT_ROW:
                    copy_run(x, src + uintp(ox_lo), col, d + uintp(ox_lo), ox_hi - ox_lo)
                elif sw == 1:
                    for q in range(uintp(ox_lo), uintp(ox_hi)):
                        col[d + q] = x[src + q]
                elif sw == 2:  # a constant stride vectorises (18% faster on the 7x7 stem)
                    for q in range(uintp(ox_lo), uintp(ox_hi)):
                        col[d + q] = x[src + q * uintp(2)]
                else:
                    for q in range(uintp(ox_lo), uintp(ox_hi)):
                        col[d + q] = x[src + q * uintp(sw)]
                for q in range(uintp(ox_hi), uintp(ow)):
                    col[d + q] = 0


@njit(**PARALLEL_JIT_OPTIONS)
def _fold(col, gx, n0, nb, band, img_stride, row_stride, geo, taps, block):
    """col2im of output rows ``[oy0, oy1)``: add their col entries onto the input rows they read.

    ``band = (oy0, oy1, iy0, iy1, zero_from)`` (``_band_table``): the band's fold owns input
    rows ``[iy0, iy1)``; rows from ``zero_from`` on are seen for the first time and start at
    zero. ``col`` holds rows ``(c, i, j)`` of ``(oy1 - oy0) * OW`` entries, laid out like
    ``_unfold``'s. ``taps[j]`` is the ``[lo, hi)`` range of output columns whose tap ``j``
    reads inside the image (``_tap_columns``).

    One parallel unit per (image, channel, block of ``block`` input rows): it owns those rows
    of ``gx`` and streams through the col rows ``(c, i, j)`` in order, adding each output row
    onto the input row it read. Every ``gx`` element gets its terms in the order (band, i, j)
    whatever the blocking or thread count (a tap adds at most once to an element), so the
    sums are reproducible; reading col row by row (rather than gathering R S short pieces
    per input row) ran 2-4x faster.
    """
    (_, c, h, w, _, r, s, sh, sw, pt, pl, dh, dw, _, oh, ow) = geo
    oy0, oy1, iy0, iy1, zero_from = band[0], band[1], band[2], band[3], band[4]
    nblk = (iy1 - iy0 + block - 1) // block
    for t in prange(nb * c * nblk):
        b = t // (c * nblk)
        ci = (t // nblk) % c
        ya = iy0 + (t % nblk) * block
        yb = min(iy1, ya + block)
        plane = uintp(((n0 + b) * c + ci) * h * w)
        for q in range(uintp(max(ya, zero_from) * w), uintp(max(yb, zero_from) * w)):
            gx[plane + q] = 0
        for i in range(r):
            off_y = i * dh - pt
            # output rows of the band whose tap row i reads an input row in [ya, yb)
            lo = max(oy0, (max(ya - off_y, 0) + sh - 1) // sh)
            hi = min(oy1, (max(yb - off_y, 0) + sh - 1) // sh)
            for j in range(s):
                src_row = b * img_stride + ((ci * r + i) * s + j) * row_stride - oy0 * ow
                off = j * dw - pl
                tlo, thi = uintp(taps[j, 0]), uintp(taps[j, 1])
                for oy in range(lo, hi):
                    src = uintp(src_row + oy * ow)
                    dst = plane + uintp((oy * sh + off_y) * w + off)  # >= plane for valid ox
                    if sw == 1:
                        for q in range(tlo, thi):
                            gx[dst + q] += col[src + q]
                    else:
                        for q in range(tlo, thi):
                            gx[dst + q * uintp(sw)] += col[src + q]


@njit(**PARALLEL_JIT_OPTIONS)
def _scatter(wide, y, bias, has_bias, n0, nb, k, pixels):
    """y[n0+b, kk, :] = wide[kk, b*P:(b+1)*P] (+ bias[kk]); ``wide`` is (K, nb*P), flat."""
    for t in prange(nb * k):
        b = t // k
        kk = t % k
        src = uintp(kk * nb * pixels + b * pixels)
        dst = uintp(((n0 + b) * k + kk) * pixels)
        if has_bias:
            bv = bias[kk]
            for q in range(uintp(pixels)):
                y[dst + q] = wide[src + q] + bv
        else:
            for q in range(uintp(pixels)):
                y[dst + q] = wide[src + q]


@njit(**PARALLEL_JIT_OPTIONS)
def _gather(gy, wide, n0, nb, k, pixels):
    """wide[kk, b*P:(b+1)*P] = gy[n0+b, kk, :]: the chunk's gradients side by side."""
    for t in prange(nb * k):
        b = t // k
        kk = t % k
        src = uintp(((n0 + b) * k + kk) * pixels)
        dst = uintp(kk * nb * pixels + b * pixels)
        for q in range(uintp(pixels)):
            wide[dst + q] = gy[src + q]


@njit(**PARALLEL_JIT_OPTIONS)
def _add_bias(y, bias, n0, nb, k, pixels):
    """y[n0+b, kk, :] += bias[kk] for the images of one chunk (flat ``y``)."""
    for t in prange(nb * k):
        kk = t % k
        dst = uintp(((n0 + t // k) * k + kk) * pixels)
        bv = bias[kk]
        for q in range(uintp(pixels)):
            y[dst + q] += bv


# ---------------------------------------------------------------- public kernels
# The drivers are plain Python: the loops above are @njit, the GEMMs are np.matmul over
# (group, rows, cols) stacks, which NumPy hands to its BLAS one matrix at a time with the
# transposes as flags. NumPy's OpenBLAS ran these shapes 15-25% faster than SciPy's (the
# one np.dot reaches from @njit) on the development machine; the per-call Python overhead
# is a few calls per batch chunk.

def _bias_or_empty(bias, dtype):
    return (bias, True) if bias is not None else (np.empty(0, dtype), False)


def conv2d_forward(x, weight, bias, y, params):
    """y (N, K, OH, OW) = x (N, C, H, W) conv weight (K, C/groups, R, S) + bias (K,) or None.

    All arrays C-contiguous float32 or float64 (the dtype of ``params``).
    """
    use_configured_threads()
    p = params
    groups, kg, pixels, ow = p.groups, p.k // p.groups, p.out_h * p.out_w, p.out_w
    crs = p.c_per_group * p.r * p.s
    wg = weight.reshape(groups, kg, crs)
    bias, has_bias = _bias_or_empty(bias, x.dtype)
    yf = y.reshape(-1)
    y4 = y.reshape(p.n, groups, kg, pixels)
    if _is_plain_pointwise(p):
        np.matmul(wg, x.reshape(p.n, groups, crs, pixels), out=y4)
        if has_bias:
            _add_bias(yf, bias, 0, p.n, p.k, pixels)
        return
    plan = _plan(p)
    ws = _workspace(plan.col_elems + plan.extra_elems, x.dtype)
    geo = _geometry(p)
    bands = _band_table(p, plan.rows)
    xf = x.reshape(-1)
    for n0 in range(0, p.n, plan.chunk):
        nb = min(plan.chunk, p.n - n0)
        if plan.wide:
            cols = nb * pixels
            col = ws[:groups * crs * cols]
            _unfold(xf, col, n0, nb, 0, p.out_h, pixels, cols, geo)
            out = ws[plan.col_elems:plan.col_elems + p.k * cols]
            np.matmul(wg, col.reshape(groups, crs, cols), out=out.reshape(groups, kg, cols))
            _scatter(out, yf, bias, has_bias, n0, nb, p.k, pixels)
            continue
        for oy0, oy1 in bands[:, :2]:
            cols = (oy1 - oy0) * ow
            col = ws[:nb * groups * crs * cols]
            _unfold(xf, col, n0, nb, oy0, oy1, groups * crs * cols, cols, geo)
            np.matmul(wg, col.reshape(nb, groups, crs, cols), out=y4[n0:n0 + nb, :, :, oy0 * ow:oy1 * ow])
        if has_bias:
            _add_bias(yf, bias, n0, nb, p.k, pixels)


def conv2d_grad_input(grad_output, weight, grad_input, params):
    """grad_input (N, C, H, W) from grad_output (N, K, OH, OW) and weight (K, C/groups, R, S)."""
    use_configured_threads()
    p = params
    groups, kg, pixels, ow = p.groups, p.k // p.groups, p.out_h * p.out_w, p.out_w
    crs = p.c_per_group * p.r * p.s
    wgt = weight.reshape(groups, kg, crs).transpose(0, 2, 1)  # W_g^T: a view, BLAS transposes
    gy4 = grad_output.reshape(p.n, groups, kg, pixels)
    if _is_plain_pointwise(p):
        np.matmul(wgt, gy4, out=grad_input.reshape(p.n, groups, crs, pixels))
        return
    plan = _plan(p)
    ws = _workspace(plan.col_elems + plan.extra_elems, grad_input.dtype)
    geo = _geometry(p)
    taps = _tap_columns(p)
    bands = _band_table(p, plan.rows)  # one band of all rows in the wide layout
    gyf, gxf = grad_output.reshape(-1), grad_input.reshape(-1)
    for n0 in range(0, p.n, plan.chunk):
        nb = min(plan.chunk, p.n - n0)
        if plan.wide:
            cols = nb * pixels
            gathered = ws[plan.col_elems:plan.col_elems + p.k * cols]
            _gather(gyf, gathered, n0, nb, p.k, pixels)
            col = ws[:groups * crs * cols]
            np.matmul(wgt, gathered.reshape(groups, kg, cols), out=col.reshape(groups, crs, cols))
            _fold(col, gxf, n0, nb, bands[0], pixels, cols, geo, taps, _fold_block(p, nb, bands[0]))
            continue
        for band in bands:
            oy0, oy1 = band[0], band[1]
            cols = (oy1 - oy0) * ow
            col = ws[:nb * groups * crs * cols]
            np.matmul(wgt, gy4[n0:n0 + nb, :, :, oy0 * ow:oy1 * ow],
                      out=col.reshape(nb, groups, crs, cols))
            _fold(col, gxf, n0, nb, band, groups * crs * cols, cols, geo, taps,
                  _fold_block(p, nb, band))


def conv2d_grad_weight(grad_output, x, grad_weight, params):
    """grad_weight (K, C/groups, R, S) from grad_output (N, K, OH, OW) and x (N, C, H, W).

    Summed transposed, gW_g^T (C_g R S x K_g) += col_g @ gY_g^T, and transposed once at the
    end: NumPy's OpenBLAS ran that orientation 3-8% faster than gY_g @ col_g^T.
    """
    use_configured_threads()
    p = params
    groups, kg, pixels, ow = p.groups, p.k // p.groups, p.out_h * p.out_w, p.out_w
    crs = p.c_per_group * p.r * p.s
    gwt = np.empty((groups, crs, kg), x.dtype)
    gy4 = grad_output.reshape(p.n, groups, kg, pixels)
    part = None  # one product, before it is added to gwt

    def accumulate(a, bt):
        nonlocal part
        if part is None:
            np.matmul(a, bt, out=gwt)
            part = np.empty_like(gwt)
        else:
            np.matmul(a, bt, out=part)
            np.add(gwt, part, out=gwt)

    def accumulate_images(a4, bt4):
        """Add sum_b a4[b] @ bt4[b]: one stacked matmul and one sum over the images."""
        nonlocal part
        prods = np.matmul(a4, bt4)
        if part is None:
            np.sum(prods, axis=0, out=gwt)
            part = np.empty_like(gwt)
        else:
            np.sum(prods, axis=0, out=part)
            np.add(gwt, part, out=gwt)

    if _is_plain_pointwise(p):
        x4 = x.reshape(p.n, groups, crs, pixels)
        for i in range(p.n):
            accumulate(x4[i], gy4[i].transpose(0, 2, 1))
    else:
        plan = _plan(p)
        ws = _workspace(plan.col_elems + plan.extra_elems, x.dtype)
        geo = _geometry(p)
        bands = _band_table(p, plan.rows)
        xf, gyf = x.reshape(-1), grad_output.reshape(-1)
        for n0 in range(0, p.n, plan.chunk):
            nb = min(plan.chunk, p.n - n0)
            if plan.wide:
                cols = nb * pixels
                col = ws[:groups * crs * cols]
                _unfold(xf, col, n0, nb, 0, p.out_h, pixels, cols, geo)
                gathered = ws[plan.col_elems:plan.col_elems + p.k * cols]
                _gather(gyf, gathered, n0, nb, p.k, pixels)
                accumulate(col.reshape(groups, crs, cols),
                           gathered.reshape(groups, kg, cols).transpose(0, 2, 1))
                continue
            for oy0, oy1 in bands[:, :2]:
                cols = (oy1 - oy0) * ow
                col = ws[:nb * groups * crs * cols]
                _unfold(xf, col, n0, nb, oy0, oy1, groups * crs * cols, cols, geo)
                col4 = col.reshape(nb, groups, crs, cols)
                if nb > 1 and kg <= cols:
                    # Several small images: one stacked matmul (NumPy walks the images in C)
                    # instead of a Python call per image (cifar_conv1, 64 images: ~17 us
                    # each, 1.1 of 4.8 ms). The products take no more room than col.
                    accumulate_images(col4, gy4[n0:n0 + nb, :, :, oy0 * ow:oy1 * ow].transpose(0, 1, 3, 2))
                    continue
                for b in range(nb):
                    accumulate(col4[b], gy4[n0 + b, :, :, oy0 * ow:oy1 * ow].transpose(0, 2, 1))
    grad_weight.reshape(groups, kg, crs)[...] = gwt.transpose(0, 2, 1)
