"""Pooling layers over the public pooling ops: MaxPool2d, AvgPool2d, GlobalAvgPool2d.

MaxPool2d keeps the argmax indices of its forward (training mode) and hands them to
``max_pool2d_backward``, which then only scatters. It can also take over a neighbouring
ReLU: ReLU commutes with max pooling, so ``relu(maxpool(x)) == maxpool(relu(x))`` and both
ReLU gradients are ``grad_y * (y > 0)`` on the *pooled* output. Masking the small pooled
gradient before the scatter replaces a mask over the 4x larger input (see ``Sequential``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

import fastconv

from .layers import _json_pair, _pair
from .module import Module, missing_forward


class MaxPool2d(Module):
    """Max pooling as ``torch.nn.MaxPool2d`` (``stride`` defaults to ``kernel_size``)."""

    def __init__(self, kernel_size, stride=None, padding=0, *, algo: str = "auto", backend: str = "auto"):
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.algo, self.backend = algo, backend
        self._x: Optional[np.ndarray] = None
        self._y: Optional[np.ndarray] = None
        self._indices: Optional[np.ndarray] = None
        self._relu = False

    def _args(self) -> dict:
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    algo=self.algo, backend=self.backend)

    def forward(self, x: np.ndarray, *, relu: bool = False) -> np.ndarray:
        """Pooled ``x``; ``relu=True`` applies a following ReLU in place on the (small) result."""
        if self.training:
            y, indices = fastconv.max_pool2d(x, return_indices=True, **self._args())
        else:  # backward after an eval forward recomputes the argmax
            y, indices = fastconv.max_pool2d(x, **self._args()), None
        if relu:
            np.maximum(y, 0, out=y)
        self._x, self._y, self._indices, self._relu = x, y, indices, relu
        return y

    def backward(self, grad: np.ndarray, *, relu_mask: bool = False, overwrite: bool = False) -> np.ndarray:
        """Scatter ``grad`` to the window maxima.

        ``relu_mask=True``: the input came out of a ReLU whose backward the caller skips; the
        ReLU's mask is applied here as ``grad * (y > 0)`` on the pooled output (always done
        when the forward applied a following ReLU).
        """
        if self._x is None:
            raise missing_forward(self)
        if relu_mask or self._relu:
            mask = self._y > 0
            if overwrite and grad.flags.writeable and grad.dtype == self._y.dtype:
                grad = np.multiply(grad, mask, out=grad)
            else:
                grad = np.multiply(grad, mask, dtype=self._y.dtype)
        gx = fastconv.max_pool2d_backward(grad, self._x, indices=self._indices, **self._args())
        self._x = self._y = self._indices = None
        return gx

    def config(self) -> dict:
        return dict(kernel_size=_json_pair(self.kernel_size), stride=_json_pair(self.stride),
                    padding=_json_pair(self.padding), algo=self.algo, backend=self.backend)


class AvgPool2d(Module):
    """Average pooling as ``torch.nn.AvgPool2d`` (``stride`` defaults to ``kernel_size``)."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad: bool = True, *,
                 algo: str = "auto", backend: str = "auto"):
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.count_include_pad = bool(count_include_pad)
        self.algo, self.backend = algo, backend
        self._x_shape: Optional[tuple] = None
        self._dtype = None

    def _args(self) -> dict:
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    count_include_pad=self.count_include_pad, algo=self.algo, backend=self.backend)

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = fastconv.avg_pool2d(x, **self._args())
        self._x_shape, self._dtype = np.shape(x), y.dtype
        return y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._x_shape is None:
            raise missing_forward(self)
        shape, self._x_shape = self._x_shape, None
        return fastconv.avg_pool2d_backward(np.asarray(grad, dtype=self._dtype), shape, **self._args())

    def config(self) -> dict:
        return dict(kernel_size=_json_pair(self.kernel_size), stride=_json_pair(self.stride),
                    padding=_json_pair(self.padding), count_include_pad=self.count_include_pad,
                    algo=self.algo, backend=self.backend)


class GlobalAvgPool2d(Module):
    """Mean over each plane: (N, C, H, W) -> (N, C, 1, 1), as ``torch.nn.AdaptiveAvgPool2d(1)``."""

    def __init__(self, *, algo: str = "auto", backend: str = "auto"):
        self.algo, self.backend = algo, backend
        self._x_shape: Optional[tuple] = None
        self._dtype = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = fastconv.global_avg_pool2d(x, algo=self.algo, backend=self.backend)
        self._x_shape, self._dtype = np.shape(x), y.dtype
        return y

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._x_shape is None:
            raise missing_forward(self)
        shape, self._x_shape = self._x_shape, None
        return fastconv.global_avg_pool2d_backward(np.asarray(grad, dtype=self._dtype), shape,
                                                   algo=self.algo, backend=self.backend)

    def config(self) -> dict:
        return dict(algo=self.algo, backend=self.backend)
