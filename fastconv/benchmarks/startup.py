"""Cold-start costs: ``import fastconv`` and the first call of each convolution kernel.

Each measurement runs in a fresh Python process, so nothing is imported or compiled yet.
``numba_cache="warm"`` uses Numba's on-disk cache as it is (the kernels compiled by an earlier
process load from it); ``"cold"`` points ``NUMBA_CACHE_DIR`` at an empty directory, so every
Numba kernel compiles, as on a machine's very first call. Cython kernels are compiled at
install time: their first call costs only the module import.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List

#: Runs in the child process: times the import, then each kernel's first and second call on
#: a small float32 layer (the second call is the steady state, for comparison).
_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import fastconv
t1 = time.perf_counter()
import numpy as np
rows = [{"what": "import fastconv", "first_s": t1 - t0, "second_s": None}]
x = np.ones((2, 8, 10, 10), np.float32)
w = np.ones((8, 8, 3, 3), np.float32)
for algo, backend in json.loads(sys.argv[1]):
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fastconv.conv2d(x, w, padding=1, algo=algo, backend=backend)
        times.append(time.perf_counter() - start)
    rows.append({"what": f"conv2d {algo}/{backend}", "first_s": times[0], "second_s": times[1]})
print(json.dumps(rows))
"""


def conv_forward_kernels() -> List[List[str]]:
    """(algo, backend) of every registered conv2d_forward kernel except the reference."""
    from fastconv.dispatch import registry

    return [[e.algo, e.backend] for e in registry.entries("conv2d_forward") if e.backend != "numpy"]


def measure(numba_cache: str = "warm", kernels: List[List[str]] = None) -> List[Dict]:
    """Rows ``{what, first_s, second_s}`` measured in a fresh interpreter (see the module doc)."""
    if numba_cache not in ("warm", "cold"):
        raise ValueError(f"numba_cache={numba_cache!r}: expected 'warm' or 'cold'")
    kernels = conv_forward_kernels() if kernels is None else kernels
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as empty_cache:
        if numba_cache == "cold":
            env["NUMBA_CACHE_DIR"] = empty_cache
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(kernels)], env=env,
                             capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"start-up measurement failed:\n{out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(numba_cache: str = "warm") -> List[str]:
    """Printable lines of ``measure(numba_cache)``."""
    lines = [f"start-up in a fresh process (Numba cache {numba_cache}):",
             f"  {'':<32} {'first call':>11} {'second call':>12}"]
    for row in measure(numba_cache):
        second = "" if row["second_s"] is None else f"{row['second_s'] * 1e3:10.2f} ms"
        lines.append(f"  {row['what']:<32} {row['first_s'] * 1e3:8.1f} ms {second:>12}")
    return lines
