"""Default initialisation (as PyTorch's) and the random generator that seeds it.

``manual_seed(s)`` resets the package-wide generator, so constructing the same layers in the
same order after it gives the same weights (and the same Dropout seeds). Every layer also
takes an ``rng`` argument (a ``numpy.random.Generator`` or an int seed) that overrides it.

Values are drawn in float64 and then rounded to the layer's dtype, so a float32 and a
float64 model built from the same seed hold the same weights up to rounding.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np

RngLike = Union[None, int, np.random.Generator]

_global_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Make the initialisation of layers constructed from now on reproducible."""
    global _global_rng
    _global_rng = np.random.default_rng(seed)


def get_rng(rng: RngLike = None) -> np.random.Generator:
    """``rng`` as a Generator: ``None`` -> the package-wide one, an int -> a fresh seeded one."""
    if rng is None:
        return _global_rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng={rng!r}: expected None, an int seed or a numpy.random.Generator")


def child_seed(rng: RngLike = None) -> int:
    """A seed drawn from ``rng`` (for layers such as Dropout that own a generator)."""
    return int(get_rng(rng).integers(0, 2**63 - 1))


def kaiming_uniform(shape: Tuple[int, ...], fan_in: int, a: float = math.sqrt(5), *,
                    rng: RngLike = None, dtype=np.float32) -> np.ndarray:
    """U(-b, b) with ``b = gain * sqrt(3 / fan_in)``, ``gain = sqrt(2 / (1 + a^2))``.

    With PyTorch's default ``a = sqrt(5)`` for Conv2d and Linear weights, ``b = 1/sqrt(fan_in)``.
    """
    gain = math.sqrt(2.0 / (1.0 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in) if fan_in > 0 else 0.0
    return get_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def uniform_bias(shape: Tuple[int, ...], fan_in: int, *, rng: RngLike = None, dtype=np.float32) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default bias init for Conv2d and Linear."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return get_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def float_dtype(dtype) -> np.dtype:
    """``dtype`` as float32 or float64 (anything else is a TypeError naming it)."""
    d = np.dtype(dtype)
    if d not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype={dtype!r}: expected float32 or float64")
    return d
