# The 2x2/stride-2 max-pool row, shared by pooling.pyx (max_pool2d) and direct.pyx (the
# fused conv + ReLU + max pool, which pools each convolution plane while it is in cache).
from libc.stdint cimport int64_t, uint8_t

from fastconv.kernels.cython.blas cimport floating

# Where the maxima go: max_pool2d's int64 flat offsets, or the fused op's one-byte window codes.
ctypedef fused window_index:
    int64_t
    uint8_t


cdef inline void max2x2_row(const floating* r0, Py_ssize_t w, Py_ssize_t out_w, floating* yr,
                            window_index* ir, int64_t base, int64_t step, int64_t iw) noexcept nogil:
    """One output row of 2x2/stride-2 windows over input rows r0 and r0 + w.

    ``ir[ow] = base + step * ow`` plus 0, 1, ``iw`` or ``iw + 1``: with step 2 and iw the
    plane width, flat offsets in the plane (``iw`` differs from the row stride ``w`` when the
    rows are read from a wider buffer); with step 0, base 0 and iw 2, window codes 0-3.

    The common case has no NaN: the maximum is a plain max chain (the first of equal maxima
    wins, as a later candidate must beat the running maximum), branch-free and vectorised. A
    row that holds a NaN is redone with the exact rule (a NaN wins, the last NaN gives the
    index).
    """
    cdef const floating* r1 = r0 + w
    cdef Py_ssize_t ow
    cdef floating a, b, c, d, best
    cdef int64_t k
    cdef int nan = 0
    cdef int ea, eb, ec
    cdef bint m
    if ir == NULL:
        for ow in range(out_w):
            a = r0[2 * ow]; b = r0[2 * ow + 1]; c = r1[2 * ow]; d = r1[2 * ow + 1]
            best = a
            best = b if b > best else best
            best = c if c > best else best
            best = d if d > best else best
            nan |= (a != a) | (b != b) | (c != c) | (d != d)
            yr[ow] = best
    else:
        # The same max chain, then where the maximum is by arithmetic on equalities: the
        # first of a, b, c, d equal to it is the one the chain kept (-0.0 == 0.0 is the same
        # tie), at offset 0, 1, iw or iw + 1 = ea * (1 + eb * (iw - 1 + ec)). Branch-free
        # like the Numba twin; flags for "beats the running maximum" combined into a code
        # took 1.4x the time on MNIST pool2's 5-wide rows (selects compiled to branches).
        for ow in range(out_w):
            a = r0[2 * ow]; b = r0[2 * ow + 1]; c = r1[2 * ow]; d = r1[2 * ow + 1]
            best = a
            best = b if b > best else best
            best = c if c > best else best
            best = d if d > best else best
            nan |= (a != a) | (b != b) | (c != c) | (d != d)
            yr[ow] = best
            ea = a != best
            eb = b != best
            ec = c != best
            if window_index is uint8_t:     # window codes (base 0, step 0, iw 2): the code itself,
                ir[ow] = <uint8_t>(ea * (1 + eb * (1 + ec)))    # in int, not int64
            else:
                ir[ow] = base + step * ow + ea * (1 + eb * (iw - 1 + ec))
    if nan == 0:
        return
    for ow in range(out_w):
        a = r0[2 * ow]; b = r0[2 * ow + 1]; c = r1[2 * ow]; d = r1[2 * ow + 1]
        best = a
        k = 0
        m = (b > best) | (b != b)
        best = b if m else best
        k = 1 if m else k
        m = (c > best) | (c != c)
        best = c if m else best
        k = iw if m else k
        m = (d > best) | (d != d)
        best = d if m else best
        k = iw + 1 if m else k
        yr[ow] = best
        if ir != NULL:
            ir[ow] = <window_index>(base + step * ow + k)
