"""``Module``: the base class of every layer and of ``Sequential``.

A module computes ``forward(x)`` and, given the gradient of the loss with respect to its
output, ``backward(grad)`` returns the gradient with respect to its input and adds the
gradients of its parameters to their ``.grad``. The state that backward needs is kept by
the last forward call (and released by backward), so calls alternate: forward, backward.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import numpy as np

from .parameter import Parameter


class Module:
    """Base class: ``forward``/``backward``, parameters, train/eval mode, constructor config."""

    training: bool = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    # ------------------------------------------------------------ parameters
    def named_parameters(self) -> Iterator[Tuple[str, Parameter]]:
        """``(name, parameter)`` pairs, e.g. ``("weight", p)``; none for parameter-free layers."""
        return iter(())

    def parameters(self) -> List[Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Parameter name -> a copy of its array."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    # ------------------------------------------------------------ mode
    def train(self, mode: bool = True) -> "Module":
        """Training mode (Dropout active, max-pool indices kept for backward)."""
        self.training = bool(mode)
        return self

    def eval(self) -> "Module":
        """Inference mode: Dropout is the identity."""
        return self.train(False)

    # ------------------------------------------------------------ description
    def config(self) -> dict:
        """The constructor arguments (JSON-compatible) that rebuild this layer."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def missing_forward(layer: Module) -> RuntimeError:
    return RuntimeError(f"{type(layer).__name__}.backward called without a preceding forward "
                        "(each backward needs the state of its own forward call)")
