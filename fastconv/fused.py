"""Convolution + ReLU + 2x2 max pooling as one op, forward and backward.

``conv2d_relu_max_pool2d`` returns exactly ``relu(max_pool2d(conv2d(x, ...), 2))`` and the
pool's argmax positions (one code per window). Where the layer has one input channel per
group, a 3x3 kernel, stride and dilation 1 (the first layer of the MNIST and LeNet-style
models, and depthwise layers) and the convolution's pick is the direct algorithm, one kernel per backend
(``registry.FUSED_OPS``) computes each convolution plane in cache and pools it there: the
full-size convolution output, four times the result, is never written nor read back, and
the backward scatters the pooled gradient into a cache-sized plane per image instead of a
full-size gradient array. Where each maximum was is kept as a one-byte code per window
(``window_offsets`` gives ``max_pool2d``'s int64 indices from it): 8x less to write in the
forward and read back in the backward. Every other call runs the three ops one after the
other, with the same results.

Numerics: the fused forward computes each convolution plane with the direct backend's
one-input-channel plane loop (the loop its ``conv2d`` runs on these layers in Cython; Numba's
``conv2d`` runs a different loop for C = 1, so values may differ from it in the last bit).
The weight and bias gradients are the same sums over the same nonzero terms, in another
order: equal to the unfused ones up to float rounding (``tests/test_fused.py``).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

from . import checks
from .conv import conv2d, conv2d_backward
from .dispatch import registry, select
from .params import ConvParams
from .pooling import max_pool2d

IntOrPair = Union[int, Tuple[int, int]]
Padding = Union[int, Tuple[int, int], str]

FORWARD_OP = "conv2d_relu_max_pool2d_forward"
GRAD_WEIGHT_OP = "conv2d_relu_max_pool2d_grad_weight"


def fuses(p: ConvParams) -> bool:
    """Whether the fused kernels handle this convolution: one input channel per group, 3x3,
    stride and dilation 1, and an output of at least 2x2 (one pooling window)."""
    return (p.c_per_group == 1 and p.r == 3 and p.s == 3 and p.stride_h == 1 and p.stride_w == 1
            and p.dil_h == 1 and p.dil_w == 1 and p.out_h >= 2 and p.out_w >= 2)


def fused_kernel(op: str, p: ConvParams, algo: str, backend: str):
    """The fused kernel for ``p``, or ``None`` where the three ops run separately.

    Fused only where the convolution forward would run the direct algorithm anyway (the
    fused kernels are that algorithm with the pool in its epilogue), on the backend it picks.
    """
    if not (fuses(p) and p.n):
        return None
    pick = select("conv2d_forward", p, algo, backend)
    if pick.algo != "direct":
        return None
    entry = registry.lookup(op, "direct", pick.backend)
    if entry is None or entry.unavailable_reason() is not None:
        return None
    return entry.function()


def _check_poolable(p: ConvParams) -> None:
    if p.out_h < 2 or p.out_w < 2:
        raise ValueError(f"the convolution output is {p.out_h}x{p.out_w} for x of shape {p.input_shape}: "
                         "a 2x2 max pool needs at least 2x2")


def _pooled_shape(p: ConvParams) -> Tuple[int, int, int, int]:
    return (p.n, p.k, p.out_h // 2, p.out_w // 2)


def conv2d_relu_max_pool2d(x, weight, bias=None, stride: IntOrPair = 1, padding: Padding = 0,
                           dilation: IntOrPair = 1, groups: int = 1, *, algo: str = "auto",
                           backend: str = "auto") -> Tuple[np.ndarray, np.ndarray]:
    """``relu(max_pool2d(conv2d(x, weight, bias, ...), 2))`` and where each window's maximum is.

    Args:
        x, weight, bias, stride, padding, dilation, groups, algo, backend: as for ``conv2d``.

    Returns:
        ``(y, codes)``: y (N, K, H_out // 2, W_out // 2) in ``x``'s dtype, where
        (H_out, W_out) is ``conv2d``'s output size; codes (uint8, same shape) says where each
        window's maximum is: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right (the
        first maximum; a NaN wins, as in ``max_pool2d``). ``window_offsets`` turns them into
        ``max_pool2d``'s flat int64 indices. A ReLU after the pool or before it gives the
        same y (ReLU commutes with max pooling; NaN stays NaN).
    """
    x, weight, bias, p = checks.conv_forward_args(x, weight, bias, stride, padding, dilation, groups)
    _check_poolable(p)
    kernel = fused_kernel(FORWARD_OP, p, algo, backend)
    if kernel is None:
        conv = conv2d(x, weight, bias, stride, padding, dilation, groups, algo=algo, backend=backend)
        y, offsets = max_pool2d(conv, 2, return_indices=True)
        np.maximum(y, 0, out=y)
        return y, _window_codes(offsets, p)
    shape = _pooled_shape(p)
    y = checks.output_array(None, shape, x.dtype)
    codes = checks.output_array(None, shape, np.dtype(np.uint8))
    kernel(x, weight, bias, y, codes, p)
    return y, codes


def conv2d_relu_max_pool2d_backward(grad_output, output, codes, x, weight, stride: IntOrPair = 1,
                                    padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1,
                                    needs: Sequence[str] = ("input", "weight", "bias"), *,
                                    algo: str = "auto", backend: str = "auto"):
    """Gradients of ``conv2d_relu_max_pool2d`` w.r.t. its input, weight and bias.

    Args:
        grad_output: d loss / d y, shape (N, K, H_out // 2, W_out // 2).
        output, codes: the ``(y, codes)`` that ``conv2d_relu_max_pool2d`` returned (y
            gives the ReLU's mask ``y > 0``; codes, integers 0-3, where each maximum was).
        x, weight, stride, padding, dilation, groups: as given to the forward.
        needs, algo, backend: as for ``conv2d_backward``.

    Returns:
        ``(grad_input, grad_weight, grad_bias)`` in ``x``'s dtype, ``None`` for each gradient
        not in ``needs``.
    """
    x = checks.float_view(x, "x", ndim=4)
    weight = checks.float_view(weight, "weight", ndim=4)
    p = checks.conv_params(x.shape, weight.shape, stride, padding, dilation, groups, x.dtype)
    _check_poolable(p)
    needs = checks.needs_tuple(needs)
    shape = _pooled_shape(p)
    grad_output = checks.contiguous(checks.gradient_view(grad_output, "grad_output", shape),
                                    "grad_output", x.dtype)
    output = checks.contiguous(checks.gradient_view(output, "output", shape), "output", x.dtype)
    codes = checks.bounded_ints(codes, "codes", shape, 4, np.dtype(np.uint8),
                                "(as returned by conv2d_relu_max_pool2d)",
                                "window codes 0-3 (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right)")
    x, weight = checks.contiguous(x, "x"), checks.contiguous(weight, "weight", x.dtype)
    kernel = fused_kernel(GRAD_WEIGHT_OP, p, algo, backend) if "weight" in needs else None
    grad_weight = grad_bias = None
    if kernel is not None:
        grad_weight = checks.output_array(None, p.weight_shape, x.dtype)
        if "bias" in needs:
            grad_bias = checks.output_array(None, (p.k,), x.dtype)
        kernel(grad_output, output, codes, x, grad_weight, grad_bias, p)
        rest = tuple(n for n in needs if n == "input")
    else:
        rest = needs
    grad_input = None
    if rest:
        gi, gw, gb = conv2d_backward(_unpooled_gradient(grad_output, output, codes, p), x, weight,
                                     stride, padding, dilation, groups, needs=rest, algo=algo,
                                     backend=backend)
        grad_input = gi
        grad_weight = gw if grad_weight is None else grad_weight
        grad_bias = gb if grad_bias is None else grad_bias
    return grad_input, grad_weight, grad_bias


def _window_origins(ph: int, pw: int, out_w: int) -> np.ndarray:
    """(ph, pw): the flat offset of each 2x2 window's top-left element in a plane of width out_w."""
    return 2 * (np.arange(ph)[:, None] * out_w + np.arange(pw)[None, :])


def window_offsets(codes, out_w: int) -> np.ndarray:
    """``max_pool2d``'s int64 indices (flat offsets into each convolution plane of width
    ``out_w``) from the window codes of ``conv2d_relu_max_pool2d`` (N, K, PH, PW)."""
    codes = np.asarray(codes).astype(np.int64)
    return _window_origins(*codes.shape[-2:], out_w) + (codes >> 1) * out_w + (codes & 1)


def _window_codes(offsets: np.ndarray, p: ConvParams) -> np.ndarray:
    """The window codes (uint8) of ``max_pool2d``'s flat indices."""
    r = offsets - _window_origins(p.out_h // 2, p.out_w // 2, p.out_w)
    below = r >= p.out_w
    return (2 * below + r - below * p.out_w).astype(np.uint8)


def _unpooled_gradient(grad_output, output, codes, p: ConvParams) -> np.ndarray:
    """d loss / d conv2d output (N, K, H_out, W_out): each masked pooled gradient at its argmax."""
    pooled = (p.out_h // 2) * (p.out_w // 2)
    grad = np.zeros(p.output_shape, dtype=grad_output.dtype)
    masked = np.where(output > 0, grad_output, 0).astype(grad_output.dtype, copy=False)
    planes = grad.reshape(p.n, p.k, p.out_h * p.out_w)
    offsets = window_offsets(codes, p.out_w).reshape(p.n, p.k, pooled)
    np.put_along_axis(planes, offsets, masked.reshape(p.n, p.k, pooled), axis=2)
    return grad


def fusion_note(p: ConvParams, algo: str = "auto", backend: str = "auto") -> str:
    """One line for ``explain``: whether the call runs fused, and on which kernel."""
    kernel = fused_kernel(FORWARD_OP, p, algo, backend)
    if kernel is not None:
        pick = select("conv2d_forward", p, algo, backend)
        return (f"relu and 2x2 max pool: fused into direct/{pick.backend} "
                f"{FORWARD_OP} (the convolution output is never stored)")
    why = "the layer is not one-input-channel 3x3 stride 1" if not fuses(p) else \
        "the convolution's pick is not the direct algorithm"
    return f"relu and 2x2 max pool: run after the convolution ({why})"


def conv2d_relu_max_pool2d_plan(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                                algo="auto", backend="auto"):
    """``(ops, params, algo, backend)`` of ``conv2d_relu_max_pool2d`` (for ``explain``)."""
    _, _, _, p = checks.conv_forward_args(x, weight, bias, stride, padding, dilation, groups)
    return ["conv2d_forward"], p, algo, backend
