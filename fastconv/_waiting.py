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
* Not set: a short libgomp spin (``GOMP_SPINCOUNT=1000``, honoured under PASSIVE) saved the
  wake-ups of Winograd's dozen parallel regions per call (MNIST conv2 at 2 threads 0.79-0.91x
  the time), but in ``fastconv bench`` beside PyTorch the 2-thread im2col calls of the Numba
  backend (its unfold regions between OpenBLAS GEMMs) took 1.4-2x as long (ResNet 64/128
  forward, MNIST conv2 grad weight).

PyTorch loads the same libgomp (one per process: the first loaded serves both), so beside
fastconv it waits passively too. ``python -m fastconv.benchmarks.torch_environment`` times
PyTorch alone under these settings and under its own defaults.
"""
import os

#: The variables and the values fastconv gives them when the user has not.
SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}

for _name, _value in SETTINGS.items():
    os.environ.setdefault(_name, _value)
