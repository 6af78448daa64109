"""Shared argument normalisation and checking for every public op.

Every public call passes through here before any kernel runs, so kernels may index without
bounds checks. Each error names the argument, the value it got and what was expected.

Dtype rule: the computation and result dtype is that of the op's primary array (``x`` for
convolution and max pooling, ``grad_output`` for average-pooling backward). Other floating
arrays (weights, bias, gradients) are converted to that dtype; float16, integer, bool,
complex and object arrays raise ``TypeError``.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import numpy as np

from .limits import check_allocation
from .params import ConvParams, PoolParams

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
GRADIENT_NAMES = ("input", "weight", "bias")


# ---------------------------------------------------------------- arrays

def float_view(value, name: str, ndim: Optional[int] = None) -> np.ndarray:
    """``value`` as a float32/float64 ndarray, without copying; checks dtype and ndim."""
    if value is None:
        raise TypeError(f"{name} is None: expected a float32 or float64 array")
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    if array.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name} has dtype {array.dtype}: expected float32 or float64 "
            "(convert with .astype(np.float32) if this is intended)")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} has {array.ndim} dimensions (shape {array.shape}): expected {ndim}"
                         + (" (N, C, H, W)" if ndim == 4 else ""))
    return array


def contiguous(array: np.ndarray, name: str, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """``array`` C-contiguous and of ``dtype`` (default: its own), copied only when needed.

    The one copy covers a dtype conversion and Fortran-ordered, negative-stride or broadcast
    views. Its size is checked first: a broadcast view can be far larger than its memory.
    """
    dtype = array.dtype if dtype is None else np.dtype(dtype)
    if array.dtype != dtype or not array.flags.c_contiguous:
        check_allocation(array.shape, dtype.itemsize, f"a contiguous copy of {name}")
    return np.asarray(array, dtype=dtype, order="C")


def output_array(out, shape: Tuple[int, ...], dtype: np.dtype, name: str = "out",
                 inputs: Sequence[Optional[np.ndarray]] = ()) -> np.ndarray:
    """The array a kernel writes into: ``out`` after checks, or a fresh one.

    ``out`` must be a C-contiguous ndarray of exactly ``shape`` and ``dtype`` that does not
    overlap any input (a kernel reading and writing the same memory gives garbage).
    """
    if out is None:
        check_allocation(shape, np.dtype(dtype).itemsize, "the result")
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} is a {type(out).__name__}: expected a numpy.ndarray or None")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} has shape {out.shape}: expected {tuple(shape)}")
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}: expected {np.dtype(dtype)} (the result dtype)")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array")
    for array in inputs:
        if array is not None and np.may_share_memory(out, array):
            raise ValueError(f"{name} overlaps an input array: pass a separate output buffer")
    return out


# ---------------------------------------------------------------- scalars

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def int_pair(value, name: str, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints, each ``>= minimum``, as a pair of Python ints."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)):
        if len(value) != 2 or not all(_is_int(v) for v in value):
            raise TypeError(f"{name}={value!r}: expected an int or a pair of ints")
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name}={value!r}: expected an int or a pair of ints")
    if min(pair) < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name}={value!r}: expected {bound} values")
    return pair


def positive_int(value, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{name}={value!r}: expected a positive int")
    if value <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive int")
    return int(value)


def needs_tuple(needs) -> Tuple[str, ...]:
    """Normalise ``needs`` of ``conv2d_backward`` to a tuple drawn from input/weight/bias."""
    if isinstance(needs, str):
        needs = (needs,)
    try:
        items = tuple(needs)
    except TypeError:
        raise TypeError(f"needs={needs!r}: expected a sequence drawn from {GRADIENT_NAMES}") from None
    for item in items:
        if item not in GRADIENT_NAMES:
            raise ValueError(f"needs={needs!r}: {item!r} is not one of {GRADIENT_NAMES}")
    return items


# ---------------------------------------------------------------- convolution

def conv_padding(padding, kernel: Tuple[int, int], dilation: Tuple[int, int],
                 stride: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) for an int/pair/"valid"/"same" padding argument."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            sides = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                # PyTorch puts the odd pixel of an even effective kernel at the end.
                sides += [total // 2, total - total // 2]
            return tuple(sides)
        raise ValueError(f"padding={padding!r}: expected an int, a pair of ints, 'valid' or 'same'")
    ph, pw = int_pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def conv_params(x_shape, w_shape, stride, padding, dilation, groups, dtype) -> ConvParams:
    """Check a convolution's geometry and return its ``ConvParams``."""
    n, c, h, w = x_shape
    k, cg, r, s = w_shape
    groups = positive_int(groups, "groups")
    if c == 0:
        raise ValueError(f"x has shape {tuple(x_shape)}: expected at least one channel")
    if h == 0 or w == 0:
        raise ValueError(f"x has shape {tuple(x_shape)}: expected non-empty spatial dimensions")
    if k == 0 or r == 0 or s == 0:
        raise ValueError(f"weight has shape {tuple(w_shape)}: expected no zero dimension")
    if c % groups:
        raise ValueError(f"groups={groups} does not divide the {c} input channels of x")
    if k % groups:
        raise ValueError(f"groups={groups} does not divide the {k} output channels of weight")
    if cg * groups != c:
        raise ValueError(
            f"weight has shape {tuple(w_shape)}: with groups={groups} its dimension 1 must be "
            f"C/groups = {c // groups} for x with C={c} channels")
    stride_hw = int_pair(stride, "stride", minimum=1)
    dilation_hw = int_pair(dilation, "dilation", minimum=1)
    pads = conv_padding(padding, (r, s), dilation_hw, stride_hw)
    eff_r = dilation_hw[0] * (r - 1) + 1
    eff_s = dilation_hw[1] * (s - 1) + 1
    padded_h, padded_w = h + pads[0] + pads[1], w + pads[2] + pads[3]
    if eff_r > padded_h or eff_s > padded_w:
        raise ValueError(
            f"the kernel ({eff_r}x{eff_s} with dilation {dilation_hw}) is larger than the padded "
            f"input ({padded_h}x{padded_w}) for x of shape {tuple(x_shape)} and padding={padding!r}")
    return ConvParams(n=n, c=c, h=h, w=w, k=k, r=r, s=s,
                      stride_h=stride_hw[0], stride_w=stride_hw[1],
                      pad_top=pads[0], pad_bottom=pads[1], pad_left=pads[2], pad_right=pads[3],
                      dil_h=dilation_hw[0], dil_w=dilation_hw[1], groups=groups,
                      dtype=np.dtype(dtype).name)


def bias_view(bias, k: int) -> Optional[np.ndarray]:
    if bias is None:
        return None
    bias = float_view(bias, "bias")
    if bias.shape != (k,):
        raise ValueError(f"bias has shape {bias.shape}: expected ({k},), one value per output channel")
    return bias


def conv_forward_args(x, weight, bias, stride, padding, dilation, groups):
    """Checked ``(x, weight, bias, params)`` of ``conv2d``; copies (if any) come after all checks."""
    x = float_view(x, "x", ndim=4)
    weight = float_view(weight, "weight", ndim=4)
    params = conv_params(x.shape, weight.shape, stride, padding, dilation, groups, x.dtype)
    bias = bias_view(bias, params.k)
    return (contiguous(x, "x"), contiguous(weight, "weight", x.dtype),
            None if bias is None else contiguous(bias, "bias", x.dtype), params)


def conv_backward_args(grad_output, x, weight, stride, padding, dilation, groups, needs):
    """Checked ``(grad_output, x, weight, params, needs)`` of ``conv2d_backward``."""
    x = float_view(x, "x", ndim=4)
    weight = float_view(weight, "weight", ndim=4)
    params = conv_params(x.shape, weight.shape, stride, padding, dilation, groups, x.dtype)
    grad_output = gradient_view(grad_output, "grad_output", params.output_shape)
    needs = needs_tuple(needs)
    return (contiguous(grad_output, "grad_output", x.dtype), contiguous(x, "x"),
            contiguous(weight, "weight", x.dtype), params, needs)


def gradient_view(grad, name: str, expected_shape) -> np.ndarray:
    grad = float_view(grad, name, ndim=len(expected_shape))
    if grad.shape != tuple(expected_shape):
        raise ValueError(f"{name} has shape {grad.shape}: expected {tuple(expected_shape)} "
                         "(the shape of the forward result)")
    return grad


# ---------------------------------------------------------------- pooling

def pool_params(x_shape, kernel_size, stride, padding, count_include_pad, dtype) -> PoolParams:
    """Check a pooling window against the input and return its ``PoolParams``."""
    n, c, h, w = x_shape
    kh, kw = int_pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = (kh, kw) if stride is None else int_pair(stride, "stride", minimum=1)
    if isinstance(padding, str):
        raise TypeError(f"padding={padding!r}: pooling takes an int or a pair of ints")
    ph, pw = int_pair(padding, "padding", minimum=0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding={padding!r} is more than half the window {kh}x{kw}: "
                         f"expected at most ({kh // 2}, {kw // 2})")
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"count_include_pad={count_include_pad!r}: expected True or False")
    if h == 0 or w == 0 or c == 0:
        raise ValueError(f"x has shape {tuple(x_shape)}: expected non-empty channel and spatial dimensions")
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(f"kernel_size={kernel_size!r} is larger than the padded input "
                         f"({h + 2 * ph}x{w + 2 * pw}) of x with shape {tuple(x_shape)}")
    return PoolParams(n=n, c=c, h=h, w=w, kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw,
                      pad_h=ph, pad_w=pw, count_include_pad=bool(count_include_pad),
                      dtype=np.dtype(dtype).name)


def pool_forward_args(x, kernel_size, stride, padding, count_include_pad=True):
    """Checked ``(x, params)`` of a pooling forward (and of max pooling's backward)."""
    x = float_view(x, "x", ndim=4)
    p = pool_params(x.shape, kernel_size, stride, padding, count_include_pad, x.dtype)
    return contiguous(x, "x"), p


def avg_pool_backward_args(grad_output, x_shape, kernel_size, stride, padding, count_include_pad):
    """Checked ``(grad_output, params)`` of ``avg_pool2d_backward`` (dtype: grad_output's)."""
    grad_output = float_view(grad_output, "grad_output", ndim=4)
    p = pool_params(input_shape(x_shape), kernel_size, stride, padding, count_include_pad,
                    grad_output.dtype)
    grad_output = gradient_view(grad_output, "grad_output", p.output_shape)
    return contiguous(grad_output, "grad_output"), p


def input_shape(x_shape, name: str = "x_shape") -> Tuple[int, int, int, int]:
    """A 4-tuple of non-negative ints describing an NCHW input."""
    try:
        shape = tuple(x_shape)
    except TypeError:
        raise TypeError(f"{name}={x_shape!r}: expected a tuple (N, C, H, W)") from None
    if len(shape) != 4 or not all(_is_int(d) for d in shape):
        raise ValueError(f"{name}={x_shape!r}: expected a tuple of 4 ints (N, C, H, W)")
    if min(shape) < 0:
        raise ValueError(f"{name}={x_shape!r}: expected non-negative sizes")
    return tuple(int(d) for d in shape)


#: Where max-pool indices come from and what they hold (for the error messages).
_INDICES_SOURCE = "(as returned by max_pool2d(..., return_indices=True))"


def pool_indices(indices, expected_shape) -> np.ndarray:
    """Int64 argmax indices (flat offsets into each H*W plane, as PyTorch returns), with
    dtype and shape checked. Their range is not: the ``max_pool2d_backward`` kernels read
    every index anyway and count those outside the plane (a separate pass over them was 12%
    of MNIST pool2's backward); ``pool_indices_error`` then makes the error."""
    return int_array(indices, "indices", expected_shape, np.dtype(np.int64), _INDICES_SOURCE)


def pool_indices_error(indices, plane_size: int) -> ValueError:
    """The error for indices (as the user passed them) of which some lie outside [0, plane_size)."""
    return out_of_range_error(indices, "indices", plane_size,
                              f"flat offsets in [0, {plane_size}) into each H*W plane of x")


def int_array(values, name: str, expected_shape, dtype: np.dtype, source: str) -> np.ndarray:
    """``values`` as a contiguous ``dtype`` array of ``expected_shape`` (values not checked).

    A value that does not fit ``dtype`` wraps (uint64 above 2**63 becomes negative), so a
    range check on the result still finds it.
    """
    values = values if isinstance(values, np.ndarray) else np.asarray(values)
    if values.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {values.dtype}: expected an integer array {source}")
    if values.shape != tuple(expected_shape):
        raise ValueError(f"{name} has shape {values.shape}: expected {tuple(expected_shape)}")
    return np.ascontiguousarray(values, dtype=dtype)


def out_of_range_error(values, name: str, bound: int, meaning: str) -> ValueError:
    """The error for ``values`` of which some lie outside [0, bound), naming one of them."""
    values = np.asarray(values)
    low, high = int(values.min()), int(values.max())
    bad = low if low < 0 else high
    return ValueError(f"{name} holds {bad}: expected {meaning}")


def bounded_ints(values, name: str, expected_shape, bound: int, dtype: np.dtype, source: str,
                 meaning: str) -> np.ndarray:
    """``values`` as a contiguous ``dtype`` array of ``expected_shape``, each in [0, bound).

    ``source`` says where such an array comes from, ``meaning`` what its values are (both
    for the error messages).
    """
    values = values if isinstance(values, np.ndarray) else np.asarray(values)
    checked = int_array(values, name, expected_shape, values.dtype, source)   # in its own dtype: narrowing wraps
    # One pass: viewed as unsigned, a negative value is huge, so the largest value alone tells
    # whether any lies outside [0, bound) (min() and max() would be two passes).
    if checked.size and int(checked.view(checked.dtype.str.replace("i", "u")).max()) >= bound:
        raise out_of_range_error(values, name, bound, meaning)
    return np.ascontiguousarray(checked, dtype=dtype)
