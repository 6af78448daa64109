"""Winograd F(2x2,3x3) and F(4x4,3x3) convolution (Lavin & Gray), Numba backend.

Mirrors ``fastconv/kernels/cython/winograd.pyx`` function for function. The transform
matrices come from ``fastconv.kernels.winograd_tables`` (shared by both backends) and are
applied as sums over their non-zeros only. ``m`` is the output tile size, ``a = m + 2`` the
input tile size, ``xi = p*a + q`` a position in the transformed a x a tile.

One call runs, per chunk of tile rows (the chunk keeps the V and M buffers within
``fastconv.limits.workspace_limit_bytes()``):

1. ``_input_transform``: ``V[xi, g, t, c] = (B^T d B)[xi]`` of every overlapping a x a input
   tile ``d`` (out-of-range input reads as zero) -- parallel over tile rows;
2. ``_batched_gemm``: one GEMM per position xi and group,
   ``M[xi, g] (T x K/g) = V[xi, g] (T x C/g) @ U[xi, g] (C/g x K/g)``, outside any parallel
   region so that BLAS owns the threads;
3. ``_output_transform``: ``y = A^T M A + bias`` of every tile, written to NCHW ``y`` --
   parallel over tile rows.

Layout: channels innermost. V and M are [xi][group][tile][channel], so each GEMM reads and
writes contiguous row-major matrices, and every transform step is a sum of long contiguous
vectors: a tile row's input rows are first copied channel-last (the only strided reads),
with each row's columns split into m phases (column ``s*m + ph`` at ``[ph][s]``); then the
tiles' j-th columns ``s*m + j`` for consecutive tiles s are one contiguous run of
``[ph = j % m][s + j // m]``, so both transform passes are vector AXPYs over (tile,
channel). The output side mirrors it, and the NCHW scatter is the only strided write.

The filter transform ``U = G g G^T`` runs in float64 (``G`` holds 1/6, 1/12, ... which round
in float32), once per weight array while its values are unchanged
(``winograd_tables.FilterTransformCache``).

grad_input is the same computation: a 3x3 stride-1 convolution of grad_output with the
filters turned by 180 degrees and input/output channels swapped per group, whose windows
start at ``(oy - (2 - pad_top), ox - (2 - pad_left))``. The driver takes any (also negative)
offsets: windows that leave grad_output read zeros, which is exactly the case pad > 2
(input rows that no output window covered get zero gradient).
"""
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (np.dot in @njit calls SciPy's BLAS: load it now
#                                   so that fastconv's thread limit reaches it when this loads)
from numba import njit, prange

from ... import limits, threads
from .. import winograd_tables as tables
from ._runtime import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, use_configured_threads

_FILTER_CACHE = tables.FilterTransformCache()


def _sparse_tables(m):
    at, _, bt = tables.MATRICES[m]
    return tables.sparse_rows(bt), tables.sparse_rows(at)


_SPARSE = {m: _sparse_tables(m) for m in tables.POINTS}


# ---------------------------------------------------------------- filter transform

@njit(**PARALLEL_JIT_OPTIONS)
def _filter_transform(f, g, u):
    """u[p*a + q, grp, c, :] = (G f[grp, c, :, :, :] G^T)[p, q], in float64, stored in u's dtype.

    f (G, C_in/G, 3, 3, C_out/G) float64, g (a, 3) float64, u (a*a, G, C_in/G, C_out/G).
    Vectorised over the output channels (the innermost axis of both).
    """
    groups, c_in, k_out = f.shape[0], f.shape[1], f.shape[4]
    a = g.shape[0]
    for job in prange(groups * c_in):
        grp = job // c_in
        c = job - grp * c_in
        tmp = np.empty((a, 3, k_out))
        for p in range(a):          # tmp = G f  (a x 3 per output channel)
            for j in range(3):
                for k in range(k_out):
                    tmp[p, j, k] = g[p, 0] * f[grp, c, 0, j, k] + g[p, 1] * f[grp, c, 1, j, k] \
                        + g[p, 2] * f[grp, c, 2, j, k]
        for p in range(a):          # U = tmp G^T  (a x a)
            for q in range(a):
                out = u[p * a + q, grp, c]
                for k in range(k_out):
                    out[k] = tmp[p, 0, k] * g[q, 0] + tmp[p, 1, k] * g[q, 1] + tmp[p, 2, k] * g[q, 2]


def _transformed_filters(weight, m, groups, grad_input):
    """U (a*a, G, C_in/G, C_out/G) of the forward (or grad_input) convolution, cached per weight."""
    def compute(w):
        f = tables.filters_channel_last(w, groups, grad_input)
        a = m + 2
        u = np.empty((a * a,) + f.shape[:2] + f.shape[4:], dtype=w.dtype)
        use_configured_threads()
        _filter_transform(f, tables.MATRICES[m][1], u)
        return u
    return _FILTER_CACHE.get(weight, ("numba", m, groups, grad_input), compute)


# ---------------------------------------------------------------- input transform

@njit(**JIT_OPTIONS)
def _input_row(x, v, row, grow, pad_top, pad_left, n_th, m, bt_idx, bt_val, bt_cnt, xr, r):
    """V of the tiles of tile row ``row`` of the chunk (``grow`` in the whole batch).

    xr, r: scratch (a, G, m, n_tw + 1, C/G): the input rows channel-last in column phases,
    and their column transform.
    """
    h, w = x.shape[2], x.shape[3]
    a = m + 2
    groups, cg = v.shape[1], v.shape[3]
    slots = xr.shape[3]
    n_tw = slots - 1
    img = grow // n_th
    y0 = (grow - img * n_th) * m - pad_top
    # Input rows y0 .. y0+a-1 -> xr[i, g, ph, s, c] = x[img, g*cg + c, y0 + i, s*m + ph - pad_left].
    for i in range(a):
        yy = y0 + i
        if yy < 0 or yy >= h:
            flat = xr[i].reshape(-1)
            for z in range(flat.size):
                flat[z] = 0
            continue
        for grp in range(groups):
            for ph in range(m):
                dst = xr[i, grp, ph]
                for s in range(slots):
                    xx = s * m + ph - pad_left
                    if 0 <= xx < w:
                        for c in range(cg):
                            dst[s, c] = x[img, grp * cg + c, yy, xx]
                    else:
                        for c in range(cg):
                            dst[s, c] = 0
    # Column transform of every column at once: r[p] = sum_i B^T[p, i] xr[i].
    for p in range(a):
        dst = r[p].reshape(-1)
        src = xr[bt_idx[p, 0]].reshape(-1)
        coef = bt_val[p, 0]
        for z in range(dst.size):
            dst[z] = coef * src[z]
        for e in range(1, bt_cnt[p]):
            src = xr[bt_idx[p, e]].reshape(-1)
            coef = bt_val[p, e]
            for z in range(dst.size):
                dst[z] += coef * src[z]
    # Row transform: V[p*a + q, g, tiles of the row] = sum_j B^T[q, j] r[p, g, j % m, j // m + tile].
    n = n_tw * cg
    for p in range(a):
        for q in range(a):
            for grp in range(groups):
                dst = v[p * a + q, grp].reshape(-1)[row * n:(row + 1) * n]
                j = bt_idx[q, 0]
                src = r[p, grp, j % m].reshape(-1)[(j // m) * cg:(j // m) * cg + n]
                coef = bt_val[q, 0]
                for z in range(n):
                    dst[z] = coef * src[z]
                for e in range(1, bt_cnt[q]):
                    j = bt_idx[q, e]
                    src = r[p, grp, j % m].reshape(-1)[(j // m) * cg:(j // m) * cg + n]
                    coef = bt_val[q, e]
                    for z in range(n):
                        dst[z] += coef * src[z]


@njit(**PARALLEL_JIT_OPTIONS)
def _input_transform(x, v, row_start, pad_top, pad_left, n_th, n_tw, m, bt_idx, bt_val, bt_cnt, workers):
    """V (a*a, G, T, C/G) of the chunk's tile rows row_start .. (x (N, C, H, W)).

    Tile (img, th, tw) reads input rows from ``th*m - pad_top`` and columns from
    ``tw*m - pad_left``. The rows are split into ``workers`` contiguous ranges, one per
    parallel iteration, so each worker owns one slice of the scratch array.
    """
    a = m + 2
    groups, cg = v.shape[1], v.shape[3]
    n_rows = v.shape[2] // n_tw
    scratch = np.empty((workers, 2, a, groups, m, n_tw + 1, cg), dtype=x.dtype)
    for worker in prange(workers):
        for row in range(worker * n_rows // workers, (worker + 1) * n_rows // workers):
            _input_row(x, v, row, row_start + row, pad_top, pad_left, n_th, m, bt_idx, bt_val, bt_cnt,
                       scratch[worker, 0], scratch[worker, 1])


# ---------------------------------------------------------------- the GEMMs

@njit(**JIT_OPTIONS)
def _batched_gemm(v, u, mm):
    """mm[xi, g] = v[xi, g] @ u[xi, g] for every position xi and group g (BLAS, serial loop).

    v (a*a, G, T, C/G), u (a*a, G, C/G, K/G), mm (a*a, G, T, K/G); BLAS threads each product.
    """
    for xi in range(u.shape[0]):
        for g in range(u.shape[1]):
            np.dot(v[xi, g], u[xi, g], mm[xi, g])


# ---------------------------------------------------------------- output transform

@njit(**JIT_OPTIONS)
def _output_row(mm, y, bias, row, grow, n_th, m, at_idx, at_val, at_cnt, s1, yt):
    """y of the tiles of tile row ``row`` of the chunk (``grow`` in the whole batch).

    s1: scratch (m, a, G, n_tw, K/G) for A^T M; yt: scratch (m, m, G, n_tw, K/G) for the tiles.
    """
    oh, ow = y.shape[2], y.shape[3]
    a = m + 2
    groups, kg = mm.shape[1], mm.shape[3]
    n_tw = s1.shape[3]
    n = n_tw * kg
    img = grow // n_th
    y0 = (grow - img * n_th) * m
    # Column pass: s1[i, q, g] = sum_p A^T[i, p] M[p*a + q, g, tiles of the row].
    for i in range(m):
        for q in range(a):
            for grp in range(groups):
                dst = s1[i, q, grp].reshape(-1)
                p = at_idx[i, 0]
                src = mm[p * a + q, grp].reshape(-1)[row * n:(row + 1) * n]
                coef = at_val[i, 0]
                for z in range(n):
                    dst[z] = coef * src[z]
                for e in range(1, at_cnt[i]):
                    p = at_idx[i, e]
                    src = mm[p * a + q, grp].reshape(-1)[row * n:(row + 1) * n]
                    coef = at_val[i, e]
                    for z in range(n):
                        dst[z] += coef * src[z]
    # Row pass: yt[i, j] = sum_q A^T[j, q] s1[i, q] + bias.
    for i in range(m):
        for j in range(m):
            for grp in range(groups):
                dst = yt[i, j, grp]
                for tw in range(n_tw):
                    for k in range(kg):
                        dst[tw, k] = bias[grp * kg + k]
            dst = yt[i, j].reshape(-1)
            for e in range(at_cnt[j]):
                src = s1[i, at_idx[j, e]].reshape(-1)
                coef = at_val[j, e]
                for z in range(dst.size):
                    dst[z] += coef * src[z]
    # Scatter to NCHW; the last tile row/column drops what falls outside the output.
    for i in range(min(m, oh - y0)):
        for grp in range(groups):
            for k in range(kg):
                out = y[img, grp * kg + k, y0 + i]
                for j in range(m):
                    src = yt[i, j, grp]
                    for tw in range(n_tw):
                        ox = tw * m + j
                        if ox < ow:
                            out[ox] = src[tw, k]


@njit(**PARALLEL_JIT_OPTIONS)
def _output_transform(mm, y, bias, row_start, n_th, n_tw, m, at_idx, at_val, at_cnt, workers):
    """y tiles of the chunk's tile rows row_start .. = A^T M A + bias.

    mm (a*a, G, T, K/G), y (N, K, OH, OW), bias (K,).
    """
    a = m + 2
    groups, kg = mm.shape[1], mm.shape[3]
    n_rows = mm.shape[2] // n_tw
    s1 = np.empty((workers, m, a, groups, n_tw, kg), dtype=y.dtype)
    yt = np.empty((workers, m, m, groups, n_tw, kg), dtype=y.dtype)
    for worker in prange(workers):
        for row in range(worker * n_rows // workers, (worker + 1) * n_rows // workers):
            _output_row(mm, y, bias, row, row_start + row, n_th, m, at_idx, at_val, at_cnt,
                        s1[worker], yt[worker])


# ---------------------------------------------------------------- the driver

def _winograd_conv(x, u, bias, y, pad_top, pad_left, m):
    """y (N, K, OH, OW) = 3x3 stride-1 correlation of x (N, C, H, W) with transformed filters u.

    ``u`` is (a*a, G, C/G, K/G); output (oy, ox) reads the 3x3 input window starting at
    (oy - pad_top, ox - pad_left), zeros outside x. ``bias`` is (K,) or None.
    """
    use_configured_threads()
    workers = threads.numba_threads()
    n, c_in = x.shape[0], x.shape[1]
    k_out, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    groups = u.shape[1]
    a = m + 2
    aa = a * a
    n_th = -(-oh // m)
    n_tw = -(-ow // m)
    total_rows = n * n_th
    (bt_idx, bt_val, bt_cnt), (at_idx, at_val, at_cnt) = _SPARSE[m]
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
        _input_transform(x, v, r0, pad_top, pad_left, n_th, n_tw, m, bt_idx, bt_val, bt_cnt, workers)
        _batched_gemm(v, u, mm)
        _output_transform(mm, y, bias, r0, n_th, n_tw, m, at_idx, at_val, at_cnt, workers)


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
