"""``Parameter``: a trainable array and the gradient accumulated for it."""
from __future__ import annotations

import numpy as np


class Parameter:
    """A trainable array ``data`` with its gradient ``grad`` (same shape and dtype).

    Layers *add* their gradient to ``grad`` in ``backward`` (as PyTorch accumulates into
    ``.grad``); an optimiser's ``zero_grad()`` resets it. Optimisers update ``data`` in place,
    so a layer and its optimiser always see the same array.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data: np.ndarray):
        self.data = np.ascontiguousarray(data)
        if self.data.dtype not in (np.float32, np.float64):
            raise TypeError(f"Parameter data has dtype {self.data.dtype}: expected float32 or float64")
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        self.grad.fill(0)

    def accumulate(self, grad: np.ndarray) -> None:
        """Add ``grad`` (any float dtype, this shape) to ``self.grad`` in place."""
        if grad.shape != self.data.shape:
            raise ValueError(f"gradient has shape {grad.shape}: expected {self.data.shape}")
        np.add(self.grad, grad, out=self.grad, casting="same_kind")

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"
