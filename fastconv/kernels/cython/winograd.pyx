# cython: language_level=3
"""Winograd F(2x2,3x3) and F(4x4,3x3) convolution (Lavin & Gray), Cython backend.

Mirrors ``fastconv/kernels/numba/winograd.py`` function for function; its docstring explains
the algorithm, the data layout and the numerics. The transform matrices come from
``fastconv.kernels.winograd_tables`` (shared by both backends). ``m`` is the output tile size,
``a = m + 2`` the input tile size, ``xi = p*a + q`` a position in the transformed tile.

Per chunk of tile rows (planned by ``kernels/winograd_plan.py``, shared with the Numba
twin): ``_input_transform`` (OpenMP over tile rows) writes
V[xi, g, t, c]; ``_batched_gemm`` runs one GEMM per position and group,
M[xi, g] = V[xi, g] @ U[xi, g], side by side over OpenMP threads on ``gemm_block``
(``microkernels.pxd``); ``_output_transform`` (OpenMP
over tile rows) writes y = A^T M A + bias in NCHW. ``_input_transform_adjoint`` writes
B dV B^T of every tile into grad_input, for the adjoint formulation of grad_input.

The row helpers work on raw pointers into C-contiguous arrays. The small dense transforms
(``_apply``) are C functions below whose ``restrict`` pointers let GCC vectorise them
(six inputs and six outputs per element in registers); Cython cannot spell ``restrict``.
"""
import numpy as np

from cython.parallel cimport prange

from fastconv.kernels.cython.blas cimport floating
from fastconv.kernels.cython.microkernels cimport (FC_GEMM_PANEL_VECTORS, FC_GEMM_ROWS, FC_GEMM_TN_DEPTH,
                                                     FC_VECTOR_BYTES, gemm_block)
from fastconv.kernels.cython.openmp cimport omp_get_thread_num

from fastconv import threads
from fastconv.kernels import winograd_plan as plan, winograd_tables as tables

_FILTER_CACHE = tables.FilterTransformCache()


# ---------------------------------------------------------------- factored F(4x4,3x3) transforms
# The transforms are compute-bound, and F(4x4,3x3)'s matrices are a third zeros, with ones
# and pairs (x1 +- x2; x0 + x2 +- (x1 + x3)): written out term by term they take 10-24
# operations per element instead of 24-36 multiply-adds (the output transform alone: MNIST
# conv2 forward 0.91x the time). fc_lin66/64/46 run them when their matrix equals the
# reference copy (FC_REF_*, filled from ``winograd_tables`` at import), so any other matrix
# still gets the dense kernels.
cdef extern from *:
    """
    static double FC_REF_BT43[36], FC_REF_B43[36], FC_REF_AT43[24], FC_REF_A43[24];
    #define FC_FACTORED(T, SUF)                                                                   \\
    static int fc_is_##SUF(const T *c, const double *ref, int n) { \\
        for (int i = 0; i < n; i++) if ((double)c[i] != ref[i]) return 0; \\
        return 1; \\
    } \\
    /* B^T: the input transform. */                                                               \\
    static void fc_bt43_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, \\
            T *__restrict__ y3, T *__restrict__ y4, T *__restrict__ y5, const T *__restrict__ x0,  \\
            const T *__restrict__ x1, const T *__restrict__ x2, const T *__restrict__ x3, \\
            const T *__restrict__ x4, const T *__restrict__ x5, Py_ssize_t n) { \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z], v4 = x4[z], v5 = x5[z]; \\
            const T d31 = v3 - v1, e42 = v4 - v2; \\
            y0[z] = v0 + (T)1.5 * d31 + e42 - v2; \\
            y1[z] = v4 - v1 + (T)0.5 * v2 + (T)2.5 * v3; \\
            y2[z] = v4 + v1 - (T)2.5 * v2 + (T)0.5 * v3; \\
            y3[z] = e42 + (T)2 * d31; \\
            y4[z] = e42 - (T)0.5 * d31; \\
            y5[z] = v5 + v1 - (T)1.5 * v2 - (T)2 * v3 + (T)1.5 * v4; \\
        } \\
    } \\
    /* B = (B^T)^T: the adjoint of the input transform. */                                        \\
    static void fc_b43_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, \\
            T *__restrict__ y3, T *__restrict__ y4, T *__restrict__ y5, const T *__restrict__ x0,  \\
            const T *__restrict__ x1, const T *__restrict__ x2, const T *__restrict__ x3, \\
            const T *__restrict__ x4, const T *__restrict__ x5, Py_ssize_t n) { \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z], v4 = x4[z], v5 = x5[z]; \\
            y0[z] = v0; \\
            y1[z] = v2 - v1 + v5 - (T)1.5 * v0 - (T)2 * v3 + (T)0.5 * v4; \\
            y2[z] = (T)0.5 * v1 - (T)2 * v0 - (T)2.5 * v2 - v3 - v4 - (T)1.5 * v5; \\
            y3[z] = (T)1.5 * v0 + (T)2.5 * v1 + (T)0.5 * v2 + (T)2 * v3 - (T)0.5 * v4 - (T)2 * v5; \\
            y4[z] = v0 + v1 + v2 + v3 + v4 + (T)1.5 * v5; \\
            y5[z] = v5; \\
        } \\
    } \\
    /* A^T: the output transform. */                                                              \\
    static void fc_at43_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, \\
            T *__restrict__ y3, const T *__restrict__ x0, const T *__restrict__ x1,                \\
            const T *__restrict__ x2, const T *__restrict__ x3, const T *__restrict__ x4, \\
            const T *__restrict__ x5, Py_ssize_t n) { \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z], v4 = x4[z], v5 = x5[z]; \\
            const T s12 = v1 + v2, d12 = v1 - v2; \\
            y0[z] = v0 + s12 + v3 + v4; \\
            y1[z] = d12 + (T)0.5 * v3 - (T)2 * v4; \\
            y2[z] = s12 + (T)0.25 * v3 + (T)4 * v4; \\
            y3[z] = d12 + (T)0.125 * v3 - (T)8 * v4 + v5; \\
        } \\
    } \\
    /* A = (A^T)^T: the grad_output transform. */                                                 \\
    static void fc_a43_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, \\
            T *__restrict__ y3, T *__restrict__ y4, T *__restrict__ y5, const T *__restrict__ x0,  \\
            const T *__restrict__ x1, const T *__restrict__ x2, const T *__restrict__ x3, \\
            Py_ssize_t n) { \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z]; \\
            const T e = v0 + v2, o = v1 + v3; \\
            y0[z] = v0; \\
            y1[z] = e + o; \\
            y2[z] = e - o; \\
            y3[z] = v0 + (T)0.5 * v1 + (T)0.25 * v2 + (T)0.125 * v3; \\
            y4[z] = v0 - (T)2 * v1 + (T)4 * v2 - (T)8 * v3; \\
            y5[z] = v3; \\
        } \\
    }
    FC_FACTORED(float, f)
    FC_FACTORED(double, d)
    """
    double FC_REF_BT43[36]
    double FC_REF_B43[36]
    double FC_REF_AT43[24]
    double FC_REF_A43[24]
    bint fc_is_f(const float* c, const double* ref, int n) nogil
    bint fc_is_d(const double* c, const double* ref, int n) nogil


cdef void _copy_table(mat, double* dst):
    flat = np.ascontiguousarray(mat, dtype=np.float64).ravel()
    for i in range(flat.size):
        dst[i] = flat[i]


def _set_factored_tables():
    """Copy F(4x4,3x3)'s B^T, B, A^T and A from ``winograd_tables`` to the FC_REF_* arrays."""
    at, _, bt = tables.MATRICES[4]
    _copy_table(bt, FC_REF_BT43)
    _copy_table(bt.T, FC_REF_B43)
    _copy_table(at, FC_REF_AT43)
    _copy_table(tables.grad_output_transform(4), FC_REF_A43)


_set_factored_tables()


def _factored_kernel(c):
    """The factored kernel the fc_lin kernels run for matrix ``c``: "bt43", "b43", "at43",
    "a43", or None for the dense one."""
    cdef const double[:, ::1] cc = np.ascontiguousarray(c, dtype=np.float64)
    cdef int n = cc.shape[0] * cc.shape[1]
    if cc.shape[0] == 6 and cc.shape[1] == 6:
        if fc_is_d(&cc[0, 0], FC_REF_BT43, n):
            return "bt43"
        if fc_is_d(&cc[0, 0], FC_REF_B43, n):
            return "b43"
    elif cc.shape[0] == 4 and cc.shape[1] == 6 and fc_is_d(&cc[0, 0], FC_REF_AT43, n):
        return "at43"
    elif cc.shape[0] == 6 and cc.shape[1] == 4 and fc_is_d(&cc[0, 0], FC_REF_A43, n):
        return "a43"
    return None


# ---------------------------------------------------------------- small dense transforms
# fc_lin<n_in><n_out>: dst row o (o < n_out) = sum_i c[o, i] * src row i (i < n_in), for
# u < n_outer runs of n_inner contiguous elements: src row i of run u starts at
# src + s_base + s_offs[i] + u*s_outer, dst row o at dst + d_base + o*d_row + u*d_outer.
# c is the row-major n_out x n_in table matrix, applied densely (its zeros cost
# multiplications, not memory traffic), except F(4x4,3x3)'s matrices, which go to the
# factored kernels above. _f: float, _d: double.
cdef extern from *:
    """
    /* One macro per shape, instantiated for float (_f) and double (_d) below. */
    #define FC_LIN66(T, SUF) \\
    static void fc_lin66_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, T *__restrict__ y3, T *__restrict__ y4, T *__restrict__ y5, \\
            const T *__restrict__ x0, const T *__restrict__ x1, const T *__restrict__ x2, const T *__restrict__ x3, const T *__restrict__ x4, const T *__restrict__ x5, const T *c, Py_ssize_t n) { \\
        const T c00 = c[0], c01 = c[1], c02 = c[2], c03 = c[3], c04 = c[4], c05 = c[5]; \\
        const T c10 = c[6], c11 = c[7], c12 = c[8], c13 = c[9], c14 = c[10], c15 = c[11]; \\
        const T c20 = c[12], c21 = c[13], c22 = c[14], c23 = c[15], c24 = c[16], c25 = c[17]; \\
        const T c30 = c[18], c31 = c[19], c32 = c[20], c33 = c[21], c34 = c[22], c35 = c[23]; \\
        const T c40 = c[24], c41 = c[25], c42 = c[26], c43 = c[27], c44 = c[28], c45 = c[29]; \\
        const T c50 = c[30], c51 = c[31], c52 = c[32], c53 = c[33], c54 = c[34], c55 = c[35]; \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z], v4 = x4[z], v5 = x5[z]; \\
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3 + c04 * v4 + c05 * v5; \\
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3 + c14 * v4 + c15 * v5; \\
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3 + c24 * v4 + c25 * v5; \\
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3 + c34 * v4 + c35 * v5; \\
            y4[z] = c40 * v0 + c41 * v1 + c42 * v2 + c43 * v3 + c44 * v4 + c45 * v5; \\
            y5[z] = c50 * v0 + c51 * v1 + c52 * v2 + c53 * v3 + c54 * v4 + c55 * v5; \\
        } \\
    } \\
    static void fc_lin66_##SUF(const T *c, const T *src, Py_ssize_t s_base, const Py_ssize_t *s_offs, \\
            Py_ssize_t s_outer, T *dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, \\
            Py_ssize_t n_outer, Py_ssize_t n_inner) { \\
        if (fc_is_##SUF(c, FC_REF_BT43, 36)) { \\
            for (Py_ssize_t u = 0; u < n_outer; u++) { \\
                const T *s = src + s_base + u * s_outer; \\
                T *d = dst + d_base + u * d_outer; \\
                fc_bt43_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, d + 4 * d_row, d + 5 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], s + s_offs[4], s + s_offs[5], n_inner); \\
            } \\
            return; \\
        } \\
        if (fc_is_##SUF(c, FC_REF_B43, 36)) { \\
            for (Py_ssize_t u = 0; u < n_outer; u++) { \\
                const T *s = src + s_base + u * s_outer; \\
                T *d = dst + d_base + u * d_outer; \\
                fc_b43_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, d + 4 * d_row, d + 5 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], s + s_offs[4], s + s_offs[5], n_inner); \\
            } \\
            return; \\
        } \\
        for (Py_ssize_t u = 0; u < n_outer; u++) { \\
            const T *s = src + s_base + u * s_outer; \\
            T *d = dst + d_base + u * d_outer; \\
            fc_lin66_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, d + 4 * d_row, d + 5 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], s + s_offs[4], s + s_offs[5], c, n_inner); \\
        } \\
    }
    #define FC_LIN64(T, SUF) \\
    static void fc_lin64_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, T *__restrict__ y3, \\
            const T *__restrict__ x0, const T *__restrict__ x1, const T *__restrict__ x2, const T *__restrict__ x3, const T *__restrict__ x4, const T *__restrict__ x5, const T *c, Py_ssize_t n) { \\
        const T c00 = c[0], c01 = c[1], c02 = c[2], c03 = c[3], c04 = c[4], c05 = c[5]; \\
        const T c10 = c[6], c11 = c[7], c12 = c[8], c13 = c[9], c14 = c[10], c15 = c[11]; \\
        const T c20 = c[12], c21 = c[13], c22 = c[14], c23 = c[15], c24 = c[16], c25 = c[17]; \\
        const T c30 = c[18], c31 = c[19], c32 = c[20], c33 = c[21], c34 = c[22], c35 = c[23]; \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z], v4 = x4[z], v5 = x5[z]; \\
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3 + c04 * v4 + c05 * v5; \\
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3 + c14 * v4 + c15 * v5; \\
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3 + c24 * v4 + c25 * v5; \\
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3 + c34 * v4 + c35 * v5; \\
        } \\
    } \\
    static void fc_lin64_##SUF(const T *c, const T *src, Py_ssize_t s_base, const Py_ssize_t *s_offs, \\
            Py_ssize_t s_outer, T *dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, \\
            Py_ssize_t n_outer, Py_ssize_t n_inner) { \\
        if (fc_is_##SUF(c, FC_REF_AT43, 24)) { \\
            for (Py_ssize_t u = 0; u < n_outer; u++) { \\
                const T *s = src + s_base + u * s_outer; \\
                T *d = dst + d_base + u * d_outer; \\
                fc_at43_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], s + s_offs[4], s + s_offs[5], n_inner); \\
            } \\
            return; \\
        } \\
        for (Py_ssize_t u = 0; u < n_outer; u++) { \\
            const T *s = src + s_base + u * s_outer; \\
            T *d = dst + d_base + u * d_outer; \\
            fc_lin64_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], s + s_offs[4], s + s_offs[5], c, n_inner); \\
        } \\
    }
    #define FC_LIN46(T, SUF) \\
    static void fc_lin46_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, T *__restrict__ y3, T *__restrict__ y4, T *__restrict__ y5, \\
            const T *__restrict__ x0, const T *__restrict__ x1, const T *__restrict__ x2, const T *__restrict__ x3, const T *c, Py_ssize_t n) { \\
        const T c00 = c[0], c01 = c[1], c02 = c[2], c03 = c[3]; \\
        const T c10 = c[4], c11 = c[5], c12 = c[6], c13 = c[7]; \\
        const T c20 = c[8], c21 = c[9], c22 = c[10], c23 = c[11]; \\
        const T c30 = c[12], c31 = c[13], c32 = c[14], c33 = c[15]; \\
        const T c40 = c[16], c41 = c[17], c42 = c[18], c43 = c[19]; \\
        const T c50 = c[20], c51 = c[21], c52 = c[22], c53 = c[23]; \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z]; \\
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3; \\
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3; \\
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3; \\
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3; \\
            y4[z] = c40 * v0 + c41 * v1 + c42 * v2 + c43 * v3; \\
            y5[z] = c50 * v0 + c51 * v1 + c52 * v2 + c53 * v3; \\
        } \\
    } \\
    static void fc_lin46_##SUF(const T *c, const T *src, Py_ssize_t s_base, const Py_ssize_t *s_offs, \\
            Py_ssize_t s_outer, T *dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, \\
            Py_ssize_t n_outer, Py_ssize_t n_inner) { \\
        if (fc_is_##SUF(c, FC_REF_A43, 24)) { \\
            for (Py_ssize_t u = 0; u < n_outer; u++) { \\
                const T *s = src + s_base + u * s_outer; \\
                T *d = dst + d_base + u * d_outer; \\
                fc_a43_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, d + 4 * d_row, d + 5 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], n_inner); \\
            } \\
            return; \\
        } \\
        for (Py_ssize_t u = 0; u < n_outer; u++) { \\
            const T *s = src + s_base + u * s_outer; \\
            T *d = dst + d_base + u * d_outer; \\
            fc_lin46_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, d + 4 * d_row, d + 5 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], c, n_inner); \\
        } \\
    }
    #define FC_LIN44(T, SUF) \\
    static void fc_lin44_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, T *__restrict__ y3, \\
            const T *__restrict__ x0, const T *__restrict__ x1, const T *__restrict__ x2, const T *__restrict__ x3, const T *c, Py_ssize_t n) { \\
        const T c00 = c[0], c01 = c[1], c02 = c[2], c03 = c[3]; \\
        const T c10 = c[4], c11 = c[5], c12 = c[6], c13 = c[7]; \\
        const T c20 = c[8], c21 = c[9], c22 = c[10], c23 = c[11]; \\
        const T c30 = c[12], c31 = c[13], c32 = c[14], c33 = c[15]; \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z]; \\
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3; \\
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3; \\
            y2[z] = c20 * v0 + c21 * v1 + c22 * v2 + c23 * v3; \\
            y3[z] = c30 * v0 + c31 * v1 + c32 * v2 + c33 * v3; \\
        } \\
    } \\
    static void fc_lin44_##SUF(const T *c, const T *src, Py_ssize_t s_base, const Py_ssize_t *s_offs, \\
            Py_ssize_t s_outer, T *dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, \\
            Py_ssize_t n_outer, Py_ssize_t n_inner) { \\
        for (Py_ssize_t u = 0; u < n_outer; u++) { \\
            const T *s = src + s_base + u * s_outer; \\
            T *d = dst + d_base + u * d_outer; \\
            fc_lin44_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], c, n_inner); \\
        } \\
    }
    #define FC_LIN42(T, SUF) \\
    static void fc_lin42_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, \\
            const T *__restrict__ x0, const T *__restrict__ x1, const T *__restrict__ x2, const T *__restrict__ x3, const T *c, Py_ssize_t n) { \\
        const T c00 = c[0], c01 = c[1], c02 = c[2], c03 = c[3]; \\
        const T c10 = c[4], c11 = c[5], c12 = c[6], c13 = c[7]; \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z], v2 = x2[z], v3 = x3[z]; \\
            y0[z] = c00 * v0 + c01 * v1 + c02 * v2 + c03 * v3; \\
            y1[z] = c10 * v0 + c11 * v1 + c12 * v2 + c13 * v3; \\
        } \\
    } \\
    static void fc_lin42_##SUF(const T *c, const T *src, Py_ssize_t s_base, const Py_ssize_t *s_offs, \\
            Py_ssize_t s_outer, T *dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, \\
            Py_ssize_t n_outer, Py_ssize_t n_inner) { \\
        for (Py_ssize_t u = 0; u < n_outer; u++) { \\
            const T *s = src + s_base + u * s_outer; \\
            T *d = dst + d_base + u * d_outer; \\
            fc_lin42_run_##SUF(d + 0 * d_row, d + 1 * d_row, s + s_offs[0], s + s_offs[1], s + s_offs[2], s + s_offs[3], c, n_inner); \\
        } \\
    }
    #define FC_LIN24(T, SUF) \\
    static void fc_lin24_run_##SUF(T *__restrict__ y0, T *__restrict__ y1, T *__restrict__ y2, T *__restrict__ y3, \\
            const T *__restrict__ x0, const T *__restrict__ x1, const T *c, Py_ssize_t n) { \\
        const T c00 = c[0], c01 = c[1]; \\
        const T c10 = c[2], c11 = c[3]; \\
        const T c20 = c[4], c21 = c[5]; \\
        const T c30 = c[6], c31 = c[7]; \\
        for (Py_ssize_t z = 0; z < n; z++) { \\
            const T v0 = x0[z], v1 = x1[z]; \\
            y0[z] = c00 * v0 + c01 * v1; \\
            y1[z] = c10 * v0 + c11 * v1; \\
            y2[z] = c20 * v0 + c21 * v1; \\
            y3[z] = c30 * v0 + c31 * v1; \\
        } \\
    } \\
    static void fc_lin24_##SUF(const T *c, const T *src, Py_ssize_t s_base, const Py_ssize_t *s_offs, \\
            Py_ssize_t s_outer, T *dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, \\
            Py_ssize_t n_outer, Py_ssize_t n_inner) { \\
        for (Py_ssize_t u = 0; u < n_outer; u++) { \\
            const T *s = src + s_base + u * s_outer; \\
            T *d = dst + d_base + u * d_outer; \\
            fc_lin24_run_##SUF(d + 0 * d_row, d + 1 * d_row, d + 2 * d_row, d + 3 * d_row, s + s_offs[0], s + s_offs[1], c, n_inner); \\
        } \\
    }
    FC_LIN66(float, f)
    FC_LIN66(double, d)
    FC_LIN64(float, f)
    FC_LIN64(double, d)
    FC_LIN46(float, f)
    FC_LIN46(double, d)
    FC_LIN44(float, f)
    FC_LIN44(double, d)
    FC_LIN42(float, f)
    FC_LIN42(double, d)
    FC_LIN24(float, f)
    FC_LIN24(double, d)
    """
    void fc_lin66_f(const float* c, const float* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    float* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin64_f(const float* c, const float* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    float* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin44_f(const float* c, const float* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    float* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin42_f(const float* c, const float* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    float* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin66_d(const double* c, const double* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    double* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin64_d(const double* c, const double* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    double* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin44_d(const double* c, const double* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    double* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin42_d(const double* c, const double* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    double* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin46_f(const float* c, const float* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    float* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin24_f(const float* c, const float* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    float* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin46_d(const double* c, const double* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    double* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil
    void fc_lin24_d(const double* c, const double* src, Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer,
                    double* dst, Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer, Py_ssize_t n_inner) nogil


cdef inline void _apply(const floating* c, Py_ssize_t n_out, Py_ssize_t n_in, const floating* src,
                        Py_ssize_t s_base, const Py_ssize_t* s_offs, Py_ssize_t s_outer, floating* dst,
                        Py_ssize_t d_base, Py_ssize_t d_row, Py_ssize_t d_outer, Py_ssize_t n_outer,
                        Py_ssize_t n_inner) noexcept nogil:
    """The fc_lin kernel of c's shape: a x a for B^T (and B), m x a for A^T, a x m for A
    (the grad_output transform); a = 4 or 6. F(4x4,3x3)'s four matrices go to their
    factored kernels."""
    if floating is float:
        if n_in == 6:
            if n_out == 6:
                fc_lin66_f(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
            else:
                fc_lin64_f(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
        elif n_in == 4:
            if n_out == 6:
                fc_lin46_f(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
            elif n_out == 4:
                fc_lin44_f(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
            else:
                fc_lin42_f(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
        else:
            fc_lin24_f(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
    else:
        if n_in == 6:
            if n_out == 6:
                fc_lin66_d(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
            else:
                fc_lin64_d(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
        elif n_in == 4:
            if n_out == 6:
                fc_lin46_d(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
            elif n_out == 4:
                fc_lin44_d(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
            else:
                fc_lin42_d(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)
        else:
            fc_lin24_d(c, src, s_base, s_offs, s_outer, dst, d_base, d_row, d_outer, n_outer, n_inner)


# ---------------------------------------------------------------- layout changes
# fc_transpose_<f|d>: dst[j*ds + i] = src[i*ss + j] for i < rows, j < cols. The NCHW <->
# channel-last moves of both transforms; element by element they were most of the transforms'
# time (strided scalar loads or stores), so float32 moves 8x8 blocks through AVX registers
# (unpack/shuffle/permute) when the compiler targets AVX, edges included (overlapping blocks).
cdef extern from *:
    """
    #if defined(__AVX__)
    #include <immintrin.h>
    #endif
    #if defined(__AVX__)
    static inline void fc_transpose8x8_f(const float *s, Py_ssize_t ss, float *d, Py_ssize_t ds) {
        __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ss);
        __m256 r2 = _mm256_loadu_ps(s + 2 * ss), r3 = _mm256_loadu_ps(s + 3 * ss);
        __m256 r4 = _mm256_loadu_ps(s + 4 * ss), r5 = _mm256_loadu_ps(s + 5 * ss);
        __m256 r6 = _mm256_loadu_ps(s + 6 * ss), r7 = _mm256_loadu_ps(s + 7 * ss);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
        __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
        __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
        __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
        __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
        __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
        __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
        __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
        _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
        _mm256_storeu_ps(d + ds, _mm256_permute2f128_ps(u1, u5, 0x20));
        _mm256_storeu_ps(d + 2 * ds, _mm256_permute2f128_ps(u2, u6, 0x20));
        _mm256_storeu_ps(d + 3 * ds, _mm256_permute2f128_ps(u3, u7, 0x20));
        _mm256_storeu_ps(d + 4 * ds, _mm256_permute2f128_ps(u0, u4, 0x31));
        _mm256_storeu_ps(d + 5 * ds, _mm256_permute2f128_ps(u1, u5, 0x31));
        _mm256_storeu_ps(d + 6 * ds, _mm256_permute2f128_ps(u2, u6, 0x31));
        _mm256_storeu_ps(d + 7 * ds, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    #endif
    static void fc_transpose_f(const float *src, Py_ssize_t ss, float *dst, Py_ssize_t ds, Py_ssize_t rows, Py_ssize_t cols) {
    #if defined(__AVX__)
        if (rows >= 8 && cols >= 8) {
            /* Whole 8x8 blocks; a last partial block is moved as the 8x8 block that ends at the
               edge, rewriting some elements with the same values: edges element by element were
               a third of the work on 11- and 13-pixel rows (MNIST conv2). */
            for (Py_ssize_t i0 = 0; i0 < rows; i0 += 8) {
                Py_ssize_t i = i0 + 8 <= rows ? i0 : rows - 8;
                for (Py_ssize_t j0 = 0; j0 < cols; j0 += 8) {
                    Py_ssize_t j = j0 + 8 <= cols ? j0 : cols - 8;
                    fc_transpose8x8_f(src + i * ss + j, ss, dst + j * ds + i, ds);
                }
            }
            return;
        }
    #endif
        for (Py_ssize_t i = 0; i < rows; i++)
            for (Py_ssize_t j = 0; j < cols; j++)
                dst[j * ds + i] = src[i * ss + j];
    }
    static void fc_prefetch_rows(const char *base, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t row_bytes) {
        for (Py_ssize_t r = 0; r < n_rows; r++)
            for (Py_ssize_t b = 0; b < row_bytes; b += 64)
                __builtin_prefetch(base + r * stride + b, 0, 3);
    }
    static void fc_prefetch_rows_for_write(char *base, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t row_bytes) {
        for (Py_ssize_t r = 0; r < n_rows; r++)
            for (Py_ssize_t b = 0; b < row_bytes; b += 64)
                __builtin_prefetch(base + r * stride + b, 1, 3);
    }
    static void fc_transpose_d(const double *src, Py_ssize_t ss, double *dst, Py_ssize_t ds, Py_ssize_t rows, Py_ssize_t cols) {
        for (Py_ssize_t i = 0; i < rows; i++)
            for (Py_ssize_t j = 0; j < cols; j++)
                dst[j * ds + i] = src[i * ss + j];
    }
    """
    void fc_transpose_f(const float* src, Py_ssize_t ss, float* dst, Py_ssize_t ds, Py_ssize_t rows, Py_ssize_t cols) nogil
    void fc_transpose_d(const double* src, Py_ssize_t ss, double* dst, Py_ssize_t ds, Py_ssize_t rows, Py_ssize_t cols) nogil
    void fc_prefetch_rows(const char* base, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t row_bytes) nogil
    void fc_prefetch_rows_for_write(char* base, Py_ssize_t stride, Py_ssize_t n_rows, Py_ssize_t row_bytes) nogil


cdef inline void _transpose(const floating* src, Py_ssize_t ss, floating* dst, Py_ssize_t ds,
                            Py_ssize_t rows, Py_ssize_t cols) noexcept nogil:
    """dst[j*ds + i] = src[i*ss + j] for i < rows, j < cols."""
    if floating is float:
        fc_transpose_f(src, ss, dst, ds, rows, cols)
    else:
        fc_transpose_d(src, ss, dst, ds, rows, cols)


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


def _filter_gradient(const floating[:, :, :, ::1] dm, const floating[:, ::1] g, floating[:, :, :, ::1] gw,
                     int nthreads):
    """gw[grp*K/G + k, c] = G^T dm[:, grp, c, k] G (dm's a*a values as an a x a matrix): the
    adjoint of ``_filter_transform``, in dm's dtype.

    dm (a*a, G, C/G, K/G), g (a, 3), gw (K, C/G, 3, 3). Vectorised over the output channels
    (dm's innermost axis); one pass over dm, whose size is that of 36 weights for F(4x4,3x3).
    """
    cdef Py_ssize_t groups = dm.shape[1], cg = dm.shape[2], kg = dm.shape[3]
    cdef Py_ssize_t a = g.shape[0]
    cdef Py_ssize_t job, grp, c, i, j, p, q, k
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] tmp_all = np.empty((nthreads, (3 * a + 9) * kg), dtype=dtype)
    cdef floating* tmp
    cdef floating* w
    for job in prange(groups * cg, nogil=True, num_threads=nthreads, schedule="static"):
        grp = job // cg
        c = job - grp * cg
        tmp = &tmp_all[omp_get_thread_num(), 0]
        w = tmp + 3 * a * kg
        for i in range(3):          # tmp = G^T dm  (3 x a per output channel)
            for q in range(a):
                for k in range(kg):
                    tmp[(i * a + q) * kg + k] = g[0, i] * dm[q, grp, c, k]
                for p in range(1, a):
                    for k in range(kg):
                        tmp[(i * a + q) * kg + k] = tmp[(i * a + q) * kg + k] + g[p, i] * dm[p * a + q, grp, c, k]
        for i in range(3):          # w = tmp G  (3 x 3)
            for j in range(3):
                for k in range(kg):
                    w[(i * 3 + j) * kg + k] = tmp[(i * a) * kg + k] * g[0, j]
                for q in range(1, a):
                    for k in range(kg):
                        w[(i * 3 + j) * kg + k] = w[(i * 3 + j) * kg + k] + tmp[(i * a + q) * kg + k] * g[q, j]
        for k in range(kg):
            for i in range(3):
                for j in range(3):
                    gw[grp * kg + k, c, i, j] = w[(i * 3 + j) * kg + k]


def _transformed_filters(weight, m, groups, grad_input, swap_channels=False):
    """U (a*a, G, C_in/G, C_out/G) of the forward (or grad_input) convolution, cached per weight;
    with ``swap_channels`` (a*a, G, C_out/G, C_in/G) as the adjoint grad_input reads it (the
    transposed copy cost 50 us per MNIST conv2 call)."""
    def compute(w):
        f = tables.filters_channel_last(w, groups, grad_input)
        a = m + 2
        u = np.empty((a * a,) + f.shape[:2] + f.shape[4:], dtype=w.dtype)
        _filter_transform(f, tables.MATRICES[m][1], u, threads.get_num_threads())
        return np.ascontiguousarray(u.transpose(0, 1, 3, 2)) if swap_channels else u
    return _FILTER_CACHE.get(weight, ("cython", m, groups, grad_input, swap_channels), compute)


# ---------------------------------------------------------------- input transform

cdef void _input_row(const floating* x, Py_ssize_t n_img, Py_ssize_t c_in, Py_ssize_t h, Py_ssize_t w,
                     floating* v, Py_ssize_t groups, Py_ssize_t nt, Py_ssize_t cg,
                     Py_ssize_t row, Py_ssize_t grow, Py_ssize_t pad_top, Py_ssize_t pad_left,
                     Py_ssize_t n_th, Py_ssize_t n_tw, const floating* bt, Py_ssize_t a, Py_ssize_t n_in,
                     const Py_ssize_t* slot_of_col, Py_ssize_t cols, const Py_ssize_t* down_offs,
                     const Py_ssize_t* across_offs, floating* xr, floating* r) noexcept nogil:
    """V of the n_tw tiles of tile row ``row`` of the chunk (``grow`` of the whole batch).

    x (N, C, H, W); v: V (a*a, G, T, C/G); bt = B^T (a x n_in, row-major): each tile reads
    the n_in x n_in window at its corner (n_in = a, or m for the grad_output transform,
    whose tiles do not overlap); xr: scratch of
    (a+1)*m*S*C and r of a*m*S*C elements (S = n_tw + 1 column slots, cols = m*S): the tile
    row's a input rows channel-last plus one staging row, with column ``s*m + ph`` at
    ``[i, g, ph, s, c]`` (``slot_of_col[col] = ph*S + s``), and their transform down the rows.
    In that layout the j-th columns of all the row's tiles are one contiguous run
    (``across_offs[j]``), so B^T across the columns is one vector operation per output row p.
    """
    cdef Py_ssize_t m = a - 2
    cdef Py_ssize_t gsize = cols * cg                # one group of one input row
    cdef Py_ssize_t plane = groups * gsize           # one input row
    cdef Py_ssize_t img = grow // n_th
    cdef Py_ssize_t y0 = (grow - img * n_th) * m - pad_top
    cdef Py_ssize_t lo = min(max(pad_left, 0), cols)         # columns [lo, hi) hold image pixels
    cdef Py_ssize_t hi = max(min(w + pad_left, cols), lo)
    cdef floating* line = xr + a * plane                      # one input row, [col][c]
    cdef floating* dst
    cdef floating* out
    cdef const floating* src
    cdef Py_ssize_t i, yy, z, c, k, col, grp, p
    for z in range(lo * c_in):
        line[z] = 0
    for z in range(hi * c_in, cols * c_in):
        line[z] = 0
    for i in range(n_in):
        yy = y0 + i
        dst = xr + i * plane
        if yy < 0 or yy >= h:
            for z in range(plane):
                dst[z] = 0
            continue
        # The row of every channel, channel-last: line[col, c] = x[img, c, yy, col - pad_left].
        _transpose(x + (img * c_in * h + yy) * w + lo - pad_left, h * w, line + lo * c_in, c_in,
                   c_in, hi - lo)
        for col in range(cols):             # columns to their phase slots, one vector each
            for grp in range(groups):
                src = line + col * c_in + grp * cg
                out = dst + grp * gsize + slot_of_col[col] * cg
                for z in range(cg):
                    out[z] = src[z]
    # The input rows the next tile row adds, one request per cache line of every channel's
    # row: the channel-strided reads above wait on memory otherwise (the prefetchers do not
    # follow C interleaved streams), and the arithmetic below hides the fetch.
    img = (grow + 1) // n_th
    y0 = (grow + 1 - img * n_th) * m - pad_top
    i = 0 if y0 + pad_top == 0 else max(n_in - m, 0)
    if img < n_img:
        for yy in range(max(y0 + i, 0), min(y0 + n_in, h)):
            fc_prefetch_rows(<const char*>(x + (img * c_in * h + yy) * w), h * w * sizeof(floating), c_in,
                             w * sizeof(floating))
    # Down the rows, all columns at once: r[p] = sum_i B^T[p, i] xr[i].
    _apply(bt, a, n_in, xr, 0, down_offs, 0, r, 0, plane, 0, 1, plane)
    # Across each tile's columns, all tiles of the row at once:
    # V[p*a + q, g, tiles] = sum_j B^T[q, j] r[p, g, column j of the tiles].
    for p in range(a):
        for grp in range(groups):
            _apply(bt, a, n_in, r, p * plane + grp * gsize, across_offs, 0,
                   v, ((p * a * groups + grp) * nt + row * n_tw) * cg, groups * nt * cg, 0, 1, n_tw * cg)


def _input_transform(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] v, Py_ssize_t row_start,
                     Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t n_th, Py_ssize_t n_tw,
                     const floating[:, ::1] bt, const Py_ssize_t[::1] slot_of_col,
                     const Py_ssize_t[::1] down_offs, const Py_ssize_t[::1] across_offs, int nthreads):
    """V (a*a, G, T, C/G) of the chunk's tile rows row_start .. (x (N, C, H, W), bt = B^T
    (a x a), or A (a x m) to transform grad_output tiles).

    Tile (img, th, tw) reads input rows from ``th*m - pad_top`` and columns from
    ``tw*m - pad_left``, as many as bt has columns. OpenMP splits the tile rows statically;
    each thread owns one slice of the scratch array.
    """
    cdef Py_ssize_t a = bt.shape[0]
    cdef Py_ssize_t cols = slot_of_col.shape[0]
    cdef Py_ssize_t plane = cols * x.shape[1]
    cdef Py_ssize_t groups = v.shape[1], nt = v.shape[2], cg = v.shape[3]
    cdef Py_ssize_t n_rows = nt // n_tw
    cdef Py_ssize_t row
    cdef floating* scratch
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] scratch_all = np.empty((nthreads, (2 * a + 1) * plane), dtype=dtype)
    for row in prange(n_rows, nogil=True, num_threads=nthreads, schedule="static"):
        scratch = &scratch_all[omp_get_thread_num(), 0]
        _input_row(&x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3], &v[0, 0, 0, 0], groups, nt, cg,
                   row, row_start + row, pad_top, pad_left, n_th, n_tw, &bt[0, 0], a, bt.shape[1],
                   &slot_of_col[0], cols, &down_offs[0], &across_offs[0],
                   scratch, scratch + (a + 1) * plane)


# ---------------------------------------------------------------- the GEMMs

cdef void _small_gemm(const floating* v, const floating* u, floating* mm, Py_ssize_t cg, Py_ssize_t kg,
                      Py_ssize_t t0, Py_ssize_t t1) noexcept nogil:
    """mm[t] = v[t] @ u for the tiles t0 <= t < t1 of one position and group (v: T x cg,
    u: cg x kg, mm: T x kg, row-major) on ``gemm_block``.

    Panels of FC_GEMM_PANEL_VECTORS vectors of u's columns go outermost, so that a panel
    (cg rows) stays in L1 while every tile passes; FC_GEMM_ROWS tiles at a time. Tiles
    outermost, u streamed from L2 for every few tiles, ran at 92 GFLOP/s on one core at 128
    channels against 126-162 this way (OpenBLAS: 122-134, packing both operands)."""
    cdef Py_ssize_t panel = FC_GEMM_PANEL_VECTORS * FC_VECTOR_BYTES // sizeof(floating)
    cdef Py_ssize_t t, j = 0
    while j < kg:
        t = t0
        while t < t1:
            gemm_block(min(FC_GEMM_ROWS, t1 - t), v + t * cg, cg, 1, u + j, kg, mm + t * kg + j, kg, cg,
                       min(panel, kg - j), True)
            t += FC_GEMM_ROWS
        j += panel


def _batched_gemm(floating[:, :, :, ::1] v, const floating[:, :, :, ::1] u, floating[:, :, :, ::1] mm,
                  int nthreads):
    """mm[xi, g] = v[xi, g] @ u[xi, g] for every position xi and group g.

    v (a*a, G, T, C/G), u (a*a, G, C/G, K/G), mm (a*a, G, T, K/G). The products are small
    (K and C/G 32-256), so OpenMP runs whole products side by side (``_small_gemm``) rather
    than splitting each one: at 2 threads BLAS splitting them measured no faster than 1.
    """
    cdef int nt = v.shape[2], cg = v.shape[3], kg = u.shape[3]
    cdef Py_ssize_t groups = u.shape[1], job, xi, g
    for job in prange(u.shape[0] * groups, nogil=True, num_threads=nthreads, schedule="static"):
        xi = job // groups
        g = job - xi * groups
        _small_gemm(&v[xi, g, 0, 0], &u[xi, g, 0, 0], &mm[xi, g, 0, 0], cg, kg, 0, nt)


cdef void _small_gemm_tn(const floating* v, const floating* d, floating* dm, Py_ssize_t nt, Py_ssize_t cg,
                         Py_ssize_t kg) noexcept nogil:
    """dm += v^T @ d for one position and group (v: T x cg, d: T x kg, dm: cg x kg,
    row-major) on ``gemm_block``: FC_GEMM_ROWS of dm's rows (v's columns) at a time, over
    panels of d's columns and FC_GEMM_TN_DEPTH of its rows that stay in L1 meanwhile."""
    cdef Py_ssize_t panel = FC_GEMM_PANEL_VECTORS * FC_VECTOR_BYTES // sizeof(floating)
    cdef Py_ssize_t j = 0, t0, c
    while j < kg:
        t0 = 0
        while t0 < nt:
            c = 0
            while c < cg:
                gemm_block(min(FC_GEMM_ROWS, cg - c), v + t0 * cg + c, 1, cg, d + t0 * kg + j, kg, dm + c * kg + j,
                           kg, min(FC_GEMM_TN_DEPTH, nt - t0), min(panel, kg - j), False)
                c += FC_GEMM_ROWS
            t0 += FC_GEMM_TN_DEPTH
        j += panel


def _batched_gemm_tn(const floating[:, :, :, ::1] v, const floating[:, :, :, ::1] d,
                     floating[:, :, :, ::1] dm, int nthreads):
    """dm[xi, g] += v[xi, g]^T @ d[xi, g] for every position xi and group g (threads as in _batched_gemm).

    v (a*a, G, T, C/G), d (a*a, G, T, K/G), dm (a*a, G, C/G, K/G): the weight gradient in
    the transformed domain, summed over the chunk's tiles.
    """
    cdef int nt = v.shape[2], cg = v.shape[3], kg = d.shape[3]
    cdef Py_ssize_t groups = v.shape[1], job, xi, g
    for job in prange(v.shape[0] * groups, nogil=True, num_threads=nthreads, schedule="static"):
        xi = job // groups
        g = job - xi * groups
        _small_gemm_tn(&v[xi, g, 0, 0], &d[xi, g, 0, 0], &dm[xi, g, 0, 0], nt, cg, kg)


# ---------------------------------------------------------------- output transform

cdef void _output_row(const floating* mm, Py_ssize_t groups, Py_ssize_t nt, Py_ssize_t kg,
                      floating* y, Py_ssize_t oh, Py_ssize_t ow, const floating* bias,
                      Py_ssize_t row, Py_ssize_t grow, Py_ssize_t n_th, Py_ssize_t n_tw,
                      const floating* at, Py_ssize_t m, const Py_ssize_t* down_offs,
                      const Py_ssize_t* across_offs, floating* s1, floating* yt, floating* line) noexcept nogil:
    """y of the n_tw tiles of tile row ``row`` of the chunk (``grow`` of the whole batch).

    mm: M (a*a, G, T, K/G); y (N, K, OH, OW); at = A^T (m x a, row-major); ``down_offs[p]``
    = offset of M's plane p*a, ``across_offs[q]`` = q * K*n_tw; s1: scratch m*a*K*n_tw (A^T M,
    [i][q][g][tile][k]); yt: scratch m*m*K*n_tw (the tiles, [i][j][g][tile][k]); line: scratch
    m*n_tw*K (one output row, [ox][k]).
    """
    cdef Py_ssize_t a = m + 2
    cdef Py_ssize_t run = n_tw * kg                 # one group of one tile row in M
    cdef Py_ssize_t plane = groups * run            # s1[i, q] / yt[i, j]
    cdef Py_ssize_t k_out = groups * kg
    cdef Py_ssize_t img = grow // n_th
    cdef Py_ssize_t y0 = (grow - img * n_th) * m
    cdef Py_ssize_t q, grp, i, j, tw, k, ox
    cdef floating* out
    cdef const floating* src
    # This tile row's output rows of every channel, for writing (as the input transform does
    # for its reads): the transposed stores below touch K lines per output row.
    for i in range(min(m, oh - y0)):
        fc_prefetch_rows_for_write(<char*>(y + (img * k_out * oh + y0 + i) * ow), oh * ow * sizeof(floating),
                                   k_out, ow * sizeof(floating))
    # Down the tiles' rows: s1[i, q, g] = sum_p A^T[i, p] M[p*a + q, g, tiles of the row].
    for q in range(a):
        for grp in range(groups):
            _apply(at, m, a, mm, (q * groups + grp) * nt * kg + row * run, down_offs, 0,
                   s1, q * plane + grp * run, a * plane, 0, 1, run)
    # Across: yt[i, j] = sum_q A^T[j, q] s1[i, q].
    for i in range(m):
        _apply(at, m, a, s1, i * a * plane, across_offs, 0, yt, i * m * plane, plane, 0, 1, plane)
    # To NCHW, one output row at a time: the tiles' columns plus the bias to a [ox][k] line
    # (vector operations), then transposed into every channel's row. The last tile row/column
    # drops what falls outside the output.
    for i in range(min(m, oh - y0)):
        for j in range(m):
            for tw in range(n_tw):
                for grp in range(groups):
                    src = yt + (i * m + j) * plane + grp * run + tw * kg
                    out = line + (tw * m + j) * k_out + grp * kg
                    for k in range(kg):
                        out[k] = src[k] + bias[grp * kg + k]
        _transpose(line, k_out, y + (img * k_out * oh + y0 + i) * ow, oh * ow, ow, k_out)


def _output_transform(const floating[:, :, :, ::1] mm, floating[:, :, :, ::1] y, const floating[::1] bias,
                      Py_ssize_t row_start, Py_ssize_t n_th, Py_ssize_t n_tw, const floating[:, ::1] at,
                      const Py_ssize_t[::1] down_offs, const Py_ssize_t[::1] across_offs, int nthreads):
    """y of the chunk's tile rows row_start .. = A^T M A + bias.

    mm (a*a, G, T, K/G), y (N, K, OH, OW), bias (K,), at = A^T. Threads as in _input_transform.
    """
    cdef Py_ssize_t m = at.shape[0], a = at.shape[1]
    cdef Py_ssize_t groups = mm.shape[1], nt = mm.shape[2], kg = mm.shape[3]
    cdef Py_ssize_t k_out = y.shape[1]
    cdef Py_ssize_t n_rows = nt // n_tw
    cdef Py_ssize_t s1_size = m * a * k_out * n_tw, yt_size = m * m * k_out * n_tw
    cdef Py_ssize_t row
    cdef floating* scratch
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] scratch_all = np.empty((nthreads, s1_size + yt_size + m * n_tw * k_out), dtype=dtype)
    for row in prange(n_rows, nogil=True, num_threads=nthreads, schedule="static"):
        scratch = &scratch_all[omp_get_thread_num(), 0]
        _output_row(&mm[0, 0, 0, 0], groups, nt, kg, &y[0, 0, 0, 0], y.shape[2], y.shape[3], &bias[0],
                    row, row_start + row, n_th, n_tw, &at[0, 0], m, &down_offs[0], &across_offs[0],
                    scratch, scratch + s1_size, scratch + s1_size + yt_size)


# ---------------------------------------------------------------- input transform, adjoint

cdef void _input_adjoint_row(const floating* v, Py_ssize_t groups, Py_ssize_t nt, Py_ssize_t cg,
                             floating* gx, Py_ssize_t h, Py_ssize_t w, Py_ssize_t row, Py_ssize_t grow,
                             Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t n_th, Py_ssize_t n_tw,
                             const floating* b, Py_ssize_t a, const Py_ssize_t* down_offs,
                             const Py_ssize_t* across_offs, floating* s1, floating* dt, floating* line,
                             floating* tline) noexcept nogil:
    """B dV B^T of the n_tw tiles of tile row ``row`` of the chunk (``grow`` of the batch) into gx.

    v: dV (a*a, G, T, C/G); gx (N, C, H, W); b = B (a x a, row-major); ``down_offs[p]`` =
    offset of dV's plane p*a, ``across_offs[q]`` = q * C*n_tw. Tile (img, th, tw) puts its
    a x a values at rows from ``th*m - pad_top`` and columns from ``tw*m - pad_left``; what
    falls outside gx is dropped (it was padding). The first a - m rows are added to what the
    image's previous tile row left there (th > 0; it must have run already), the others are
    stored: every row of gx is written first by one tile row. s1: scratch a*a*C*n_tw (B dV,
    [i][q][g][tile][c]); dt: scratch a*C*n_tw (one row of the tiles, [j][g][tile][c]);
    line, tline: scratch (n_tw*m + 2)*C each (one input row, [col][c] and [c][col]).
    """
    cdef Py_ssize_t m = a - 2
    cdef Py_ssize_t run = n_tw * cg                 # one group of one tile row in dV
    cdef Py_ssize_t plane = groups * run            # s1[i, q] / dt[j]
    cdef Py_ssize_t c_in = groups * cg
    cdef Py_ssize_t cols = n_tw * m + 2
    cdef Py_ssize_t img = grow // n_th
    cdef Py_ssize_t y0 = (grow - img * n_th) * m - pad_top
    cdef Py_ssize_t lo = max(pad_left, 0), hi = min(w + pad_left, cols)   # columns inside gx
    cdef Py_ssize_t q, grp, i, j, tw, z, yy, c
    cdef floating* out
    cdef floating* dst
    cdef const floating* src
    cdef bint add
    # The grad_input rows this tile row writes, every channel's, requested before the
    # transforms below: the per-channel stores at the end otherwise wait on each row's lines.
    for yy in range(max(y0, 0), min(y0 + a, h)):
        fc_prefetch_rows_for_write(<char*>(gx + (img * c_in * h + yy) * w), h * w * sizeof(floating),
                                   c_in, w * sizeof(floating))
    # Down the tiles' rows: s1[i, q, g] = sum_p B[i, p] dV[p*a + q, g, tiles of the row].
    for q in range(a):
        for grp in range(groups):
            _apply(b, a, a, v, (q * groups + grp) * nt * cg + row * run, down_offs, 0,
                   s1, q * plane + grp * run, a * plane, 0, 1, run)
    for i in range(a):
        yy = y0 + i
        if yy < 0 or yy >= h:
            continue
        # Across: dt[j] = sum_q B[j, q] s1[i, q], this input row of every tile.
        _apply(b, a, a, s1, i * a * plane, across_offs, 0, dt, 0, plane, 0, 1, plane)
        # The tiles' columns to a [col][c] line, then transposed and added to every channel's
        # row. Column tw*m + j (j < m) is tile tw's column j plus, for j < 2, tile tw-1's
        # column m + j (neighbours share two columns); the last tile adds two more. Each line
        # element is written once: adding into a zeroed line measured 7% of MNIST conv2's
        # grad_input in that one loop (reloading just-written lines).
        for tw in range(n_tw):
            for j in range(m):
                for grp in range(groups):
                    src = dt + j * plane + grp * run + tw * cg
                    out = line + (tw * m + j) * c_in + grp * cg
                    if j < 2 and tw > 0:
                        for z in range(cg):
                            out[z] = src[z] + src[(m * plane) - cg + z]
                    else:
                        for z in range(cg):
                            out[z] = src[z]
        for j in range(m, a):
            for grp in range(groups):
                src = dt + j * plane + grp * run + (n_tw - 1) * cg
                out = line + ((n_tw - 1) * m + j) * c_in + grp * cg
                for z in range(cg):
                    out[z] = src[z]
        _transpose(line, c_in, tline, cols, cols, c_in)
        add = i < a - m and grow % n_th > 0
        for c in range(c_in):
            dst = gx + ((img * c_in + c) * h + yy) * w
            src = tline + c * cols + pad_left
            if add:
                for z in range(lo - pad_left, hi - pad_left):
                    dst[z] = dst[z] + src[z]
            else:
                for z in range(lo - pad_left, hi - pad_left):
                    dst[z] = src[z]


def _input_transform_adjoint(const floating[:, :, :, ::1] v, floating[:, :, :, ::1] gx, Py_ssize_t row_start,
                             Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t n_th, Py_ssize_t n_tw,
                             const floating[:, ::1] b, const Py_ssize_t[::1] down_offs,
                             const Py_ssize_t[::1] across_offs, int nthreads):
    """B dV B^T of the chunk's tile rows row_start .. into gx (v (a*a, G, T, C/G), gx (N, C, H, W)).

    Writes every gx row the tiles reach (``_input_adjoint_row``): the chunks must come in
    order, and the rows a chunk's tiles do not reach keep their values. Neighbouring tile rows
    of an image share a - m rows, so one thread takes all of an image's tile rows in the
    chunk, in order; OpenMP splits the images. (Adding into a zeroed gx, even tile rows
    first, waited on every gx line: 14% of MNIST conv2's grad_input was that one add.)
    """
    cdef Py_ssize_t a = b.shape[0]
    cdef Py_ssize_t groups = v.shape[1], nt = v.shape[2], cg = v.shape[3]
    cdef Py_ssize_t c_in = gx.shape[1]
    cdef Py_ssize_t n_rows = nt // n_tw
    cdef Py_ssize_t cols = n_tw * (a - 2) + 2
    cdef Py_ssize_t s1_size = a * a * c_in * n_tw, dt_size = a * c_in * n_tw, line_size = cols * c_in
    cdef Py_ssize_t first_img = row_start // n_th
    cdef Py_ssize_t n_imgs = (row_start + n_rows - 1) // n_th - first_img + 1
    cdef Py_ssize_t k, grow
    cdef floating* scratch
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] scratch_all = np.empty((nthreads, s1_size + dt_size + 2 * line_size), dtype=dtype)
    for k in prange(n_imgs, nogil=True, num_threads=nthreads, schedule="static"):
        scratch = &scratch_all[omp_get_thread_num(), 0]
        for grow in range(max(row_start, (first_img + k) * n_th),
                          min(row_start + n_rows, (first_img + k + 1) * n_th)):
            _input_adjoint_row(&v[0, 0, 0, 0], groups, nt, cg, &gx[0, 0, 0, 0], gx.shape[2], gx.shape[3],
                               grow - row_start, grow, pad_top, pad_left, n_th, n_tw, &b[0, 0], a,
                               &down_offs[0], &across_offs[0], scratch, scratch + s1_size,
                               scratch + s1_size + dt_size, scratch + s1_size + dt_size + line_size)


# ---------------------------------------------------------------- one parallel region per chunk
# Up to FUSED_CHUNK_CHANNELS channels each way (``winograd_plan._fused``) the three steps of a
# chunk run as one parallel region: each thread takes its own tile rows through the input
# transform, the GEMMs of those rows' tiles and the output transform (or the adjoint), so
# no thread waits for another and the chunk's threads wake once, not three times (with
# passive waiting every region pays a wake-up).

def _forward_chunk(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] v, const floating[:, :, :, ::1] u,
                   floating[:, :, :, ::1] mm, floating[:, :, :, ::1] y, const floating[::1] bias,
                   Py_ssize_t row_start, Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t n_th, Py_ssize_t n_tw,
                   const floating[:, ::1] bt, const Py_ssize_t[::1] slot_of_col, const Py_ssize_t[::1] in_down,
                   const Py_ssize_t[::1] in_across, const floating[:, ::1] at, const Py_ssize_t[::1] out_down,
                   const Py_ssize_t[::1] out_across, int nthreads):
    """``_input_transform``, ``_batched_gemm`` and ``_output_transform`` of one chunk (same
    arguments), each thread on a contiguous range of its tile rows."""
    cdef Py_ssize_t a = bt.shape[0], m = at.shape[0], aa = v.shape[0]
    cdef Py_ssize_t groups = v.shape[1], nt = v.shape[2], cg = v.shape[3], kg = u.shape[3]
    cdef Py_ssize_t k_out = y.shape[1], cols = slot_of_col.shape[0]
    cdef Py_ssize_t plane = cols * x.shape[1], n_rows = nt // n_tw
    cdef Py_ssize_t in_size = (2 * a + 1) * plane
    cdef Py_ssize_t s1_size = m * a * k_out * n_tw, yt_size = m * m * k_out * n_tw
    cdef Py_ssize_t worker, row, r0, r1, job
    cdef floating* scratch
    cdef floating* out_scratch
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] scratch_all = np.empty((nthreads, in_size + s1_size + yt_size + m * n_tw * k_out),
                                                 dtype=dtype)
    for worker in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static"):
        scratch = &scratch_all[worker, 0]
        out_scratch = scratch + in_size
        r0 = worker * n_rows // nthreads
        r1 = (worker + 1) * n_rows // nthreads
        for row in range(r0, r1):
            _input_row(&x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3], &v[0, 0, 0, 0], groups, nt,
                       cg, row, row_start + row, pad_top, pad_left, n_th, n_tw, &bt[0, 0], a, bt.shape[1],
                       &slot_of_col[0], cols, &in_down[0], &in_across[0], scratch, scratch + (a + 1) * plane)
        for job in range(aa * groups):
            _small_gemm(&v[0, 0, 0, 0] + job * nt * cg, &u[0, 0, 0, 0] + job * cg * kg,
                        &mm[0, 0, 0, 0] + job * nt * kg, cg, kg, r0 * n_tw, r1 * n_tw)
        for row in range(r0, r1):
            _output_row(&mm[0, 0, 0, 0], groups, nt, kg, &y[0, 0, 0, 0], y.shape[2], y.shape[3], &bias[0],
                        row, row_start + row, n_th, n_tw, &at[0, 0], m, &out_down[0], &out_across[0],
                        out_scratch, out_scratch + s1_size, out_scratch + s1_size + yt_size)


def _input_gradient_chunk(const floating[:, :, :, ::1] gy, floating[:, :, :, ::1] d,
                          const floating[:, :, :, ::1] ut, floating[:, :, :, ::1] v, floating[:, :, :, ::1] gx,
                          Py_ssize_t row_start, Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t n_th,
                          Py_ssize_t n_tw, const floating[:, ::1] dt, const Py_ssize_t[::1] gy_slots,
                          const Py_ssize_t[::1] gy_down, const Py_ssize_t[::1] gy_across, const floating[:, ::1] b,
                          const Py_ssize_t[::1] down_offs, const Py_ssize_t[::1] across_offs, int nthreads):
    """``_input_transform`` of grad_output (into d), ``_batched_gemm`` (d @ ut into v) and
    ``_input_transform_adjoint`` (into gx) of one chunk (same arguments), each thread on the
    tile rows of its own images (the adjoint's rows of an image go in order on one thread)."""
    cdef Py_ssize_t a = b.shape[0], aa = v.shape[0]
    cdef Py_ssize_t groups = v.shape[1], nt = v.shape[2], cg = v.shape[3], kg_in = d.shape[3]
    cdef Py_ssize_t c_in = gx.shape[1], cols_gy = gy_slots.shape[0]
    cdef Py_ssize_t plane = cols_gy * gy.shape[1], n_rows = nt // n_tw
    cdef Py_ssize_t in_size = (2 * a + 1) * plane
    cdef Py_ssize_t cols = n_tw * (a - 2) + 2
    cdef Py_ssize_t s1_size = a * a * c_in * n_tw, dt_size = a * c_in * n_tw, line_size = cols * c_in
    cdef Py_ssize_t first_img = row_start // n_th
    cdef Py_ssize_t n_imgs = (row_start + n_rows - 1) // n_th - first_img + 1
    cdef Py_ssize_t worker, row, r0, r1, job
    cdef floating* scratch
    cdef floating* adj
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] scratch_all = np.empty((nthreads, in_size + s1_size + dt_size + 2 * line_size),
                                                 dtype=dtype)
    for worker in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static"):
        scratch = &scratch_all[worker, 0]
        adj = scratch + in_size
        r0 = max(row_start, (first_img + worker * n_imgs // nthreads) * n_th) - row_start
        r1 = min(row_start + n_rows, (first_img + (worker + 1) * n_imgs // nthreads) * n_th) - row_start
        for row in range(r0, r1):
            _input_row(&gy[0, 0, 0, 0], gy.shape[0], gy.shape[1], gy.shape[2], gy.shape[3], &d[0, 0, 0, 0], groups,
                       nt, kg_in, row, row_start + row, 0, 0, n_th, n_tw, &dt[0, 0], a, dt.shape[1],
                       &gy_slots[0], cols_gy, &gy_down[0], &gy_across[0], scratch, scratch + (a + 1) * plane)
        for job in range(aa * groups):
            _small_gemm(&d[0, 0, 0, 0] + job * nt * kg_in, &ut[0, 0, 0, 0] + job * kg_in * cg,
                        &v[0, 0, 0, 0] + job * nt * cg, kg_in, cg, r0 * n_tw, r1 * n_tw)
        for row in range(r0, r1):
            _input_adjoint_row(&v[0, 0, 0, 0], groups, nt, cg, &gx[0, 0, 0, 0], gx.shape[2], gx.shape[3],
                               row, row_start + row, pad_top, pad_left, n_th, n_tw, &b[0, 0], a,
                               &down_offs[0], &across_offs[0], adj, adj + s1_size,
                               adj + s1_size + dt_size, adj + s1_size + dt_size + line_size)


def _weight_gradient_chunk(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] gy,
                           floating[:, :, :, ::1] v, floating[:, :, :, ::1] d, floating[:, :, :, :, ::1] dm_parts,
                           Py_ssize_t row_start, Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t n_th,
                           Py_ssize_t n_tw, const floating[:, ::1] bt, const Py_ssize_t[::1] slot_of_col,
                           const Py_ssize_t[::1] in_down, const Py_ssize_t[::1] in_across, const floating[:, ::1] dt,
                           const Py_ssize_t[::1] gy_slots, const Py_ssize_t[::1] gy_down,
                           const Py_ssize_t[::1] gy_across, int nthreads):
    """``_input_transform`` of x (into v) and of grad_output (into d), and ``_batched_gemm_tn``
    of one chunk, each thread on a contiguous range of its tile rows: thread i adds the
    products of its own tiles to ``dm_parts[i]`` (nthreads, a*a, G, C/G, K/G), which the
    caller sums, so that no thread waits for another."""
    cdef Py_ssize_t a = bt.shape[0], aa = v.shape[0]
    cdef Py_ssize_t groups = v.shape[1], nt = v.shape[2], cg = v.shape[3], kg = d.shape[3]
    cdef Py_ssize_t cols = slot_of_col.shape[0], cols_gy = gy_slots.shape[0]
    cdef Py_ssize_t plane = cols * x.shape[1], plane_gy = cols_gy * gy.shape[1], n_rows = nt // n_tw
    cdef Py_ssize_t in_size = (2 * a + 1) * max(plane, plane_gy)
    cdef Py_ssize_t worker, row, r0, r1, job
    cdef floating* scratch
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] scratch_all = np.empty((nthreads, in_size), dtype=dtype)
    for worker in prange(nthreads, nogil=True, num_threads=nthreads, schedule="static"):
        scratch = &scratch_all[worker, 0]
        r0 = worker * n_rows // nthreads
        r1 = (worker + 1) * n_rows // nthreads
        for row in range(r0, r1):
            _input_row(&x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3], &v[0, 0, 0, 0], groups, nt,
                       cg, row, row_start + row, pad_top, pad_left, n_th, n_tw, &bt[0, 0], a, bt.shape[1],
                       &slot_of_col[0], cols, &in_down[0], &in_across[0], scratch, scratch + (a + 1) * plane)
            _input_row(&gy[0, 0, 0, 0], gy.shape[0], gy.shape[1], gy.shape[2], gy.shape[3], &d[0, 0, 0, 0], groups,
                       nt, kg, row, row_start + row, 0, 0, n_th, n_tw, &dt[0, 0], a, dt.shape[1], &gy_slots[0],
                       cols_gy, &gy_down[0], &gy_across[0], scratch, scratch + (a + 1) * plane_gy)
        for job in range(aa * groups):
            _small_gemm_tn(&v[0, 0, 0, 0] + (job * nt + r0 * n_tw) * cg, &d[0, 0, 0, 0] + (job * nt + r0 * n_tw) * kg,
                           &dm_parts[worker, 0, 0, 0, 0] + job * cg * kg, (r1 - r0) * n_tw, cg, kg)


# ---------------------------------------------------------------- phase images (dilated layers)
# ``dilation_phases`` turns a dilated layer into an undilated one on its phase images. Its
# NumPy slice assignments were single-threaded strided copies, 1.1-1.5 ms each way on the
# 8 x 64 x 56 x 56 dilation-2 layer against 0.45 ms for a plain copy; these walk each plane
# once, parallel over planes. Image (i*dw + j)*N + n of the phases holds rows i, i+dh, ...
# and columns j, j+dw, ... of image n's plane padded by (top, left).

cdef void _split_plane(const floating* src, Py_ssize_t h, Py_ssize_t w, floating* dst,
                       Py_ssize_t sub_h, Py_ssize_t sub_w, Py_ssize_t phase_stride, Py_ssize_t top,
                       Py_ssize_t left, Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """The dh*dw phase planes (sub_h x sub_w, ``phase_stride`` apart) of one padded plane."""
    cdef Py_ssize_t i, j, a, b, row, b0, b1, lo, hi
    cdef floating* out
    cdef floating* out_odd
    cdef const floating* s
    for i in range(dh):
        for a in range(sub_h):
            row = i + dh * a - top
            if row < 0 or row >= h:
                for j in range(dw):
                    out = dst + (i * dw + j) * phase_stride + a * sub_w
                    for b in range(sub_w):
                        out[b] = 0
                continue
            # Phase column b of phase j reads input column j + dw*b - left (0 outside the row).
            s = src + row * w - left
            if dw == 2:
                # Both phases in one pass over the row: de-interleaving contiguous loads.
                out = dst + (i * 2) * phase_stride + a * sub_w
                out_odd = out + phase_stride
                lo = min(sub_w, (left + 1) // 2)          # from here both columns are >= 0
                hi = max(lo, min(sub_w, (w + left - 1) // 2))   # ... and both < w
                for b in range(lo):
                    out[b] = s[2 * b] if 0 <= 2 * b - left < w else 0
                    out_odd[b] = s[2 * b + 1] if 0 <= 2 * b + 1 - left < w else 0
                for b in range(lo, hi):
                    out[b] = s[2 * b]
                    out_odd[b] = s[2 * b + 1]
                for b in range(hi, sub_w):
                    out[b] = s[2 * b] if 0 <= 2 * b - left < w else 0
                    out_odd[b] = s[2 * b + 1] if 0 <= 2 * b + 1 - left < w else 0
                continue
            for j in range(dw):
                out = dst + (i * dw + j) * phase_stride + a * sub_w
                b0 = min(sub_w, (left - j + dw - 1) // dw if left > j else 0)
                b1 = max(b0, min(sub_w, (w - 1 + left - j) // dw + 1 if w - 1 + left >= j else 0))
                for b in range(b0):
                    out[b] = 0
                for b in range(b0, b1):
                    out[b] = s[j + dw * b]
                for b in range(b1, sub_w):
                    out[b] = 0


cdef void _merge_plane(const floating* src, Py_ssize_t sub_h, Py_ssize_t sub_w, Py_ssize_t phase_stride,
                       floating* dst, Py_ssize_t h, Py_ssize_t w, Py_ssize_t top, Py_ssize_t left,
                       Py_ssize_t dh, Py_ssize_t dw) noexcept nogil:
    """One plane (h x w) from its phase planes: the inverse of ``_split_plane`` on the plane's
    own positions (0 where a position lies past the phase planes)."""
    cdef Py_ssize_t y, x, i, j, a, x0, b0, cnt, valid, q, n_even, n_odd, pairs
    cdef floating* out
    cdef const floating* s
    cdef const floating* s_odd
    for y in range(h):
        i = (y + top) % dh
        a = (y + top) // dh
        out = dst + y * w
        if a >= sub_h:
            for x in range(w):
                out[x] = 0
            continue
        if dw == 2:
            # Columns 2q and 2q+1 come from the two phases' rows at q + left//2 and
            # q + (left+1)//2: one interleaving pass writes the row contiguously (stores two
            # columns apart did not vectorise: slower than NumPy's strided copy).
            s = src + (i * 2 + left % 2) * phase_stride + a * sub_w + left // 2
            s_odd = src + (i * 2 + (left + 1) % 2) * phase_stride + a * sub_w + (left + 1) // 2
            n_even = max(0, min((w + 1) // 2, sub_w - left // 2))
            n_odd = max(0, min(w // 2, sub_w - (left + 1) // 2))
            pairs = min(n_even, n_odd)
            for q in range(pairs):
                out[2 * q] = s[q]
                out[2 * q + 1] = s_odd[q]
            for x in range(2 * pairs, w):
                if x % 2 == 0:
                    out[x] = s[x // 2] if x // 2 < n_even else 0
                else:
                    out[x] = s_odd[x // 2] if x // 2 < n_odd else 0
            continue
        for j in range(dw):
            x0 = ((j - left) % dw + dw) % dw     # first column whose padded column is j mod dw
            if x0 >= w:
                continue
            cnt = (w - x0 + dw - 1) // dw
            b0 = (x0 + left) // dw
            valid = max(0, min(cnt, sub_w - b0))
            s = src + (i * dw + j) * phase_stride + a * sub_w + b0
            for q in range(valid):
                out[x0 + dw * q] = s[q]
            for q in range(valid, cnt):
                out[x0 + dw * q] = 0


def _split_phases(const floating[:, :, :, ::1] src, floating[:, :, :, ::1] dst, Py_ssize_t top,
                  Py_ssize_t left, Py_ssize_t dh, Py_ssize_t dw, int nthreads):
    """dst (dh*dw*N, C, A, B) = the phase images of src (N, C, H, W) padded by (top, left):
    dst[(i*dw + j)*N + n, c, a, b] = src[n, c, i + dh*a - top, j + dw*b - left], 0 outside."""
    cdef Py_ssize_t n = src.shape[0], c = src.shape[1], h = src.shape[2], w = src.shape[3]
    cdef Py_ssize_t sub_h = dst.shape[2], sub_w = dst.shape[3]
    cdef Py_ssize_t in_plane = h * w, out_plane = sub_h * sub_w, plane
    cdef const floating* s = &src[0, 0, 0, 0]
    cdef floating* d = &dst[0, 0, 0, 0]
    if dst.shape[0] != dh * dw * n or dst.shape[1] != c:
        raise ValueError(f"phase images of shape {tuple(dst.shape)} do not fit an input of shape "
                         f"{tuple(src.shape)} with dilation ({dh}, {dw})")
    for plane in prange(n * c, nogil=True, num_threads=nthreads, schedule="static"):
        _split_plane(s + plane * in_plane, h, w, d + plane * out_plane, sub_h, sub_w, n * c * out_plane,
                     top, left, dh, dw)


def _merge_phases(const floating[:, :, :, ::1] src, floating[:, :, :, ::1] dst, Py_ssize_t top,
                  Py_ssize_t left, Py_ssize_t dh, Py_ssize_t dw, int nthreads):
    """dst (N, C, H, W) from its phase images src (dh*dw*N, C, A, B) (``_split_phases``'s layout):
    dst[n, c, y, x] = src[(i*dw + j)*N + n, c, (y + top) // dh, (x + left) // dw] with
    i = (y + top) % dh, j = (x + left) % dw; 0 where that lies past A or B."""
    cdef Py_ssize_t n = dst.shape[0], c = dst.shape[1], h = dst.shape[2], w = dst.shape[3]
    cdef Py_ssize_t sub_h = src.shape[2], sub_w = src.shape[3]
    cdef Py_ssize_t out_plane = h * w, in_plane = sub_h * sub_w, plane
    cdef const floating* s = &src[0, 0, 0, 0]
    cdef floating* d = &dst[0, 0, 0, 0]
    if src.shape[0] != dh * dw * n or src.shape[1] != c:
        raise ValueError(f"phase images of shape {tuple(src.shape)} do not fit an output of shape "
                         f"{tuple(dst.shape)} with dilation ({dh}, {dw})")
    for plane in prange(n * c, nogil=True, num_threads=nthreads, schedule="static"):
        _merge_plane(s + plane * in_plane, sub_h, sub_w, n * c * in_plane, d + plane * out_plane, h, w,
                     top, left, dh, dw)


# ---------------------------------------------------------------- the driver

_STEPS = plan.WinogradSteps(_input_transform, _batched_gemm, _batched_gemm_tn, _output_transform,
                            _input_transform_adjoint, _forward_chunk, _input_gradient_chunk, _weight_gradient_chunk,
                            _filter_gradient, _split_phases, _merge_phases)


def _workers():
    return threads.get_num_threads()


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
