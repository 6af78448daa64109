"""``fastconv.explain``: which kernel a call would run, and why, without running it."""
from __future__ import annotations

from typing import Callable, Dict, Union

from . import conv, fused, pooling
from .dispatch import describe, select

_PLANS: Dict[str, Callable] = {
    "conv2d": conv.conv2d_plan,
    "conv2d_backward": conv.conv2d_backward_plan,
    "max_pool2d": pooling.max_pool2d_plan,
    "max_pool2d_backward": pooling.max_pool2d_backward_plan,
    "avg_pool2d": pooling.avg_pool2d_plan,
    "avg_pool2d_backward": pooling.avg_pool2d_backward_plan,
    "conv2d_relu_max_pool2d": fused.conv2d_relu_max_pool2d_plan,
}


class Explanation(str):
    """The explanation text (a ``str``); printing it shows every candidate and the choice."""


def explain(op: Union[str, Callable], *args, **kwargs) -> Explanation:
    """Describe the kernel selection of ``op(*args, **kwargs)`` without running it.

    ``op`` is a public op or its name (``"conv2d"``, ``"conv2d_backward"``, ``"max_pool2d"``,
    ...); the other arguments are exactly those of the call. Arrays are only inspected, so
    ``np.empty(shape, dtype)`` stands in for a large input at no cost. The same checks as the
    call run first, so a bad argument raises the same error.
    """
    name = op if isinstance(op, str) else getattr(op, "__name__", repr(op))
    if name not in _PLANS:
        raise ValueError(f"op={op!r}: expected one of {sorted(_PLANS)}")
    ops, params, algo, backend = _PLANS[name](*args, **kwargs)
    lines = [describe(o, params, algo, backend) for o in ops]
    if {"conv2d_grad_input", "conv2d_grad_weight"} <= set(ops):
        picks = {name: select(f"conv2d_grad_{name}", params, algo, backend) for name in ("input", "weight")}
        if conv._input_weight_kernel(picks) is not None:
            lines.append(f"conv2d_grad_input and conv2d_grad_weight: one call of {picks['input'].algo}/"
                         f"{picks['input'].backend} conv2d_grad_input_weight (both picks share it)")
    if name == "conv2d_relu_max_pool2d":
        lines.append(fused.fusion_note(params, algo, backend))
    return Explanation("\n".join(lines))
