# cython: language_level=3
"""Winograd F(2x2,3x3) and F(4x4,3x3) convolution (Lavin & Gray), Cython backend.

Mirrors ``fastconv/kernels/numba/winograd.py`` function for function (read its docstring for
the algorithm and the data layout). The transform matrices come from
``fastconv.kernels.winograd_tables`` (shared by both backends) and are applied as sums over
their non-zeros only. ``m`` is the output tile size, ``a = m + 2`` the input tile size,
``xi = p*a + q`` a position in the transformed a x a tile.

Per chunk of tile rows: ``_input_transform`` (OpenMP over tile rows) writes
V[xi, g, t, c]; ``_batched_gemm`` runs one BLAS GEMM per position and group,
M[xi, g] = V[xi, g] @ U[xi, g], outside any parallel region; ``_output_transform``
(OpenMP over tile rows) writes y = A^T M A + bias in NCHW.

The per-row helpers work on raw pointers into C-contiguous arrays; the transform passes are
AXPYs over contiguous (tile, channel) runs that GCC vectorises (-O3 -march=native).
"""
import numpy as np

from cython.parallel cimport prange

from fastconv.kernels.cython.blas cimport floating, gemm
from fastconv.kernels.cython.openmp cimport omp_get_thread_num

from fastconv import limits, threads
from fastconv.kernels import winograd_tables as tables

_FILTER_CACHE = tables.FilterTransformCache()


def _sparse_tables(m):
    at, _, bt = tables.MATRICES[m]
    return tables.sparse_rows(bt), tables.sparse_rows(at)


_SPARSE = {m: _sparse_tables(m) for m in tables.POINTS}


# ---------------------------------------------------------------- vector helpers

cdef inline void _scale(floating* dst, const floating* src, floating coef, Py_ssize_t n) noexcept nogil:
    """dst[:n] = coef * src[:n]"""
    cdef Py_ssize_t z
    for z in range(n):
        dst[z] = coef * src[z]


cdef inline void _axpy(floating* dst, const floating* src, floating coef, Py_ssize_t n) noexcept nogil:
    """dst[:n] += coef * src[:n]"""
    cdef Py_ssize_t z
    for z in range(n):
        dst[z] += coef * src[z]


# ---------------------------------------------------------------- filter transform

def _filter_transform(const double[:, :, :, :, ::1] f, const double[:, ::1] g,
                      floating[:, :, :, ::1] u, int nthreads):
    """u[p*a + q, grp, c, :] = (G f[grp, c, :, :, :] G^T)[p, q], in float64, stored in u's dtype.

    f (G, C_in/G, 3, 3, C_out/G) float64, g (a, 3) float64, u (a*a, G, C_in/G, C_out/G).
    Vectorised over the output channels (the innermost axis of both).
    """
    cdef Py_ssize_t groups = f.shape[0], c_in = f.shape[1], k_out = f.shape[4]
    cdef Py_ssize_t a = g.shape[0]
    cdef Py_ssize_t job, grp, c, p, q, j, k
    cdef double[:, :, :, ::1] tmp_all = np.empty((nthreads, a, 3, k_out))
    cdef double* tmp
    for job in prange(groups * c_in, nogil=True, num_threads=nthreads, schedule="static"):
        grp = job // c_in
        c = job - grp * c_in
        tmp = &tmp_all[omp_get_thread_num(), 0, 0, 0]
        for p in range(a):          # tmp = G f  (a x 3 per output channel)
            for j in range(3):
                for k in range(k_out):
                    tmp[(p * 3 + j) * k_out + k] = g[p, 0] * f[grp, c, 0, j, k] \
                        + g[p, 1] * f[grp, c, 1, j, k] + g[p, 2] * f[grp, c, 2, j, k]
        for p in range(a):          # U = tmp G^T  (a x a)
            for q in range(a):
                for k in range(k_out):
                    u[p * a + q, grp, c, k] = <floating>(tmp[(p * 3) * k_out + k] * g[q, 0]
                                                         + tmp[(p * 3 + 1) * k_out + k] * g[q, 1]
                                                         + tmp[(p * 3 + 2) * k_out + k] * g[q, 2])


def _transformed_filters(weight, m, groups, grad_input):
    """U (a*a, G, C_in/G, C_out/G) of the forward (or grad_input) convolution, cached per weight."""
    def compute(w):
        f = tables.filters_channel_last(w, groups, grad_input)
        a = m + 2
        u = np.empty((a * a,) + f.shape[:2] + f.shape[4:], dtype=w.dtype)
        _filter_transform(f, tables.MATRICES[m][1], u, threads.get_num_threads())
        return u
    return _FILTER_CACHE.get(weight, ("cython", m, groups, grad_input), compute)


# ---------------------------------------------------------------- input transform

cdef void _input_row(const floating* x, Py_ssize_t c_total, Py_ssize_t h, Py_ssize_t w,
                     floating* v, Py_ssize_t groups, Py_ssize_t nt, Py_ssize_t cg,
                     Py_ssize_t row, Py_ssize_t grow, Py_ssize_t pad_top, Py_ssize_t pad_left,
                     Py_ssize_t n_th, Py_ssize_t n_tw, Py_ssize_t m,
                     const Py_ssize_t* bt_idx, const floating* bt_val, const Py_ssize_t* bt_cnt,
                     Py_ssize_t width, floating* xr, floating* r) noexcept nogil:
    """V of the tiles of tile row ``row`` of the chunk (``grow`` in the whole batch).

    x (N, C, H, W); v (a*a, G, T, C/G); xr, r: scratch (a, G, m, n_tw + 1, C/G): the input rows
    channel-last in column phases, and their column transform. ``bt_*`` (a x width): B^T's
    non-zeros per row.
    """
    cdef Py_ssize_t a = m + 2
    cdef Py_ssize_t slots = n_tw + 1
    cdef Py_ssize_t row_size = groups * m * slots * cg       # one input row in xr / r
    cdef Py_ssize_t n = n_tw * cg                            # one tile row of one V plane
    cdef Py_ssize_t img = grow // n_th
    cdef Py_ssize_t y0 = (grow - img * n_th) * m - pad_top
    cdef Py_ssize_t i, yy, grp, ph, s, xx, c, p, q, e, j, z
    cdef const floating* src
    cdef floating* dst
    # Input rows y0 .. y0+a-1 -> xr[i, g, ph, s, c] = x[img, g*cg + c, y0 + i, s*m + ph - pad_left].
    for i in range(a):
        yy = y0 + i
        dst = xr + i * row_size
        if yy < 0 or yy >= h:
            for z in range(row_size):
                dst[z] = 0
            continue
        for grp in range(groups):
            src = x + ((img * c_total + grp * cg) * h + yy) * w
            for ph in range(m):
                for s in range(slots):
                    xx = s * m + ph - pad_left
                    if 0 <= xx < w:
                        for c in range(cg):
                            dst[c] = src[c * h * w + xx]
                    else:
                        for c in range(cg):
                            dst[c] = 0
                    dst += cg
    # Column transform of every column at once: r[p] = sum_i B^T[p, i] xr[i].
    for p in range(a):
        _scale(r + p * row_size, xr + bt_idx[p * width] * row_size, bt_val[p * width], row_size)
        for e in range(1, bt_cnt[p]):
            _axpy(r + p * row_size, xr + bt_idx[p * width + e] * row_size, bt_val[p * width + e], row_size)
    # Row transform: V[p*a + q, g, tiles of the row] = sum_j B^T[q, j] r[p, g, j % m, j // m + tile].
    for p in range(a):
        for q in range(a):
            for grp in range(groups):
                dst = v + ((p * a + q) * groups + grp) * nt * cg + row * n
                for e in range(bt_cnt[q]):
                    j = bt_idx[q * width + e]
                    src = r + p * row_size + ((grp * m + j % m) * slots + j // m) * cg
                    if e == 0:
                        _scale(dst, src, bt_val[q * width + e], n)
                    else:
                        _axpy(dst, src, bt_val[q * width + e], n)


def _input_transform(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] v, Py_ssize_t row_start,
                     Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t n_th, Py_ssize_t n_tw,
                     Py_ssize_t m, const Py_ssize_t[:, ::1] bt_idx, const floating[:, ::1] bt_val,
                     const Py_ssize_t[::1] bt_cnt, int nthreads):
    """V (a*a, G, T, C/G) of the chunk's tile rows row_start .. (x (N, C, H, W)).

    Tile (img, th, tw) reads input rows from ``th*m - pad_top`` and columns from
    ``tw*m - pad_left``. OpenMP splits the rows statically; each thread owns one slice of the
    scratch array.
    """
    cdef Py_ssize_t a = m + 2
    cdef Py_ssize_t groups = v.shape[1], nt = v.shape[2], cg = v.shape[3]
    cdef Py_ssize_t n_rows = nt // n_tw
    cdef Py_ssize_t row, tid
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, ::1] scratch = np.empty((nthreads, 2, a * groups * m * (n_tw + 1) * cg), dtype=dtype)
    for row in prange(n_rows, nogil=True, num_threads=nthreads, schedule="static"):
        tid = omp_get_thread_num()
        _input_row(&x[0, 0, 0, 0], x.shape[1], x.shape[2], x.shape[3], &v[0, 0, 0, 0], groups, nt, cg,
                   row, row_start + row, pad_top, pad_left, n_th, n_tw, m,
                   &bt_idx[0, 0], &bt_val[0, 0], &bt_cnt[0], bt_idx.shape[1],
                   &scratch[tid, 0, 0], &scratch[tid, 1, 0])


# ---------------------------------------------------------------- the GEMMs

def _batched_gemm(floating[:, :, :, ::1] v, const floating[:, :, :, ::1] u, floating[:, :, :, ::1] mm):
    """mm[xi, g] = v[xi, g] @ u[xi, g] for every position xi and group g (BLAS, serial loop).

    v (a*a, G, T, C/G), u (a*a, G, C/G, K/G), mm (a*a, G, T, K/G); BLAS threads each product.
    """
    cdef int nt = v.shape[2], cg = v.shape[3], kg = u.shape[3]
    cdef Py_ssize_t xi, g
    with nogil:
        for xi in range(u.shape[0]):
            for g in range(u.shape[1]):
                gemm(False, False, nt, kg, cg, <floating>1, &v[xi, g, 0, 0], cg, &u[xi, g, 0, 0], kg,
                     <floating>0, &mm[xi, g, 0, 0], kg)


# ---------------------------------------------------------------- output transform

cdef void _output_row(const floating* mm, Py_ssize_t groups, Py_ssize_t nt, Py_ssize_t kg,
                      floating* y, Py_ssize_t oh, Py_ssize_t ow, const floating* bias,
                      Py_ssize_t row, Py_ssize_t grow, Py_ssize_t n_th, Py_ssize_t n_tw, Py_ssize_t m,
                      const Py_ssize_t* at_idx, const floating* at_val, const Py_ssize_t* at_cnt,
                      Py_ssize_t width, floating* s1, floating* yt) noexcept nogil:
    """y of the tiles of tile row ``row`` of the chunk (``grow`` in the whole batch).

    mm (a*a, G, T, K/G); y (N, K, OH, OW); s1: scratch (m, a, G, n_tw, K/G) for A^T M;
    yt: scratch (m, m, G, n_tw, K/G) for the tiles. ``at_*`` (m x width): A^T's non-zeros.
    """
    cdef Py_ssize_t a = m + 2
    cdef Py_ssize_t n = n_tw * kg                   # one tile row of one group
    cdef Py_ssize_t plane = groups * n              # s1[i, q] / yt[i, j]
    cdef Py_ssize_t img = grow // n_th
    cdef Py_ssize_t y0 = (grow - img * n_th) * m
    cdef Py_ssize_t i, q, grp, e, p, j, tw, k, ox
    cdef floating* dst
    cdef floating* out
    cdef const floating* src
    # Column pass: s1[i, q, g] = sum_p A^T[i, p] M[p*a + q, g, tiles of the row].
    for i in range(m):
        for q in range(a):
            for grp in range(groups):
                dst = s1 + (i * a + q) * plane + grp * n
                for e in range(at_cnt[i]):
                    p = at_idx[i * width + e]
                    src = mm + ((p * a + q) * groups + grp) * nt * kg + row * n
                    if e == 0:
                        _scale(dst, src, at_val[i * width + e], n)
                    else:
                        _axpy(dst, src, at_val[i * width + e], n)
    # Row pass: yt[i, j] = sum_q A^T[j, q] s1[i, q] + bias.
    for i in range(m):
        for j in range(m):
            dst = yt + (i * m + j) * plane
            for grp in range(groups):
                for tw in range(n_tw):
                    for k in range(kg):
                        dst[(grp * n_tw + tw) * kg + k] = bias[grp * kg + k]
            for e in range(at_cnt[j]):
                _axpy(dst, s1 + (i * a + at_idx[j * width + e]) * plane, at_val[j * width + e], plane)
    # Scatter to NCHW; the last tile row/column drops what falls outside the output.
    for i in range(min(m, oh - y0)):
        for grp in range(groups):
            for k in range(kg):
                out = y + ((img * groups + grp) * kg + k) * oh * ow + (y0 + i) * ow
                for j in range(m):
                    src = yt + (i * m + j) * plane + grp * n + k
                    for tw in range(n_tw):
                        ox = tw * m + j
                        if ox < ow:
                            out[ox] = src[tw * kg]


def _output_transform(const floating[:, :, :, ::1] mm, floating[:, :, :, ::1] y, const floating[::1] bias,
                      Py_ssize_t row_start, Py_ssize_t n_th, Py_ssize_t n_tw, Py_ssize_t m,
                      const Py_ssize_t[:, ::1] at_idx, const floating[:, ::1] at_val,
                      const Py_ssize_t[::1] at_cnt, int nthreads):
    """y tiles of the chunk's tile rows row_start .. = A^T M A + bias.

    mm (a*a, G, T, K/G), y (N, K, OH, OW), bias (K,).
    """
    cdef Py_ssize_t a = m + 2
    cdef Py_ssize_t groups = mm.shape[1], nt = mm.shape[2], kg = mm.shape[3]
    cdef Py_ssize_t n_rows = nt // n_tw
    cdef Py_ssize_t row, tid
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] s1 = np.empty((nthreads, m * a * groups * n_tw * kg), dtype=dtype)
    cdef floating[:, ::1] yt = np.empty((nthreads, m * m * groups * n_tw * kg), dtype=dtype)
    for row in prange(n_rows, nogil=True, num_threads=nthreads, schedule="static"):
        tid = omp_get_thread_num()
        _output_row(&mm[0, 0, 0, 0], groups, nt, kg, &y[0, 0, 0, 0], y.shape[2], y.shape[3], &bias[0],
                    row, row_start + row, n_th, n_tw, m, &at_idx[0, 0], &at_val[0, 0], &at_cnt[0],
                    at_idx.shape[1], &s1[tid, 0], &yt[tid, 0])


# ---------------------------------------------------------------- the driver

def _winograd_conv(x, u, bias, y, pad_top, pad_left, m):
    """y (N, K, OH, OW) = 3x3 stride-1 correlation of x (N, C, H, W) with transformed filters u.

    ``u`` is (a*a, G, C/G, K/G); output (oy, ox) reads the 3x3 input window starting at
    (oy - pad_top, ox - pad_left), zeros outside x. ``bias`` is (K,) or None.
    """
    nthreads = threads.get_num_threads()
    n, c_in = x.shape[0], x.shape[1]
    k_out, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    groups = u.shape[1]
    a = m + 2
    aa = a * a
    n_th = -(-oh // m)
    n_tw = -(-ow // m)
    total_rows = n * n_th
    (bt_idx, bt_val, bt_cnt), (at_idx, at_val, at_cnt) = _SPARSE[m]
    bt_idx, bt_cnt, at_idx, at_cnt = (t.astype(np.intp) for t in (bt_idx, bt_cnt, at_idx, at_cnt))
    bt_val = bt_val.astype(x.dtype)
    at_val = at_val.astype(x.dtype)
    bias = bias if bias is not None else np.zeros(k_out, dtype=x.dtype)
    rows = tables.rows_per_chunk(total_rows, n_tw, c_in, k_out, a, x.dtype.itemsize,
                                 limits.workspace_limit_bytes(), u.nbytes)
    v_buf = np.empty(aa * c_in * rows * n_tw, dtype=x.dtype)
    m_buf = np.empty(aa * k_out * rows * n_tw, dtype=x.dtype)
    for r0 in range(0, total_rows, rows):
        nt = min(rows, total_rows - r0) * n_tw
        v = v_buf[:aa * c_in * nt].reshape(aa, groups, nt, c_in // groups)
        mm = m_buf[:aa * k_out * nt].reshape(aa, groups, nt, k_out // groups)
        _input_transform(x, v, r0, pad_top, pad_left, n_th, n_tw, m, bt_idx, bt_val, bt_cnt, nthreads)
        _batched_gemm(v, u, mm)
        _output_transform(mm, y, bias, r0, n_th, n_tw, m, at_idx, at_val, at_cnt, nthreads)


def _forward(x, weight, bias, y, params, m):
    u = _transformed_filters(weight, m, params.groups, grad_input=False)
    _winograd_conv(x, u, bias, y, params.pad_top, params.pad_left, m)


def _grad_input(grad_output, weight, grad_input, params, m):
    u = _transformed_filters(weight, m, params.groups, grad_input=True)
    _winograd_conv(grad_output, u, None, grad_input, 2 - params.pad_top, 2 - params.pad_left, m)


# ---------------------------------------------------------------- public kernels

def conv2d_forward_f23(x, weight, bias, y, params):
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/g, 3, 3)) + bias, by F(2x2,3x3).

    float32 or float64; stride 1, dilation 1, any padding and groups.
    """
    _forward(x, weight, bias, y, params, 2)


def conv2d_forward_f43(x, weight, bias, y, params):
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/g, 3, 3)) + bias, by F(4x4,3x3).

    float32 or float64; stride 1, dilation 1, any padding and groups.
    """
    _forward(x, weight, bias, y, params, 4)


def conv2d_grad_input_f23(grad_output, weight, grad_input, params):
    """grad_input (N, C, H, W) from grad_output (N, K, OH, OW) and weight (K, C/g, 3, 3), by F(2x2,3x3)."""
    _grad_input(grad_output, weight, grad_input, params, 2)


def conv2d_grad_input_f43(grad_output, weight, grad_input, params):
    """grad_input (N, C, H, W) from grad_output (N, K, OH, OW) and weight (K, C/g, 3, 3), by F(4x4,3x3)."""
    _grad_input(grad_output, weight, grad_input, params, 4)
