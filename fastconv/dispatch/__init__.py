"""Dispatch: the kernel registry and the selection among its kernels (see DESIGN.md)."""
from .registry import BACKENDS, OPS, list_kernels, register
from .selection import Choice, UnsupportedError, candidates, describe, select

__all__ = ["BACKENDS", "OPS", "Choice", "UnsupportedError", "candidates", "describe",
           "list_kernels", "register", "select"]
