"""Optimisers: SGD (momentum, Nesterov, weight decay), Adam and AdamW.

The update equations are PyTorch's (``torch.optim``, single-tensor code path), operation
for operation, so that a run here and in PyTorch from the same weights and gradients stays
comparable (equal up to float rounding). Each optimiser has one learning rate, ``self.lr``,
which the schedulers in ``fastconv.nn.schedulers`` change.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Tuple

import numpy as np

from .parameter import Parameter


class Optimizer:
    """Holds the parameters and the learning rate; ``zero_grad()`` and ``step()``."""

    def __init__(self, params: Iterable[Parameter], lr: float):
        self.params: List[Parameter] = list(params)
        if not self.params:
            raise ValueError("the optimiser got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"expected fastconv.nn.Parameter objects, got {type(p).__name__}")
        if not lr >= 0.0:
            raise ValueError(f"lr={lr!r}: expected a non-negative learning rate")
        self.lr = float(lr)

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD``::

        g = grad + weight_decay * p
        buf = g                                   (first step)
        buf = momentum * buf + (1 - dampening) * g  (later steps)
        g = g + momentum * buf  if nesterov else buf
        p = p - lr * g
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"momentum={momentum!r}, weight_decay={weight_decay!r}: expected >= 0")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")
        self.momentum, self.dampening = float(momentum), float(dampening)
        self.weight_decay, self.nesterov = float(weight_decay), bool(nesterov)
        self.buffers: List[Optional[np.ndarray]] = [None] * len(self.params)

    def step(self) -> None:
        for i, p in enumerate(self.params):
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = g.copy()
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * g
                g = g + self.momentum * buf if self.nesterov else buf
            p.data -= self.lr * g


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient)::

        t += 1;  g = grad + weight_decay * p
        m = m + (1 - beta1) * (g - m)             (torch's lerp)
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas={betas!r}: expected values in [0, 1)")
        if eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"eps={eps!r}, weight_decay={weight_decay!r}: expected >= 0")
        self.betas = (float(b1), float(b2))
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.t = 0
        self.exp_avg = [np.zeros_like(p.data) for p in self.params]
        self.exp_avg_sq = [np.zeros_like(p.data) for p in self.params]
        self._scratch = [np.empty_like(p.data) for p in self.params]

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        bias_correction1 = 1.0 - b1 ** self.t
        bias_correction2_sqrt = math.sqrt(1.0 - b2 ** self.t)
        step_size = self.lr / bias_correction1
        # In place with one scratch array per parameter; the operations and their order are
        # torch's: lerp, then addcmul (value * g * g), then addcdiv with -step_size.
        for p, m, v, tmp in zip(self.params, self.exp_avg, self.exp_avg_sq, self._scratch):
            g = p.grad
            if self.weight_decay:
                if self.decoupled:
                    p.data *= 1.0 - self.lr * self.weight_decay
                else:
                    g = g + self.weight_decay * p.data
            np.subtract(g, m, out=tmp)
            tmp *= 1.0 - b1
            m += tmp
            v *= b2
            np.multiply(g, 1.0 - b2, out=tmp)
            tmp *= g
            v += tmp
            np.sqrt(v, out=tmp)
            tmp /= bias_correction2_sqrt
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p.data -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW`` (``p *= 1 - lr * wd`` first)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
