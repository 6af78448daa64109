# BLAS for every Cython kernel module: SciPy's sgemm/dgemm behind one fused-type, row-major call.
# Row-major matrices are the transposes of column-major ones, so C = op(A) op(B) (row-major)
# is computed as C^T = op(B)^T op(A)^T (column-major) by swapping the operands; no copies.
from scipy.linalg.cython_blas cimport dgemm, sgemm

ctypedef fused floating:
    float
    double


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb, floating beta,
                      floating* c, int ldc) noexcept nogil:
    """C (m x n) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C, all row-major.

    ``lda``/``ldb``/``ldc`` are row strides in elements (of A and B as stored, before op).
    """
    cdef char op_first = b'T' if trans_b else b'N'
    cdef char op_second = b'T' if trans_a else b'N'
    if floating is float:
        sgemm(&op_first, &op_second, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&op_first, &op_second, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, c, &ldc)
