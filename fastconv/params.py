"""The normalised, validated description of one call: what every kernel receives.

The ops build these objects (``fastconv.checks``) after checking every argument; kernels
trust them completely. They are frozen and hashable so the dispatch layer can cache its
choice per configuration.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvParams:
    """A 2-D convolution ``x (n, c, h, w) * weight (k, c // groups, r, s) -> (n, k, out_h, out_w)``.

    Padding is stored per side because ``padding="same"`` with an even effective kernel
    pads one pixel more at the bottom/right (as PyTorch does). Kernels only read
    ``pad_top``/``pad_left``: any input index outside ``[0, h) x [0, w)`` is a zero.
    """

    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    dil_h: int
    dil_w: int
    groups: int
    dtype: str  # "float32" or "float64"

    @property
    def out_h(self) -> int:
        return (self.h + self.pad_top + self.pad_bottom - self.dil_h * (self.r - 1) - 1) // self.stride_h + 1

    @property
    def out_w(self) -> int:
        return (self.w + self.pad_left + self.pad_right - self.dil_w * (self.s - 1) - 1) // self.stride_w + 1

    @property
    def c_per_group(self) -> int:
        return self.c // self.groups

    @property
    def k_per_group(self) -> int:
        return self.k // self.groups

    @property
    def input_shape(self) -> tuple:
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple:
        return (self.k, self.c_per_group, self.r, self.s)

    @property
    def output_shape(self) -> tuple:
        return (self.n, self.k, self.out_h, self.out_w)

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group and one filter per group (``groups == c == k``)."""
        return self.groups == self.c and self.k == self.c

    @property
    def is_pointwise(self) -> bool:
        """A 1x1 convolution without padding: a plain matrix product per image."""
        return (self.r == 1 and self.s == 1 and self.pad_top == self.pad_bottom == 0
                and self.pad_left == self.pad_right == 0)

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the direct algorithm: ``2 n k out_h out_w (c/groups) r s``."""
        return 2 * self.n * self.k * self.out_h * self.out_w * self.c_per_group * self.r * self.s

    def describe(self) -> str:
        return (f"conv2d n={self.n} c={self.c} {self.h}x{self.w} -> k={self.k} r,s={self.r}x{self.s} "
                f"stride={self.stride_h},{self.stride_w} "
                f"pad={self.pad_top},{self.pad_bottom},{self.pad_left},{self.pad_right} "
                f"dil={self.dil_h},{self.dil_w} groups={self.groups} {self.dtype}")


@dataclass(frozen=True)
class PoolParams:
    """A 2-D max or average pooling over ``x (n, c, h, w) -> (n, c, out_h, out_w)``.

    Windows never extend past the padded input (no ceil mode), so every window holds at
    least one real input element (padding is at most half the window).
    """

    n: int
    c: int
    h: int
    w: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    count_include_pad: bool
    dtype: str

    @property
    def out_h(self) -> int:
        return (self.h + 2 * self.pad_h - self.kernel_h) // self.stride_h + 1

    @property
    def out_w(self) -> int:
        return (self.w + 2 * self.pad_w - self.kernel_w) // self.stride_w + 1

    @property
    def input_shape(self) -> tuple:
        return (self.n, self.c, self.h, self.w)

    @property
    def output_shape(self) -> tuple:
        return (self.n, self.c, self.out_h, self.out_w)

    @property
    def disjoint_2x2(self) -> bool:
        """2x2 windows, stride 2, no padding (the LeNet/MNIST pool): the windows tile the
        input without overlap, the case both backends' pooling kernels specialise."""
        return (self.kernel_h == 2 and self.kernel_w == 2 and self.stride_h == 2 and self.stride_w == 2
                and self.pad_h == 0 and self.pad_w == 0)

    @property
    def flops(self) -> int:
        """One comparison or addition per window element."""
        return self.n * self.c * self.out_h * self.out_w * self.kernel_h * self.kernel_w

    def describe(self) -> str:
        return (f"pool2d n={self.n} c={self.c} {self.h}x{self.w} window={self.kernel_h}x{self.kernel_w} "
                f"stride={self.stride_h},{self.stride_w} pad={self.pad_h},{self.pad_w} {self.dtype}")
