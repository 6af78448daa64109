"""Learning-rate schedules: the rate is a closed-form function of the step count.

``sched.step()`` advances one step and writes ``optimizer.lr``; ``sched.lr_at(i)`` gives the
rate of step ``i`` (the training command uses it to drive PyTorch's optimiser in lockstep).
A "step" is whatever the caller counts: a batch (OneCycleLR) or an epoch (StepLR).
"""
from __future__ import annotations

import math

from .optim import Optimizer


class LRScheduler:
    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr


class StepLR(LRScheduler):
    """``base_lr * gamma ** (step // step_size)``."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        if step_size <= 0:
            raise ValueError(f"step_size={step_size!r}: expected a positive int")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr - eta_min) * (1 + cos(pi * step / T_max)) / 2``, then ``eta_min``."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        if T_max <= 0:
            raise ValueError(f"T_max={T_max!r}: expected a positive int")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        t = min(step, self.T_max) / self.T_max
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * t)) / 2.0


class OneCycleLR(LRScheduler):
    """Warm up from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of
    ``total_steps`` (cosine), then anneal (cosine) to ``max_lr / (div_factor * final_div_factor)``,
    as ``torch.optim.lr_scheduler.OneCycleLR`` (two phases, ``anneal_strategy="cos"``) without
    momentum cycling.
    """

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int, pct_start: float = 0.25,
                 div_factor: float = 25.0, final_div_factor: float = 1e4):
        if total_steps <= 1:
            raise ValueError(f"total_steps={total_steps!r}: expected at least 2")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start={pct_start!r}: expected a fraction in (0, 1)")
        self.max_lr, self.total_steps = float(max_lr), int(total_steps)
        self.initial_lr = self.max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        # as torch: the warm-up ends at step pct_start * total_steps - 1 (a float)
        self.warmup_end = max(float(pct_start * total_steps) - 1.0, 1e-12)
        super().__init__(optimizer)

    @staticmethod
    def _cos(start: float, end: float, fraction: float) -> float:
        return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0

    def lr_at(self, step: int) -> float:
        step = min(step, self.total_steps - 1)
        if step <= self.warmup_end:
            return self._cos(self.initial_lr, self.max_lr, step / self.warmup_end)
        span = max(self.total_steps - 1 - self.warmup_end, 1e-12)
        return self._cos(self.max_lr, self.min_lr, min(1.0, (step - self.warmup_end) / span))
