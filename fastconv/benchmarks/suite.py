"""The shapes every benchmark measures, named so that ``--shapes`` can pick them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..checks import conv_params, pool_params
from ..params import ConvParams, PoolParams


@dataclass(frozen=True)
class ConvLayer:
    """A convolution layer: x (n, c, h, w), weight (k, c/groups, r, r)."""

    name: str
    n: int
    c: int
    hw: int
    k: int
    r: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    tags: Tuple[str, ...] = ()

    def params(self, dtype="float32") -> ConvParams:
        return conv_params((self.n, self.c, self.hw, self.hw), (self.k, self.c // self.groups, self.r, self.r),
                           self.stride, self.padding, self.dilation, self.groups, dtype)

    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def arrays(self, dtype="float32", seed=0):
        """x, weight (Kaiming-scaled), bias and a grad_output of the right shape."""
        p = self.params(dtype)
        rng = np.random.default_rng(seed)
        fan_in = p.c_per_group * p.r * p.s
        x = rng.standard_normal(p.input_shape, dtype=np.float32).astype(dtype)
        w = (rng.standard_normal(p.weight_shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(dtype)
        b = rng.standard_normal(p.k, dtype=np.float32).astype(dtype)
        gy = rng.standard_normal(p.output_shape, dtype=np.float32).astype(dtype)
        return x, w, b, gy


@dataclass(frozen=True)
class PoolLayer:
    """A pooling layer over x (n, c, hw, hw)."""

    name: str
    n: int
    c: int
    hw: int
    kernel: int
    stride: Optional[int] = None
    padding: int = 0
    tags: Tuple[str, ...] = ()

    def params(self, dtype="float32") -> PoolParams:
        return pool_params((self.n, self.c, self.hw, self.hw), self.kernel, self.stride, self.padding, True, dtype)

    def kwargs(self) -> dict:
        return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding)

    def arrays(self, dtype="float32", seed=0):
        p = self.params(dtype)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(p.input_shape, dtype=np.float32).astype(dtype)
        gy = rng.standard_normal(p.output_shape, dtype=np.float32).astype(dtype)
        return x, gy


@dataclass(frozen=True)
class FusedLayer(ConvLayer):
    """A convolution followed by ReLU and a 2x2 max pool, timed as one op
    (``conv2d_relu_max_pool2d``); grad_output has the pooled shape."""

    def arrays(self, dtype="float32", seed=0):
        x, w, b, gy = super().arrays(dtype, seed)
        n, k, h, w_ = gy.shape
        return x, w, b, np.ascontiguousarray(gy[:, :, :h // 2, :w_ // 2])


CONV_LAYERS: List[ConvLayer] = [
    ConvLayer("mnist_conv1", 128, 1, 28, 32, 3, tags=("mnist", "c1")),
    ConvLayer("mnist_conv2", 128, 32, 13, 64, 3, tags=("mnist", "winograd")),
    ConvLayer("lenet_conv1", 128, 1, 28, 6, 5, padding=2, tags=("lenet", "c1")),
    ConvLayer("lenet_conv2", 128, 6, 14, 16, 5, tags=("lenet",)),
    ConvLayer("cifar_conv1", 64, 3, 32, 32, 3, padding=1, tags=("cifar",)),
    ConvLayer("resnet_3x3_64", 8, 64, 56, 64, 3, padding=1, tags=("resnet", "winograd")),
    ConvLayer("resnet_3x3_128", 8, 128, 28, 128, 3, padding=1, tags=("resnet", "winograd")),
    ConvLayer("resnet_3x3_256", 8, 256, 14, 256, 3, padding=1, tags=("resnet", "winograd")),
    ConvLayer("resnet_1x1_256_64", 8, 256, 56, 64, 1, tags=("resnet", "pointwise")),
    ConvLayer("resnet_3x3_s2", 8, 64, 56, 128, 3, stride=2, padding=1, tags=("resnet", "strided")),
    ConvLayer("resnet_stem_7x7_s2", 4, 3, 224, 64, 7, stride=2, padding=3, tags=("resnet", "strided")),
    ConvLayer("dilated_3x3_d2", 8, 64, 56, 64, 3, padding=2, dilation=2, tags=("dilated",)),
    ConvLayer("depthwise_3x3", 8, 128, 56, 128, 3, padding=1, groups=128, tags=("depthwise",)),
]

POOL_LAYERS: List[PoolLayer] = [
    PoolLayer("mnist_pool1", 128, 32, 26, 2, tags=("mnist",)),
    PoolLayer("mnist_pool2", 128, 64, 11, 2, tags=("mnist",)),
    PoolLayer("resnet_pool_3x3_s2", 8, 64, 112, 3, stride=2, padding=1, tags=("resnet",)),
]

# The MNIST model's first block: the fused op against PyTorch's conv2d -> relu -> max_pool2d.
FUSED_LAYERS: List[FusedLayer] = [
    FusedLayer("mnist_conv1_relu_pool", 128, 1, 28, 32, 3, tags=("mnist", "c1", "fused")),
]

CONV_OPS = ("forward", "grad_input", "grad_weight")
# forward: pooled output and window codes; backward: grad weight and grad bias (a first layer's).
FUSED_OPS = ("fused_forward", "fused_backward")
POOL_OPS = ("maxpool_forward", "maxpool_backward", "avgpool_forward", "avgpool_backward")


def select_layers(patterns: Optional[List[str]]):
    """Layers whose name or tag matches any pattern (fnmatch-style); all when ``patterns`` is empty."""
    from fnmatch import fnmatch

    layers = CONV_LAYERS + POOL_LAYERS + FUSED_LAYERS
    if not patterns:
        return layers
    chosen = [l for l in layers if any(fnmatch(l.name, p) or p in l.tags for p in patterns)]
    if not chosen:
        names = ", ".join(l.name for l in layers)
        raise ValueError(f"--shapes {patterns}: no layer matches; known layers: {names}")
    return chosen
