"""What every Numba kernel module shares: the JIT options and the per-call thread setting."""
import numba

from ... import threads

#: ``cache=True`` compiles once per machine; ``nogil`` lets callers overlap work. No
#: ``fastmath``: its nnan/ninf assumptions would break NaN/Inf propagation.
JIT_OPTIONS = dict(cache=True, nogil=True)
PARALLEL_JIT_OPTIONS = dict(JIT_OPTIONS, parallel=True)


def use_configured_threads() -> None:
    """Give Numba's parallel regions ``fastconv.get_num_threads()`` threads.

    Numba keeps this setting per calling thread, so kernels call it on every entry.
    """
    numba.set_num_threads(threads.numba_threads())
