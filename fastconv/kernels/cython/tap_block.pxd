# The register-blocked inner kernel of the direct correlation (``direct.pyx``):
#
#     acc_q[i] += sum over taps t of w[q * wstride + t] * src[toff[t] + i]
#
# for nq <= 4 output channels q and n outputs i. Blocks of 3 SIMD vectors x nq channels keep
# their partial sums in registers over all the taps (12 accumulators, 3 input vectors and one
# broadcast weight: the 16 AVX registers), so each tap costs 3 loads and nq broadcasts for
# 3 * nq FMAs, and an accumulator is loaded and stored once per call, not once per tap.
# Cython cannot hold a value in a SIMD register across a loop (gcc kept such a local array
# on the stack, one load and one store per tap), so this one loop nest is C with AVX2/FMA
# intrinsics, generated for float and double and for nq = 1..4; without AVX2 and FMA at
# compile time the same loops are plain C. Every output's sum is formed tap after tap in
# order (acc + w*x, contracted to one FMA per tap), which is also what the tail loops do:
# results do not depend on where a block boundary falls.
from fastconv.kernels.cython.blas cimport floating

cdef extern from *:
    """
    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>

    #define FC_TAP_BLOCK(NAME, T, V, LANES, LOADU, STOREU, SET1, FMADD, NQ)                  \\
    static __attribute__((noinline)) void NAME(const T* src, const Py_ssize_t* toff, Py_ssize_t ntaps, const T* w,     \\
                     Py_ssize_t wstride, T* acc, Py_ssize_t astride, Py_ssize_t n) {        \\
        Py_ssize_t i = 0, t;                                                                 \\
        int q, k;                                                                            \\
        for (; i + 3 * LANES <= n; i += 3 * LANES) {                                         \\
            V a[NQ][3];                                                                      \\
            for (q = 0; q < NQ; q++)                                                         \\
                for (k = 0; k < 3; k++) a[q][k] = LOADU(acc + q * astride + i + k * LANES);  \\
            for (t = 0; t < ntaps; t++) {                                                    \\
                const T* x = src + toff[t] + i;                                              \\
                V x0 = LOADU(x), x1 = LOADU(x + LANES), x2 = LOADU(x + 2 * LANES);           \\
                for (q = 0; q < NQ; q++) {                                                   \\
                    V wq = SET1(w[q * wstride + t]);                                         \\
                    a[q][0] = FMADD(wq, x0, a[q][0]);                                        \\
                    a[q][1] = FMADD(wq, x1, a[q][1]);                                        \\
                    a[q][2] = FMADD(wq, x2, a[q][2]);                                        \\
                }                                                                            \\
            }                                                                                \\
            for (q = 0; q < NQ; q++)                                                         \\
                for (k = 0; k < 3; k++) STOREU(acc + q * astride + i + k * LANES, a[q][k]);  \\
        }                                                                                    \\
        for (; i + LANES <= n; i += LANES) {                                                 \\
            V a[NQ];                                                                         \\
            for (q = 0; q < NQ; q++) a[q] = LOADU(acc + q * astride + i);                    \\
            for (t = 0; t < ntaps; t++) {                                                    \\
                V x0 = LOADU(src + toff[t] + i);                                             \\
                for (q = 0; q < NQ; q++) a[q] = FMADD(SET1(w[q * wstride + t]), x0, a[q]);   \\
            }                                                                                \\
            for (q = 0; q < NQ; q++) STOREU(acc + q * astride + i, a[q]);                    \\
        }                                                                                    \\
        FC_TAP_TAIL(T, NQ)                                                                   \\
    }
    #else
    #define FC_TAP_BLOCK(NAME, T, V, LANES, LOADU, STOREU, SET1, FMADD, NQ)                  \\
    static void NAME(const T* src, const Py_ssize_t* toff, Py_ssize_t ntaps, const T* w,     \\
                     Py_ssize_t wstride, T* acc, Py_ssize_t astride, Py_ssize_t n) {        \\
        Py_ssize_t i = 0, t;                                                                 \\
        int q;                                                                               \\
        FC_TAP_TAIL(T, NQ)                                                                   \\
    }
    #endif

    /* Outputs i.. n one at a time (all of them without AVX2), in the same tap order. */
    #define FC_TAP_TAIL(T, NQ)                                                               \\
        for (; i < n; i++) {                                                                 \\
            T a[NQ];                                                                         \\
            for (q = 0; q < NQ; q++) a[q] = acc[q * astride + i];                            \\
            for (t = 0; t < ntaps; t++) {                                                    \\
                T x0 = src[toff[t] + i];                                                     \\
                for (q = 0; q < NQ; q++) a[q] = a[q] + w[q * wstride + t] * x0;              \\
            }                                                                                \\
            for (q = 0; q < NQ; q++) acc[q * astride + i] = a[q];                            \\
        }

    #define FC_TAP_BLOCKS(SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD)                   \\
    FC_TAP_BLOCK(fc_taps1_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, 1)              \\
    FC_TAP_BLOCK(fc_taps2_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, 2)              \\
    FC_TAP_BLOCK(fc_taps3_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, 3)              \\
    FC_TAP_BLOCK(fc_taps4_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, 4)              \\
    static void fc_taps_##SUFFIX(Py_ssize_t nq, const T* src, const Py_ssize_t* toff,        \\
                                 Py_ssize_t ntaps, const T* w, Py_ssize_t wstride, T* acc,   \\
                                 Py_ssize_t astride, Py_ssize_t n) {                         \\
        switch (nq) {                                                                        \\
        case 4: fc_taps4_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n); break;     \\
        case 3: fc_taps3_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n); break;     \\
        case 2: fc_taps2_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n); break;     \\
        default: fc_taps1_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n);           \\
        }                                                                                    \\
    }

    #if defined(__AVX2__) && defined(__FMA__)
    FC_TAP_BLOCKS(f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
                  _mm256_fmadd_ps)
    FC_TAP_BLOCKS(f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd,
                  _mm256_fmadd_pd)
    #else
    FC_TAP_BLOCKS(f32, float, float, 1, , , , )
    FC_TAP_BLOCKS(f64, double, double, 1, , , , )
    #endif
    """
    void fc_taps_f32(Py_ssize_t nq, const float* src, const Py_ssize_t* toff, Py_ssize_t ntaps,
                     const float* w, Py_ssize_t wstride, float* acc, Py_ssize_t astride,
                     Py_ssize_t n) noexcept nogil
    void fc_taps_f64(Py_ssize_t nq, const double* src, const Py_ssize_t* toff, Py_ssize_t ntaps,
                     const double* w, Py_ssize_t wstride, double* acc, Py_ssize_t astride,
                     Py_ssize_t n) noexcept nogil


cdef inline void tap_block(Py_ssize_t nq, const floating* src, const Py_ssize_t* toff,
                           Py_ssize_t ntaps, const floating* w, Py_ssize_t wstride,
                           floating* acc, Py_ssize_t astride, Py_ssize_t n) noexcept nogil:
    """acc[q*astride + i] += sum_t w[q*wstride + t] * src[toff[t] + i], q < nq (1-4), i < n."""
    if floating is float:
        fc_taps_f32(nq, src, toff, ntaps, w, wstride, acc, astride, n)
    else:
        fc_taps_f64(nq, src, toff, ntaps, w, wstride, acc, astride, n)
