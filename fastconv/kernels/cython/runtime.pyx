"""What the compiled extension was built with, and a probe of its OpenMP thread use."""
from cython.parallel cimport prange

from fastconv.kernels.cython.openmp cimport FASTCONV_HAS_OPENMP, omp_get_thread_num


def has_openmp():
    """True when the Cython kernels were compiled with OpenMP (``prange`` runs in parallel)."""
    return bool(FASTCONV_HAS_OPENMP)


def threads_used(int num_threads, int iterations=256):
    """How many distinct OpenMP threads ran a ``prange`` of ``iterations`` with ``num_threads``.

    The kernels pass ``fastconv.get_num_threads()`` the same way, so this tells whether the
    thread setting reaches them.
    """
    cdef int i, t
    cdef int seen[1024]
    cdef int count = 0
    for i in range(1024):
        seen[i] = 0
    num_threads = max(1, min(num_threads, 1024))
    for i in prange(iterations, nogil=True, num_threads=num_threads, schedule="static", chunksize=1):
        t = omp_get_thread_num()
        if t < 1024:
            seen[t] = 1
    for i in range(1024):
        count += seen[i]
    return count
