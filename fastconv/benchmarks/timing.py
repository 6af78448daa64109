"""Timing that survives a noisy 2-core machine: interleaved candidates, medians of repeats."""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable, Dict

import numpy as np


#: glibc's malloc raises its mmap threshold to the size of a freed mapped block up to this
#: size (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit).
_MMAP_THRESHOLD_MAX = 32 * 2**20


def settle_allocator() -> None:
    """Put the C allocator in the state a long-running process reaches, before timing.

    glibc's malloc hands out blocks above its mmap threshold (128 KiB at start) as fresh
    mappings, whose pages fault in on first touch at every call, and raises the threshold to
    a freed mapped block's size (up to 32 MiB); from then on such blocks come from the heap
    and are reused. Which outputs of a benchmark pay page faults therefore depended on the
    largest array freed before them: on this VM a fault costs ~5 us, and PyTorch's 8 MiB
    CIFAR conv1 output made its forward 13.9 ms in a fresh process and 2.5 ms once a larger
    array had been freed (same process, same inputs). Freeing one block just under the
    ceiling first puts every candidate, fastconv's and the frameworks', in the reused state.
    No effect with other allocators.
    """
    block = np.empty(_MMAP_THRESHOLD_MAX // 8 - 4096, dtype=np.float64)
    del block


def interleaved_medians(candidates: Dict[str, Callable[[], object]], repeats: int = 7,
                        warmup: int = 2, budget_s: float = 3.0) -> Dict[str, float]:
    """Median seconds per call of each candidate, timed in turns so drift hits all alike.

    Every candidate first runs ``warmup`` times (JIT compilation, caches, buffer reuse).
    ``repeats`` is lowered (not below 3) when one round would blow ``budget_s``.
    """
    first = {}
    for label, fn in candidates.items():
        for i in range(max(warmup, 1)):
            start = time.perf_counter()
            fn()
            first[label] = time.perf_counter() - start
    round_s = sum(first.values())
    if round_s > 0:
        repeats = max(3, min(repeats, int(budget_s / round_s)))
    samples = {label: [] for label in candidates}
    labels = list(candidates)
    # A fresh order each round (seeded, so runs repeat): the candidate before finds the
    # caches full of its own buffers, and one that always ran right after a framework call
    # measured up to 10% slower than the same kernel run after another fastconv call.
    # Rotating a fixed order keeps every candidate's predecessor.
    order_rng = random.Random(len(labels))
    for r in range(repeats):
        order = order_rng.sample(labels, len(labels))
        for label in order:
            start = time.perf_counter()
            candidates[label]()
            samples[label].append(time.perf_counter() - start)
    return {label: statistics.median(s) for label, s in samples.items()}


def sgemm_gflops(n: int = 1024, dtype=np.float32, repeats: int = 7) -> float:
    """The machine's GEMM rate at the current BLAS thread count: NumPy matmul of n x n matrices."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    seconds = interleaved_medians({"gemm": lambda: np.matmul(a, b, out=c)}, repeats=repeats, warmup=2)
    return 2.0 * n ** 3 / seconds["gemm"] / 1e9
