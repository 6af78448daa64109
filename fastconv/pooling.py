"""The public pooling ops, with ``torch.nn.functional`` semantics (no ceil mode, no dilation).

Every window lies inside the padded input and padding is at most half the window, so every
window holds at least one real element. Max pooling never picks padding, keeps the first
maximum of a window and propagates NaN; its indices are flat offsets into each H*W plane
(int64), exactly as PyTorch returns them.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from . import checks
from .dispatch import select
from .params import PoolParams

IntOrPair = Union[int, Tuple[int, int]]


def max_pool2d(x, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: IntOrPair = 0,
               return_indices: bool = False, *, algo: str = "auto", backend: str = "auto"):
    """Max pooling of x (N, C, H, W) -> (N, C, H_out, W_out), ``H_out = (H + 2 pad - k) // stride + 1``.

    ``stride`` defaults to ``kernel_size``. With ``return_indices=True`` returns ``(y, indices)``
    where ``indices`` (int64, same shape as y) holds each maximum's flat offset in its H*W plane;
    pass it to ``max_pool2d_backward`` to skip the argmax search.
    """
    x, p = checks.pool_forward_args(x, kernel_size, stride, padding)
    kernel = select("max_pool2d_forward", p, algo, backend)
    y = checks.output_array(None, p.output_shape, x.dtype)
    indices = checks.output_array(None, p.output_shape, np.dtype(np.int64)) if return_indices else None
    if p.n:
        kernel.function(x, y, indices, p)
    return (y, indices) if return_indices else y


def max_pool2d_backward(grad_output, x, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None,
                        padding: IntOrPair = 0, indices=None, *, algo: str = "auto",
                        backend: str = "auto") -> np.ndarray:
    """Gradient of ``max_pool2d`` w.r.t. x: each grad_output value goes to its window's maximum.

    Args:
        grad_output: (N, C, H_out, W_out), converted to ``x``'s dtype.
        x: the forward input (N, C, H, W).
        indices: optional int array from ``max_pool2d(..., return_indices=True)``; without it
            the maxima are searched again.
    Returns:
        grad_input (N, C, H, W) in ``x``'s dtype.
    """
    x, p = checks.pool_forward_args(x, kernel_size, stride, padding)
    grad_output = checks.contiguous(checks.gradient_view(grad_output, "grad_output", p.output_shape),
                                    "grad_output", x.dtype)
    kernel = select("max_pool2d_backward", p, algo, backend)
    if indices is None:
        indices = checks.output_array(None, p.output_shape, np.dtype(np.int64))
        if p.n:
            select("max_pool2d_forward", p, algo, backend).function(
                x, np.empty(p.output_shape, x.dtype), indices, p)
        given = None
    else:
        given, indices = indices, checks.pool_indices(indices, p.output_shape)
    grad_input = checks.output_array(None, p.input_shape, x.dtype)
    if p.n and kernel.function(grad_output, indices, grad_input, p):
        raise checks.pool_indices_error(given, p.h * p.w)
    return grad_input


def avg_pool2d(x, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: IntOrPair = 0,
               count_include_pad: bool = True, *, algo: str = "auto", backend: str = "auto") -> np.ndarray:
    """Average pooling of x (N, C, H, W) -> (N, C, H_out, W_out).

    ``count_include_pad=True`` divides every window by its full size; ``False`` by the number
    of real (non-padding) elements in it.
    """
    x, p = checks.pool_forward_args(x, kernel_size, stride, padding, count_include_pad)
    kernel = select("avg_pool2d_forward", p, algo, backend)
    y = checks.output_array(None, p.output_shape, x.dtype)
    if p.n:
        kernel.function(x, y, p)
    return y


def avg_pool2d_backward(grad_output, x_shape, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None,
                        padding: IntOrPair = 0, count_include_pad: bool = True, *,
                        algo: str = "auto", backend: str = "auto") -> np.ndarray:
    """Gradient of ``avg_pool2d`` w.r.t. its input of shape ``x_shape`` (N, C, H, W).

    The result has ``grad_output``'s dtype (there is no ``x`` to take it from).
    """
    grad_output, p = checks.avg_pool_backward_args(grad_output, x_shape, kernel_size, stride,
                                                   padding, count_include_pad)
    kernel = select("avg_pool2d_backward", p, algo, backend)
    grad_input = checks.output_array(None, p.input_shape, grad_output.dtype)
    if p.n:
        kernel.function(grad_output, grad_input, p)
    return grad_input


def global_avg_pool2d(x, *, algo: str = "auto", backend: str = "auto") -> np.ndarray:
    """Mean over each H x W plane: x (N, C, H, W) -> (N, C, 1, 1)."""
    x = checks.float_view(x, "x", ndim=4)
    n, c, h, w = x.shape
    if not (c and h and w):
        return avg_pool2d(x, x.shape[2:], algo=algo, backend=backend)  # raises the usual error
    # The window is the whole plane, so ``pool_params``'s checks all hold: building the params
    # directly saves ~15 us a call, as much as the kernel takes on a 8x256x14x14 input. The
    # result is smaller than x, so it needs no allocation check.
    x = checks.contiguous(x, "x")
    p = PoolParams(n=n, c=c, h=h, w=w, kernel_h=h, kernel_w=w, stride_h=h, stride_w=w, pad_h=0,
                   pad_w=0, count_include_pad=True, dtype=x.dtype.name)
    kernel = select("avg_pool2d_forward", p, algo, backend)
    y = np.empty((n, c, 1, 1), dtype=x.dtype)
    if n:
        kernel.function(x, y, p)
    return y


def global_avg_pool2d_backward(grad_output, x_shape, *, algo: str = "auto", backend: str = "auto") -> np.ndarray:
    """Gradient of ``global_avg_pool2d``: grad_output (N, C, 1, 1) spread over (N, C, H, W)."""
    shape = checks.input_shape(x_shape)
    return avg_pool2d_backward(grad_output, shape, shape[2:], algo=algo, backend=backend)


def max_pool2d_plan(x, kernel_size, stride=None, padding=0, return_indices=False, *,
                    algo="auto", backend="auto"):
    x, p = checks.pool_forward_args(x, kernel_size, stride, padding)
    return ["max_pool2d_forward"], p, algo, backend


def max_pool2d_backward_plan(grad_output, x, kernel_size, stride=None, padding=0, indices=None, *,
                             algo="auto", backend="auto"):
    x, p = checks.pool_forward_args(x, kernel_size, stride, padding)
    ops = ["max_pool2d_backward"] if indices is not None else ["max_pool2d_forward", "max_pool2d_backward"]
    return ops, p, algo, backend


def avg_pool2d_plan(x, kernel_size, stride=None, padding=0, count_include_pad=True, *,
                    algo="auto", backend="auto"):
    x, p = checks.pool_forward_args(x, kernel_size, stride, padding, count_include_pad)
    return ["avg_pool2d_forward"], p, algo, backend


def avg_pool2d_backward_plan(grad_output, x_shape, kernel_size, stride=None, padding=0,
                             count_include_pad=True, *, algo="auto", backend="auto"):
    _, p = checks.avg_pool_backward_args(grad_output, x_shape, kernel_size, stride, padding,
                                         count_include_pad)
    return ["avg_pool2d_backward"], p, algo, backend
