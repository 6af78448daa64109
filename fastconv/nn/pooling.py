"""Pooling layers over the public pooling ops: MaxPool2d, AvgPool2d, GlobalAvgPool2d.

MaxPool2d keeps the argmax indices of its forward (training mode) and hands them to
``max_pool2d_backward``, which then only scatters. It can also take over a neighbouring
ReLU (``forward(x, relu=True)``): ReLU commutes with max pooling, so
``relu(maxpool(x)) == maxpool(relu(x))``, and in both orders the ReLU's gradient mask at
each window's argmax is ``y > 0`` on the *pooled* output. Applying the ReLU and its mask on
the small pooled arrays replaces two passes over the 4x larger input (see ``Sequential``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

import fastconv

from fastconv.checks import int_pair

from .layers import _apply_relu_mask, _json_pair
from .module import Module, missing_forward


class MaxPool2d(Module):
    """Max pooling as ``torch.nn.MaxPool2d`` (``stride`` defaults to ``kernel_size``)."""

    def __init__(self, kernel_size, stride=None, padding=0, *, algo: str = "auto", backend: str = "auto"):
        self.kernel_size = int_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else int_pair(stride, "stride", minimum=1)
        self.padding = int_pair(padding, "padding", minimum=0)
        self.algo, self.backend = algo, backend
        self._x: Optional[np.ndarray] = None
        self._y: Optional[np.ndarray] = None
        self._indices: Optional[np.ndarray] = None
        self._relu = False

    def _args(self) -> dict:
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    algo=self.algo, backend=self.backend)

    def forward(self, x: np.ndarray, *, relu: bool = False) -> np.ndarray:
        """Pooled ``x``; ``relu=True`` also applies a ReLU (that preceded or follows the pool)
        in place on the small result."""
        if self.training:
            y, indices = fastconv.max_pool2d(x, return_indices=True, **self._args())
        else:  # backward after an eval forward recomputes the argmax
            y, indices = fastconv.max_pool2d(x, **self._args()), None
        if relu:
            np.maximum(y, 0, out=y)
        self._x, self._y, self._indices, self._relu = x, y, indices, relu
        return y

    def backward(self, grad: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
        """Scatter ``grad`` to the window maxima (after the fused ReLU's mask ``y > 0``, if any).

        ``overwrite=True`` lets the mask be applied in place in ``grad``.
        """
        if self._x is None:
            raise missing_forward(self)
        if self._relu:
            grad = _apply_relu_mask(grad, self._y, overwrite)
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
        self.kernel_size = int_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else int_pair(stride, "stride", minimum=1)
        self.padding = int_pair(padding, "padding", minimum=0)
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
