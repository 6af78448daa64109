"""Every bad argument gets a ValueError/TypeError naming the argument, its value and what was expected."""
import numpy as np
import pytest

import fastconv

X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)
GY = np.zeros((2, 6, 6, 6), np.float32)


def conv(**kw):
    args = dict(x=X, weight=W)
    args.update(kw)
    return fastconv.conv2d(**args)


@pytest.mark.parametrize("kw,error,words", [
    (dict(x=np.zeros((4, 8, 8), np.float32)), ValueError, ["x", "3 dimensions", "expected 4"]),
    (dict(weight=np.zeros((6, 4, 3), np.float32)), ValueError, ["weight", "3 dimensions"]),
    (dict(weight=np.zeros((6, 3, 3, 3), np.float32)), ValueError, ["weight", "(6, 3, 3, 3)", "C/groups = 4"]),
    (dict(groups=3), ValueError, ["groups=3", "4 input channels"]),
    (dict(weight=np.zeros((5, 2, 3, 3), np.float32), groups=2), ValueError, ["groups=2", "5 output channels"]),
    (dict(groups=0), ValueError, ["groups=0", "positive"]),
    (dict(groups=-2), ValueError, ["groups=-2"]),
    (dict(groups=1.0), TypeError, ["groups=1.0"]),
    (dict(stride=0), ValueError, ["stride=0", "positive"]),
    (dict(stride=(1, -1)), ValueError, ["stride=(1, -1)"]),
    (dict(dilation=0), ValueError, ["dilation=0", "positive"]),
    (dict(padding=-1), ValueError, ["padding=-1", ">= 0"]),
    (dict(padding="full"), ValueError, ["padding='full'", "'same'"]),
    (dict(padding="same", stride=2), ValueError, ["padding='same'", "stride 1"]),
    (dict(stride=1.5), TypeError, ["stride=1.5", "int"]),
    (dict(stride=(1, 2, 3)), TypeError, ["stride=(1, 2, 3)", "pair"]),
    (dict(padding=(1,)), TypeError, ["padding=(1,)"]),
    (dict(dilation=True), TypeError, ["dilation=True"]),
    (dict(weight=np.zeros((6, 4, 9, 9), np.float32)), ValueError, ["kernel", "larger than the padded input"]),
    (dict(weight=np.zeros((6, 4, 3, 3), np.float32), dilation=4), ValueError, ["larger than the padded input"]),
    (dict(bias=np.zeros(5, np.float32)), ValueError, ["bias", "(5,)", "(6,)"]),
    (dict(bias=np.zeros((6, 1), np.float32)), ValueError, ["bias", "(6, 1)"]),
    (dict(x=X.astype(np.int32)), TypeError, ["x", "int32", "float32 or float64"]),
    (dict(x=X.astype(np.complex64)), TypeError, ["x", "complex64"]),
    (dict(x=X.astype(object)), TypeError, ["x", "object"]),
    (dict(x=X.astype(bool)), TypeError, ["x", "bool"]),
    (dict(x=X.astype(np.float16)), TypeError, ["x", "float16"]),
    (dict(weight=W.astype(np.int64)), TypeError, ["weight", "int64"]),
    (dict(out=np.zeros((2, 6, 5, 6), np.float32)), ValueError, ["out", "(2, 6, 5, 6)", "(2, 6, 6, 6)"]),
    (dict(out=np.zeros((2, 6, 6, 6), np.float64)), TypeError, ["out", "float64", "float32"]),
    (dict(out=np.zeros((6, 6, 6, 2), np.float32).transpose(3, 0, 1, 2)), ValueError, ["out", "C-contiguous"]),
    (dict(out=[0.0]), TypeError, ["out", "list"]),
    (dict(algo="fft"), ValueError, ["algo='fft'", "im2col"]),
    (dict(backend="cuda"), ValueError, ["backend='cuda'", "numba"]),
    (dict(algo="winograd", stride=2), ValueError, ["winograd", "stride 1"]),
    (dict(algo="winograd", weight=np.zeros((6, 4, 5, 5), np.float32)), ValueError, ["winograd", "3x3"]),
])
def test_conv2d_bad_arguments(kw, error, words):
    with pytest.raises(error) as info:
        conv(**kw)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_forced_algorithm_that_cannot_apply_is_unsupported_error():
    with pytest.raises(fastconv.UnsupportedError):
        conv(algo="winograd", stride=2)


def test_zero_channels_and_empty_planes_are_rejected():
    with pytest.raises(ValueError, match="at least one channel"):
        fastconv.conv2d(np.zeros((1, 0, 4, 4)), np.zeros((2, 0, 3, 3)))
    with pytest.raises(ValueError, match="non-empty spatial"):
        fastconv.conv2d(np.zeros((1, 2, 0, 4)), np.zeros((2, 2, 1, 1)))


def test_out_overlapping_an_input_is_rejected():
    x = np.zeros((1, 2, 3, 3))
    with pytest.raises(ValueError, match="overlaps"):
        fastconv.conv2d(x, np.zeros((2, 2, 1, 1)), out=x)


@pytest.mark.parametrize("kw,error,words", [
    (dict(grad_output=np.zeros((2, 6, 5, 6), np.float32)), ValueError, ["grad_output", "(2, 6, 5, 6)", "(2, 6, 6, 6)"]),
    (dict(grad_output=np.zeros((2, 6, 6), np.float32)), ValueError, ["grad_output", "3 dimensions"]),
    (dict(grad_output=GY.astype(np.int16)), TypeError, ["grad_output", "int16"]),
    (dict(needs=("input", "bias_")), ValueError, ["needs", "'bias_'"]),
    (dict(needs=3), TypeError, ["needs=3"]),
    (dict(algo="nope"), ValueError, ["algo='nope'"]),
])
def test_conv2d_backward_bad_arguments(kw, error, words):
    args = dict(grad_output=GY, x=X, weight=W)
    args.update(kw)
    with pytest.raises(error) as info:
        fastconv.conv2d_backward(**args)
    for word in words:
        assert word in str(info.value)


P = np.zeros((2, 3, 8, 8), np.float32)


@pytest.mark.parametrize("fn", [fastconv.max_pool2d, fastconv.avg_pool2d])
@pytest.mark.parametrize("kw,error,words", [
    (dict(kernel_size=0), ValueError, ["kernel_size=0", "positive"]),
    (dict(kernel_size=(2, -1)), ValueError, ["kernel_size=(2, -1)"]),
    (dict(kernel_size=2.0), TypeError, ["kernel_size=2.0"]),
    (dict(kernel_size=9), ValueError, ["kernel_size=9", "larger than the padded input"]),
    (dict(kernel_size=3, padding=2), ValueError, ["padding=2", "half the window"]),
    (dict(kernel_size=2, stride=0), ValueError, ["stride=0"]),
    (dict(kernel_size=2, padding=-1), ValueError, ["padding=-1"]),
    (dict(kernel_size=2, padding="same"), TypeError, ["padding='same'"]),
    (dict(kernel_size=2, x=np.zeros((3, 8, 8), np.float32)), ValueError, ["x", "3 dimensions"]),
    (dict(kernel_size=2, x=P.astype(np.uint8)), TypeError, ["x", "uint8"]),
    (dict(kernel_size=2, backend="gpu"), ValueError, ["backend='gpu'"]),
    (dict(kernel_size=2, algo="im2col"), ValueError, ["algo='im2col'"]),
])
def test_pooling_bad_arguments(fn, kw, error, words):
    args = dict(x=P)
    args.update(kw)
    with pytest.raises(error) as info:
        fn(**args)
    for word in words:
        assert word in str(info.value)


def test_avg_pool_count_include_pad_must_be_bool():
    with pytest.raises(TypeError, match="count_include_pad"):
        fastconv.avg_pool2d(P, 2, count_include_pad="yes")


def test_pool_backward_bad_gradient_and_indices():
    y, idx = fastconv.max_pool2d(P, 2, return_indices=True)
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 3, 3, 4\)"):
        fastconv.max_pool2d_backward(np.zeros((2, 3, 3, 4), np.float32), P, 2)
    with pytest.raises(ValueError, match="indices holds 64"):
        fastconv.max_pool2d_backward(y, P, 2, indices=np.full(idx.shape, 64))
    with pytest.raises(ValueError, match="indices holds -1"):
        fastconv.max_pool2d_backward(y, P, 2, indices=np.full(idx.shape, -1))
    with pytest.raises(ValueError, match="indices has shape"):
        fastconv.max_pool2d_backward(y, P, 2, indices=idx[:, :, :2])
    with pytest.raises(TypeError, match="indices has dtype float64"):
        fastconv.max_pool2d_backward(y, P, 2, indices=idx.astype(np.float64))
    with pytest.raises(ValueError, match="x_shape"):
        fastconv.avg_pool2d_backward(y, (2, 3, 8), 2)
    with pytest.raises(ValueError, match="grad_output has shape"):
        fastconv.avg_pool2d_backward(y, (2, 3, 10, 10), 2)


def test_absurd_input_copy_fails_before_allocating():
    # A broadcast view has no memory behind it, but making it contiguous would need 64 TiB.
    huge = np.broadcast_to(np.float32(0), (2**14, 1024, 1024, 1024))
    with pytest.raises(fastconv.WorkspaceTooLargeError, match=r"copy of x of shape .* TiB"):
        fastconv.conv2d(huge, np.zeros((1, 1024, 1, 1), np.float32))


def test_result_beyond_the_allocation_limit_fails_clearly():
    fastconv.set_max_allocation_bytes(2**20)
    try:
        with pytest.raises(fastconv.WorkspaceTooLargeError, match="the result") as info:
            fastconv.conv2d(np.zeros((8, 1, 64, 64), np.float32), np.zeros((16, 1, 1, 1), np.float32))
        assert isinstance(info.value, MemoryError) and isinstance(info.value, ValueError)
    finally:
        fastconv.set_max_allocation_bytes(None)


def test_error_before_any_kernel_runs():
    """A bad argument is reported even when the input is enormous (checks run before work)."""
    huge = np.broadcast_to(np.float32(0), (1024, 4, 1024, 1024))  # 16 GiB view, no memory
    with pytest.raises(ValueError, match="groups=3"):
        fastconv.conv2d(huge, W, groups=3)
