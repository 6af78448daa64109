"""Winograd F(2x2,3x3) and F(4x4,3x3) convolution (Lavin & Gray), Numba backend.

Mirrors ``fastconv/kernels/cython/winograd.pyx`` function for function. The transform
matrices come from ``fastconv.kernels.winograd_tables`` (shared by both backends). ``m`` is
the output tile size, ``a = m + 2`` the input tile size, ``xi = p*a + q`` a position in the
transformed a x a tile.

One call runs, per chunk of tile rows (the chunk keeps the V and M buffers within
``fastconv.limits.workspace_limit_bytes()``; ``kernels/winograd_plan.py``, shared with the
Cython twin, plans the chunks and calls these steps):

1. ``_input_transform``: ``V[xi, g, t, c] = (B^T d B)[xi]`` of every overlapping a x a input
   tile ``d`` (out-of-range input reads as zero) -- parallel over tile rows;
2. ``_batched_gemm``: one GEMM per position xi and group,
   ``M[xi, g] (T x K/g) = V[xi, g] (T x C/g) @ U[xi, g] (C/g x K/g)``, whole products side
   by side on ``gemm_block`` (``microkernels.py``: sums held in registers, no packing);
3. ``_output_transform``: ``y = A^T M A + bias`` of every tile, written to NCHW ``y`` --
   parallel over tile rows.

Data layout: channels innermost. V and M are [xi][group][tile][channel], so each GEMM reads
and writes contiguous row-major matrices. The input transform of a tile row copies its a
input rows channel-last (the only strided reads; pixels outside the image are zeros) with
the columns regrouped by phase -- column ``s*m + ph`` at slot ``[ph][s]`` -- so that the j-th
columns of all the row's tiles form one contiguous run; B^T is then applied down the rows
(all columns at once) and across the columns (all tiles at once). The output transform
applies A^T down and across a tile row's M and writes the tiles to NCHW through a
[column][channel] line (the only strided accesses; both moves go 8 x 8 float32 blocks at a
time through ``transpose_block``). Every arithmetic step is one of the
``_lin*`` kernels: ``n_out`` outputs from ``n_in`` inputs held in registers, vectorised over
a contiguous run of (tile, channel). They apply a table matrix densely (its zeros cost
multiplications but no memory traffic, which was the bottleneck of sparse
one-term-at-a-time updates: 1.4-2x slower), except F(4x4,3x3)'s four matrices, which have
kernels written out term by term (``_bt43``, ``_b43``, ``_at43``, ``_a43``: the whole
element's inputs and outputs still in registers, 10-24 operations instead of 24-36).

Numerics: the filter transform ``U = G g G^T`` runs in float64 (``G`` holds 1/3, 1/15, ...
which round in float32), once per weight array while its values are unchanged
(``winograd_tables.FilterTransformCache``). NaN propagates; an Inf input turns the tiles that
read it into NaN (the transforms subtract input values, as in every Winograd kernel).

grad_input has two formulations, and ``winograd_plan.adjoint_pays`` picks the one with fewer
tiles. (1) The same computation as the forward: a 3x3 stride-1 convolution of grad_output
with the filters turned by 180 degrees and input/output channels swapped per group, whose
windows start at ``(oy - (2 - pad_top), ox - (2 - pad_left))``; the driver takes any (also
negative) offsets: windows that leave grad_output read zeros, which is exactly the case
pad > 2. Its tiles cover grad_input. (2) The adjoint of the forward, whose tiles cover
grad_output: ``D = A dY A^T`` (as for grad_weight below), ``dV[xi] = D[xi] @ U[xi]^T`` with
the forward's own U, and ``_input_transform_adjoint`` writes ``B dV B^T`` of every tile into
grad_input (neighbouring tiles overlap by two rows and columns: an image's tile rows run in
order, each adding its first two rows to the previous one's last two). A layer that shrinks
its input (padding 0: MNIST's 13x13 -> 11x11) needs 9 F(4x4) tiles per image for (2)
against 16 for (1). With (2), ``conv2d_grad_input_weight`` computes
grad_weight from the same D, so one transform of grad_output serves both gradients.

grad_weight is the adjoint of the forward. The forward is linear in U, so
``dL/dU[xi] = sum over tiles of V[xi]^T (A dY A^T)[xi]`` -- the input transform of x (as in
the forward) and of grad_output (with A, a x m, in place of B^T: its m x m windows do not
overlap), then one GEMM
per position summed over the chunks -- and ``dL/dw = G^T dL/dU G``. Partial
tiles are exact: the outputs beyond the edge have zero gradient.
"""
import numpy as np
from numba import njit, prange

from ... import threads
from .. import winograd_plan as plan, winograd_tables as tables
from ._runtime import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, prefetch, use_configured_threads
from .microkernels import GEMM_PANEL_VECTORS, GEMM_ROWS, GEMM_TN_DEPTH, VECTOR_BYTES, gemm_block, transpose_block

_FILTER_CACHE = tables.FilterTransformCache()


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


@njit(**PARALLEL_JIT_OPTIONS)
def _filter_gradient(dm, g, gw, workers):
    """gw[grp*K/G + k, c] = G^T dm[:, grp, c, k] G (dm's a*a values as an a x a matrix): the
    adjoint of ``_filter_transform``, in dm's dtype.

    dm (a*a, G, C/G, K/G), g (a, 3), gw (K, C/G, 3, 3). Vectorised over the output channels
    (dm's innermost axis); one pass over dm, whose size is that of 36 weights for F(4x4,3x3).
    """
    groups, cg, kg = dm.shape[1], dm.shape[2], dm.shape[3]
    a = g.shape[0]
    n_jobs = groups * cg
    for worker in prange(workers):
        tmp = np.empty((3, a, kg), dtype=dm.dtype)
        w = np.empty((3, 3, kg), dtype=dm.dtype)
        for job in range(worker * n_jobs // workers, (worker + 1) * n_jobs // workers):
            grp = job // cg
            c = job - grp * cg
            for i in range(3):          # tmp = G^T dm  (3 x a per output channel)
                for q in range(a):
                    row = tmp[i, q]
                    src = dm[q, grp, c]
                    for k in range(kg):
                        row[k] = g[0, i] * src[k]
                    for p in range(1, a):
                        src = dm[p * a + q, grp, c]
                        for k in range(kg):
                            row[k] += g[p, i] * src[k]
            for i in range(3):          # w = tmp G  (3 x 3)
                for j in range(3):
                    out = w[i, j]
                    for k in range(kg):
                        out[k] = tmp[i, 0, k] * g[0, j]
                    for q in range(1, a):
                        for k in range(kg):
                            out[k] += tmp[i, q, k] * g[q, j]
            for k in range(kg):
                for i in range(3):
                    for j in range(3):
                        gw[grp * kg + k, c, i, j] = w[i, j, k]


def _transformed_filters(weight, m, groups, grad_input, swap_channels=False):
    """U (a*a, G, C_in/G, C_out/G) of the forward (or grad_input) convolution, cached per weight;
    with ``swap_channels`` (a*a, G, C_out/G, C_in/G) as the adjoint grad_input reads it (the
    transposed copy cost 50 us per MNIST conv2 call)."""
    def compute(w):
        f = tables.filters_channel_last(w, groups, grad_input)
        a = m + 2
        u = np.empty((a * a,) + f.shape[:2] + f.shape[4:], dtype=w.dtype)
        use_configured_threads()
        _filter_transform(f, tables.MATRICES[m][1], u)
        return np.ascontiguousarray(u.transpose(0, 1, 3, 2)) if swap_channels else u
    return _FILTER_CACHE.get(weight, ("numba", m, groups, grad_input, swap_channels), compute)


# ---------------------------------------------------------------- small dense transforms
# ``_lin<n_in><n_out>``: dst row o (o < n_out) = sum_i c[o, i] * src row i (i < n_in), for
# u < n_outer runs of n_inner contiguous elements. In the flat arrays, src row i of run u
# starts at s_base + s_offs[i] + u*s_outer and dst row o at d_base + o*d_row + u*d_outer.
# One kernel per shape so that an element's inputs and outputs stay in registers; the table
# matrix is applied densely (its zeros cost multiplications, not memory traffic).

@njit(**JIT_OPTIONS)
def _lin66(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """6 outputs from 6 inputs (see the section comment)."""
    c00, c01, c02, c03, c04, c05 = c[0, 0], c[0, 1], c[0, 2], c[0, 3], c[0, 4], c[0, 5]
    c10, c11, c12, c13, c14, c15 = c[1, 0], c[1, 1], c[1, 2], c[1, 3], c[1, 4], c[1, 5]
    c20, c21, c22, c23, c24, c25 = c[2, 0], c[2, 1], c[2, 2], c[2, 3], c[2, 4], c[2, 5]
    c30, c31, c32, c33, c34, c35 = c[3, 0], c[3, 1], c[3, 2], c[3, 3], c[3, 4], c[3, 5]
    c40, c41, c42, c43, c44, c45 = c[4, 0], c[4, 1], c[4, 2], c[4, 3], c[4, 4], c[4, 5]
    c50, c51, c52, c53, c54, c55 = c[5, 0], c[5, 1], c[5, 2], c[5, 3], c[5, 4], c[5, 5]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        x4 = src[s + s_offs[4]:s + s_offs[4] + n_inner]
        x5 = src[s + s_offs[5]:s + s_offs[5] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        y4 = dst[d + 4 * d_row:d + 4 * d_row + n_inner]
        y5 = dst[d + 5 * d_row:d + 5 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]; v4 = x4[z]; v5 = x5[z]
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3 + c04 * v4 + c05 * v5
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3 + c14 * v4 + c15 * v5
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3 + c24 * v4 + c25 * v5
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3 + c34 * v4 + c35 * v5
            y4[z] = c40 * v0 + c41 * v1 + c42 * v2 + c43 * v3 + c44 * v4 + c45 * v5
            y5[z] = c50 * v0 + c51 * v1 + c52 * v2 + c53 * v3 + c54 * v4 + c55 * v5


@njit(**JIT_OPTIONS)
def _lin64(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """4 outputs from 6 inputs (see the section comment)."""
    c00, c01, c02, c03, c04, c05 = c[0, 0], c[0, 1], c[0, 2], c[0, 3], c[0, 4], c[0, 5]
    c10, c11, c12, c13, c14, c15 = c[1, 0], c[1, 1], c[1, 2], c[1, 3], c[1, 4], c[1, 5]
    c20, c21, c22, c23, c24, c25 = c[2, 0], c[2, 1], c[2, 2], c[2, 3], c[2, 4], c[2, 5]
    c30, c31, c32, c33, c34, c35 = c[3, 0], c[3, 1], c[3, 2], c[3, 3], c[3, 4], c[3, 5]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        x4 = src[s + s_offs[4]:s + s_offs[4] + n_inner]
        x5 = src[s + s_offs[5]:s + s_offs[5] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]; v4 = x4[z]; v5 = x5[z]
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3 + c04 * v4 + c05 * v5
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3 + c14 * v4 + c15 * v5
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3 + c24 * v4 + c25 * v5
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3 + c34 * v4 + c35 * v5


@njit(**JIT_OPTIONS)
def _lin44(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """4 outputs from 4 inputs (see the section comment)."""
    c00, c01, c02, c03 = c[0, 0], c[0, 1], c[0, 2], c[0, 3]
    c10, c11, c12, c13 = c[1, 0], c[1, 1], c[1, 2], c[1, 3]
    c20, c21, c22, c23 = c[2, 0], c[2, 1], c[2, 2], c[2, 3]
    c30, c31, c32, c33 = c[3, 0], c[3, 1], c[3, 2], c[3, 3]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3


@njit(**JIT_OPTIONS)
def _lin42(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """2 outputs from 4 inputs (see the section comment)."""
    c00, c01, c02, c03 = c[0, 0], c[0, 1], c[0, 2], c[0, 3]
    c10, c11, c12, c13 = c[1, 0], c[1, 1], c[1, 2], c[1, 3]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3


@njit(**JIT_OPTIONS)
def _lin46(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """6 outputs from 4 inputs (see the section comment)."""
    c00, c01, c02, c03 = c[0, 0], c[0, 1], c[0, 2], c[0, 3]
    c10, c11, c12, c13 = c[1, 0], c[1, 1], c[1, 2], c[1, 3]
    c20, c21, c22, c23 = c[2, 0], c[2, 1], c[2, 2], c[2, 3]
    c30, c31, c32, c33 = c[3, 0], c[3, 1], c[3, 2], c[3, 3]
    c40, c41, c42, c43 = c[4, 0], c[4, 1], c[4, 2], c[4, 3]
    c50, c51, c52, c53 = c[5, 0], c[5, 1], c[5, 2], c[5, 3]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        y4 = dst[d + 4 * d_row:d + 4 * d_row + n_inner]
        y5 = dst[d + 5 * d_row:d + 5 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3
            y4[z] = c40 * v0 + c41 * v1 + c42 * v2 + c43 * v3
            y5[z] = c50 * v0 + c51 * v1 + c52 * v2 + c53 * v3


@njit(**JIT_OPTIONS)
def _lin24(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """4 outputs from 2 inputs (see the section comment)."""
    c00, c01 = c[0, 0], c[0, 1]
    c10, c11 = c[1, 0], c[1, 1]
    c20, c21 = c[2, 0], c[2, 1]
    c30, c31 = c[3, 0], c[3, 1]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]
            y0[z] = c00 * v0 + c01 * v1
            y1[z] = c10 * v0 + c11 * v1
            y2[z] = c20 * v0 + c21 * v1
            y3[z] = c30 * v0 + c31 * v1



# ---------------------------------------------------------------- factored F(4x4,3x3) transforms
# The transforms are compute-bound, and F(4x4,3x3)'s matrices are a third zeros, with ones
# and pairs (x1 +- x2; x0 + x2 +- (x1 + x3)): written out term by term they take 10-24
# operations per element instead of 24-36 multiply-adds. ``_apply`` runs them when c equals
# the table matrix they are written for (``_REF_*``); their other coefficients are read from
# c, in the data's dtype.

_REF_BT43 = np.ascontiguousarray(tables.MATRICES[4][2], dtype=np.float64)
_REF_B43 = np.ascontiguousarray(tables.MATRICES[4][2].T, dtype=np.float64)
_REF_AT43 = np.ascontiguousarray(tables.MATRICES[4][0], dtype=np.float64)
_REF_A43 = np.ascontiguousarray(tables.grad_output_transform(4), dtype=np.float64)


@njit(**JIT_OPTIONS)
def _equals(c, ref):
    """Whether matrix c has ref's shape and values."""
    if c.shape[0] != ref.shape[0] or c.shape[1] != ref.shape[1]:
        return False
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            if c[i, j] != ref[i, j]:
                return False
    return True


@njit(**JIT_OPTIONS)
def _bt43(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """``_lin66`` for F(4x4,3x3)'s B^T (the input transform)."""
    c03, c12, c13, c22, c23 = c[0, 3], c[1, 2], c[1, 3], c[2, 2], c[2, 3]
    c33, c43, c52, c53, c54 = c[3, 3], c[4, 3], c[5, 2], c[5, 3], c[5, 4]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        x4 = src[s + s_offs[4]:s + s_offs[4] + n_inner]
        x5 = src[s + s_offs[5]:s + s_offs[5] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        y4 = dst[d + 4 * d_row:d + 4 * d_row + n_inner]
        y5 = dst[d + 5 * d_row:d + 5 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]; v4 = x4[z]; v5 = x5[z]
            d31 = v3 - v1
            e42 = v4 - v2
            y0[z] = v0 + c03 * d31 + e42 - v2
            y1[z] = v4 - v1 + c12 * v2 + c13 * v3
            y2[z] = v4 + v1 + c22 * v2 + c23 * v3
            y3[z] = e42 + c33 * d31
            y4[z] = e42 + c43 * d31
            y5[z] = v5 + v1 + c52 * v2 + c53 * v3 + c54 * v4


@njit(**JIT_OPTIONS)
def _b43(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """``_lin66`` for F(4x4,3x3)'s B (the adjoint of the input transform)."""
    c10, c13, c14, c20, c21, c22, c25 = c[1, 0], c[1, 3], c[1, 4], c[2, 0], c[2, 1], c[2, 2], c[2, 5]
    c30, c31, c32, c33, c34, c35, c45 = c[3, 0], c[3, 1], c[3, 2], c[3, 3], c[3, 4], c[3, 5], c[4, 5]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        x4 = src[s + s_offs[4]:s + s_offs[4] + n_inner]
        x5 = src[s + s_offs[5]:s + s_offs[5] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        y4 = dst[d + 4 * d_row:d + 4 * d_row + n_inner]
        y5 = dst[d + 5 * d_row:d + 5 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]; v4 = x4[z]; v5 = x5[z]
            y0[z] = v0
            y1[z] = v2 - v1 + v5 + c10 * v0 + c13 * v3 + c14 * v4
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 - v3 - v4 + c25 * v5
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3 + c34 * v4 + c35 * v5
            y4[z] = v0 + v1 + v2 + v3 + v4 + c45 * v5
            y5[z] = v5


@njit(**JIT_OPTIONS)
def _at43(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """``_lin64`` for F(4x4,3x3)'s A^T (the output transform)."""
    c13, c14, c23, c24, c33, c34 = c[1, 3], c[1, 4], c[2, 3], c[2, 4], c[3, 3], c[3, 4]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        x4 = src[s + s_offs[4]:s + s_offs[4] + n_inner]
        x5 = src[s + s_offs[5]:s + s_offs[5] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]; v4 = x4[z]; v5 = x5[z]
            s12 = v1 + v2
            d12 = v1 - v2
            y0[z] = v0 + s12 + v3 + v4
            y1[z] = d12 + c13 * v3 + c14 * v4
            y2[z] = s12 + c23 * v3 + c24 * v4
            y3[z] = d12 + c33 * v3 + c34 * v4 + v5


@njit(**JIT_OPTIONS)
def _a43(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """``_lin46`` for F(4x4,3x3)'s A (the grad_output transform)."""
    c31, c32, c33, c41, c42, c43 = c[3, 1], c[3, 2], c[3, 3], c[4, 1], c[4, 2], c[4, 3]
    for u in range(n_outer):
        s = s_base + u * s_outer
        d = d_base + u * d_outer
        x0 = src[s + s_offs[0]:s + s_offs[0] + n_inner]
        x1 = src[s + s_offs[1]:s + s_offs[1] + n_inner]
        x2 = src[s + s_offs[2]:s + s_offs[2] + n_inner]
        x3 = src[s + s_offs[3]:s + s_offs[3] + n_inner]
        y0 = dst[d + 0 * d_row:d + 0 * d_row + n_inner]
        y1 = dst[d + 1 * d_row:d + 1 * d_row + n_inner]
        y2 = dst[d + 2 * d_row:d + 2 * d_row + n_inner]
        y3 = dst[d + 3 * d_row:d + 3 * d_row + n_inner]
        y4 = dst[d + 4 * d_row:d + 4 * d_row + n_inner]
        y5 = dst[d + 5 * d_row:d + 5 * d_row + n_inner]
        for z in range(n_inner):
            v0 = x0[z]; v1 = x1[z]; v2 = x2[z]; v3 = x3[z]
            e = v0 + v2
            o = v1 + v3
            y0[z] = v0
            y1[z] = e + o
            y2[z] = e - o
            y3[z] = v0 + c31 * v1 + c32 * v2 + c33 * v3
            y4[z] = v0 + c41 * v1 + c42 * v2 + c43 * v3
            y5[z] = v3


#: ``_apply``'s kernels for matrix c (``_kind``): the dense one of c's shape, or a factored one.
DENSE, BT43, B43, AT43, A43 = 0, 1, 2, 3, 4


@njit(**JIT_OPTIONS)
def _kind(c):
    """Which ``_apply`` kernel transforms with matrix c: DENSE, or the factored kernel of the
    F(4x4,3x3) matrix c equals. Found once per step, not per ``_apply`` call (36-72 compares:
    a third of a small ``_apply``)."""
    if _equals(c, _REF_BT43):
        return BT43
    if _equals(c, _REF_B43):
        return B43
    if _equals(c, _REF_AT43):
        return AT43
    if _equals(c, _REF_A43):
        return A43
    return DENSE


def _factored_kernel(c):
    """The factored kernel ``_apply`` runs for matrix ``c``: "bt43", "b43", "at43", "a43",
    or None for the dense one."""
    return {BT43: "bt43", B43: "b43", AT43: "at43", A43: "a43"}.get(_kind(np.ascontiguousarray(c)))


@njit(**JIT_OPTIONS)
def _apply(c, kind, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner):
    """The ``_lin*`` kernel of c's shape: a x a for B^T (and B), m x a for A^T, a x m for A
    (the grad_output transform); a = 4 or 6. F(4x4,3x3)'s four matrices go to their
    factored kernels (``kind = _kind(c)``)."""
    n_out, n_in = c.shape
    if kind == BT43:
        _bt43(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
    elif kind == B43:
        _b43(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
    elif kind == AT43:
        _at43(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
    elif kind == A43:
        _a43(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
    elif n_in == 6:
        if n_out == 6:
            _lin66(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
        else:
            _lin64(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
    elif n_in == 4:
        if n_out == 6:
            _lin46(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
        elif n_out == 4:
            _lin44(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
        else:
            _lin42(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
    else:
        _lin24(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)


# ---------------------------------------------------------------- layout changes
# The NCHW <-> channel-last moves of both transforms. Element by element they were most of the
# transforms' time (strided scalar loads or stores waiting on memory), so they move whole
# 32-byte-vector blocks transposed in registers, and the rows a tile row will touch are
# prefetched one cache line at a time.

@njit(**JIT_OPTIONS)
def _transpose(src, s_base, ss, dst, d_base, ds, rows, cols):
    """dst[d_base + j*ds + i] = src[s_base + i*ss + j] for i < rows, j < cols (flat arrays).

    Whole L x L blocks (L = 32 bytes / itemsize); a last partial block is moved as the block
    that ends at the edge, rewriting some elements with the same values (element by element,
    the edges of 11- and 13-pixel rows were a third of the work).
    """
    block = 32 // src.itemsize
    if rows >= block and cols >= block:
        for i0 in range(0, rows, block):
            i = min(i0, rows - block)
            for j0 in range(0, cols, block):
                j = min(j0, cols - block)
                transpose_block(src, s_base + i * ss + j, ss, dst, d_base + j * ds + i, ds)
        return
    for i in range(rows):
        for j in range(cols):
            dst[d_base + j * ds + i] = src[s_base + i * ss + j]


@njit(**JIT_OPTIONS)
def _prefetch_rows(flat, base, stride, n_rows, row_len, for_write):
    """Prefetch n_rows rows of row_len elements, ``stride`` apart from ``base``, of ``flat``."""
    step = max(64 // flat.itemsize, 1)
    for r in range(n_rows):
        for b in range(0, row_len, step):
            if for_write:
                prefetch(flat, base + r * stride + b, True, 3)
            else:
                prefetch(flat, base + r * stride + b, False, 3)


# ---------------------------------------------------------------- input transform

@njit(**JIT_OPTIONS)
def _input_row(x, v, row, grow, pad_top, pad_left, n_th, n_tw, bt, kind, slot_of_col, down_offs,
               across_offs, xr, r):
    """V of the n_tw tiles of tile row ``row`` of the chunk (``grow`` of the whole batch).

    x (N, C, H, W); v: V (a*a, G, T, C/G); bt = B^T (a, n_in): each tile reads the n_in x n_in
    window at its corner (n_in = a, or m for the grad_output transform, whose tiles do not
    overlap); xr: scratch of (a+1)*m*S*C and
    r of a*m*S*C elements (S = n_tw + 1 column slots): the tile row's a input rows channel-last
    plus one staging row, with column ``s*m + ph`` at ``[i, g, ph, s, c]`` (``slot_of_col[col]
    = ph*S + s``), and their transform down the rows. In that layout the j-th columns of all
    the row's tiles are one contiguous run (``across_offs[j]``), so B^T across the columns is
    one vector operation per output row p.
    """
    c_in, h, w = x.shape[1], x.shape[2], x.shape[3]
    a, n_in = bt.shape
    m = a - 2
    groups, nt, cg = v.shape[1], v.shape[2], v.shape[3]
    cols = slot_of_col.size                 # m * S columns, n_tw*m + 2 of them used
    gsize = cols * cg                       # one group of one input row
    plane = groups * gsize                  # one input row
    img = grow // n_th
    y0 = (grow - img * n_th) * m - pad_top
    lo = min(max(pad_left, 0), cols)        # columns [lo, hi) hold image pixels
    hi = max(min(w + pad_left, cols), lo)
    line = xr[a * plane:]                   # one input row, [col][c]
    xf = x.reshape(-1)
    for z in range(lo * c_in):
        line[z] = 0
    for z in range(hi * c_in, cols * c_in):
        line[z] = 0
    for i in range(n_in):
        yy = y0 + i
        dst = xr[i * plane:(i + 1) * plane]
        if yy < 0 or yy >= h:
            for z in range(plane):
                dst[z] = 0
            continue
        # The row of every channel, channel-last: line[col, c] = x[img, c, yy, col - pad_left].
        _transpose(xf, (img * c_in * h + yy) * w + lo - pad_left, h * w, line, lo * c_in, c_in, c_in, hi - lo)
        for col in range(cols):             # columns to their phase slots, one vector each
            for grp in range(groups):
                src = line[col * c_in + grp * cg:col * c_in + (grp + 1) * cg]
                out = dst[grp * gsize + slot_of_col[col] * cg:grp * gsize + (slot_of_col[col] + 1) * cg]
                for z in range(cg):
                    out[z] = src[z]
    # The input rows the next tile row adds, for every channel: the channel-strided reads
    # above wait on memory otherwise, and the arithmetic below hides the fetch.
    img = (grow + 1) // n_th
    y0 = (grow + 1 - img * n_th) * m - pad_top
    first = 0 if y0 + pad_top == 0 else max(n_in - m, 0)
    if img < x.shape[0]:
        for yy in range(max(y0 + first, 0), min(y0 + n_in, h)):
            _prefetch_rows(xf, (img * c_in * h + yy) * w, h * w, c_in, w, False)
    # Down the rows, all columns at once: r[p] = sum_i B^T[p, i] xr[i].
    _apply(bt, kind, xr, 0, down_offs, 0, r, 0, plane, 0, 1, plane)
    # Across each tile's columns, all tiles of the row at once:
    # V[p*a + q, g, tiles] = sum_j B^T[q, j] r[p, g, column j of the tiles].
    vf = v.reshape(-1)
    for p in range(a):
        for grp in range(groups):
            _apply(bt, kind, r, p * plane + grp * gsize, across_offs, 0,
                   vf, ((p * a * groups + grp) * nt + row * n_tw) * cg, groups * nt * cg, 0, 1, n_tw * cg)


@njit(**PARALLEL_JIT_OPTIONS)
def _input_transform(x, v, row_start, pad_top, pad_left, n_th, n_tw, bt, slot_of_col, down_offs,
                     across_offs, workers):
    """V (a*a, G, T, C/G) of the chunk's tile rows row_start .. (x (N, C, H, W), bt = B^T
    (a x a), or A (a x m) to transform grad_output tiles).

    Tile (img, th, tw) reads input rows from ``th*m - pad_top`` and columns from
    ``tw*m - pad_left``, as many as bt has columns. The tile rows are split into ``workers``
    contiguous ranges, one per parallel iteration, so each worker owns one slice of the
    scratch array.
    """
    a = bt.shape[0]
    kind = _kind(bt)
    plane = slot_of_col.size * x.shape[1]
    n_rows = v.shape[2] // n_tw
    scratch = np.empty((workers, (2 * a + 1) * plane), dtype=x.dtype)
    for worker in prange(workers):
        for row in range(worker * n_rows // workers, (worker + 1) * n_rows // workers):
            _input_row(x, v, row, row_start + row, pad_top, pad_left, n_th, n_tw, bt, kind, slot_of_col,
                       down_offs, across_offs, scratch[worker, :(a + 1) * plane],
                       scratch[worker, (a + 1) * plane:])


# ---------------------------------------------------------------- the GEMMs

@njit(**JIT_OPTIONS)
def _panel_rows(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, vectors, full):
    """cf[ci + r*c_stride + j] = s + sum_p af[ai + r*a_stride + p*a_step] * bf[bi + p*b_stride + j]
    for j < vectors * L and r < GEMM_ROWS (``full``) or r < 1, s = 0 (``zero``) or cf's
    value: one ``gemm_block`` (whose block shapes are literals)."""
    if full:
        if vectors == GEMM_PANEL_VECTORS:
            gemm_block(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, GEMM_ROWS,
                       GEMM_PANEL_VECTORS)
        elif vectors == 3:
            gemm_block(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, GEMM_ROWS, 3)
        elif vectors == 2:
            gemm_block(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, GEMM_ROWS, 2)
        elif vectors == 1:
            gemm_block(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, GEMM_ROWS, 1)
    else:
        if vectors == GEMM_PANEL_VECTORS:
            gemm_block(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, 1,
                       GEMM_PANEL_VECTORS)
        elif vectors == 3:
            gemm_block(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, 1, 3)
        elif vectors == 2:
            gemm_block(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, 1, 2)
        elif vectors == 1:
            gemm_block(af, ai, a_stride, a_step, bf, bi, b_stride, cf, ci, c_stride, depth, zero, 1, 1)


@njit(**PARALLEL_JIT_OPTIONS)
def _batched_gemm(v, u, mm, workers):
    """mm[xi, g] = v[xi, g] @ u[xi, g] for every position xi and group g.

    v (a*a, G, T, C/G), u (a*a, G, C/G, K/G), mm (a*a, G, T, K/G). The products are small
    (K and C/G 32-256), so whole products run side by side (``_small_gemm``) rather than
    each split over the threads. ``gemm_block`` reads v and u where they are; OpenBLAS spends
    a third of its time on the 32-64-channel products packing both and zeroing mm, and the
    ResNet 128-256-channel layers took 1.05-1.12x the time with it (one core).
    """
    groups = u.shape[1]
    n_jobs = u.shape[0] * groups
    nt, cg, kg = v.shape[2], v.shape[3], u.shape[3]
    vf, uf, mf = v.reshape(-1), u.reshape(-1), mm.reshape(-1)
    for worker in prange(workers):
        for job in range(worker * n_jobs // workers, (worker + 1) * n_jobs // workers):
            _small_gemm(vf, uf, mf, job, nt, cg, kg, 0, nt)


@njit(**JIT_OPTIONS)
def _small_gemm(vf, uf, mf, job, nt, cg, kg, t0, t1):
    """mm[job, t] = v[job, t] @ u[job] for the tiles t0 <= t < t1 of position-and-group
    ``job`` (flat V (jobs, T, cg), U (jobs, cg, kg), M (jobs, T, kg)).

    Panels of GEMM_PANEL_VECTORS vectors of u's columns go outermost, so that one panel
    (cg rows) stays in L1 while every tile passes; GEMM_ROWS tiles at a time, then one."""
    lanes = VECTOR_BYTES // vf.itemsize
    panel = GEMM_PANEL_VECTORS * lanes
    ui = job * cg * kg
    for j in range(0, kg, panel):
        vectors = min(panel, kg - j) // lanes
        t = t0
        while t + GEMM_ROWS <= t1:
            _panel_rows(vf, (job * nt + t) * cg, cg, 1, uf, ui + j, kg, mf, (job * nt + t) * kg + j, kg, cg, True,
                        vectors, True)
            t += GEMM_ROWS
        while t < t1:
            _panel_rows(vf, (job * nt + t) * cg, cg, 1, uf, ui + j, kg, mf, (job * nt + t) * kg + j, kg, cg, True,
                        vectors, False)
            t += 1
    for t in range(t0, t1):     # the columns past the last full vector
        for k in range(kg - kg % lanes, kg):
            s = mf.dtype.type(0)
            for c in range(cg):
                s += vf[(job * nt + t) * cg + c] * uf[ui + c * kg + k]
            mf[(job * nt + t) * kg + k] = s


@njit(**JIT_OPTIONS)
def _small_gemm_tn(vf, vi, df, di, dmf, mi, nt, cg, kg):
    """dm += v^T @ d for one position and group: v (nt x cg) from vf[vi], d (nt x kg) from
    df[di], dm (cg x kg) at dmf[mi], row-major. GEMM_ROWS of dm's rows (v's columns) at a time,
    then one, over panels of d's columns and GEMM_TN_DEPTH of its rows that stay in L1 meanwhile."""
    lanes = VECTOR_BYTES // vf.itemsize
    panel = GEMM_PANEL_VECTORS * lanes
    for j in range(0, kg, panel):
        vectors = min(panel, kg - j) // lanes
        for t0 in range(0, nt, GEMM_TN_DEPTH):
            depth = min(GEMM_TN_DEPTH, nt - t0)
            c = 0
            while c + GEMM_ROWS <= cg:
                _panel_rows(vf, vi + t0 * cg + c, 1, cg, df, di + t0 * kg + j, kg, dmf, mi + c * kg + j, kg, depth,
                            False, vectors, True)
                c += GEMM_ROWS
            while c < cg:
                _panel_rows(vf, vi + t0 * cg + c, 1, cg, df, di + t0 * kg + j, kg, dmf, mi + c * kg + j, kg, depth,
                            False, vectors, False)
                c += 1
    for c in range(cg):     # the columns past the last full vector
        for k in range(kg - kg % lanes, kg):
            s = dmf[mi + c * kg + k]
            for t in range(nt):
                s += vf[vi + t * cg + c] * df[di + t * kg + k]
            dmf[mi + c * kg + k] = s


@njit(**PARALLEL_JIT_OPTIONS)
def _batched_gemm_tn(v, d, dm, workers):
    """dm[xi, g] += v[xi, g]^T @ d[xi, g] for every position xi and group g (threads as in _batched_gemm).

    v (a*a, G, T, C/G), d (a*a, G, T, K/G), dm (a*a, G, C/G, K/G): the weight gradient in
    the transformed domain, summed over the chunk's tiles.
    """
    n_jobs = v.shape[0] * v.shape[1]
    nt, cg, kg = v.shape[2], v.shape[3], d.shape[3]
    vf, df, dmf = v.reshape(-1), d.reshape(-1), dm.reshape(-1)
    for worker in prange(workers):
        for job in range(worker * n_jobs // workers, (worker + 1) * n_jobs // workers):
            _small_gemm_tn(vf, job * nt * cg, df, job * nt * kg, dmf, job * cg * kg, nt, cg, kg)


# ---------------------------------------------------------------- output transform

@njit(**JIT_OPTIONS)
def _output_row(mm, y, bias, row, grow, n_th, n_tw, at, kind, down_offs, across_offs, s1, yt, line):
    """y of the n_tw tiles of tile row ``row`` of the chunk (``grow`` of the whole batch).

    mm: M (a*a, G, T, K/G); y (N, K, OH, OW); at = A^T (m, a); ``down_offs[p]`` = offset of
    M's plane p*a in the flat M, ``across_offs[q]`` = q * K*n_tw; s1: scratch m*a*K*n_tw
    (A^T M, [i][q][g][tile][k]); yt: scratch m*m*K*n_tw (the tiles, [i][j][g][tile][k]);
    line: scratch m*n_tw*K (one output row, [ox][k]).
    """
    oh, ow = y.shape[2], y.shape[3]
    m, a = at.shape
    groups, nt, kg = mm.shape[1], mm.shape[2], mm.shape[3]
    run = n_tw * kg                     # one group of one tile row in M
    plane = groups * run                # s1[i, q] / yt[i, j]
    mf = mm.reshape(-1)
    yf = y.reshape(-1)
    img = grow // n_th
    y0 = (grow - img * n_th) * m
    k_out = groups * kg
    # This tile row's output rows of every channel, for writing (as the input transform does
    # for its reads): the transposed stores below touch K lines per output row.
    for i in range(min(m, oh - y0)):
        _prefetch_rows(yf, (img * k_out * oh + y0 + i) * ow, oh * ow, k_out, ow, True)
    # Down the tiles' rows: s1[i, q, g] = sum_p A^T[i, p] M[p*a + q, g, tiles of the row].
    for q in range(a):
        for grp in range(groups):
            _apply(at, kind, mf, (q * groups + grp) * nt * kg + row * run, down_offs, 0,
                   s1, q * plane + grp * run, a * plane, 0, 1, run)
    # Across: yt[i, j] = sum_q A^T[j, q] s1[i, q].
    for i in range(m):
        _apply(at, kind, s1, i * a * plane, across_offs, 0, yt, i * m * plane, plane, 0, 1, plane)
    # To NCHW, one output row at a time: the tiles' columns plus the bias to a [ox][k] line
    # (vector operations), then transposed into every channel's row. The last tile row/column
    # drops what falls outside the output.
    for i in range(min(m, oh - y0)):
        for j in range(m):
            for tw in range(n_tw):
                for grp in range(groups):
                    src = yt[(i * m + j) * plane + grp * run + tw * kg:(i * m + j) * plane + grp * run + (tw + 1) * kg]
                    out = line[(tw * m + j) * k_out + grp * kg:(tw * m + j) * k_out + (grp + 1) * kg]
                    beta = bias[grp * kg:(grp + 1) * kg]
                    for k in range(kg):
                        out[k] = src[k] + beta[k]
        _transpose(line, 0, k_out, yf, (img * k_out * oh + y0 + i) * ow, oh * ow, ow, k_out)


@njit(**PARALLEL_JIT_OPTIONS)
def _output_transform(mm, y, bias, row_start, n_th, n_tw, at, down_offs, across_offs, workers):
    """y of the chunk's tile rows row_start .. = A^T M A + bias.

    mm (a*a, G, T, K/G), y (N, K, OH, OW), bias (K,), at = A^T. Workers as in _input_transform.
    """
    m, a = at.shape
    kind = _kind(at)
    k_out = y.shape[1]
    n_rows = mm.shape[2] // n_tw
    s1 = np.empty((workers, m * a * k_out * n_tw), dtype=y.dtype)
    yt = np.empty((workers, m * m * k_out * n_tw), dtype=y.dtype)
    line = np.empty((workers, m * n_tw * k_out), dtype=y.dtype)
    for worker in prange(workers):
        for row in range(worker * n_rows // workers, (worker + 1) * n_rows // workers):
            _output_row(mm, y, bias, row, row_start + row, n_th, n_tw, at, kind, down_offs, across_offs,
                        s1[worker], yt[worker], line[worker])


# ---------------------------------------------------------------- input transform, adjoint

@njit(**JIT_OPTIONS)
def _input_adjoint_row(v, gx, row, grow, pad_top, pad_left, n_th, n_tw, b, kind, down_offs, across_offs,
                       s1, dt, line, tline):
    """B dV B^T of the n_tw tiles of tile row ``row`` of the chunk (``grow`` of the batch) into gx.

    v: dV (a*a, G, T, C/G); gx (N, C, H, W); b = B (a, a); ``down_offs[p]`` = offset of dV's
    plane p*a in the flat dV, ``across_offs[q]`` = q * C*n_tw. Tile (img, th, tw) puts its
    a x a values at rows from ``th*m - pad_top`` and columns from ``tw*m - pad_left``; what
    falls outside gx is dropped (it was padding). The first a - m rows are added to what the
    image's previous tile row left there (th > 0; it must have run already), the others are
    stored: every row of gx is written first by one tile row. s1: scratch a*a*C*n_tw (B dV,
    [i][q][g][tile][c]); dt: scratch a*C*n_tw (one row of the tiles, [j][g][tile][c]);
    line, tline: scratch (n_tw*m + 2)*C each (one input row, [col][c] and [c][col]).
    """
    c_in, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    a = b.shape[0]
    m = a - 2
    groups, nt, cg = v.shape[1], v.shape[2], v.shape[3]
    run = n_tw * cg                     # one group of one tile row in dV
    plane = groups * run                # s1[i, q] / dt[j]
    cols = n_tw * m + 2
    img = grow // n_th
    y0 = (grow - img * n_th) * m - pad_top
    lo, hi = max(pad_left, 0), min(w + pad_left, cols)      # columns inside gx
    vf = v.reshape(-1)
    gf = gx.reshape(-1)
    # The grad_input rows this tile row writes, every channel's, requested before the
    # transforms below: the per-channel stores at the end otherwise wait on each row's lines.
    for yy in range(max(y0, 0), min(y0 + a, h)):
        _prefetch_rows(gf, (img * c_in * h + yy) * w, h * w, c_in, w, True)
    # Down the tiles' rows: s1[i, q, g] = sum_p B[i, p] dV[p*a + q, g, tiles of the row].
    for q in range(a):
        for grp in range(groups):
            _apply(b, kind, vf, (q * groups + grp) * nt * cg + row * run, down_offs, 0,
                   s1, q * plane + grp * run, a * plane, 0, 1, run)
    for i in range(a):
        yy = y0 + i
        if yy < 0 or yy >= h:
            continue
        # Across: dt[j] = sum_q B[j, q] s1[i, q], this input row of every tile.
        _apply(b, kind, s1, i * a * plane, across_offs, 0, dt, 0, plane, 0, 1, plane)
        # The tiles' columns to a [col][c] line, then transposed into every channel's row.
        # Column tw*m + j (j < m) is tile tw's column j plus, for j < 2, tile tw-1's column
        # m + j (neighbours share two columns); the last tile adds two more. Each line element
        # is written once (adding into a zeroed line reloaded just-written lines).
        for tw in range(n_tw):
            for j in range(m):
                for grp in range(groups):
                    s0 = j * plane + grp * run + tw * cg
                    src = dt[s0:s0 + cg]
                    out = line[(tw * m + j) * c_in + grp * cg:(tw * m + j) * c_in + (grp + 1) * cg]
                    if j < 2 and tw > 0:
                        prev = dt[s0 + m * plane - cg:s0 + m * plane]
                        for z in range(cg):     # slices: indices known >= 0, so the loop vectorises
                            out[z] = src[z] + prev[z]
                    else:
                        for z in range(cg):
                            out[z] = src[z]
        for j in range(m, a):
            for grp in range(groups):
                s0 = j * plane + grp * run + (n_tw - 1) * cg
                src = dt[s0:s0 + cg]
                out = line[((n_tw - 1) * m + j) * c_in + grp * cg:((n_tw - 1) * m + j) * c_in + (grp + 1) * cg]
                for z in range(cg):
                    out[z] = src[z]
        _transpose(line, 0, c_in, tline, 0, cols, cols, c_in)
        add = i < a - m and grow % n_th > 0
        for c in range(c_in):
            d0 = ((img * c_in + c) * h + yy) * w
            t0 = c * cols
            dst = gf[d0 + lo - pad_left:d0 + hi - pad_left]
            src = tline[t0 + lo:t0 + hi]
            if add:
                for z in range(hi - lo):
                    dst[z] += src[z]
            else:
                for z in range(hi - lo):
                    dst[z] = src[z]


@njit(**PARALLEL_JIT_OPTIONS)
def _input_transform_adjoint(v, gx, row_start, pad_top, pad_left, n_th, n_tw, b, down_offs, across_offs,
                             workers):
    """B dV B^T of the chunk's tile rows row_start .. into gx (v (a*a, G, T, C/G), gx (N, C, H, W)).

    Writes every gx row the tiles reach (``_input_adjoint_row``): the chunks must come in
    order, and the rows a chunk's tiles do not reach keep their values. Neighbouring tile rows
    of an image share a - m rows, so one worker takes all of an image's tile rows in the
    chunk, in order; the images are split into ``workers`` contiguous ranges.
    """
    a = b.shape[0]
    kind = _kind(b)
    c_in = gx.shape[1]
    n_rows = v.shape[2] // n_tw
    cols = n_tw * (a - 2) + 2
    first_img = row_start // n_th
    n_imgs = (row_start + n_rows - 1) // n_th - first_img + 1
    s1 = np.empty((workers, a * a * c_in * n_tw), dtype=gx.dtype)
    dt = np.empty((workers, a * c_in * n_tw), dtype=gx.dtype)
    line = np.empty((workers, cols * c_in), dtype=gx.dtype)
    tline = np.empty((workers, cols * c_in), dtype=gx.dtype)
    for worker in prange(workers):
        for k in range(worker * n_imgs // workers, (worker + 1) * n_imgs // workers):
            img = first_img + k
            for grow in range(max(row_start, img * n_th), min(row_start + n_rows, (img + 1) * n_th)):
                _input_adjoint_row(v, gx, grow - row_start, grow, pad_top, pad_left, n_th, n_tw, b, kind, down_offs,
                                   across_offs, s1[worker], dt[worker], line[worker], tline[worker])


# ---------------------------------------------------------------- one parallel region per chunk
# As in the Cython twin: with small products a chunk's three steps run as one parallel
# region, each worker taking its own tile rows through all of them (one wake-up of the
# workers per chunk instead of three).

@njit(**PARALLEL_JIT_OPTIONS)
def _forward_chunk(x, v, u, mm, y, bias, row_start, pad_top, pad_left, n_th, n_tw, bt, slot_of_col, in_down,
                   in_across, at, out_down, out_across, workers):
    """``_input_transform``, ``_batched_gemm`` and ``_output_transform`` of one chunk (same
    arguments), each worker on a contiguous range of its tile rows."""
    a, m = bt.shape[0], at.shape[0]
    in_kind, out_kind = _kind(bt), _kind(at)
    aa, groups, nt, cg = v.shape
    kg, k_out = u.shape[3], y.shape[1]
    plane = slot_of_col.size * x.shape[1]
    n_rows = nt // n_tw
    vf, uf, mf = v.reshape(-1), u.reshape(-1), mm.reshape(-1)
    for worker in prange(workers):
        # Each worker's own scratch arrays: slices of one shared array would count their
        # references on one object from both cores (4% of MNIST conv2's grad input at 2 threads).
        xr = np.empty((a + 1) * plane, dtype=x.dtype)
        r = np.empty(a * plane, dtype=x.dtype)
        s1 = np.empty(m * a * k_out * n_tw, dtype=y.dtype)
        yt = np.empty(m * m * k_out * n_tw, dtype=y.dtype)
        line = np.empty(m * n_tw * k_out, dtype=y.dtype)
        r0 = worker * n_rows // workers
        r1 = (worker + 1) * n_rows // workers
        for row in range(r0, r1):
            _input_row(x, v, row, row_start + row, pad_top, pad_left, n_th, n_tw, bt, in_kind, slot_of_col, in_down,
                       in_across, xr, r)
        for job in range(aa * groups):
            _small_gemm(vf, uf, mf, job, nt, cg, kg, r0 * n_tw, r1 * n_tw)
        for row in range(r0, r1):
            _output_row(mm, y, bias, row, row_start + row, n_th, n_tw, at, out_kind, out_down, out_across, s1, yt,
                        line)


@njit(**PARALLEL_JIT_OPTIONS)
def _weight_gradient_chunk(x, gy, v, d, dm_parts, row_start, pad_top, pad_left, n_th, n_tw, bt, slot_of_col,
                           in_down, in_across, dt, gy_slots, gy_down, gy_across, workers):
    """``_input_transform`` of x (into v) and of grad_output (into d), and ``_batched_gemm_tn``
    of one chunk, each worker on a contiguous range of its tile rows: worker i adds the
    products of its own tiles to ``dm_parts[i]`` (workers, a*a, G, C/G, K/G), which the
    caller sums, so that no worker waits for another."""
    a = bt.shape[0]
    in_kind, gy_kind = _kind(bt), _kind(dt)
    aa, groups, nt, cg = v.shape
    kg = d.shape[3]
    plane = max(slot_of_col.size * x.shape[1], gy_slots.size * gy.shape[1])
    n_rows = nt // n_tw
    vf, df = v.reshape(-1), d.reshape(-1)
    for worker in prange(workers):
        xr = np.empty((a + 1) * plane, dtype=x.dtype)
        r = np.empty(a * plane, dtype=x.dtype)
        dmf = dm_parts[worker].reshape(-1)
        r0 = worker * n_rows // workers
        r1 = (worker + 1) * n_rows // workers
        for row in range(r0, r1):
            _input_row(x, v, row, row_start + row, pad_top, pad_left, n_th, n_tw, bt, in_kind, slot_of_col, in_down,
                       in_across, xr, r)
            _input_row(gy, d, row, row_start + row, 0, 0, n_th, n_tw, dt, gy_kind, gy_slots, gy_down, gy_across,
                       xr, r)
        for job in range(aa * groups):
            _small_gemm_tn(vf, (job * nt + r0 * n_tw) * cg, df, (job * nt + r0 * n_tw) * kg, dmf, job * cg * kg,
                           (r1 - r0) * n_tw, cg, kg)


@njit(**PARALLEL_JIT_OPTIONS)
def _input_gradient_chunk(gy, d, ut, v, gx, row_start, pad_top, pad_left, n_th, n_tw, dt, gy_slots, gy_down,
                          gy_across, b, down_offs, across_offs, workers):
    """``_input_transform`` of grad_output (into d), ``_batched_gemm`` (d @ ut into v) and
    ``_input_transform_adjoint`` (into gx) of one chunk (same arguments), each worker on the
    tile rows of its own images (the adjoint's rows of an image go in order on one worker)."""
    a = b.shape[0]
    in_kind, adj_kind = _kind(dt), _kind(b)
    aa, groups, nt, cg = v.shape
    kg_in, c_in = d.shape[3], gx.shape[1]
    plane = gy_slots.size * gy.shape[1]
    n_rows = nt // n_tw
    cols = n_tw * (a - 2) + 2
    first_img = row_start // n_th
    n_imgs = (row_start + n_rows - 1) // n_th - first_img + 1
    df, uf, vf = d.reshape(-1), ut.reshape(-1), v.reshape(-1)
    for worker in prange(workers):
        # Each worker's own scratch arrays (see _forward_chunk).
        xr = np.empty((a + 1) * plane, dtype=gy.dtype)
        r = np.empty(a * plane, dtype=gy.dtype)
        s1 = np.empty(a * a * c_in * n_tw, dtype=gx.dtype)
        dts = np.empty(a * c_in * n_tw, dtype=gx.dtype)
        line = np.empty(cols * c_in, dtype=gx.dtype)
        tline = np.empty(cols * c_in, dtype=gx.dtype)
        r0 = max(row_start, (first_img + worker * n_imgs // workers) * n_th) - row_start
        r1 = min(row_start + n_rows, (first_img + (worker + 1) * n_imgs // workers) * n_th) - row_start
        for row in range(r0, r1):
            _input_row(gy, d, row, row_start + row, 0, 0, n_th, n_tw, dt, in_kind, gy_slots, gy_down, gy_across,
                       xr, r)
        for job in range(aa * groups):
            _small_gemm(df, uf, vf, job, nt, kg_in, cg, r0 * n_tw, r1 * n_tw)
        for row in range(r0, r1):
            _input_adjoint_row(v, gx, row, row_start + row, pad_top, pad_left, n_th, n_tw, b, adj_kind, down_offs,
                               across_offs, s1, dts, line, tline)


# ---------------------------------------------------------------- phase images (dilated layers)
# ``dilation_phases`` turns a dilated layer into an undilated one on its phase images. Its
# NumPy slice assignments were single-threaded strided copies, 1.1-1.5 ms each way on the
# 8 x 64 x 56 x 56 dilation-2 layer against 0.45 ms for a plain copy; these walk each plane
# once, parallel over planes. Image (i*dw + j)*N + n of the phases holds rows i, i+dh, ...
# and columns j, j+dw, ... of image n's plane padded by (top, left). Unsigned offsets into
# flat arrays: a signed index is checked for wraparound, which stops vectorisation.

@njit(**JIT_OPTIONS)
def _split_plane(src, s0, h, w, dst, d0, sub_h, sub_w, phase_stride, top, left, dh, dw):
    """The dh*dw phase planes (sub_h x sub_w, ``phase_stride`` apart, the first at dst[d0])
    of the padded plane at src[s0] (h x w)."""
    for i in range(dh):
        for a in range(sub_h):
            row = i + dh * a - top
            if row < 0 or row >= h:
                for j in range(dw):
                    out = np.uint64(d0 + (i * dw + j) * phase_stride + a * sub_w)
                    for b in range(sub_w):
                        dst[out + np.uint64(b)] = 0
                continue
            # Phase column b of phase j reads input column j + dw*b - left (0 outside the row).
            r0 = s0 + row * w
            if dw == 2:
                # Both phases in one pass over the row: de-interleaving contiguous loads.
                out = np.uint64(d0 + (i * 2) * phase_stride + a * sub_w)
                odd = out + np.uint64(phase_stride)
                lo = min(sub_w, (left + 1) // 2)          # from here both columns are >= 0
                hi = max(lo, min(sub_w, (w + left - 1) // 2))   # ... and both < w
                for b in range(lo):
                    dst[out + np.uint64(b)] = src[r0 + 2 * b - left] if 0 <= 2 * b - left < w else 0
                    dst[odd + np.uint64(b)] = src[r0 + 2 * b + 1 - left] if 0 <= 2 * b + 1 - left < w else 0
                si = np.uint64(r0 + 2 * lo - left)
                two = np.uint64(2)
                for b in range(hi - lo):
                    ub = np.uint64(b)
                    dst[out + np.uint64(lo) + ub] = src[si + two * ub]
                    dst[odd + np.uint64(lo) + ub] = src[si + two * ub + np.uint64(1)]
                for b in range(hi, sub_w):
                    dst[out + np.uint64(b)] = src[r0 + 2 * b - left] if 0 <= 2 * b - left < w else 0
                    dst[odd + np.uint64(b)] = src[r0 + 2 * b + 1 - left] if 0 <= 2 * b + 1 - left < w else 0
                continue
            for j in range(dw):
                out = np.uint64(d0 + (i * dw + j) * phase_stride + a * sub_w)
                b0 = min(sub_w, (left - j + dw - 1) // dw if left > j else 0)
                b1 = max(b0, min(sub_w, (w - 1 + left - j) // dw + 1 if w - 1 + left >= j else 0))
                for b in range(b0):
                    dst[out + np.uint64(b)] = 0
                si = np.uint64(r0 + j + dw * b0 - left)
                udw = np.uint64(dw)
                for b in range(b1 - b0):
                    ub = np.uint64(b)
                    dst[out + np.uint64(b0) + ub] = src[si + udw * ub]
                for b in range(b1, sub_w):
                    dst[out + np.uint64(b)] = 0


@njit(**JIT_OPTIONS)
def _merge_plane(src, s0, sub_h, sub_w, phase_stride, dst, d0, h, w, top, left, dh, dw):
    """One plane (h x w, at dst[d0]) from its phase planes (the first at src[s0]): the inverse
    of ``_split_plane`` on the plane's own positions (0 where one lies past the phase planes)."""
    for y in range(h):
        i = (y + top) % dh
        a = (y + top) // dh
        out = np.uint64(d0 + y * w)
        if a >= sub_h:
            for x in range(w):
                dst[out + np.uint64(x)] = 0
            continue
        if dw == 2:
            # Columns 2q and 2q+1 come from the two phases' rows at q + left//2 and
            # q + (left+1)//2: one interleaving pass writes the row contiguously (stores two
            # columns apart did not vectorise: slower than NumPy's strided copy).
            se = np.uint64(s0 + (i * 2 + left % 2) * phase_stride + a * sub_w + left // 2)
            so = np.uint64(s0 + (i * 2 + (left + 1) % 2) * phase_stride + a * sub_w + (left + 1) // 2)
            n_even = max(0, min((w + 1) // 2, sub_w - left // 2))
            n_odd = max(0, min(w // 2, sub_w - (left + 1) // 2))
            pairs = min(n_even, n_odd)
            two = np.uint64(2)
            for q in range(pairs):
                uq = np.uint64(q)
                dst[out + two * uq] = src[se + uq]
                dst[out + two * uq + np.uint64(1)] = src[so + uq]
            for x in range(2 * pairs, w):
                if x % 2 == 0:
                    dst[out + np.uint64(x)] = src[se + np.uint64(x // 2)] if x // 2 < n_even else 0
                else:
                    dst[out + np.uint64(x)] = src[so + np.uint64(x // 2)] if x // 2 < n_odd else 0
            continue
        for j in range(dw):
            x0 = (j - left) % dw     # first column whose padded column is j mod dw
            if x0 >= w:
                continue
            cnt = (w - x0 + dw - 1) // dw
            b0 = (x0 + left) // dw
            valid = max(0, min(cnt, sub_w - b0))
            si = np.uint64(s0 + (i * dw + j) * phase_stride + a * sub_w + b0)
            ox = np.uint64(out + x0)
            udw = np.uint64(dw)
            for q in range(valid):
                uq = np.uint64(q)
                dst[ox + udw * uq] = src[si + uq]
            for q in range(valid, cnt):
                dst[ox + udw * np.uint64(q)] = 0


@njit(**PARALLEL_JIT_OPTIONS)
def _split_phases(src, dst, top, left, dh, dw, workers):
    """dst (dh*dw*N, C, A, B) = the phase images of src (N, C, H, W) padded by (top, left):
    dst[(i*dw + j)*N + n, c, a, b] = src[n, c, i + dh*a - top, j + dw*b - left], 0 outside."""
    n, c, h, w = src.shape
    sub_h, sub_w = dst.shape[2], dst.shape[3]
    if dst.shape[0] != dh * dw * n or dst.shape[1] != c:
        raise ValueError("phase images do not fit the input and dilation")
    sf, df = src.reshape(-1), dst.reshape(-1)
    for plane in prange(n * c):
        _split_plane(sf, plane * h * w, h, w, df, plane * sub_h * sub_w, sub_h, sub_w, n * c * sub_h * sub_w,
                     top, left, dh, dw)


@njit(**PARALLEL_JIT_OPTIONS)
def _merge_phases(src, dst, top, left, dh, dw, workers):
    """dst (N, C, H, W) from its phase images src (dh*dw*N, C, A, B) (``_split_phases``'s layout):
    dst[n, c, y, x] = src[(i*dw + j)*N + n, c, (y + top) // dh, (x + left) // dw] with
    i = (y + top) % dh, j = (x + left) % dw; 0 where that lies past A or B."""
    n, c, h, w = dst.shape
    sub_h, sub_w = src.shape[2], src.shape[3]
    if src.shape[0] != dh * dw * n or src.shape[1] != c:
        raise ValueError("phase images do not fit the output and dilation")
    sf, df = src.reshape(-1), dst.reshape(-1)
    for plane in prange(n * c):
        _merge_plane(sf, plane * sub_h * sub_w, sub_h, sub_w, n * c * sub_h * sub_w, df, plane * h * w, h, w,
                     top, left, dh, dw)


# ---------------------------------------------------------------- the driver

_STEPS = plan.WinogradSteps(_input_transform, _batched_gemm, _batched_gemm_tn, _output_transform,
                            _input_transform_adjoint, _forward_chunk, _input_gradient_chunk, _weight_gradient_chunk,
                            _filter_gradient, _split_phases, _merge_phases)


def _workers():
    use_configured_threads()
    return threads.numba_threads()


def _dilation(params):
    return (params.dil_h, params.dil_w)


def _forward(x, weight, bias, y, params, m):
    u = _transformed_filters(weight, m, params.groups, grad_input=False)
    plan.convolve(_STEPS, x, u, bias, y, params.pad_top, params.pad_left, m, _workers(), _dilation(params))


def _grad_input(grad_output, weight, grad_input, params, m, x=None, grad_weight=None):
    """grad_input, and grad_weight too when x and grad_weight are given (one pass if it pays)."""
    dilation = _dilation(params)
    if plan.adjoint_pays(grad_output.shape[2:], grad_input.shape[2:], m, dilation):
        # The forward's U with its channel axes swapped, for dV = D U^T (cached for this weight).
        ut = _transformed_filters(weight, m, params.groups, grad_input=False, swap_channels=True)
        plan.input_gradient(_STEPS, grad_output, ut, grad_input, params.pad_top, params.pad_left, m, _workers(),
                            x, grad_weight, dilation)
        return
    u = _transformed_filters(weight, m, params.groups, grad_input=True)
    # The flipped filters' taps are as far apart as the forward's: padding 2*dilation - pad.
    plan.convolve(_STEPS, grad_output, u, None, grad_input, 2 * params.dil_h - params.pad_top,
                  2 * params.dil_w - params.pad_left, m, _workers(), dilation)
    if grad_weight is not None:
        plan.weight_gradient(_STEPS, grad_output, x, grad_weight, params.pad_top, params.pad_left, m, _workers(),
                             dilation)


# ---------------------------------------------------------------- public kernels

def conv2d_forward_f23(x, weight, bias, y, params):
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/g, 3, 3)) + bias, by F(2x2,3x3).

    float32 or float64; stride 1, any padding, dilation (on the phase images of
    ``kernels/dilation_phases.py``) and groups.
    """
    _forward(x, weight, bias, y, params, 2)


def conv2d_forward_f43(x, weight, bias, y, params):
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/g, 3, 3)) + bias, by F(4x4,3x3).

    float32 or float64; stride 1, any padding, dilation (on the phase images of
    ``kernels/dilation_phases.py``) and groups.
    """
    _forward(x, weight, bias, y, params, 4)


def conv2d_grad_input_f23(grad_output, weight, grad_input, params):
    """grad_input (N, C, H, W) from grad_output (N, K, OH, OW) and weight (K, C/g, 3, 3), by F(2x2,3x3)."""
    _grad_input(grad_output, weight, grad_input, params, 2)


def conv2d_grad_input_f43(grad_output, weight, grad_input, params):
    """grad_input (N, C, H, W) from grad_output (N, K, OH, OW) and weight (K, C/g, 3, 3), by F(4x4,3x3)."""
    _grad_input(grad_output, weight, grad_input, params, 4)


def conv2d_grad_weight_f23(grad_output, x, grad_weight, params):
    """grad_weight (K, C/g, 3, 3) from grad_output (N, K, OH, OW) and x (N, C, H, W), by F(2x2,3x3)."""
    plan.weight_gradient(_STEPS, grad_output, x, grad_weight, params.pad_top, params.pad_left, 2, _workers(),
                         _dilation(params))


def conv2d_grad_weight_f43(grad_output, x, grad_weight, params):
    """grad_weight (K, C/g, 3, 3) from grad_output (N, K, OH, OW) and x (N, C, H, W), by F(4x4,3x3)."""
    plan.weight_gradient(_STEPS, grad_output, x, grad_weight, params.pad_top, params.pad_left, 4, _workers(),
                         _dilation(params))


def conv2d_grad_input_weight_f23(grad_output, x, weight, grad_input, grad_weight, params):
    """grad_input (N, C, H, W) and grad_weight (K, C/g, 3, 3) together, by F(2x2,3x3).

    Where the adjoint pays (``winograd_plan.adjoint_pays``) both come from one transform of
    grad_output; otherwise as the two separate kernels.
    """
    _grad_input(grad_output, weight, grad_input, params, 2, x, grad_weight)


def conv2d_grad_input_weight_f43(grad_output, x, weight, grad_input, grad_weight, params):
    """grad_input (N, C, H, W) and grad_weight (K, C/g, 3, 3) together, by F(4x4,3x3); see the F(2x2) twin."""
    _grad_input(grad_output, weight, grad_input, params, 4, x, grad_weight)
