"""Autotuning: time every applicable kernel once per shape signature and keep the fastest.

Enabled by ``fastconv.autotune(True)`` or ``FASTCONV_AUTOTUNE=1``. The signature is the op,
the full params (shapes, dtype, stride, padding, dilation, groups) and the thread count.
Winners live in memory and, unless disabled, in a JSON file (``FASTCONV_AUTOTUNE_CACHE`` or
``~/.cache/fastconv/autotune.json``) so the next process starts tuned. A file that is corrupt,
from another fastconv version, or names a kernel that no longer exists is ignored with a
warning, never an error. Timing uses synthetic arrays of the call's shapes, so tuning never
touches the caller's data.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict
from typing import Dict, List, Optional, Tuple

import numpy as np

_FILE_VERSION = 1
_enabled: Optional[bool] = None
_cache_path: Optional[str] = None  # None: default location; "" : memory only
_memory: Dict[str, dict] = {}
_loaded_from: Optional[str] = None


def enable(on: bool = True, cache_path: Optional[str] = None) -> None:
    """Turn autotuning on or off; ``cache_path=""`` keeps results in memory only."""
    global _enabled, _cache_path, _loaded_from
    if not isinstance(on, bool):
        raise TypeError(f"on={on!r}: expected True or False")
    _enabled = on
    if cache_path is not None:
        _cache_path = os.fspath(cache_path)
        _loaded_from = None


def enabled() -> bool:
    if _enabled is None:
        return os.environ.get("FASTCONV_AUTOTUNE", "0").strip().lower() in ("1", "true", "yes", "on")
    return _enabled


def cache_file() -> Optional[str]:
    """The JSON file results are kept in, or ``None`` for memory only."""
    if _cache_path is not None:
        return _cache_path or None
    env = os.environ.get("FASTCONV_AUTOTUNE_CACHE")
    if env is not None:
        return env or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastconv", "autotune.json")


def clear() -> None:
    """Forget every tuned result in memory (the file stays)."""
    global _loaded_from
    _memory.clear()
    _loaded_from = None


def signature(op: str, params, threads: int) -> str:
    fields = ",".join(f"{k}={v}" for k, v in asdict(params).items())
    return f"{op}|{type(params).__name__}({fields})|threads={threads}"


def _version() -> str:
    from .. import __version__

    return __version__


def _load_file() -> None:
    global _loaded_from
    path = cache_file()
    if path is None or _loaded_from == path:
        return
    _loaded_from = path
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("version") != _FILE_VERSION \
                or data.get("fastconv") != _version() or not isinstance(data.get("entries"), dict):
            warnings.warn(f"fastconv autotune cache {path} is from another version or malformed; ignoring it",
                          RuntimeWarning, stacklevel=4)
            return
        for key, entry in data["entries"].items():
            if isinstance(entry, dict) and isinstance(entry.get("algo"), str) \
                    and isinstance(entry.get("backend"), str):
                _memory.setdefault(key, entry)
    except (OSError, ValueError) as exc:
        warnings.warn(f"fastconv autotune cache {path} is unreadable ({exc}); ignoring it",
                      RuntimeWarning, stacklevel=4)


def _save_file() -> None:
    path = cache_file()
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": _FILE_VERSION, "fastconv": _version(), "entries": _memory}, f, indent=1)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except OSError as exc:
        warnings.warn(f"fastconv autotune cache {path} could not be written ({exc})", RuntimeWarning,
                      stacklevel=4)


def lookup(op: str, params, threads: int) -> Optional[Tuple[str, str, dict]]:
    """A tuned (algo, backend, entry) for this signature, if any."""
    _load_file()
    entry = _memory.get(signature(op, params, threads))
    return None if entry is None else (entry["algo"], entry["backend"], entry)


def record(op: str, params, threads: int, algo: str, backend: str, timings_ms: Dict[str, float]) -> None:
    _memory[signature(op, params, threads)] = {"algo": algo, "backend": backend, "ms": timings_ms}
    _save_file()


def synthetic_args(op: str, params) -> tuple:
    """Random arrays of the shapes ``op``'s kernel takes for ``params`` (outputs uninitialised)."""
    rng = np.random.default_rng(0)
    dtype = np.dtype(params.dtype)

    def rand(shape):
        return rng.standard_normal(shape).astype(dtype)

    if op.startswith("conv2d"):
        x_shape, w_shape, y_shape = params.input_shape, params.weight_shape, params.output_shape
        return {
            "conv2d_forward": lambda: (rand(x_shape), rand(w_shape), rand(params.k), np.empty(y_shape, dtype)),
            "conv2d_grad_input": lambda: (rand(y_shape), rand(w_shape), np.empty(x_shape, dtype)),
            "conv2d_grad_weight": lambda: (rand(y_shape), rand(x_shape), np.empty(w_shape, dtype)),
            "conv2d_grad_bias": lambda: (rand(y_shape), np.empty(params.k, dtype)),
        }[op]() + (params,)
    x_shape, y_shape = params.input_shape, params.output_shape
    indices = np.zeros(y_shape, np.int64)  # any in-range index is fine for timing
    return {
        "max_pool2d_forward": lambda: (rand(x_shape), np.empty(y_shape, dtype), np.empty(y_shape, np.int64)),
        "max_pool2d_backward": lambda: (rand(y_shape), indices, np.empty(x_shape, dtype)),
        "avg_pool2d_forward": lambda: (rand(x_shape), np.empty(y_shape, dtype)),
        "avg_pool2d_backward": lambda: (rand(y_shape), np.empty(x_shape, dtype)),
    }[op]() + (params,)


def time_kernels(op: str, params, kernels: List[Tuple[str, str, object]], repeats: int = 3) -> Dict[str, float]:
    """Median milliseconds of each ``(algo, backend, function)`` on synthetic arrays (after a warm-up)."""
    args = synthetic_args(op, params)
    times = {}
    for algo, backend, function in kernels:
        function(*args)  # warm-up: JIT compilation, workspace allocation
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            function(*args)
            samples.append(time.perf_counter() - start)
        times[f"{algo}/{backend}"] = statistics.median(samples) * 1e3
    return times
