"""im2col + GEMM convolution kernels, Numba backend (mirrors ``kernels/cython/im2col.pyx``).

The convolution of one image and one group is a matrix product once the input is unfolded
into a column matrix ``col`` whose row ``(c, r, s)`` holds, for every output pixel, the input
value that tap ``(r, s)`` of channel ``c`` reads (zero where the tap falls in the padding)::

    forward      y_g  (K_g x P)     = W_g (K_g x C_g R S) @ col_g (C_g R S x P)
    grad_weight  gW_g (K_g x C_g R S) += gY_g (K_g x P) @ col_g^T          (transpose flag)
    grad_input   col_g (C_g R S x P) = W_g^T @ gY_g, then col2im folds col back onto gX
                 (adding up the taps that read the same input pixel)

with ``P = out_h * out_w``. Rows are ordered ``(c, r, s)``, the memory order of the weight,
so ``W_g`` is the weight array itself, reshaped, with no copy. The GEMMs are NumPy's
``np.dot`` on contiguous 2-D arrays inside ``@njit`` (Numba calls SciPy's BLAS; the
transposes are flags, not copies).

Layouts. Two column layouts, chosen per call by the number of output pixels ``P``:

* per image (``P >= WIDE_BELOW_PIXELS``): ``col`` is ``(chunk, C R S, P)``; each image and
  group is one GEMM that writes straight into ``y`` (and reads ``grad_output`` in place).
* wide (``P < WIDE_BELOW_PIXELS``, small images such as MNIST or late ResNet stages): ``col``
  is ``(C R S, chunk * P)`` so one GEMM per group covers the whole chunk; per-image GEMMs
  would be too thin for BLAS to run at speed. The forward result is then scattered into
  ``y`` (adding the bias on the way), and the gradients first gather ``grad_output`` of the
  chunk into a ``(K, chunk * P)`` matrix.

A 1x1, stride-1, unpadded convolution needs no unfolding at all: the input of one image is
already the ``(C, H W)`` column matrix, so each image and group is a single GEMM on the
arrays as they are (``W @ X``, ``W^T @ gY``, ``gY @ X^T`` summed over images).

Workspace policy. The column matrix (plus, in the wide layout, the ``(K, chunk * P)``
scatter/gather matrix) is bounded by ``fastconv.limits.workspace_limit_bytes()`` (64 MiB by
default; ``fastconv.set_workspace_limit`` / ``FASTCONV_WORKSPACE_MB``): the batch is processed
in chunks of ``chunk = clamp(budget // bytes_per_image, 1, N)`` images, so the last chunk may
be shorter. The chunk is further capped at ``CACHE_TARGET_BYTES`` of workspace when that
still leaves a full image, which keeps the column matrix in the last-level cache between the
unfold that writes it and the GEMM that reads it (measured faster than one big chunk). An
image whose own column matrix exceeds the budget still runs, as a chunk of one (subject only
to ``fastconv.limits.max_allocation_bytes()``). Workspaces up to the budget are kept in a
per-thread cache (``threading.local``) and reused by the next call of the same or a smaller
size and the same dtype; a kernel never calls another kernel, so one buffer per thread and
dtype is never used twice at once. Larger ones are freed after the call.

Threads: the unfold, fold, scatter and gather loops are ``prange`` loops over (image,
channel, row) units that each own their output, so results do not depend on the thread
count. BLAS is never called inside a parallel region; it runs its own threads, set by
``fastconv.set_num_threads``.
"""
import threading

import numpy as np
from numba import njit, prange

from ... import limits
from ._runtime import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, use_configured_threads

#: Below this many output pixels per image, the images of a chunk share one wide GEMM.
WIDE_BELOW_PIXELS = 1024
#: Chunks are cut down to about this much workspace (when one image fits) so that the column
#: matrix is still in cache when the GEMM reads it.
CACHE_TARGET_BYTES = 8 * 2**20


# ---------------------------------------------------------------- planning and workspace

def _geometry(p):
    """The call's sizes as one tuple of ints (what the ``@njit`` functions unpack)."""
    return (p.n, p.c, p.h, p.w, p.k, p.r, p.s, p.stride_h, p.stride_w, p.pad_top, p.pad_left,
            p.dil_h, p.dil_w, p.groups, p.out_h, p.out_w)


def _is_plain_pointwise(p):
    """1x1, stride 1, no padding: the input is its own column matrix."""
    return p.is_pointwise and p.stride_h == 1 and p.stride_w == 1


def _plan(p):
    """``(wide, chunk, col_elems, extra_elems)`` for a call: layout, images per chunk, sizes.

    ``extra_elems`` is the ``(K, chunk * P)`` scatter/gather matrix of the wide layout (0
    in the per-image layout).
    """
    pixels = p.out_h * p.out_w
    wide = pixels < WIDE_BELOW_PIXELS and p.n > 1
    col_per_image = p.c * p.r * p.s * pixels
    per_image = col_per_image + (p.k * pixels if wide else 0)
    itemsize = np.dtype(p.dtype).itemsize
    per_image_bytes = per_image * itemsize
    chunk = limits.workspace_limit_bytes() // per_image_bytes
    chunk = min(chunk, max(1, CACHE_TARGET_BYTES // per_image_bytes))
    chunk = max(1, min(p.n, chunk))
    return wide, chunk, col_per_image * chunk, (p.k * pixels * chunk if wide else 0)


_cache = threading.local()


def _workspace(nelems, dtype):
    """A scratch array of ``nelems`` elements, reused between calls on this thread."""
    dtype = np.dtype(dtype)
    buffers = getattr(_cache, "buffers", None)
    if buffers is None:
        buffers = _cache.buffers = {}
    buf = buffers.get(dtype.char)
    if buf is not None and buf.size >= nelems:
        return buf[:nelems]
    nbytes = nelems * dtype.itemsize
    if nbytes > limits.workspace_limit_bytes():
        # One image that alone exceeds the budget: allocate for this call only.
        limits.check_allocation((nelems,), dtype.itemsize, "im2col workspace")
        return np.empty(nelems, dtype)
    buf = np.empty(nelems, dtype)
    buffers[dtype.char] = buf
    return buf


def _workspace_cache_bytes():
    """Bytes held by this thread's workspace cache (for tests and diagnostics)."""
    buffers = getattr(_cache, "buffers", None) or {}
    return sum(b.nbytes for b in buffers.values())


# ---------------------------------------------------------------- unfold / fold loops

@njit(inline="always", **JIT_OPTIONS)
def _valid_range(offset, stride, size, out_size):
    """Output indices ``o`` in ``[lo, hi)`` with ``0 <= o * stride + offset < size``."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = size - 1 - offset
    hi = 0 if last < 0 else min(out_size, last // stride + 1)
    if hi < lo:
        hi = lo
    return lo, hi


# Numba wraps negative indices, which costs a test per access and blocks vectorisation. The
# loops below therefore copy through slices, or index views with counters that start at 0
# (provably non-negative), which compile to plain vectorised loops.

@njit(**PARALLEL_JIT_OPTIONS)
def _unfold(x, col, n0, nb, img_stride, row_stride, geo):
    """col[b*img_stride + ((c*R + i)*S + j)*row_stride + oy*OW + ox] = x[n0+b, c, iy, ix].

    ``x`` and ``col`` are flat. One parallel unit per (image, channel, kernel row).
    """
    (_, c, h, w, _, r, s, sh, sw, pt, pl, dh, dw, _, oh, ow) = geo
    hw = h * w
    for t in prange(nb * c * r):
        b = t // (c * r)
        ci = (t // r) % c
        i = t % r
        src_plane = ((n0 + b) * c + ci) * hw
        oy_lo, oy_hi = _valid_range(i * dh - pt, sh, h, oh)
        for j in range(s):
            off = j * dw - pl
            ox_lo, ox_hi = _valid_range(off, sw, w, ow)
            dst = b * img_stride + ((ci * r + i) * s + j) * row_stride
            col[dst:dst + oy_lo * ow] = 0  # rows that read the top padding
            col[dst + oy_hi * ow:dst + oh * ow] = 0  # ... and the bottom padding
            for oy in range(oy_lo, oy_hi):
                d = dst + oy * ow
                src = src_plane + (oy * sh + i * dh - pt) * w + off
                col[d:d + ox_lo] = 0
                if sw == 1:
                    col[d + ox_lo:d + ox_hi] = x[src + ox_lo:src + ox_hi]
                else:
                    col[d + ox_lo:d + ox_hi] = x[src + ox_lo * sw:src + ox_hi * sw:sw]
                col[d + ox_hi:d + ow] = 0


@njit(**PARALLEL_JIT_OPTIONS)
def _fold(col, gx, n0, nb, img_stride, row_stride, geo):
    """gx[n0+b, c, iy, :] = sum of the col entries whose tap reads that input row (col2im).

    One parallel unit per (image, channel, input row): it owns that row of ``gx``, so the
    sums need no atomics and are added in the same order whatever the thread count.
    """
    (_, c, h, w, _, r, s, sh, sw, pt, pl, dh, dw, _, oh, ow) = geo
    for t in prange(nb * c * h):
        b = t // (c * h)
        ci = (t // h) % c
        iy = t % h
        row = ((n0 + b) * c + ci) * h * w + iy * w
        grow = gx[row:row + w]
        for q in range(w):
            grow[q] = 0
        for i in range(r):
            ty = iy + pt - i * dh
            if ty < 0:
                break  # ty only decreases with i
            if ty % sh != 0:
                continue
            oy = ty // sh
            if oy >= oh:
                continue
            for j in range(s):
                off = j * dw - pl
                ox_lo, ox_hi = _valid_range(off, sw, w, ow)
                m = ox_hi - ox_lo
                src = b * img_stride + ((ci * r + i) * s + j) * row_stride + oy * ow + ox_lo
                cs = col[src:src + m]
                gd = grow[off + ox_lo * sw:]
                if sw == 1:
                    for q in range(m):
                        gd[q] += cs[q]
                else:
                    for q in range(m):
                        gd[q * sw] += cs[q]


@njit(**PARALLEL_JIT_OPTIONS)
def _scatter(wide, y, bias, has_bias, n0, nb, k, pixels):
    """y[n0+b, kk, :] = wide[kk, b*P:(b+1)*P] (+ bias[kk]); ``wide`` is (K, nb*P), flat."""
    for t in prange(nb * k):
        b = t // k
        kk = t % k
        src = kk * nb * pixels + b * pixels
        dst = ((n0 + b) * k + kk) * pixels
        if has_bias:
            ys = y[dst:dst + pixels]
            ws = wide[src:src + pixels]
            bv = bias[kk]
            for q in range(pixels):
                ys[q] = ws[q] + bv
        else:
            y[dst:dst + pixels] = wide[src:src + pixels]


@njit(**PARALLEL_JIT_OPTIONS)
def _gather(gy, wide, n0, nb, k, pixels):
    """wide[kk, b*P:(b+1)*P] = gy[n0+b, kk, :]: the chunk's gradients side by side."""
    for t in prange(nb * k):
        b = t // k
        kk = t % k
        src = ((n0 + b) * k + kk) * pixels
        dst = kk * nb * pixels + b * pixels
        wide[dst:dst + pixels] = gy[src:src + pixels]


@njit(**PARALLEL_JIT_OPTIONS)
def _add_bias(y, bias, n0, nb, k, pixels):
    """y[n0+b, kk, :] += bias[kk] for the images of one chunk (flat ``y``)."""
    for t in prange(nb * k):
        kk = t % k
        dst = ((n0 + t // k) * k + kk) * pixels
        ys = y[dst:dst + pixels]
        bv = bias[kk]
        for q in range(pixels):
            ys[q] += bv


@njit(**JIT_OPTIONS)
def _accumulate(dst, src):
    """dst += src, elementwise (2-D, same shape)."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] += src[i, j]


# ---------------------------------------------------------------- GEMM drivers

@njit(**JIT_OPTIONS)
def _forward(x, w2, bias, has_bias, y, col, extra, geo, chunk, wide):
    """y (N, K, P) flat <- conv(x flat, w2 (K, C_g R S)) chunk by chunk."""
    (n, c, _, _, k, r, s, _, _, _, _, _, _, groups, oh, ow) = geo
    pixels = oh * ow
    kg = k // groups
    crs = (c // groups) * r * s
    y3 = y.reshape((n, k, pixels))
    for n0 in range(0, n, chunk):
        nb = min(chunk, n - n0)
        if wide:
            cols = nb * pixels
            _unfold(x, col, n0, nb, pixels, cols, geo)
            for g in range(groups):
                np.dot(w2[g * kg:(g + 1) * kg],
                       col[g * crs * cols:(g + 1) * crs * cols].reshape((crs, cols)),
                       extra[g * kg * cols:(g + 1) * kg * cols].reshape((kg, cols)))
            _scatter(extra, y, bias, has_bias, n0, nb, k, pixels)
        else:
            per_image = c * r * s * pixels
            _unfold(x, col, n0, nb, per_image, pixels, geo)
            for b in range(nb):
                for g in range(groups):
                    start = b * per_image + g * crs * pixels
                    np.dot(w2[g * kg:(g + 1) * kg],
                           col[start:start + crs * pixels].reshape((crs, pixels)),
                           y3[n0 + b, g * kg:(g + 1) * kg])
            if has_bias:
                _add_bias(y, bias, n0, nb, k, pixels)


@njit(**JIT_OPTIONS)
def _grad_input(gy, w2, gx, col, extra, geo, chunk, wide):
    """gx flat <- col2im(W^T @ gY) chunk by chunk."""
    (n, c, _, _, k, r, s, _, _, _, _, _, _, groups, oh, ow) = geo
    pixels = oh * ow
    kg = k // groups
    crs = (c // groups) * r * s
    gy3 = gy.reshape((n, k, pixels))
    for n0 in range(0, n, chunk):
        nb = min(chunk, n - n0)
        if wide:
            cols = nb * pixels
            _gather(gy, extra, n0, nb, k, pixels)
            for g in range(groups):
                np.dot(w2[g * kg:(g + 1) * kg].T,
                       extra[g * kg * cols:(g + 1) * kg * cols].reshape((kg, cols)),
                       col[g * crs * cols:(g + 1) * crs * cols].reshape((crs, cols)))
            _fold(col, gx, n0, nb, pixels, cols, geo)
        else:
            per_image = c * r * s * pixels
            for b in range(nb):
                for g in range(groups):
                    start = b * per_image + g * crs * pixels
                    np.dot(w2[g * kg:(g + 1) * kg].T, gy3[n0 + b, g * kg:(g + 1) * kg],
                           col[start:start + crs * pixels].reshape((crs, pixels)))
            _fold(col, gx, n0, nb, per_image, pixels, geo)


@njit(**JIT_OPTIONS)
def _grad_weight(gy, x, gw2, col, extra, geo, chunk, wide):
    """gw2 (K, C_g R S) <- sum over images of gY @ col^T, chunk by chunk."""
    (n, c, _, _, k, r, s, _, _, _, _, _, _, groups, oh, ow) = geo
    pixels = oh * ow
    kg = k // groups
    crs = (c // groups) * r * s
    gy3 = gy.reshape((n, k, pixels))
    part = np.empty((kg, crs), gw2.dtype)  # one product, before it is added to gw2
    first = True
    for n0 in range(0, n, chunk):
        nb = min(chunk, n - n0)
        if wide:
            cols = nb * pixels
            _unfold(x, col, n0, nb, pixels, cols, geo)
            _gather(gy, extra, n0, nb, k, pixels)
            for g in range(groups):
                a = extra[g * kg * cols:(g + 1) * kg * cols].reshape((kg, cols))
                bt = col[g * crs * cols:(g + 1) * crs * cols].reshape((crs, cols)).T
                if first:
                    np.dot(a, bt, gw2[g * kg:(g + 1) * kg])
                else:
                    np.dot(a, bt, part)
                    _accumulate(gw2[g * kg:(g + 1) * kg], part)
            first = False
        else:
            per_image = c * r * s * pixels
            _unfold(x, col, n0, nb, per_image, pixels, geo)
            for b in range(nb):
                for g in range(groups):
                    start = b * per_image + g * crs * pixels
                    a = gy3[n0 + b, g * kg:(g + 1) * kg]
                    bt = col[start:start + crs * pixels].reshape((crs, pixels)).T
                    if first:
                        np.dot(a, bt, gw2[g * kg:(g + 1) * kg])
                    else:
                        np.dot(a, bt, part)
                        _accumulate(gw2[g * kg:(g + 1) * kg], part)
                first = False


# 1x1, stride 1, unpadded: GEMMs on the arrays as they are (x3, y3: (N, channels, H W)).

@njit(**JIT_OPTIONS)
def _forward_pointwise(x3, w2, bias, has_bias, y3, groups):
    n, c, _ = x3.shape
    k = y3.shape[1]
    cg = c // groups
    kg = k // groups
    for i in range(n):
        for g in range(groups):
            np.dot(w2[g * kg:(g + 1) * kg], x3[i, g * cg:(g + 1) * cg], y3[i, g * kg:(g + 1) * kg])
    if has_bias:
        _add_bias(y3.reshape(y3.size), bias, 0, n, k, y3.shape[2])


@njit(**JIT_OPTIONS)
def _grad_input_pointwise(gy3, w2, gx3, groups):
    n, c, _ = gx3.shape
    k = gy3.shape[1]
    cg = c // groups
    kg = k // groups
    for i in range(n):
        for g in range(groups):
            np.dot(w2[g * kg:(g + 1) * kg].T, gy3[i, g * kg:(g + 1) * kg], gx3[i, g * cg:(g + 1) * cg])


@njit(**JIT_OPTIONS)
def _grad_weight_pointwise(gy3, x3, gw2, groups):
    n, c, _ = x3.shape
    k = gy3.shape[1]
    cg = c // groups
    kg = k // groups
    part = np.empty((kg, cg), gw2.dtype)
    for i in range(n):
        for g in range(groups):
            a = gy3[i, g * kg:(g + 1) * kg]
            bt = x3[i, g * cg:(g + 1) * cg].T
            if i == 0:
                np.dot(a, bt, gw2[g * kg:(g + 1) * kg])
            else:
                np.dot(a, bt, part)
                _accumulate(gw2[g * kg:(g + 1) * kg], part)


# ---------------------------------------------------------------- public kernels

def _bias_or_empty(bias, dtype):
    return (bias, True) if bias is not None else (np.empty(0, dtype), False)


def conv2d_forward(x, weight, bias, y, params):
    """y (N, K, OH, OW) = x (N, C, H, W) conv weight (K, C/groups, R, S) + bias (K,) or None.

    All arrays C-contiguous float32 or float64 (the dtype of ``params``).
    """
    use_configured_threads()
    p = params
    w2 = weight.reshape(p.k, -1)
    b, has_bias = _bias_or_empty(bias, x.dtype)
    if _is_plain_pointwise(p):
        _forward_pointwise(x.reshape(p.n, p.c, -1), w2, b, has_bias, y.reshape(p.n, p.k, -1), p.groups)
        return
    wide, chunk, col_elems, extra_elems = _plan(p)
    ws = _workspace(col_elems + extra_elems, x.dtype)
    _forward(x.reshape(-1), w2, b, has_bias, y.reshape(-1), ws[:col_elems], ws[col_elems:],
             _geometry(p), chunk, wide)


def conv2d_grad_input(grad_output, weight, grad_input, params):
    """grad_input (N, C, H, W) from grad_output (N, K, OH, OW) and weight (K, C/groups, R, S)."""
    use_configured_threads()
    p = params
    w2 = weight.reshape(p.k, -1)
    if _is_plain_pointwise(p):
        _grad_input_pointwise(grad_output.reshape(p.n, p.k, -1), w2,
                              grad_input.reshape(p.n, p.c, -1), p.groups)
        return
    wide, chunk, col_elems, extra_elems = _plan(p)
    ws = _workspace(col_elems + extra_elems, grad_input.dtype)
    _grad_input(grad_output.reshape(-1), w2, grad_input.reshape(-1), ws[:col_elems],
                ws[col_elems:], _geometry(p), chunk, wide)


def conv2d_grad_weight(grad_output, x, grad_weight, params):
    """grad_weight (K, C/groups, R, S) from grad_output (N, K, OH, OW) and x (N, C, H, W)."""
    use_configured_threads()
    p = params
    gw2 = grad_weight.reshape(p.k, -1)
    if _is_plain_pointwise(p):
        _grad_weight_pointwise(grad_output.reshape(p.n, p.k, -1), x.reshape(p.n, p.c, -1), gw2, p.groups)
        return
    wide, chunk, col_elems, extra_elems = _plan(p)
    ws = _workspace(col_elems + extra_elems, x.dtype)
    _grad_weight(grad_output.reshape(-1), x.reshape(-1), gw2, ws[:col_elems], ws[col_elems:],
                 _geometry(p), chunk, wide)
