# The register-blocked inner kernels of the direct convolution (``direct.pyx``).
#
# tap_block, the correlation (forward, and grad_input with stride 1):
#
#     acc_q[i] += sum over taps t of w[q * wstride + t] * src[toff[t] + i]
#
# for nq <= FC_TAP_ROWS output channels q and n outputs i. Blocks of 3 AVX2 vectors x 4
# channels keep their partial sums in registers over all the taps (12 accumulators, 3 input
# vectors and one broadcast weight: the 16 AVX registers), so each tap costs 3 loads and nq
# broadcasts for 3 * nq FMAs, and an accumulator is loaded and stored once per call, not once
# per tap. With AVX-512's 32 registers the blocks are 4 vectors x 6 channels (24 FMAs for 4
# loads and 6 broadcasts, as the Numba twin's): against 3 x 4 blocks, the 3x3 stride-2
# forward 0.82-0.84x the time at 1 and 2 threads, the 7x7 stem's 0.90-0.92x, MNIST conv2's
# forward and grad_input 0.91-0.93x, LeNet conv2's 0.87-0.95x. What is left of n goes as 3
# vectors, 2, then 1, then one masked vector. Every output's sum is
# formed tap after tap in order (acc + w*x, contracted to one FMA per tap), in every one of
# those blocks alike: results do not depend on where a block boundary falls.
#
# dot_block, the weight gradient's dot products:
#
#     lanes[q, t, l] += sum over i = l (mod L) of g_q[i] * src[toff[t] + i]
#
# for nq <= 4 filters q: each dot product is kept as L vector-lane partial sums (L = the
# lanes of one vector: FC_DOT_LANES_F32 / _F64), in memory between calls so that they carry over the
# images of a batch chunk and are added up once at the end. Taps go FC_DOT_TAPS at a time:
# with AVX2, threes (12 accumulators, 3 input vectors and one grad_output vector, all pinned
# in registers by an empty asm statement: gcc otherwise folded the loads into the FMAs, 15
# loads for 12 FMAs), so 7 loads feed 12 FMAs, 1.3-1.6x faster than 2 taps x 4 filters and
# 2x faster than the first 4 x 3 form; with AVX-512's 32 registers sixes (24 accumulators,
# 10 loads per 24 FMAs, a last 1-3 taps as a group of 3: the 7x7 stem's grad weight
# 0.86-0.90x the time at 1 and 2 threads, CIFAR conv1's 0.89-0.93x, LeNet conv2's
# 0.92-0.98x, the first layers' level). Positions go in spans that stay in L1 for all the taps; those
# past the last full vector are loaded masked. A tap's lane sums depend on neither the taps
# it is grouped with nor the span boundaries.
#
# Cython cannot hold a value in a SIMD register across a loop (gcc kept such a local array
# on the stack, one load and one store per step), so these loop nests are C with SIMD
# intrinsics, generated for float and double and for nq = 1..4: 64-byte vectors where the
# build targets AVX-512 (twice the FMA width of AVX2 on cores with two 512-bit FMA units:
# the 7x7 stem forward 0.60x, LeNet conv2 0.65-0.80x, Winograd's 32-64-channel products
# 0.83-0.85x the time of the AVX2 build on one such core), else 32-byte AVX2/FMA vectors;
# without those, plain C with the same lane assignment. The vector width changes only
# dot_block's lane count L (so the rounding of grad_weight), never tap_block's sums.
from fastconv.kernels.cython.blas cimport floating

cdef extern from *:
    """
    /* The largest tap block: 6 channels x 4 vectors of sums (24 of AVX-512's 32 registers:
       4 loads and 6 broadcasts per 24 FMAs), else 4 x 3 (12 of AVX2's 16), as gemm_block. */
    #if defined(__AVX512F__)
    #define FC_TAP_ROWS 6
    #define FC_TAP_WIDE 4
    #else
    #define FC_TAP_ROWS 4
    #define FC_TAP_WIDE 3
    #endif

    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>

    /* The first m (0 < m <= LANES) elements at p; the other lanes are 0 and nothing past
       the m elements is read. */
    static inline __m256 fc_maskload_f32(const float* p, Py_ssize_t m) {
        __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), lane));
    }
    static inline __m256d fc_maskload_f64(const double* p, Py_ssize_t m) {
        __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
        return _mm256_maskload_pd(p, _mm256_cmpgt_epi64(_mm256_set1_epi64x(m), lane));
    }
    static inline void fc_maskstore_f32(float* p, Py_ssize_t m, __m256 v) {
        __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)m), lane), v);
    }
    static inline void fc_maskstore_f64(double* p, Py_ssize_t m, __m256d v) {
        __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
        _mm256_maskstore_pd(p, _mm256_cmpgt_epi64(_mm256_set1_epi64x(m), lane), v);
    }
    #if defined(__AVX512F__)
    /* The same with 64-byte vectors: a bit mask of the first m lanes. */
    static inline __m512 fc_maskload512_f32(const float* p, Py_ssize_t m) {
        return _mm512_maskz_loadu_ps((__mmask16)(m >= 16 ? 0xFFFF : (1u << m) - 1), p);
    }
    static inline __m512d fc_maskload512_f64(const double* p, Py_ssize_t m) {
        return _mm512_maskz_loadu_pd((__mmask8)(m >= 8 ? 0xFF : (1u << m) - 1), p);
    }
    static inline void fc_maskstore512_f32(float* p, Py_ssize_t m, __m512 v) {
        _mm512_mask_storeu_ps(p, (__mmask16)(m >= 16 ? 0xFFFF : (1u << m) - 1), v);
    }
    static inline void fc_maskstore512_f64(double* p, Py_ssize_t m, __m512d v) {
        _mm512_mask_storeu_pd(p, (__mmask8)(m >= 8 ? 0xFF : (1u << m) - 1), v);
    }
    /* Keeps a vector in a register: "v" admits all 32 AVX-512 registers. */
    #define FC_PIN "+v"
    #else
    #define FC_PIN "+x"
    #endif

    /* NV vectors x NQ channels of outputs from i: sums held in registers over all taps. */
    #define FC_TAP_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, NQ, NV)                     \\
        {                                                                                       \\
            V a[NQ][NV];                                                                        \\
            for (q = 0; q < NQ; q++)                                                            \\
                for (k = 0; k < NV; k++)                                                        \\
                    a[q][k] = init ? SET1(init[q]) : LOADU(acc + q * astride + i + k * LANES);  \\
            for (t = 0; t < ntaps; t++) {                                                       \\
                const T* x = src + toff[t] + i;                                                 \\
                V xv[NV];                                                                       \\
                for (k = 0; k < NV; k++) xv[k] = LOADU(x + k * LANES);                          \\
                for (q = 0; q < NQ; q++) {                                                      \\
                    V wq = SET1(w[q * wstride + t]);                                            \\
                    for (k = 0; k < NV; k++) a[q][k] = FMADD(wq, xv[k], a[q][k]);               \\
                }                                                                               \\
            }                                                                                   \\
            for (q = 0; q < NQ; q++)                                                            \\
                for (k = 0; k < NV; k++) STOREU(acc + q * astride + i + k * LANES, a[q][k]);    \\
        }

    #define FC_TAP_BLOCK(NAME, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, NQ)\\
    static __attribute__((noinline)) void NAME(const T* src, const Py_ssize_t* toff,            \\
            Py_ssize_t ntaps, const T* w, Py_ssize_t wstride, T* acc, Py_ssize_t astride,       \\
            Py_ssize_t n, const T* init) {                                                      \\
        Py_ssize_t i = 0, t, m;                                                                 \\
        int q, k;                                                                               \\
        /* FC_TAP_WIDE vectors at a time (4 with AVX-512's 32 registers), then 3, but 4 left   \\
           go as 2 + 2: a 1-vector block keeps NQ sums in flight, too few for the FMA latency   \\
           (MNIST conv2's 32-wide Winograd products 0.94x the time). What is left as 2 (8 FMAs  \\
           for 6 loads, not 2 x 4 for 5), 1, and the last m < LANES outputs with masked loads  \\
           and stores. */                                                                       \\
        for (; FC_TAP_WIDE > 3 && i + FC_TAP_WIDE * LANES <= n; i += FC_TAP_WIDE * LANES)       \\
            FC_TAP_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, NQ, FC_TAP_WIDE)            \\
        for (; i + 3 * LANES <= n && (n - i) / LANES != 4; i += 3 * LANES)                      \\
            FC_TAP_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, NQ, 3)                      \\
        for (; i + 2 * LANES <= n; i += 2 * LANES)                                              \\
            FC_TAP_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, NQ, 2)                      \\
        if (i + LANES <= n) {                                                                   \\
            FC_TAP_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, NQ, 1)                      \\
            i += LANES;                                                                         \\
        }                                                                                       \\
        m = n - i;                                                                              \\
        if (m > 0) {                                                                            \\
            V a[NQ];                                                                            \\
            for (q = 0; q < NQ; q++)                                                            \\
                a[q] = init ? SET1(init[q]) : MASKLOAD(acc + q * astride + i, m);               \\
            for (t = 0; t < ntaps; t++) {                                                       \\
                V x0 = MASKLOAD(src + toff[t] + i, m);                                          \\
                for (q = 0; q < NQ; q++) a[q] = FMADD(SET1(w[q * wstride + t]), x0, a[q]);      \\
            }                                                                                   \\
            for (q = 0; q < NQ; q++) MASKSTORE(acc + q * astride + i, m, a[q]);                 \\
        }                                                                                       \\
    }
    #else
    /* Plain C: one output at a time, the same tap order. */
    #define FC_TAP_BLOCK(NAME, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, NQ)\\
    static void NAME(const T* src, const Py_ssize_t* toff, Py_ssize_t ntaps, const T* w,        \\
                     Py_ssize_t wstride, T* acc, Py_ssize_t astride, Py_ssize_t n,              \\
                     const T* init) {                                                           \\
        Py_ssize_t i, t;                                                                        \\
        int q;                                                                                  \\
        for (i = 0; i < n; i++) {                                                               \\
            T a[NQ];                                                                            \\
            for (q = 0; q < NQ; q++) a[q] = init ? init[q] : acc[q * astride + i];              \\
            for (t = 0; t < ntaps; t++) {                                                       \\
                T x0 = src[toff[t] + i];                                                        \\
                for (q = 0; q < NQ; q++) a[q] = a[q] + w[q * wstride + t] * x0;                 \\
            }                                                                                   \\
            for (q = 0; q < NQ; q++) acc[q * astride + i] = a[q];                               \\
        }                                                                                       \\
    }
    #endif

    #define FC_TAP_BLOCKS(SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE) \\
    FC_TAP_BLOCK(fc_taps1_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 1)\\
    FC_TAP_BLOCK(fc_taps2_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 2)\\
    FC_TAP_BLOCK(fc_taps3_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 3)\\
    FC_TAP_BLOCK(fc_taps4_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 4)\\
    FC_TAP_BLOCK(fc_taps5_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 5)\\
    FC_TAP_BLOCK(fc_taps6_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 6)\\
    static void fc_taps_##SUFFIX(Py_ssize_t nq, const T* src, const Py_ssize_t* toff,           \\
            Py_ssize_t ntaps, const T* w, Py_ssize_t wstride, T* acc, Py_ssize_t astride,       \\
            Py_ssize_t n, const T* init) {                                                      \\
        switch (nq) {                                                                           \\
        case 6: fc_taps6_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n, init); break;  \\
        case 5: fc_taps5_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n, init); break;  \\
        case 4: fc_taps4_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n, init); break;  \\
        case 3: fc_taps3_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n, init); break;  \\
        case 2: fc_taps2_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n, init); break;  \\
        default: fc_taps1_##SUFFIX(src, toff, ntaps, w, wstride, acc, astride, n, init);        \\
        }                                                                                       \\
    }

    /* stencil3x3_rows, the one-input-channel 3x3 forward (depthwise layers, C = 1 first
       layers): y[r*yrow + j] = b + sum over a, c < 3 of w[3a + c] * src[(r + a)*srow + c + j]
       for r < rows (1-FC_STENCIL_ROWS) and j < n. The nine weights are broadcast once per
       call, each input vector is loaded once for the up to three output rows it feeds, and
       every sum is formed tap after tap in (a, c) order, one FMA per term (as tap_block
       forms it); a row's last partial vector is loaded and stored masked. gcc's
       vectorisation of a two-row scalar loop took 1.2-1.3x the time of the Numba twin,
       ``stencil3x3_rows`` in microkernels.py, which this mirrors. */
    #define FC_STENCIL_ROWS 4
    #if defined(__AVX2__) && defined(__FMA__)
    #define COMMA_M , m
    /* R output rows of the LANES positions from j (MASK: COMMA_M for the masked last). */
    #define FC_STENCIL_STEP(T, V, LOAD, STORE, FMADD, R, MASK)                                  \\
        {                                                                                       \\
            V acc[R];                                                                           \\
            for (r = 0; r < R; r++) acc[r] = vb;                                                \\
            for (a = 0; a < R + 2; a++) {                                                       \\
                const T* p = src + a * srow + j;                                                \\
                V x0 = LOAD(p MASK), x1 = LOAD(p + 1 MASK), x2 = LOAD(p + 2 MASK);              \\
                for (r = 0; r < R; r++)                                                         \\
                    if (a - r >= 0 && a - r < 3) {                                              \\
                        acc[r] = FMADD(wv[3 * (a - r)], x0, acc[r]);                            \\
                        acc[r] = FMADD(wv[3 * (a - r) + 1], x1, acc[r]);                        \\
                        acc[r] = FMADD(wv[3 * (a - r) + 2], x2, acc[r]);                        \\
                    }                                                                           \\
            }                                                                                   \\
            for (r = 0; r < R; r++) STORE(y + r * yrow + j MASK, acc[r]);                       \\
        }
    #define FC_STENCIL_BLOCK(NAME, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, R) \\
    static void NAME(const T* w, T b, const T* src, Py_ssize_t srow, T* y, Py_ssize_t yrow,     \\
                     Py_ssize_t n) {                                                            \\
        V wv[9], vb = SET1(b);                                                                  \\
        Py_ssize_t j = 0, m = 0;                                                                \\
        int a, r;                                                                               \\
        for (a = 0; a < 9; a++) wv[a] = SET1(w[a]);                                             \\
        for (; j + LANES <= n; j += LANES)                                                      \\
            FC_STENCIL_STEP(T, V, LOADU, STOREU, FMADD, R, )                                    \\
        m = n - j;                                                                              \\
        if (m > 0)                                                                              \\
            FC_STENCIL_STEP(T, V, MASKLOAD, MASKSTORE, FMADD, R, COMMA_M)                       \\
    }
    #else
    #define FC_STENCIL_BLOCK(NAME, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, R) \\
    static void NAME(const T* w, T b, const T* src, Py_ssize_t srow, T* y, Py_ssize_t yrow,     \\
                     Py_ssize_t n) {                                                            \\
        Py_ssize_t j;                                                                           \\
        int r, a, c;                                                                            \\
        for (r = 0; r < R; r++)                                                                 \\
            for (j = 0; j < n; j++) {                                                           \\
                T v = b;                                                                        \\
                for (a = 0; a < 3; a++)                                                         \\
                    for (c = 0; c < 3; c++)                                                     \\
                        v = v + w[3 * a + c] * src[(r + a) * srow + c + j];                     \\
                y[r * yrow + j] = v;                                                            \\
            }                                                                                   \\
    }
    #endif
    #define FC_STENCIL_BLOCKS(SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE) \\
    FC_STENCIL_BLOCK(fc_stencil1_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 1) \\
    FC_STENCIL_BLOCK(fc_stencil2_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 2) \\
    FC_STENCIL_BLOCK(fc_stencil3_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 3) \\
    FC_STENCIL_BLOCK(fc_stencil4_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 4) \\
    static void fc_stencil3x3_##SUFFIX(Py_ssize_t rows, const T* w, T b, const T* src,          \\
                                       Py_ssize_t srow, T* y, Py_ssize_t yrow, Py_ssize_t n) {  \\
        switch (rows) {                                                                         \\
        case 4: fc_stencil4_##SUFFIX(w, b, src, srow, y, yrow, n); break;                       \\
        case 3: fc_stencil3_##SUFFIX(w, b, src, srow, y, yrow, n); break;                       \\
        case 2: fc_stencil2_##SUFFIX(w, b, src, srow, y, yrow, n); break;                       \\
        default: fc_stencil1_##SUFFIX(w, b, src, srow, y, yrow, n);                             \\
        }                                                                                       \\
    }
    #if defined(__AVX512F__)
    FC_TAP_BLOCKS(f32, float, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps,
                  _mm512_fmadd_ps, fc_maskload512_f32, fc_maskstore512_f32)
    FC_TAP_BLOCKS(f64, double, __m512d, 8, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd,
                  _mm512_fmadd_pd, fc_maskload512_f64, fc_maskstore512_f64)
    FC_STENCIL_BLOCKS(f32, float, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps,
                      _mm512_fmadd_ps, fc_maskload512_f32, fc_maskstore512_f32)
    FC_STENCIL_BLOCKS(f64, double, __m512d, 8, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd,
                      _mm512_fmadd_pd, fc_maskload512_f64, fc_maskstore512_f64)
    #elif defined(__AVX2__) && defined(__FMA__)
    FC_TAP_BLOCKS(f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
                  _mm256_fmadd_ps, fc_maskload_f32, fc_maskstore_f32)
    FC_TAP_BLOCKS(f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd,
                  _mm256_fmadd_pd, fc_maskload_f64, fc_maskstore_f64)
    FC_STENCIL_BLOCKS(f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
                      _mm256_fmadd_ps, fc_maskload_f32, fc_maskstore_f32)
    FC_STENCIL_BLOCKS(f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd,
                      _mm256_fmadd_pd, fc_maskload_f64, fc_maskstore_f64)
    #else
    FC_TAP_BLOCKS(f32, float, float, 1, , , , , , )
    FC_TAP_BLOCKS(f64, double, double, 1, , , , , , )
    FC_STENCIL_BLOCKS(f32, float, float, 1, , , , , , )
    FC_STENCIL_BLOCKS(f64, double, double, 1, , , , , , )
    #endif


    #if defined(__AVX512F__)
    #define FC_VECTOR_BYTES 64
    #else
    #define FC_VECTOR_BYTES 32
    #endif
    /* Taps per dot_block pass: 4 filters x 6 taps of sums, 6 input vectors and one
       grad_output vector (31 of AVX-512's 32 registers: 10 loads per 24 FMAs); 4 x 3 in
       AVX2's 16 (7 loads per 12 FMAs). */
    #if defined(__AVX512F__)
    #define FC_DOT_TAPS 6
    #else
    #define FC_DOT_TAPS 3
    #endif
    #define FC_DOT_LANES_F32 (FC_VECTOR_BYTES / 4)
    #define FC_DOT_LANES_F64 (FC_VECTOR_BYTES / 8)
    /* Positions per pass over the taps: the grad_output span (4 x 2 KiB for float) and the
       input lines its taps read stay in L1 until every group of taps has used them. */
    #define FC_DOT_SPAN 512

    #if defined(__AVX2__) && defined(__FMA__)
    /* The first m (< LANES) positions from i go to lanes 0..m-1: masked loads read nothing
       past them, and the zero lanes add 0 * 0. */
    /* DT taps from t (past ntaps: the last tap again, whose copies make the same sums,
       stored over each other) x NQ filters over the positions [i0, i1) of one span. */
    #define FC_DOT_GROUP(T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, NQ, DT)                   \\
        {                                                                                       \\
            Py_ssize_t tu[DT];                                                                  \\
            const T* xs[DT];                                                                    \\
            V a[NQ][DT];                                                                        \\
            for (u = 0; u < DT; u++) {                                                          \\
                tu[u] = t + u < ntaps ? t + u : ntaps - 1;                                      \\
                xs[u] = src + toff[tu[u]];                                                      \\
            }                                                                                   \\
            for (q = 0; q < NQ; q++)                                                            \\
                for (u = 0; u < DT; u++)                                                        \\
                    a[q][u] = LOADU(lanes + q * lstride + tu[u] * LANES);                       \\
            for (ru = 0; ru < runs; ru++) {                                                     \\
                const T* gr = g + ru * grun;                                                    \\
                const Py_ssize_t so = ru * srun;                                                \\
                for (i = i0; i < iv; i += LANES) {                                              \\
                    V xv[DT];                                                                   \\
                    for (u = 0; u < DT; u++) {                                                  \\
                        xv[u] = LOADU(xs[u] + so + i);                                          \\
                        /* In registers: gcc otherwise re-read them inside every FMA (15 loads  \\
                           for 12 FMAs instead of 7 with 3 taps). */                            \\
                        __asm__("" : FC_PIN(xv[u]));                                            \\
                    }                                                                           \\
                    for (q = 0; q < NQ; q++) {                                                  \\
                        V gq = LOADU(gr + q * gstride + i);                                     \\
                        __asm__("" : FC_PIN(gq));                                               \\
                        for (u = 0; u < DT; u++)                                                \\
                            a[q][u] = FMADD(gq, xv[u], a[q][u]);                                \\
                    }                                                                           \\
                }                                                                               \\
                if (iv < i1) {                                                                  \\
                    V xv[DT];                                                                   \\
                    for (u = 0; u < DT; u++) xv[u] = MASKLOAD(xs[u] + so + iv, i1 - iv);        \\
                    for (q = 0; q < NQ; q++) {                                                  \\
                        V gq = MASKLOAD(gr + q * gstride + iv, i1 - iv);                        \\
                        for (u = 0; u < DT; u++)                                                \\
                            a[q][u] = FMADD(gq, xv[u], a[q][u]);                                \\
                    }                                                                           \\
                }                                                                               \\
            }                                                                                   \\
            for (q = 0; q < NQ; q++)                                                            \\
                for (u = DT - 1; u >= 0; u--)                                                   \\
                    STOREU(lanes + q * lstride + tu[u] * LANES, a[q][u]);                       \\
        }
    #define FC_DOT_BLOCK(NAME, T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, NQ)                 \\
    static __attribute__((noinline)) void NAME(const T* g, Py_ssize_t gstride, const T* src,    \\
            const Py_ssize_t* toff, Py_ssize_t ntaps, Py_ssize_t n, T* lanes,                   \\
            Py_ssize_t lstride, Py_ssize_t runs, Py_ssize_t grun, Py_ssize_t srun) {            \\
        Py_ssize_t i, i0, i1, iv, t, ru;                                                        \\
        int q, u;                                                                               \\
        for (i0 = 0; i0 < n; i0 += FC_DOT_SPAN) {                                               \\
            i1 = i0 + FC_DOT_SPAN < n ? i0 + FC_DOT_SPAN : n;                                   \\
            iv = i1 - (i1 - i0) % LANES;                                                        \\
            /* Taps FC_DOT_TAPS at a time, a last 1-3 as a group of 3 (a 3x3 filter's 9 taps   \\
               as 6 + 3, not 6 + 6 with 3 repeated: MNIST conv1's grad weight 1.05-1.09x the   \\
               time otherwise). */                                                              \\
            for (t = 0; t < ntaps; ) {                                                          \\
                if (FC_DOT_TAPS > 3 && ntaps - t > 3) {                                         \\
                    FC_DOT_GROUP(T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, NQ, FC_DOT_TAPS)  \\
                    t += FC_DOT_TAPS;                                                           \\
                } else {                                                                        \\
                    FC_DOT_GROUP(T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, NQ, 3)            \\
                    t += 3;                                                                     \\
                }                                                                               \\
            }                                                                                   \\
        }                                                                                       \\
    }
    #else
    /* Plain C, the same lane for every position: lane (i - i0) mod LANES of its span. */
    #define FC_DOT_BLOCK(NAME, T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, NQ)                 \\
    static void NAME(const T* g, Py_ssize_t gstride, const T* src, const Py_ssize_t* toff,      \\
                     Py_ssize_t ntaps, Py_ssize_t n, T* lanes, Py_ssize_t lstride,              \\
                     Py_ssize_t runs, Py_ssize_t grun, Py_ssize_t srun) {                       \\
        Py_ssize_t i, i0, i1, t, ru;                                                            \\
        int q;                                                                                  \\
        for (i0 = 0; i0 < n; i0 += FC_DOT_SPAN) {                                               \\
            i1 = i0 + FC_DOT_SPAN < n ? i0 + FC_DOT_SPAN : n;                                   \\
            for (t = 0; t < ntaps; t++)                                                         \\
                for (q = 0; q < NQ; q++) {                                                      \\
                    T* lt = lanes + q * lstride + t * LANES;                                    \\
                    for (ru = 0; ru < runs; ru++)                                               \\
                        for (i = i0; i < i1; i++)                                               \\
                            lt[(i - i0) % LANES] = lt[(i - i0) % LANES] + g[ru * grun + q * gstride + i] \\
                                                   * src[ru * srun + toff[t] + i];              \\
                }                                                                               \\
        }                                                                                       \\
    }
    #endif

    #define FC_DOT_BLOCKS(SUFFIX, T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD)                  \\
    FC_DOT_BLOCK(fc_dots1_##SUFFIX, T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, 1)             \\
    FC_DOT_BLOCK(fc_dots2_##SUFFIX, T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, 2)             \\
    FC_DOT_BLOCK(fc_dots3_##SUFFIX, T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, 3)             \\
    FC_DOT_BLOCK(fc_dots4_##SUFFIX, T, V, LANES, LOADU, STOREU, FMADD, MASKLOAD, 4)             \\
    static void fc_dots_##SUFFIX(Py_ssize_t nq, const T* g, Py_ssize_t gstride, const T* src,   \\
            const Py_ssize_t* toff, Py_ssize_t ntaps, Py_ssize_t n, T* lanes,                   \\
            Py_ssize_t lstride, Py_ssize_t runs, Py_ssize_t grun, Py_ssize_t srun) {            \\
        switch (nq) {                                                                           \\
        case 4: fc_dots4_##SUFFIX(g, gstride, src, toff, ntaps, n, lanes, lstride, runs, grun, srun); break; \\
        case 3: fc_dots3_##SUFFIX(g, gstride, src, toff, ntaps, n, lanes, lstride, runs, grun, srun); break; \\
        case 2: fc_dots2_##SUFFIX(g, gstride, src, toff, ntaps, n, lanes, lstride, runs, grun, srun); break; \\
        default: fc_dots1_##SUFFIX(g, gstride, src, toff, ntaps, n, lanes, lstride, runs, grun, srun); \\
        }                                                                                       \\
    }

    #if defined(__AVX512F__)
    FC_DOT_BLOCKS(f32, float, __m512, FC_DOT_LANES_F32, _mm512_loadu_ps, _mm512_storeu_ps,
                  _mm512_fmadd_ps, fc_maskload512_f32)
    FC_DOT_BLOCKS(f64, double, __m512d, FC_DOT_LANES_F64, _mm512_loadu_pd, _mm512_storeu_pd,
                  _mm512_fmadd_pd, fc_maskload512_f64)
    #elif defined(__AVX2__) && defined(__FMA__)
    FC_DOT_BLOCKS(f32, float, __m256, FC_DOT_LANES_F32, _mm256_loadu_ps, _mm256_storeu_ps,
                  _mm256_fmadd_ps, fc_maskload_f32)
    FC_DOT_BLOCKS(f64, double, __m256d, FC_DOT_LANES_F64, _mm256_loadu_pd, _mm256_storeu_pd,
                  _mm256_fmadd_pd, fc_maskload_f64)
    #else
    FC_DOT_BLOCKS(f32, float, float, FC_DOT_LANES_F32, , , , )
    FC_DOT_BLOCKS(f64, double, double, FC_DOT_LANES_F64, , , , )
    #endif

    /* gemm_block, the Winograd products: c[r*ldc + j] = s + sum over p < depth of
       a[r*lda + p*ldp] * b[p*ldb + j] for r < R and j < n (at most FC_GEMM_PANEL_VECTORS
       vectors), s = 0 (zero) or c's own value; p ascending, one FMA per term. With 64-byte
       vectors 6 rows x 4 vectors of sums (24 of the 32 registers) cost 4 loads and 6
       broadcasts per 24 FMAs; with 32-byte ones 4 x 3 (12 of 16), as tap_block. */
    #if defined(__AVX512F__)
    #define FC_GEMM_ROWS 6
    #define FC_GEMM_PANEL_VECTORS 4
    #else
    #define FC_GEMM_ROWS 4
    #define FC_GEMM_PANEL_VECTORS 3
    #endif
    /* Rows of b per pass of a transposed product (a^T @ b, summed over many rows): a panel of
       them (16 KiB at 64-byte vectors) stays in L1 across the blocks of rows of the result. */
    #define FC_GEMM_TN_DEPTH 64
    #define FC_GEMM_VECTORS(T, V, LANES, LOAD, STORE, SET1, FMADD, R, NV, MASK)                 \\
        {                                                                                       \\
            V s[R][NV];                                                                         \\
            for (r = 0; r < R; r++)                                                             \\
                for (k = 0; k < NV; k++)                                                        \\
                    s[r][k] = zero ? SET1((T)0) : LOAD(c + r * ldc + j + k * LANES MASK);       \\
            for (p = 0; p < depth; p++) {                                                       \\
                const T* bp = b + p * ldb + j;                                                  \\
                V bv[NV];                                                                       \\
                for (k = 0; k < NV; k++) bv[k] = LOAD(bp + k * LANES MASK);                     \\
                for (r = 0; r < R; r++) {                                                       \\
                    V ar = SET1(a[r * lda + p * ldp]);                                          \\
                    for (k = 0; k < NV; k++) s[r][k] = FMADD(ar, bv[k], s[r][k]);               \\
                }                                                                               \\
            }                                                                                   \\
            for (r = 0; r < R; r++)                                                             \\
                for (k = 0; k < NV; k++) STORE(c + r * ldc + j + k * LANES MASK, s[r][k]);      \\
        }
    #if defined(__AVX2__) && defined(__FMA__)
    #if FC_GEMM_PANEL_VECTORS == 4
    #define FC_GEMM_CASE4(T, V, LANES, LOADU, STOREU, SET1, FMADD, R)                           \\
        case 4: FC_GEMM_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, R, 4, ) break;
    #else
    #define FC_GEMM_CASE4(T, V, LANES, LOADU, STOREU, SET1, FMADD, R)
    #endif
    #define FC_GEMM_BLOCK(NAME, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, R) \\
    static __attribute__((noinline)) void NAME(const T* a, Py_ssize_t lda, Py_ssize_t ldp,      \\
            const T* b, Py_ssize_t ldb, T* c, Py_ssize_t ldc, Py_ssize_t depth, Py_ssize_t n,   \\
            int zero) {                                                                         \\
        Py_ssize_t j = 0, p, m = n % LANES;                                                     \\
        int r, k;                                                                               \\
        switch (n / LANES) {                                                                    \\
        FC_GEMM_CASE4(T, V, LANES, LOADU, STOREU, SET1, FMADD, R)                               \\
        case 3: FC_GEMM_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, R, 3, ) break;         \\
        case 2: FC_GEMM_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, R, 2, ) break;         \\
        case 1: FC_GEMM_VECTORS(T, V, LANES, LOADU, STOREU, SET1, FMADD, R, 1, ) break;         \\
        }                                                                                       \\
        if (m) {                                                                                \\
            j = n - m;                                                                          \\
            FC_GEMM_VECTORS(T, V, LANES, MASKLOAD, MASKSTORE, SET1, FMADD, R, 1, COMMA_M)       \\
        }                                                                                       \\
    }
    #else
    #define FC_GEMM_BLOCK(NAME, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, R) \\
    static void NAME(const T* a, Py_ssize_t lda, Py_ssize_t ldp, const T* b, Py_ssize_t ldb,    \\
                     T* c, Py_ssize_t ldc, Py_ssize_t depth, Py_ssize_t n, int zero) {          \\
        Py_ssize_t j, p;                                                                        \\
        int r;                                                                                  \\
        for (r = 0; r < R; r++)                                                                 \\
            for (j = 0; j < n; j++) {                                                           \\
                T s = zero ? (T)0 : c[r * ldc + j];                                             \\
                for (p = 0; p < depth; p++) s = s + a[r * lda + p * ldp] * b[p * ldb + j];      \\
                c[r * ldc + j] = s;                                                             \\
            }                                                                                   \\
    }
    #endif

    #define FC_GEMM_BLOCKS(SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE) \\
    FC_GEMM_BLOCK(fc_gemm1_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 1) \\
    FC_GEMM_BLOCK(fc_gemm2_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 2) \\
    FC_GEMM_BLOCK(fc_gemm3_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 3) \\
    FC_GEMM_BLOCK(fc_gemm4_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 4) \\
    FC_GEMM_BLOCK(fc_gemm5_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 5) \\
    FC_GEMM_BLOCK(fc_gemm6_##SUFFIX, T, V, LANES, LOADU, STOREU, SET1, FMADD, MASKLOAD, MASKSTORE, 6) \\
    static void fc_gemm_##SUFFIX(Py_ssize_t rows, const T* a, Py_ssize_t lda, Py_ssize_t ldp,   \\
            const T* b, Py_ssize_t ldb, T* c, Py_ssize_t ldc, Py_ssize_t depth, Py_ssize_t n,   \\
            int zero) {                                                                         \\
        switch (rows) {                                                                         \\
        case 6: fc_gemm6_##SUFFIX(a, lda, ldp, b, ldb, c, ldc, depth, n, zero); break;          \\
        case 5: fc_gemm5_##SUFFIX(a, lda, ldp, b, ldb, c, ldc, depth, n, zero); break;          \\
        case 4: fc_gemm4_##SUFFIX(a, lda, ldp, b, ldb, c, ldc, depth, n, zero); break;          \\
        case 3: fc_gemm3_##SUFFIX(a, lda, ldp, b, ldb, c, ldc, depth, n, zero); break;          \\
        case 2: fc_gemm2_##SUFFIX(a, lda, ldp, b, ldb, c, ldc, depth, n, zero); break;          \\
        default: fc_gemm1_##SUFFIX(a, lda, ldp, b, ldb, c, ldc, depth, n, zero);                \\
        }                                                                                       \\
    }

    #if defined(__AVX512F__)
    FC_GEMM_BLOCKS(f32, float, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps,
                   _mm512_fmadd_ps, fc_maskload512_f32, fc_maskstore512_f32)
    FC_GEMM_BLOCKS(f64, double, __m512d, 8, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd,
                   _mm512_fmadd_pd, fc_maskload512_f64, fc_maskstore512_f64)
    #elif defined(__AVX2__) && defined(__FMA__)
    FC_GEMM_BLOCKS(f32, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps,
                   _mm256_fmadd_ps, fc_maskload_f32, fc_maskstore_f32)
    FC_GEMM_BLOCKS(f64, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd,
                   _mm256_fmadd_pd, fc_maskload_f64, fc_maskstore_f64)
    #else
    FC_GEMM_BLOCKS(f32, float, float, 1, , , , , , )
    FC_GEMM_BLOCKS(f64, double, double, 1, , , , , , )
    #endif

    /* split_pairs, the stride-2 phase copy of one input row: even[m] = s[2m] for
       m < (n + 1) / 2 and odd[m] = s[2m + 1] for m < n / 2, reading s[0..n) only. Plain
       moves, bit for bit. With AVX-512 two vectors of the row become one of each phase
       (vpermt2ps); gcc vectorised the scalar form only up to the last whole vector of each
       phase, leaving 12 of a 28-wide phase row (ResNet 3x3 stride 2) to scalar code. */
    #if defined(__AVX512F__)
    static inline __mmask16 fc_first16(Py_ssize_t k) {
        return k <= 0 ? 0 : (k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << k) - 1));
    }
    static inline __mmask8 fc_first8(Py_ssize_t k) {
        return k <= 0 ? 0 : (k >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << k) - 1));
    }
    /* copy_run: d[j] = s[j] for j < n, whole vectors then one masked: the rows of a few
       dozen elements that the direct kernels copy into their planes (gcc's loops left a
       row's last partial vector, or all of a 10-wide row, to scalar code). As the Numba
       twin's copy_run. */
    #define FC_ROW_MOVES(SUFFIX, T, V, LANES, MASK, FIRST, LOADU, STOREU, MASKZ_LOADU,          \\
                         MASK_STOREU, PERMUTE2, EVENS, ODDS)                                    \\
    static void fc_split_pairs_##SUFFIX(const T* s, Py_ssize_t n, T* even, T* odd) {           \\
        const __m512i ie = EVENS, io = ODDS;                                                    \\
        Py_ssize_t m = 0, r;                                                                    \\
        for (; 2 * m + 2 * LANES <= n; m += LANES) {                                            \\
            V a = LOADU(s + 2 * m), b = LOADU(s + 2 * m + LANES);                               \\
            STOREU(even + m, PERMUTE2(a, ie, b));                                               \\
            STOREU(odd + m, PERMUTE2(a, io, b));                                                \\
        }                                                                                       \\
        r = n - 2 * m;                                                                          \\
        if (r > 0) {                                                                            \\
            V a = MASKZ_LOADU(FIRST(r), s + 2 * m);                                             \\
            V b = MASKZ_LOADU(FIRST(r - LANES), s + 2 * m + LANES);                             \\
            MASK_STOREU(even + m, FIRST((r + 1) / 2), PERMUTE2(a, ie, b));                      \\
            MASK_STOREU(odd + m, FIRST(r / 2), PERMUTE2(a, io, b));                             \\
        }                                                                                       \\
    }                                                                                           \\
    static inline void fc_copy_run_##SUFFIX(const T* s, T* d, Py_ssize_t n) {                  \\
        Py_ssize_t j = 0;                                                                       \\
        for (; j + LANES <= n; j += LANES)                                                      \\
            STOREU(d + j, LOADU(s + j));                                                        \\
        if (j < n) {                                                                            \\
            MASK k = FIRST(n - j);                                                              \\
            MASK_STOREU(d + j, k, MASKZ_LOADU(k, s + j));                                       \\
        }                                                                                       \\
    }
    FC_ROW_MOVES(f32, float, __m512, 16, __mmask16, fc_first16, _mm512_loadu_ps, _mm512_storeu_ps,
                 _mm512_maskz_loadu_ps, _mm512_mask_storeu_ps, _mm512_permutex2var_ps,
                 _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                 _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31))
    FC_ROW_MOVES(f64, double, __m512d, 8, __mmask8, fc_first8, _mm512_loadu_pd, _mm512_storeu_pd,
                 _mm512_maskz_loadu_pd, _mm512_mask_storeu_pd, _mm512_permutex2var_pd,
                 _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15))
    /* The 2x2/stride-2 average pool's rows (pooling.pyx), on the same even/odd permutes:
       avg2x2_row: y[m] = (((r0[2m] + r0[2m + 1]) + r1[2m]) + r1[2m + 1]) * 0.25 for m < n
       (the scalar form's order; * 0.25 is / 4 exactly), reading r0, r1 [0, 2n) only;
       spread_pairs: r[2m] = r[2m + 1] = g[m] * 0.25 + 0 for m < n (+ 0: a -0.0 share is
       +0.0, as added to a zeroed gradient), writing r [0, 2n) only. gcc left MNIST pool2's
       5-wide output rows to scalar code. */
    #define FC_POOL_PAIRS(SUFFIX, T, V, LANES, MASK, FIRST, LOADU, STOREU, MASKZ_LOADU,         \\
                          MASK_STOREU, PERMUTE2, EVENS, ODDS, LOWS, HIGHS, SET1, ADD, MUL)      \\
    static void fc_avg2x2_row_##SUFFIX(const T* r0, const T* r1, Py_ssize_t n, T* y) {         \\
        const __m512i ie = EVENS, io = ODDS;                                                    \\
        const V quarter = SET1((T)0.25);                                                        \\
        Py_ssize_t m = 0, r;                                                                    \\
        for (; m + LANES <= n; m += LANES) {                                                    \\
            V a = LOADU(r0 + 2 * m), b = LOADU(r0 + 2 * m + LANES);                             \\
            V c = LOADU(r1 + 2 * m), d = LOADU(r1 + 2 * m + LANES);                             \\
            V s = ADD(ADD(ADD(PERMUTE2(a, ie, b), PERMUTE2(a, io, b)), PERMUTE2(c, ie, d)),     \\
                      PERMUTE2(c, io, d));                                                      \\
            STOREU(y + m, MUL(s, quarter));                                                     \\
        }                                                                                       \\
        r = 2 * (n - m);                                                                        \\
        if (r > 0) {                                                                            \\
            V a = MASKZ_LOADU(FIRST(r), r0 + 2 * m);                                            \\
            V b = MASKZ_LOADU(FIRST(r - LANES), r0 + 2 * m + LANES);                            \\
            V c = MASKZ_LOADU(FIRST(r), r1 + 2 * m);                                            \\
            V d = MASKZ_LOADU(FIRST(r - LANES), r1 + 2 * m + LANES);                            \\
            V s = ADD(ADD(ADD(PERMUTE2(a, ie, b), PERMUTE2(a, io, b)), PERMUTE2(c, ie, d)),     \\
                      PERMUTE2(c, io, d));                                                      \\
            MASK_STOREU(y + m, FIRST(n - m), MUL(s, quarter));                                  \\
        }                                                                                       \\
    }                                                                                           \\
    static void fc_spread_pairs_##SUFFIX(const T* g, Py_ssize_t n, T* r) {                     \\
        const __m512i il = LOWS, ih = HIGHS;                                                    \\
        const V quarter = SET1((T)0.25), zero = SET1((T)0);                                     \\
        Py_ssize_t m = 0, k;                                                                    \\
        for (; m + LANES <= n; m += LANES) {                                                    \\
            V s = ADD(MUL(LOADU(g + m), quarter), zero);                                        \\
            STOREU(r + 2 * m, PERMUTE2(s, il, s));                                              \\
            STOREU(r + 2 * m + LANES, PERMUTE2(s, ih, s));                                      \\
        }                                                                                       \\
        k = n - m;                                                                              \\
        if (k > 0) {                                                                            \\
            V s = ADD(MUL(MASKZ_LOADU(FIRST(k), g + m), quarter), zero);                        \\
            MASK_STOREU(r + 2 * m, FIRST(2 * k), PERMUTE2(s, il, s));                           \\
            MASK_STOREU(r + 2 * m + LANES, FIRST(2 * k - LANES), PERMUTE2(s, ih, s));           \\
        }                                                                                       \\
    }
    FC_POOL_PAIRS(f32, float, __m512, 16, __mmask16, fc_first16, _mm512_loadu_ps, _mm512_storeu_ps,
                  _mm512_maskz_loadu_ps, _mm512_mask_storeu_ps, _mm512_permutex2var_ps,
                  _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                  _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
                  _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
                  _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15),
                  _mm512_set1_ps, _mm512_add_ps, _mm512_mul_ps)
    FC_POOL_PAIRS(f64, double, __m512d, 8, __mmask8, fc_first8, _mm512_loadu_pd, _mm512_storeu_pd,
                  _mm512_maskz_loadu_pd, _mm512_mask_storeu_pd, _mm512_permutex2var_pd,
                  _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15),
                  _mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3), _mm512_setr_epi64(4, 4, 5, 5, 6, 6, 7, 7),
                  _mm512_set1_pd, _mm512_add_pd, _mm512_mul_pd)
    #else
    #define FC_COPY_RUN(SUFFIX, T)                                                              \\
    static inline void fc_copy_run_##SUFFIX(const T* s, T* d, Py_ssize_t n) {                  \\
        for (Py_ssize_t j = 0; j < n; j++) d[j] = s[j];                                         \\
    }
    FC_COPY_RUN(f32, float)
    FC_COPY_RUN(f64, double)
    #define FC_SPLIT_PAIRS(SUFFIX, T)                                                           \\
    static void fc_split_pairs_##SUFFIX(const T* s, Py_ssize_t n, T* even, T* odd) {           \\
        Py_ssize_t m;                                                                           \\
        for (m = 0; 2 * m < n; m++) even[m] = s[2 * m];                                         \\
        for (m = 0; 2 * m + 1 < n; m++) odd[m] = s[2 * m + 1];                                  \\
    }
    FC_SPLIT_PAIRS(f32, float)
    FC_SPLIT_PAIRS(f64, double)
    #define FC_POOL_PAIRS(SUFFIX, T)                                                            \\
    static void fc_avg2x2_row_##SUFFIX(const T* r0, const T* r1, Py_ssize_t n, T* y) {         \\
        for (Py_ssize_t m = 0; m < n; m++)                                                      \\
            y[m] = (r0[2 * m] + r0[2 * m + 1] + r1[2 * m] + r1[2 * m + 1]) / 4;                 \\
    }                                                                                           \\
    static void fc_spread_pairs_##SUFFIX(const T* g, Py_ssize_t n, T* r) {                     \\
        for (Py_ssize_t m = 0; m < n; m++) {                                                    \\
            T s = g[m] / 4 + (T)0;                                                              \\
            r[2 * m] = s;                                                                       \\
            r[2 * m + 1] = s;                                                                   \\
        }                                                                                       \\
    }
    FC_POOL_PAIRS(f32, float)
    FC_POOL_PAIRS(f64, double)
    #endif

    """
    void fc_taps_f32(Py_ssize_t nq, const float* src, const Py_ssize_t* toff, Py_ssize_t ntaps,
                     const float* w, Py_ssize_t wstride, float* acc, Py_ssize_t astride,
                     Py_ssize_t n, const float* init) noexcept nogil
    void fc_taps_f64(Py_ssize_t nq, const double* src, const Py_ssize_t* toff, Py_ssize_t ntaps,
                     const double* w, Py_ssize_t wstride, double* acc, Py_ssize_t astride,
                     Py_ssize_t n, const double* init) noexcept nogil
    enum:
        FC_TAP_ROWS
        FC_VECTOR_BYTES
        FC_DOT_LANES_F32
        FC_DOT_LANES_F64
        FC_DOT_SPAN
    void fc_dots_f32(Py_ssize_t nq, const float* g, Py_ssize_t gstride, const float* src,
                     const Py_ssize_t* toff, Py_ssize_t ntaps, Py_ssize_t n, float* lanes,
                     Py_ssize_t lstride, Py_ssize_t runs, Py_ssize_t grun, Py_ssize_t srun) noexcept nogil
    void fc_dots_f64(Py_ssize_t nq, const double* g, Py_ssize_t gstride, const double* src,
                     const Py_ssize_t* toff, Py_ssize_t ntaps, Py_ssize_t n, double* lanes,
                     Py_ssize_t lstride, Py_ssize_t runs, Py_ssize_t grun, Py_ssize_t srun) noexcept nogil
    enum:
        FC_GEMM_ROWS
        FC_GEMM_PANEL_VECTORS
        FC_GEMM_TN_DEPTH
    void fc_gemm_f32(Py_ssize_t rows, const float* a, Py_ssize_t lda, Py_ssize_t ldp, const float* b,
                     Py_ssize_t ldb, float* c, Py_ssize_t ldc, Py_ssize_t depth, Py_ssize_t n,
                     bint zero) noexcept nogil
    void fc_gemm_f64(Py_ssize_t rows, const double* a, Py_ssize_t lda, Py_ssize_t ldp, const double* b,
                     Py_ssize_t ldb, double* c, Py_ssize_t ldc, Py_ssize_t depth, Py_ssize_t n,
                     bint zero) noexcept nogil
    void fc_split_pairs_f32(const float* s, Py_ssize_t n, float* even, float* odd) noexcept nogil
    void fc_split_pairs_f64(const double* s, Py_ssize_t n, double* even, double* odd) noexcept nogil
    void fc_copy_run_f32(const float* s, float* d, Py_ssize_t n) noexcept nogil
    void fc_avg2x2_row_f32(const float* r0, const float* r1, Py_ssize_t n, float* y) noexcept nogil
    void fc_avg2x2_row_f64(const double* r0, const double* r1, Py_ssize_t n, double* y) noexcept nogil
    void fc_spread_pairs_f32(const float* g, Py_ssize_t n, float* r) noexcept nogil
    void fc_spread_pairs_f64(const double* g, Py_ssize_t n, double* r) noexcept nogil
    enum:
        FC_STENCIL_ROWS
    void fc_stencil3x3_f32(Py_ssize_t rows, const float* w, float b, const float* src, Py_ssize_t srow,
                           float* y, Py_ssize_t yrow, Py_ssize_t n) noexcept nogil
    void fc_stencil3x3_f64(Py_ssize_t rows, const double* w, double b, const double* src, Py_ssize_t srow,
                           double* y, Py_ssize_t yrow, Py_ssize_t n) noexcept nogil
    void fc_copy_run_f64(const double* s, double* d, Py_ssize_t n) noexcept nogil


cdef inline void tap_block(Py_ssize_t nq, const floating* src, const Py_ssize_t* toff,
                           Py_ssize_t ntaps, const floating* w, Py_ssize_t wstride,
                           floating* acc, Py_ssize_t astride, Py_ssize_t n,
                           const floating* init) noexcept nogil:
    """acc[q*astride + i] = s + sum_t w[q*wstride + t] * src[toff[t] + i] for q < nq (1-FC_TAP_ROWS),
    i < n, where s is init[q], or acc's own value when ``init`` is NULL."""
    if floating is float:
        fc_taps_f32(nq, src, toff, ntaps, w, wstride, acc, astride, n, init)
    else:
        fc_taps_f64(nq, src, toff, ntaps, w, wstride, acc, astride, n, init)


cdef inline void dot_block(Py_ssize_t nq, const floating* g, Py_ssize_t gstride,
                           const floating* src, const Py_ssize_t* toff, Py_ssize_t ntaps,
                           Py_ssize_t n, floating* lanes, Py_ssize_t lstride, Py_ssize_t runs,
                           Py_ssize_t grun, Py_ssize_t srun) noexcept nogil:
    """lanes[q*lstride + t*L + l] += sum over u < runs, i < n, i = l (mod L), of
    g[u*grun + q*gstride + i] * src[u*srun + toff[t] + i] for q < nq (1-4) and t < ntaps;
    L = FC_DOT_LANES_F32 or FC_DOT_LANES_F64. Runs of at most FC_DOT_SPAN positions (rows)
    keep the sums in registers from one run to the next."""
    if floating is float:
        fc_dots_f32(nq, g, gstride, src, toff, ntaps, n, lanes, lstride, runs, grun, srun)
    else:
        fc_dots_f64(nq, g, gstride, src, toff, ntaps, n, lanes, lstride, runs, grun, srun)


cdef inline void gemm_block(Py_ssize_t rows, const floating* a, Py_ssize_t lda, Py_ssize_t ldp,
                            const floating* b, Py_ssize_t ldb, floating* c, Py_ssize_t ldc, Py_ssize_t depth,
                            Py_ssize_t n, bint zero) noexcept nogil:
    """c[r*ldc + j] = s + sum_p a[r*lda + p*ldp] * b[p*ldb + j] for r < rows (1-FC_GEMM_ROWS),
    j < n (at most FC_GEMM_PANEL_VECTORS vectors), p < depth; s is 0 if ``zero`` else c's value."""
    if floating is float:
        fc_gemm_f32(rows, a, lda, ldp, b, ldb, c, ldc, depth, n, zero)
    else:
        fc_gemm_f64(rows, a, lda, ldp, b, ldb, c, ldc, depth, n, zero)


cdef inline void split_pairs(const floating* s, Py_ssize_t n, floating* even, floating* odd) noexcept nogil:
    """even[m] = s[2m] for m < (n + 1) // 2, odd[m] = s[2m + 1] for m < n // 2 (s[0..n) read)."""
    if floating is float:
        fc_split_pairs_f32(s, n, even, odd)
    else:
        fc_split_pairs_f64(s, n, even, odd)


cdef inline void copy_run(const floating* s, floating* d, Py_ssize_t n) noexcept nogil:
    """d[j] = s[j] for j < n (s and d do not overlap)."""
    if floating is float:
        fc_copy_run_f32(s, d, n)
    else:
        fc_copy_run_f64(s, d, n)


cdef inline void stencil3x3_rows(Py_ssize_t rows, const floating* w, floating b, const floating* src,
                                 Py_ssize_t srow, floating* y, Py_ssize_t yrow, Py_ssize_t n) noexcept nogil:
    """y[r*yrow + j] = b + sum_{a, c < 3} w[3a + c] * src[(r + a)*srow + c + j] for r < rows
    (1-FC_STENCIL_ROWS), j < n: rows of a one-input-channel 3x3 correlation."""
    if floating is float:
        fc_stencil3x3_f32(rows, w, b, src, srow, y, yrow, n)
    else:
        fc_stencil3x3_f64(rows, w, b, src, srow, y, yrow, n)


cdef inline void avg2x2_row(const floating* r0, const floating* r1, Py_ssize_t n, floating* y) noexcept nogil:
    """y[m] = (r0[2m] + r0[2m + 1] + r1[2m] + r1[2m + 1]) / 4 for m < n (r0, r1 [0, 2n) read)."""
    if floating is float:
        fc_avg2x2_row_f32(r0, r1, n, y)
    else:
        fc_avg2x2_row_f64(r0, r1, n, y)


cdef inline void spread_pairs(const floating* g, Py_ssize_t n, floating* r) noexcept nogil:
    """r[2m] = r[2m + 1] = g[m] / 4 + 0 for m < n (r [0, 2n) written)."""
    if floating is float:
        fc_spread_pairs_f32(g, n, r)
    else:
        fc_spread_pairs_f64(g, n, r)
