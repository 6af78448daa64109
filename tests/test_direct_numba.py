"""The Numba direct convolution and pooling kernels beyond the shared parity grid.

Covers what the grid's small shapes do not reach: NaN/Inf and tie handling of max pooling
(values and indices) on the fast and general paths, overlapping-window max backward,
results that do not depend on the thread count, and shapes large enough to take the fast
paths (stride-1 flat passes over several bands, fused 3x3 pass, depthwise, one input
channel, global average pooling by lane sums).
"""
import numpy as np
import pytest

import fastconv
from fastconv.threads import get_num_threads

from cases import ConvCase, assert_close, chunked_channels, reference_conv

NB = dict(algo="direct", backend="numba")
REF = dict(algo="reference")


@pytest.fixture
def restore_threads():
    before = get_num_threads()
    yield
    fastconv.set_num_threads(before)


# ---------------------------------------------------------------- max pooling specials

def _special_input(shape, dtype, seed):
    """Random values with NaN, +-Inf, ties and -Inf plateaus sprinkled over every plane."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=shape).astype(dtype)  # small integers: many ties
    flat = x.reshape(-1)
    picks = rng.permutation(flat.size)
    k = max(1, flat.size // 20)
    flat[picks[:k]] = np.nan
    flat[picks[k:2 * k]] = np.inf
    flat[picks[2 * k:3 * k]] = -np.inf
    x[0, 0] = -np.inf  # a whole plane of -inf: the index must be the window's first element
    if shape[1] > 1:
        x[0, 1] = np.nan  # a whole plane of NaN: the index must be the window's last element
    return x


MAX_GEOMETRIES = [
    ((3, 4, 10, 12), 2, 2, 0),   # the 2x2 / stride-2 fast path
    ((2, 3, 11, 9), 2, 2, 0),    # fast path, odd sizes (last row/column unused)
    ((2, 3, 15, 16), 3, 2, 1),   # 3x3 stride 2, padded: separable path, even/odd split
    ((2, 3, 9, 10), 3, 1, 1),    # overlapping, unit stride
    ((2, 2, 12, 13), (4, 3), (3, 2), (2, 1)),  # general window and stride
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,k,s,p", MAX_GEOMETRIES)
def test_max_pool_nan_inf_ties_match_reference(shape, k, s, p, dtype):
    x = _special_input(shape, dtype, seed=sum(shape))
    y_ref, i_ref = fastconv.max_pool2d(x, k, s, p, return_indices=True, **REF)
    y, i = fastconv.max_pool2d(x, k, s, p, return_indices=True, **NB)
    np.testing.assert_array_equal(y, y_ref)  # NaN == NaN here
    np.testing.assert_array_equal(i, i_ref)
    assert np.isnan(y[0, 1]).all() if shape[1] > 1 else True
    y_only = fastconv.max_pool2d(x, k, s, p, **NB)
    np.testing.assert_array_equal(y_only, y_ref)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,k,s,p", MAX_GEOMETRIES)
def test_max_pool_backward_accumulates_overlapping_windows(shape, k, s, p, dtype):
    # Small integers make plateaus, so neighbouring windows often pick the same element
    # (stride < window): its gradient is the sum over all those windows.
    x = np.random.default_rng(1).integers(0, 3, size=shape).astype(dtype)
    y, idx = fastconv.max_pool2d(x, k, s, p, return_indices=True, **REF)
    gy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    g_ref = fastconv.max_pool2d_backward(gy.astype(np.float64), x.astype(np.float64), k, s, p, **REF)
    g = fastconv.max_pool2d_backward(gy, x, k, s, p, indices=idx, **NB)
    assert_close(g, g_ref, dtype, "direct", "max backward")
    # Every grad_output value lands somewhere: the totals per plane agree.
    np.testing.assert_allclose(g.sum(axis=(2, 3)), gy.sum(axis=(2, 3)), rtol=1e-5, atol=1e-4)
    if np.any(np.broadcast_to(s, 2) < np.broadcast_to(k, 2)):  # overlapping windows
        assert (np.bincount(idx[0, 0].ravel()) > 1).any(), "geometry should share argmaxes"


def test_max_pool_backward_without_indices_recomputes_them():
    x = _special_input((2, 3, 14, 14), "float64", seed=5)
    x[np.isnan(x)] = 0.0  # keep the gradient finite for the comparison
    y = fastconv.max_pool2d(x, 3, 2, 1, **REF)
    gy = np.random.default_rng(3).standard_normal(y.shape)
    g_ref = fastconv.max_pool2d_backward(gy, x, 3, 2, 1, **REF)
    np.testing.assert_array_equal(fastconv.max_pool2d_backward(gy, x, 3, 2, 1, **NB), g_ref)


# ---------------------------------------------------------------- average pooling

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 2, 40, 37)])  # small planes; lane sums
def test_global_average_pooling(shape, dtype):
    x = np.random.default_rng(4).standard_normal(shape).astype(dtype) + 3.0
    y = fastconv.avg_pool2d(x, shape[2:], **NB)
    assert_close(y, x.astype(np.float64).mean(axis=(2, 3), keepdims=True), dtype, "direct", "global avg")
    gy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    g = fastconv.avg_pool2d_backward(gy, shape, shape[2:], **NB)
    expected = np.broadcast_to(gy.astype(np.float64) / (shape[2] * shape[3]), shape)
    assert_close(g, expected, dtype, "direct", "global avg backward")


def test_average_pooling_propagates_nan_and_inf():
    x = np.zeros((1, 1, 6, 6))
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 5, 5] = np.inf
    y = fastconv.avg_pool2d(x, 2, **NB)
    assert np.isnan(y[0, 0, 0, 0]) and np.isinf(y[0, 0, 2, 2])
    assert np.isfinite(y[0, 0, 1:2, :]).all()
    assert np.isnan(fastconv.avg_pool2d(x, (6, 6), **NB)).all()


# ---------------------------------------------------------------- convolution fast paths

LARGE_CONV_CASES = [
    # depthwise 3x3 "same": stride-1 in-place path, fused 3x3 pass, several bands (h=w=100)
    ConvCase("depthwise_large", (2, 3, 100, 100), 3, (3, 3), padding=1, groups=3),
    # one input channel, no padding: stride-1 path with accumulator and copy-out
    ConvCase("c1_valid_large", (3, 1, 30, 29), 8, (3, 3)),
    # one input channel 5x5 "same" (LeNet): padded-band path shared by the output channels
    ConvCase("c1_5x5_same", (3, 1, 28, 28), 6, (5, 5), padding=2),
    # one input channel, 4x7 with padding: weight-gradient runs of five taps, then two
    ConvCase("c1_4x7_padded", (2, 1, 23, 31), 3, (4, 7), padding=(1, 3)),
    # depthwise with a dilated 3x3 and a non-3x3 kernel on a big plane
    ConvCase("depthwise_dilated", (1, 2, 70, 66), 2, (3, 3), padding=2, dilation=2, groups=2),
    ConvCase("depthwise_5x3", (1, 2, 64, 72), 2, (5, 3), padding=(2, 1), groups=2),
    # strided depthwise: padded-band forward, scatter grad_input
    ConvCase("depthwise_stride2", (2, 4, 57, 56), 4, (3, 3), stride=2, padding=1, groups=4),
    # several input channels per group: the tap-plane path, in groups
    ConvCase("grouped_channels", (2, 12, 33, 31), 20, (3, 3), padding=1, groups=2),
    # tap planes: two channel chunks with rows summed straight into y (out_w 64), more
    # taps than one tap_block call takes (15 * 9 > TAP_CHUNK) in tiles, masked straight rows
    # (79 = 4*16 + 15), LeNet's conv2, padding wider than the kernel (grad_input crops)
    ConvCase("planes_channel_chunks", (1, chunked_channels(72, 66), 70, 64), 5, (3, 3), padding=1),
    ConvCase("planes_tile_channel_chunks", (1, chunked_channels(42, 42), 40, 40), 3, (3, 3), padding=1),
    ConvCase("planes_tap_chunks", (2, 15, 11, 13), 7, (3, 3), padding=1),
    ConvCase("planes_masked_rows", (2, 3, 9, 79), 6, (3, 3), padding=1),
    ConvCase("planes_lenet_conv2", (3, 6, 14, 14), 16, (5, 5)),
    ConvCase("planes_wide_padding", (2, 4, 12, 11), 3, (3, 3), padding=3),
    # tap planes of phase-split strided inputs: stride 2 (a 7x7 stem), uneven stride 3 x 2
    # with dilation, and straight rows of a stride-2 layer (out_w 80)
    ConvCase("planes_stride2_7x7", (2, 3, 40, 37), 8, (7, 7), stride=2, padding=3),
    ConvCase("planes_stride3x2_dilated", (1, 5, 29, 31), 4, (3, 2), stride=(3, 2), padding=(2, 1), dilation=2),
    ConvCase("planes_stride2_rows", (1, 3, 12, 160), 5, (3, 3), stride=2, padding=1),
    ConvCase("planes_no_bias", (2, 6, 10, 10), 5, (3, 3), padding=1, bias=False),
    # column-shifted planes (rows wasting over 1/8 of their width): dilated, and in two
    # channel chunks; grad_input of planes_wide_padding crops them (negative top/left)
    ConvCase("shifted_dilated", (2, 5, 13, 17), 4, (3, 3), padding=1, dilation=2),
    ConvCase("shifted_channel_chunks", (1, chunked_channels(30, 5 * 16), 30, 20), 3, (5, 5)),
    # 1x1 planes as wide as the output, summed in y's own order: read in place with several
    # tap chunks (direct_plan.TAP_CHANNELS), and copied (padding) or phase-split (stride 2)
    ConvCase("pointwise_tap_chunks", (2, 150, 7, 9), 11, (1, 1)),
    # ... over planes of several 1x1 tiles (direct_plan.ONE_BY_ONE_TILE), the last one partial
    ConvCase("pointwise_tap_chunks_tiles", (1, 130, 19, 15), 13, (1, 1)),
    ConvCase("pointwise_padded", (2, 70, 6, 5), 5, (1, 1), padding=1),
    ConvCase("pointwise_stride2_chunks", (1, 130, 9, 8), 7, (1, 1), stride=2),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", LARGE_CONV_CASES, ids=lambda c: c.name)
def test_large_conv_fast_paths_match_oracle(case, dtype):
    x, w, b, gy = case.arrays(dtype, seed=7)
    y_ref, gx_ref, gw_ref, gb_ref = reference_conv(case, x, w, b, gy)
    assert_close(fastconv.conv2d(x, w, b, **case.kwargs(), **NB), y_ref, dtype, "direct", "forward")
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), **NB)
    assert_close(gx, gx_ref, dtype, "direct", "grad_input")
    assert_close(gw, gw_ref, dtype, "direct", "grad_weight")
    assert_close(gb, gb_ref, dtype, "direct", "grad_bias")


@pytest.mark.parametrize("groups,stride,size", [(2, 1, 12), (1, 1, 12), (1, 2, 12), (1, 1, 40)],
                         ids=["one_channel", "planes", "phases", "planes_row_spans"])
def test_conv_nan_and_inf_stay_where_they_belong(groups, stride, size):
    # An Inf in the input's last column: the stride-1 passes wrap around row ends at the
    # border columns, and the tap planes' wide rows run past them, which must not leak it
    # into outputs or weight taps that never read it.
    x = np.random.default_rng(8).standard_normal((2, 2, size, size))
    x[0, 1, 5, size - 1] = np.inf
    x[1, 0, 0, 0] = np.nan
    w = np.random.default_rng(9).standard_normal((2, 2 // groups, 3, 3))
    gy = np.random.default_rng(10).standard_normal((2, 2, size // stride, size // stride))
    kwargs = dict(padding=1, groups=groups, stride=stride)
    y_ref = fastconv.conv2d(x, w, **kwargs, **REF)
    y = fastconv.conv2d(x, w, **kwargs, **NB)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(y_ref))
    finite = np.isfinite(y_ref)
    np.testing.assert_allclose(y[finite], y_ref[finite], rtol=1e-10, atol=1e-12)
    gw_ref = fastconv.conv2d_backward(gy, x, w, **kwargs, needs=("weight",), **REF)[1]
    gw = fastconv.conv2d_backward(gy, x, w, **kwargs, needs=("weight",), **NB)[1]
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(gw_ref))
    finite = np.isfinite(gw_ref)
    assert finite.any() and not finite.all()
    np.testing.assert_allclose(gw[finite], gw_ref[finite], rtol=1e-10)


@pytest.mark.parametrize("kernel,padding", [((3, 3), 1), ((5, 5), 2), ((3, 3), 0)])
def test_one_channel_grad_weight_with_infinite_input(kernel, padding):
    """No weight-gradient path pairs a zero (a widened grad_output column) with an input
    value where the input holds an Inf or NaN: every tap that reads one is NaN/Inf as in the
    reference, the others exact."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 1, 14, 15))
    # First column only: the last column of taps never reads it and stays finite, while a
    # flat run would multiply it by a zero (widened) column of grad_output there.
    x[1, 0, 6, 0] = np.inf
    x[2, 0, 9, 0] = np.nan
    w = rng.standard_normal((4, 1) + kernel)
    out_hw = (14 + 2 * padding - kernel[0] + 1, 15 + 2 * padding - kernel[1] + 1)
    gy = rng.standard_normal((3, 4) + out_hw)
    gw_ref = fastconv.conv2d_backward(gy, x, w, padding=padding, needs=("weight",), **REF)[1]
    gw = fastconv.conv2d_backward(gy, x, w, padding=padding, needs=("weight",), **NB)[1]
    np.testing.assert_array_equal(np.isnan(gw), np.isnan(gw_ref))
    np.testing.assert_array_equal(np.isinf(gw), np.isinf(gw_ref))
    finite = np.isfinite(gw_ref)
    assert finite.any() and not finite.all()
    np.testing.assert_allclose(gw[finite], gw_ref[finite], rtol=1e-10)


# ---------------------------------------------------------------- thread-count independence

def _all_results(dtype):
    """Every kernel's output on shapes that reach the fast paths."""
    out = []
    by_name = {case.name: case for case in LARGE_CONV_CASES}
    for name in ("depthwise_large", "c1_valid_large", "c1_5x5_same", "depthwise_5x3", "planes_channel_chunks",
                 "planes_stride2_7x7"):
        case = by_name[name]
        x, w, b, gy = case.arrays(dtype, seed=11)
        out.append(fastconv.conv2d(x, w, b, **case.kwargs(), **NB))
        out.extend(fastconv.conv2d_backward(gy, x, w, **case.kwargs(), **NB))
    x = np.random.default_rng(12).standard_normal((4, 8, 26, 26)).astype(dtype)
    for k, s, p in ((2, 2, 0), (3, 2, 1)):
        y, i = fastconv.max_pool2d(x, k, s, p, return_indices=True, **NB)
        gy = np.ones_like(y)
        out += [y, i, fastconv.max_pool2d_backward(gy, x, k, s, p, indices=i, **NB),
                fastconv.avg_pool2d(x, k, s, p, **NB),
                fastconv.avg_pool2d_backward(gy, x.shape, k, s, p, **NB)]
    out.append(fastconv.avg_pool2d(x, (26, 26), **NB))
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_results_do_not_depend_on_thread_count(dtype, restore_threads):
    fastconv.set_num_threads(1)
    one = _all_results(dtype)
    fastconv.set_num_threads(2)
    two = _all_results(dtype)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)  # bit for bit: every element has one owner task
