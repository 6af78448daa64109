"""One thread count for the three runtimes fastconv uses: Numba, OpenMP (Cython) and BLAS.

Kernels never nest one runtime's parallel region inside another's: every BLAS call is made
outside any ``prange``, so giving all three the same count never oversubscribes the cores.

* Numba: kernels call ``numba_threads()`` and pass it to ``numba.set_num_threads`` before a
  parallel region (Numba's setting is per calling thread, so it is applied per call).
* OpenMP: Cython kernels pass ``get_num_threads()`` to ``prange(num_threads=...)``.
* BLAS: ``threadpoolctl`` limits every loaded BLAS (NumPy's and SciPy's OpenBLAS). A BLAS
  loaded later is limited when a kernel module that uses it is first loaded (``apply_blas``).

The default is the number of cores this process may run on, or ``FASTCONV_NUM_THREADS``.
"""
from __future__ import annotations

import os
import sys

from . import _waiting  # noqa: F401  (idle threads wait passively: see fastconv/_waiting.py)

_num_threads = None


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _default_num_threads() -> int:
    value = os.environ.get("FASTCONV_NUM_THREADS")
    if value is None:
        return _usable_cores()
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"environment variable FASTCONV_NUM_THREADS={value!r}: expected a positive int") from None
    if n <= 0:
        raise ValueError(f"environment variable FASTCONV_NUM_THREADS={value!r}: expected a positive int")
    return n


def get_num_threads() -> int:
    """The number of threads fastconv's kernels (and the BLAS they call) use."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_num_threads()
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every runtime: Numba, the Cython kernels' OpenMP, and BLAS."""
    global _num_threads
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"n={n!r}: expected a positive int")
    n = int(n)
    if n <= 0:
        raise ValueError(f"n={n!r}: expected a positive int")
    _num_threads = n
    apply_blas()


def numba_threads() -> int:
    """The thread count to give Numba: ``get_num_threads()`` capped at Numba's pool size."""
    import numba

    return min(get_num_threads(), numba.config.NUMBA_NUM_THREADS)


def apply_blas() -> None:
    """Limit every BLAS library loaded so far to ``get_num_threads()`` threads."""
    if "numpy" not in sys.modules:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl is a dependency; tolerate its absence in odd installs
        return
    global _blas_controllers
    _blas_controllers = None    # a BLAS loaded since the last call joins the next enumeration
    threadpool_limits(limits=get_num_threads(), user_api="blas")


def runtime_info() -> dict:
    """What each runtime is set to now (for ``fastconv info`` and benchmark headers)."""
    info = {"fastconv": get_num_threads()}
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [(lib.get("internal_api"), lib.get("num_threads"), lib.get("filepath"))
                        for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = []
    if "numba" in sys.modules:
        import numba

        info["numba"] = numba.get_num_threads()
        info["numba_threading_layer"] = numba.config.THREADING_LAYER
    return info
