"""How idle worker threads wait: set in the environment before any runtime that reads it loads.

Imported first by ``fastconv/__init__.py``, so it precedes NumPy's import (and its OpenBLAS)
when ``fastconv`` is imported first; a runtime already loaded keeps its own setting. A value
the user exported wins (``setdefault``).

On a 2-core machine the cores are the scarce resource: a thread that spins after its work
holds a core the next parallel region of another runtime needs. Measured on this project's
machine, one training step of the MNIST model at 2 threads:

* OpenMP (libgomp) spinning by default: 10-200 ms calls became 0.1-3.8 s; passive waiting
  fixes it (``OMP_WAIT_POLICY``; ACTIVE measured 376 ms a step against 59 ms).
* OpenBLAS's worker threads spin for a while after each GEMM before sleeping: 113-133 ms a
  step, against 59 ms with the shortest spin (``OPENBLAS_THREAD_TIMEOUT=4``, 2^4 cycles).
* Passive waiting alone puts every libgomp worker to sleep at once, so each parallel region
  pays a futex wake-up. A Winograd call runs about a dozen short regions (three steps per
  chunk): MNIST conv2 at 2 threads took 2.63 ms forward and 3.05 ms grad input (Cython)
  against 2.17 and 2.44 ms with active waiting. libgomp spins ``GOMP_SPINCOUNT`` rounds before
  it sleeps even under PASSIVE, so a short spin (1000 rounds, libgomp's estimate: ~10 us)
  keeps a call's regions on awake threads and still frees the core almost at once: 2.19 and
  2.41 ms (Numba 2.68 -> 2.42, 3.00 -> 2.74 ms; 10000 rounds measured the same), and a
  2-thread MNIST training epoch of 6400 images 0.92 -> 0.82 s.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
