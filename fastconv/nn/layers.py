"""Layers with parameters (Conv2d, Linear) and the element-wise/shape layers (ReLU, Flatten, Dropout).

Conv2d and Linear can apply a ReLU to their own output in place (``forward(x, relu=True)``):
the output array is the ReLU's output and ``y > 0`` is the ReLU's mask, so the fused layer
makes no separate ReLU output or mask array. ``Sequential`` turns this on when a ReLU
follows the layer (see ``fastconv.nn.model``).

Convolutions call only the public ops (``fastconv.conv2d`` / ``conv2d_backward``), so they
use whatever kernels the registry selects; ``algo``/``backend`` are passed through.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np

import fastconv
from fastconv.checks import int_pair, positive_int

from . import init
from .module import Module, missing_forward
from .parameter import Parameter


def _json_pair(pair):
    """An int for a square pair, else a list (how the config stores sizes)."""
    if isinstance(pair, str):
        return pair
    return pair[0] if pair[0] == pair[1] else list(pair)


def _apply_relu_mask(grad: np.ndarray, output: np.ndarray, overwrite: bool) -> np.ndarray:
    """``grad * (output > 0)``: the ReLU backward, with the mask read from the ReLU's output."""
    mask = output > 0
    if overwrite and grad.flags.writeable and grad.dtype == output.dtype:
        return np.multiply(grad, mask, out=grad)
    return np.multiply(grad, mask, dtype=output.dtype)


class Conv2d(Module):
    """2-D convolution layer, as ``torch.nn.Conv2d`` (NCHW, weight ``(out, in/groups, kh, kw)``).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            in PyTorch (``padding`` may also be ``"same"`` or ``"valid"``).
        algo, backend: passed to ``fastconv.conv2d`` and ``conv2d_backward`` (default "auto").
        dtype: float32 (default) or float64; inputs are converted to it.
        rng: Generator or int seed for the initial weights (default: ``nn.manual_seed``'s).

    Weights start as PyTorch's: Kaiming-uniform with ``a = sqrt(5)``, i.e.
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = in/groups * kh * kw``; so does the bias.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, *, algo: str = "auto",
                 backend: str = "auto", dtype=np.float32, rng: init.RngLike = None):
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.groups = positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.kernel_size = int_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = int_pair(stride, "stride", minimum=1)
        self.padding = padding if isinstance(padding, str) else int_pair(padding, "padding", minimum=0)
        self.dilation = int_pair(dilation, "dilation", minimum=1)
        self.algo, self.backend = algo, backend
        self.dtype = init.float_dtype(dtype)
        rng = init.get_rng(rng)
        fan_in = (in_channels // groups) * self.kernel_size[0] * self.kernel_size[1]
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(init.kaiming_uniform(shape, fan_in, rng=rng, dtype=self.dtype))
        self.bias = Parameter(init.uniform_bias((out_channels,), fan_in, rng=rng, dtype=self.dtype)) \
            if bias else None
        self._x: Optional[np.ndarray] = None
        self._y: Optional[np.ndarray] = None
        self._codes: Optional[np.ndarray] = None

    def named_parameters(self) -> Iterator[Tuple[str, Parameter]]:
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def fuses_relu_max_pool(self) -> bool:
        """Whether ``forward(relu=True, max_pool=True)`` can run as one fused kernel: one
        input channel per group, 3x3, stride and dilation 1 (``fastconv.fused.fuses``; the
        op itself also checks the input size and the algorithm it would pick)."""
        return (self.in_channels // self.groups == 1 and self.kernel_size == (3, 3)
                and self.stride == (1, 1) and self.dilation == (1, 1))

    def _geometry(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, algo=self.algo, backend=self.backend)

    def forward(self, x: np.ndarray, *, relu: bool = False, max_pool: bool = False) -> np.ndarray:
        """``conv2d(x, weight, bias)``; with ``relu=True`` also ``max(., 0)`` in place on the result.

        ``max_pool=True`` (with ``relu``): ``relu(max_pool2d(conv2d(x), 2))`` by
        ``fastconv.conv2d_relu_max_pool2d``, which never stores the full-size convolution
        output where its fused kernel applies (see ``fastconv.fused``).
        """
        x = np.asarray(x, dtype=self.dtype)
        bias = None if self.bias is None else self.bias.data
        if max_pool:
            if not relu:
                raise ValueError("Conv2d.forward(max_pool=True) is the fused conv + ReLU + max pool: "
                                 "it needs relu=True")
            y, self._codes = fastconv.conv2d_relu_max_pool2d(x, self.weight.data, bias,
                                                             **self._geometry())
            self._x, self._y = x, y
            return y
        y = fastconv.conv2d(x, self.weight.data, bias, **self._geometry())
        if relu:
            np.maximum(y, 0, out=y)
        self._x, self._y, self._codes = x, (y if relu else None), None
        return y

    def backward(self, grad: np.ndarray, *, need_input_grad: bool = True,
                 overwrite: bool = False) -> Optional[np.ndarray]:
        """Gradient w.r.t. the input (``None`` if not ``need_input_grad``); adds weight/bias grads.

        After ``forward(relu=True)`` the ReLU's mask ``output > 0`` is applied first, in place
        in ``grad`` if ``overwrite=True``.
        """
        if self._x is None:
            raise missing_forward(self)
        needs = (("input",) if need_input_grad else ()) + ("weight",) + \
            (("bias",) if self.bias is not None else ())
        if self._codes is not None:  # after forward(max_pool=True): grad is the pooled one
            gx, gw, gb = fastconv.conv2d_relu_max_pool2d_backward(
                grad, self._y, self._codes, self._x, self.weight.data, needs=needs,
                **self._geometry())
        else:
            if self._y is not None:
                grad = _apply_relu_mask(grad, self._y, overwrite)
            gx, gw, gb = fastconv.conv2d_backward(grad, self._x, self.weight.data, needs=needs,
                                                  **self._geometry())
        self.weight.accumulate(gw)
        if self.bias is not None:
            self.bias.accumulate(gb)
        self._x = self._y = self._codes = None
        return gx

    def config(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=_json_pair(self.kernel_size), stride=_json_pair(self.stride),
                    padding=_json_pair(self.padding), dilation=_json_pair(self.dilation),
                    groups=self.groups, bias=self.bias is not None, algo=self.algo,
                    backend=self.backend, dtype=self.dtype.name)


class Linear(Module):
    """Fully connected layer ``y = x @ weight.T + bias`` (weight ``(out, in)``), as ``torch.nn.Linear``.

    Plain NumPy matrix products (BLAS, threads set by ``fastconv.set_num_threads``). Same
    default init as PyTorch (bound ``1/sqrt(in_features)``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype=np.float32, rng: init.RngLike = None):
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.dtype = init.float_dtype(dtype)
        rng = init.get_rng(rng)
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), in_features,
                                                     rng=rng, dtype=self.dtype))
        self.bias = Parameter(init.uniform_bias((out_features,), in_features, rng=rng, dtype=self.dtype)) \
            if bias else None
        self._x: Optional[np.ndarray] = None
        self._y: Optional[np.ndarray] = None

    def named_parameters(self) -> Iterator[Tuple[str, Parameter]]:
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def forward(self, x: np.ndarray, *, relu: bool = False) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) got input of shape "
                             f"{x.shape}: expected (N, {self.in_features})")
        y = x @ self.weight.data.T
        if self.bias is not None:
            y += self.bias.data
        if relu:
            np.maximum(y, 0, out=y)
        self._x, self._y = x, (y if relu else None)
        return y

    def backward(self, grad: np.ndarray, *, need_input_grad: bool = True,
                 overwrite: bool = False) -> Optional[np.ndarray]:
        if self._x is None:
            raise missing_forward(self)
        grad = np.asarray(grad, dtype=self.dtype)
        if self._y is not None:
            grad = _apply_relu_mask(grad, self._y, overwrite)
        self.weight.accumulate(grad.T @ self._x)
        if self.bias is not None:
            self.bias.accumulate(grad.sum(axis=0))
        gx = grad @ self.weight.data if need_input_grad else None
        self._x = self._y = None
        return gx

    def config(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None, dtype=self.dtype.name)


class ReLU(Module):
    """``max(x, 0)`` (NaN stays NaN); backward passes the gradient where ``x > 0``."""

    def __init__(self):
        self._mask: Optional[np.ndarray] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        self._mask = x > 0
        return np.maximum(x, 0)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._mask is None:
            raise missing_forward(self)
        mask, self._mask = self._mask, None
        return grad * mask


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W) (a view); backward restores the shape."""

    def __init__(self):
        self._shape: Optional[tuple] = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"Flatten got input of shape {x.shape}: expected at least 2 dimensions")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise missing_forward(self)
        shape, self._shape = self._shape, None
        return np.asarray(grad).reshape(shape)


class Dropout(Module):
    """Zero each element with probability ``p`` in training mode, scale the rest by ``1/(1-p)``.

    The identity in eval mode. Masks come from the layer's own generator, seeded by
    ``seed`` (or drawn from ``nn.manual_seed``'s generator at construction), so a run is
    reproducible. The mask of the last forward is ``self.mask`` (already scaled).
    """

    def __init__(self, p: float = 0.5, *, seed: Optional[int] = None):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p={p!r}: expected a probability in [0, 1]")
        self.p = float(p)
        self.rng = np.random.default_rng(init.child_seed() if seed is None else seed)
        self.mask: Optional[np.ndarray] = None
        self._active = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        self._active = self.training and self.p > 0.0
        if not self._active:
            return x
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        keep = self.rng.random(x.shape, dtype=dtype) >= self.p
        scale = 0.0 if self.p >= 1.0 else 1.0 / (1.0 - self.p)
        self.mask = np.multiply(keep, dtype.type(scale), dtype=dtype)
        return x * self.mask

    def backward(self, grad: np.ndarray) -> np.ndarray:
        if not self._active:
            return grad
        if self.mask is None:
            raise missing_forward(self)
        return grad * self.mask

    def config(self) -> dict:
        return dict(p=self.p)
