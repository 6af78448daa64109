"""The one registry of kernels, keyed by (op, algo, backend), with lazy loading."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

CONV_OPS = ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias")
POOL_OPS = ("max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward")
OPS = CONV_OPS + POOL_OPS
# Optional kernels that compute several ops together, never selected on their own:
# ``conv2d_backward`` uses the first when its two picks share that algorithm and backend;
# ``fastconv.fused`` the conv + ReLU + 2x2 max pool pair where the conv's pick is direct.
FUSED_OPS = ("conv2d_grad_input_weight", "conv2d_relu_max_pool2d_forward",
             "conv2d_relu_max_pool2d_grad_weight")

CONV_ALGOS = ("direct", "im2col", "winograd_f23", "winograd_f43", "reference")
POOL_ALGOS = ("direct", "reference")
# A name that stands for several registered algorithms, tried in this order: F(4x4,3x3) first,
# it was faster than F(2x2,3x3) on every measured layer and its float32 error stays below
# 1e-5 relative (the error table in fastconv/kernels/winograd_tables.py).
ALGO_ALIASES = {"winograd": ("winograd_f43", "winograd_f23")}
BACKENDS = ("cython", "numba", "numpy")


def algos_for(op: str) -> Tuple[str, ...]:
    return CONV_ALGOS if op in CONV_OPS + FUSED_OPS else POOL_ALGOS


@dataclass
class KernelEntry:
    """One registered kernel; ``target`` is ``"module:function"``, imported on first use."""

    op: str
    algo: str
    backend: str
    target: str
    _function: Optional[Callable] = field(default=None, repr=False)
    _load_error: Optional[str] = field(default=None, repr=False)

    @property
    def key(self) -> Tuple[str, str, str]:
        return (self.op, self.algo, self.backend)

    def unavailable_reason(self) -> Optional[str]:
        """``None`` when the kernel can be loaded, else why not (for example, not compiled)."""
        self._try_load()
        return self._load_error

    def function(self) -> Callable:
        self._try_load()
        if self._function is None:
            raise RuntimeError(f"kernel {self.key} is not available: {self._load_error}")
        return self._function

    def _try_load(self) -> None:
        if self._function is not None or self._load_error is not None:
            return
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
            self._function = getattr(module, attr)
        except ImportError as exc:
            hint = " (the compiled extension is missing: reinstall with `pip install .`)" \
                if self.backend == "cython" else ""
            self._load_error = f"cannot import {module_name}: {exc}{hint}"
            return
        except AttributeError:
            self._load_error = f"{module_name} has no function {attr}"
            return
        from .. import threads

        # A kernel module may have loaded a BLAS library that no thread limit reached yet.
        threads.apply_blas()


_REGISTRY: Dict[Tuple[str, str, str], KernelEntry] = {}
_listeners: List[Callable[[], None]] = []


def register(op: str, algo: str, backend: str, target: str) -> KernelEntry:
    """Add (or replace) the kernel for ``(op, algo, backend)``."""
    if op not in OPS + FUSED_OPS:
        raise ValueError(f"op={op!r}: expected one of {OPS + FUSED_OPS}")
    if algo not in algos_for(op):
        raise ValueError(f"algo={algo!r}: expected one of {algos_for(op)} for {op}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}")
    if ":" not in target:
        raise ValueError(f"target={target!r}: expected 'module:function'")
    entry = KernelEntry(op, algo, backend, target)
    _REGISTRY[entry.key] = entry
    for listener in _listeners:
        listener()
    return entry


def on_change(listener: Callable[[], None]) -> None:
    """Call ``listener`` whenever the registry changes (selection caches clear themselves)."""
    _listeners.append(listener)


def lookup(op: str, algo: str, backend: str) -> Optional[KernelEntry]:
    return _REGISTRY.get((op, algo, backend))


def entries(op: Optional[str] = None) -> List[KernelEntry]:
    return [e for e in _REGISTRY.values() if op is None or e.op == op]


def list_kernels(op: Optional[str] = None, load: bool = False) -> List[dict]:
    """The registered kernels as dicts ``{op, algo, backend, target[, available, reason]}``.

    ``load=True`` imports each kernel module to report whether it is usable here.
    """
    rows = []
    for e in entries(op):
        row = {"op": e.op, "algo": e.algo, "backend": e.backend, "target": e.target}
        if load:
            reason = e.unavailable_reason()
            row["available"] = reason is None
            row["reason"] = reason
        rows.append(row)
    return rows


def _register_table() -> None:
    from ..kernels import KERNEL_TABLE

    for op, algo, backend, target in KERNEL_TABLE:
        register(op, algo, backend, target)


_register_table()
