"""Memory limits: how large a single result may be, and how much scratch space a kernel may use.

* ``max_allocation_bytes()``: the largest array (result or workspace) fastconv will allocate.
  A request beyond it raises ``WorkspaceTooLargeError`` before anything is allocated, instead
  of swapping the machine to a halt. Default: half of the physical memory; override with
  ``FASTCONV_MAX_ALLOC_MB`` or ``set_max_allocation_bytes``.
* ``workspace_limit_bytes()``: the budget for a kernel's scratch buffers (for example the
  im2col column matrix); kernels split the batch into chunks that fit. Default 64 MiB
  (``FASTCONV_WORKSPACE_MB`` or ``set_workspace_limit``).
"""
from __future__ import annotations

import os

_DEFAULT_WORKSPACE_BYTES = 64 * 2**20


class WorkspaceTooLargeError(ValueError, MemoryError):
    """A call would need more memory than ``max_allocation_bytes()`` allows.

    A ``ValueError`` (the arguments ask for too much) and a ``MemoryError`` (what it is about).
    """


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _env_megabytes(name: str):
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        mb = float(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}: expected a number of MiB") from None
    if mb <= 0:
        raise ValueError(f"environment variable {name}={value!r}: expected a positive number of MiB")
    return int(mb * 2**20)


_max_allocation = None
_workspace_limit = None


def max_allocation_bytes() -> int:
    """Largest single array fastconv allocates, in bytes."""
    if _max_allocation is not None:
        return _max_allocation
    from_env = _env_megabytes("FASTCONV_MAX_ALLOC_MB")
    return from_env if from_env is not None else _physical_memory_bytes() // 2


def set_max_allocation_bytes(nbytes) -> None:
    """Set the largest single allocation (bytes); ``None`` restores the default."""
    global _max_allocation
    _max_allocation = None if nbytes is None else _positive_bytes(nbytes, "nbytes")


def workspace_limit_bytes() -> int:
    """Scratch-space budget of one kernel call, in bytes."""
    if _workspace_limit is not None:
        return _workspace_limit
    from_env = _env_megabytes("FASTCONV_WORKSPACE_MB")
    return from_env if from_env is not None else _DEFAULT_WORKSPACE_BYTES


def set_workspace_limit(nbytes) -> None:
    """Set the scratch-space budget of a kernel call (bytes); ``None`` restores the default."""
    global _workspace_limit
    _workspace_limit = None if nbytes is None else _positive_bytes(nbytes, "nbytes")


def check_allocation(shape, itemsize: int, what: str) -> None:
    """Raise ``WorkspaceTooLargeError`` if an array of ``shape`` would exceed the limit."""
    nbytes = itemsize
    for d in shape:
        nbytes *= int(d)
    limit = max_allocation_bytes()
    if nbytes > limit:
        raise WorkspaceTooLargeError(
            f"{what} of shape {tuple(int(d) for d in shape)} would need {_size(nbytes)}, "
            f"more than the allocation limit of {_size(limit)} "
            "(fastconv.set_max_allocation_bytes or FASTCONV_MAX_ALLOC_MB raise it)")


def _size(nbytes: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _positive_bytes(nbytes, name: str) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int,)) and not hasattr(nbytes, "__index__"):
        raise TypeError(f"{name}={nbytes!r}: expected a positive integer number of bytes")
    nbytes = int(nbytes)
    if nbytes <= 0:
        raise ValueError(f"{name}={nbytes!r}: expected a positive integer number of bytes")
    return nbytes
