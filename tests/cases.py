"""Shared test geometry and the comparison rule used by every parity test.

The oracle is ``fastconv.reference`` run in float64 on the same values. Tolerances are
relative to the largest magnitude of the oracle's result (the scale of the output):
float64 1e-10; float32 1e-4. Winograd F(4x4,3x3) needs no looser bound: its measured error
is at most 5.3e-6 (float32) and 8.3e-15 (float64) relative to max |y| on realistic layers and
1.3e-6 / 4.1e-15 on this grid (table in fastconv/kernels/winograd_tables.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastconv import reference
from fastconv.checks import conv_params, pool_params

TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
ALGO_TOLERANCE = {}


def chunked_channels(padded_h: int, padded_w: int) -> int:
    """More channels than one copy of padded planes holds (``direct_plan.COPY_BUDGET``): a
    direct convolution over them runs in two channel chunks."""
    from fastconv.kernels import direct_plan

    return direct_plan.COPY_BUDGET // (padded_h * padded_w) + 9


def tolerance(dtype, algo: str = "") -> float:
    name = np.dtype(dtype).name
    return ALGO_TOLERANCE.get((algo, name), TOLERANCE[name])


def assert_close(actual, expected, dtype, algo: str = "", what: str = "") -> None:
    """``|actual - expected| <= tol * max(|expected|, 1e-30)`` elementwise, NaN where NaN."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {np.dtype(dtype)}"
    expected = expected.astype(np.float64)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    err = np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0) / scale
    assert err <= tolerance(dtype, algo), f"{what}: relative error {err:.3g} > {tolerance(dtype, algo):.1g}"


@dataclass(frozen=True)
class ConvCase:
    """One convolution geometry: x (n, c, h, w), weight (k, c/groups, r, s)."""

    name: str
    x: tuple
    k: int
    rs: tuple
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    bias: bool = True

    @property
    def w(self):
        return (self.k, self.x[1] // self.groups) + tuple(self.rs)

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def params(self, dtype="float64"):
        return conv_params(self.x, self.w, self.stride, self.padding, self.dilation, self.groups, dtype)

    def arrays(self, dtype, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.x).astype(dtype)
        w = rng.standard_normal(self.w).astype(dtype)
        b = rng.standard_normal(self.k).astype(dtype) if self.bias else None
        p = self.params(dtype)
        gy = rng.standard_normal(p.output_shape).astype(dtype)
        return x, w, b, gy


CONV_CASES = [
    ConvCase("basic", (2, 3, 7, 6), 4, (3, 3)),
    ConvCase("pad1", (2, 3, 7, 6), 4, (3, 3), padding=1),
    ConvCase("same_even_kernel", (2, 3, 7, 8), 2, (4, 2), padding="same"),
    ConvCase("same_dilated", (1, 2, 9, 7), 3, (3, 3), padding="same", dilation=2),
    ConvCase("stride2_pad1", (2, 3, 9, 8), 5, (3, 3), stride=2, padding=1),
    ConvCase("stride3x2_asym_pad", (2, 2, 11, 10), 3, (3, 3), stride=(3, 2), padding=(2, 0)),
    ConvCase("dilation2", (2, 3, 10, 9), 4, (3, 3), padding=2, dilation=2),
    ConvCase("dilation_2x1", (1, 2, 8, 8), 2, (2, 3), dilation=(2, 1), padding=(1, 0)),
    ConvCase("groups2", (2, 4, 7, 7), 6, (3, 3), padding=1, groups=2),
    ConvCase("groups3_stride2", (1, 6, 9, 9), 3, (3, 3), stride=2, padding=1, groups=3),
    ConvCase("depthwise", (2, 5, 8, 7), 5, (3, 3), padding=1, groups=5),
    ConvCase("depthwise_stride2", (1, 4, 9, 9), 4, (3, 3), stride=2, padding=1, groups=4),
    ConvCase("depthwise_multiplier2", (2, 3, 7, 7), 6, (3, 3), padding=1, groups=3),
    ConvCase("one_input_channel_5x5", (1, 1, 8, 8), 3, (5, 5), padding=2),
    ConvCase("c1_mnist_like", (3, 1, 12, 12), 8, (3, 3)),
    ConvCase("one_output_channel", (2, 3, 6, 6), 1, (3, 3), bias=False),
    ConvCase("pointwise", (2, 8, 5, 6), 4, (1, 1)),
    ConvCase("pointwise_stride2", (2, 8, 7, 6), 4, (1, 1), stride=2),
    ConvCase("pointwise_padded", (1, 3, 4, 4), 2, (1, 1), padding=1),
    ConvCase("rect_kernel_1x5", (2, 3, 6, 9), 4, (1, 5), padding=(0, 2)),
    ConvCase("channels16_3x3", (2, 16, 9, 9), 16, (3, 3), padding=1),
    ConvCase("partial_tiles", (1, 8, 11, 13), 8, (3, 3)),
    ConvCase("partial_tiles_pad2", (2, 4, 7, 5), 3, (3, 3), padding=2),
    ConvCase("kernel_fills_input", (2, 3, 5, 5), 2, (5, 5)),
    ConvCase("stem_7x7_stride2", (1, 3, 15, 15), 8, (7, 7), stride=2, padding=3),
    ConvCase("batch1_large_c", (1, 33, 6, 5), 7, (3, 3), padding=1),
]


@dataclass(frozen=True)
class PoolCase:
    """One pooling geometry over x (n, c, h, w)."""

    name: str
    x: tuple
    kernel_size: object
    stride: object = None
    padding: object = 0
    count_include_pad: bool = True

    def kwargs(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def params(self, dtype="float64"):
        return pool_params(self.x, self.kernel_size, self.stride, self.padding,
                           self.count_include_pad, dtype)


POOL_CASES = [
    PoolCase("2x2", (2, 3, 8, 8), 2),
    PoolCase("2x2_odd_input", (2, 3, 7, 9), 2),
    PoolCase("2x2_stride1", (1, 2, 5, 6), 2, stride=1),
    PoolCase("3x3_stride2_pad1", (2, 2, 11, 10), 3, stride=2, padding=1),
    PoolCase("3x3_stride2_pad1_exclude_pad", (2, 2, 11, 10), 3, stride=2, padding=1, count_include_pad=False),
    PoolCase("3x3_stride1_pad1", (1, 3, 6, 5), 3, stride=1, padding=1),
    PoolCase("rect_3x2_stride_2x1_pad", (2, 2, 9, 7), (3, 2), stride=(2, 1), padding=(1, 1)),
    PoolCase("rect_exclude_pad", (1, 2, 6, 7), (2, 4), stride=(1, 3), padding=(1, 2), count_include_pad=False),
    PoolCase("global", (2, 4, 5, 6), (5, 6)),
    PoolCase("1x1", (1, 2, 3, 4), 1),
]


def reference_conv(case: ConvCase, x, w, b, gy):
    """Forward and the three gradients by the float64 oracle."""
    p = case.params("float64")
    x64, w64, gy64 = (a.astype(np.float64) for a in (x, w, gy))
    b64 = None if b is None else b.astype(np.float64)
    y = np.empty(p.output_shape)
    reference.conv2d_forward(x64, w64, b64, y, p)
    gx = np.empty(p.input_shape)
    reference.conv2d_grad_input(gy64, w64, gx, p)
    gw = np.empty(p.weight_shape)
    reference.conv2d_grad_weight(gy64, x64, gw, p)
    gb = np.empty(p.k)
    reference.conv2d_grad_bias(gy64, gb, p)
    return y, gx, gw, gb
