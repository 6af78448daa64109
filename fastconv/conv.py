"""The public convolution ops: check arguments, pick kernels, run them.

Semantics are those of ``torch.nn.functional.conv2d`` (NCHW, cross-correlation, weight
``(K, C/groups, R, S)``) and of its gradients.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from . import checks
from .dispatch import registry, select

IntOrPair = Union[int, Tuple[int, int]]
Padding = Union[int, Tuple[int, int], str]


def conv2d(x, weight, bias=None, stride: IntOrPair = 1, padding: Padding = 0,
           dilation: IntOrPair = 1, groups: int = 1, *, algo: str = "auto",
           backend: str = "auto", out: Optional[np.ndarray] = None) -> np.ndarray:
    """2-D convolution (cross-correlation) of a batch of images, as ``torch.nn.functional.conv2d``.

    Args:
        x: input, shape (N, C, H, W), float32 or float64. Any memory layout.
        weight: filters, shape (K, C // groups, R, S); converted to ``x``'s dtype.
        bias: optional, shape (K,); converted to ``x``'s dtype.
        stride, dilation: int or (h, w) pair, positive.
        padding: int or (h, w) pair (zeros on both sides), ``"valid"`` (none) or ``"same"``
            (output as large as the input; stride 1 only; an even effective kernel puts the
            extra pixel at the bottom/right, as PyTorch does).
        groups: input and output channels are split into this many independent groups;
            ``groups == C == K`` is a depthwise convolution.
        algo: ``"auto"``, ``"direct"``, ``"im2col"``, ``"winograd"`` (``"winograd_f23"``,
            ``"winograd_f43"``) or ``"reference"``. A forced algorithm that cannot compute
            the call raises ``UnsupportedError`` (a ``ValueError``).
        backend: ``"auto"``, ``"cython"``, ``"numba"`` or ``"numpy"`` (the reference).
        out: optional C-contiguous result array of shape (N, K, H_out, W_out) and ``x``'s dtype.

    Returns:
        Array (N, K, H_out, W_out) of ``x``'s dtype, with
        ``H_out = (H + pad_top + pad_bottom - dilation_h * (R - 1) - 1) // stride_h + 1``.
    """
    x, weight, bias, p = checks.conv_forward_args(x, weight, bias, stride, padding, dilation, groups)
    kernel = select("conv2d_forward", p, algo, backend)
    y = checks.output_array(out, p.output_shape, x.dtype, inputs=(x, weight, bias))
    if p.n:
        kernel.function(x, weight, bias, y, p)
    return y


def conv2d_backward(grad_output, x, weight, stride: IntOrPair = 1, padding: Padding = 0,
                    dilation: IntOrPair = 1, groups: int = 1,
                    needs: Sequence[str] = ("input", "weight", "bias"), *,
                    algo: str = "auto", backend: str = "auto"):
    """Gradients of ``conv2d`` with respect to its input, weight and bias.

    Args:
        grad_output: gradient of the loss w.r.t. the conv2d result, shape (N, K, H_out, W_out).
        x, weight, stride, padding, dilation, groups: as given to ``conv2d``.
        needs: which gradients to compute, any of ``"input"``, ``"weight"``, ``"bias"``.
        algo, backend: as for ``conv2d``; each gradient picks its own kernel. The bias
            gradient is a reduction computed by the backend's direct kernel whatever ``algo``.

    Returns:
        ``(grad_input (N, C, H, W), grad_weight (K, C/groups, R, S), grad_bias (K,))`` in
        ``x``'s dtype, with ``None`` for each gradient not in ``needs``.
    """
    grad_output, x, weight, p, needs = checks.conv_backward_args(
        grad_output, x, weight, stride, padding, dilation, groups, needs)
    kernels = {name: select(f"conv2d_grad_{name}", p, algo, backend) for name in needs}
    dtype = x.dtype
    grad_input = grad_weight = grad_bias = None
    if "input" in kernels:
        grad_input = checks.output_array(None, p.input_shape, dtype)
    if "weight" in kernels:
        grad_weight = checks.output_array(None, p.weight_shape, dtype)
    both = _input_weight_kernel(kernels) if p.n else None
    if both is not None:
        both(grad_output, x, weight, grad_input, grad_weight, p)
    else:
        if grad_input is not None and p.n:
            kernels["input"].function(grad_output, weight, grad_input, p)
        if grad_weight is not None:
            if p.n:
                kernels["weight"].function(grad_output, x, grad_weight, p)
            else:
                grad_weight[...] = 0  # a sum over an empty batch
    if "bias" in kernels:
        grad_bias = checks.output_array(None, (p.k,), dtype)
        if p.n:
            kernels["bias"].function(grad_output, grad_bias, p)
        else:
            grad_bias[...] = 0
    return grad_input, grad_weight, grad_bias


def _input_weight_kernel(kernels):
    """The kernel computing grad_input and grad_weight in one call, when both picks are the
    same algorithm and backend and it has one (``registry.FUSED_OPS``); else ``None``."""
    gi, gw = kernels.get("input"), kernels.get("weight")
    if gi is None or gw is None or (gi.algo, gi.backend) != (gw.algo, gw.backend):
        return None
    entry = registry.lookup("conv2d_grad_input_weight", gi.algo, gi.backend)
    if entry is None or entry.unavailable_reason() is not None:
        return None
    return entry.function()


def conv2d_plan(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                algo="auto", backend="auto", out=None):
    """``(ops, params, algo, backend)`` that ``conv2d`` would dispatch (for ``explain``)."""
    _, _, _, p = checks.conv_forward_args(x, weight, bias, stride, padding, dilation, groups)
    return ["conv2d_forward"], p, algo, backend


def conv2d_backward_plan(grad_output, x, weight, stride=1, padding=0, dilation=1, groups=1,
                         needs=("input", "weight", "bias"), *, algo="auto", backend="auto"):
    """``(ops, params, algo, backend)`` that ``conv2d_backward`` would dispatch."""
    _, _, _, p, needs = checks.conv_backward_args(grad_output, x, weight, stride, padding,
                                                  dilation, groups, needs)
    return [f"conv2d_grad_{name}" for name in needs], p, algo, backend

