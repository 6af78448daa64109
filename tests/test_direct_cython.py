"""What the shared parity grid does not reach in the Cython direct and pooling kernels.

* NaN/Inf through max pooling, indices included, on the 2x2/stride-2 fast path (which
  rechecks a row that holds a NaN) and on the general path (clipped border windows and
  the vectorised interior).
* Max-pool backward with overlapping windows (stride < window), where several windows
  share an argmax and their gradients must add up, and with caller-made indices.
* Results identical bit for bit with 1 and 2 threads.
* Shapes large enough for the fast paths: the one-input-channel 3x3 plane kernels
  (depthwise and C = 1), several batch chunks in grad_weight, channel chunks whose padded
  planes do not fit one workspace, rows wider than one tile, pooling planes of odd size.
"""
import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.checks import conv_params, pool_params

from cases import assert_close, chunked_channels

pytest.importorskip("fastconv.kernels.cython.direct")
pytest.importorskip("fastconv.kernels.cython.pooling")

CY = dict(algo="direct", backend="cython")
DTYPES = ["float32", "float64"]


@pytest.fixture
def threads():
    """Set the thread count for a test and restore it afterwards."""
    before = fastconv.get_num_threads()
    yield fastconv.set_num_threads
    fastconv.set_num_threads(before)


def _conv_all(x, w, b, gy, **kw):
    y = fastconv.conv2d(x, w, b, **kw, **CY)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, **kw, **CY)
    return y, gx, gw, gb


def _conv_reference(x, w, b, gy, **kw):
    p = conv_params(x.shape, w.shape, kw.get("stride", 1), kw.get("padding", 0),
                    kw.get("dilation", 1), kw.get("groups", 1), "float64")
    x64, w64, gy64 = (a.astype(np.float64) for a in (x, w, gy))
    y = np.empty(p.output_shape)
    reference.conv2d_forward(x64, w64, None if b is None else b.astype(np.float64), y, p)
    gx = np.empty(p.input_shape)
    reference.conv2d_grad_input(gy64, w64, gx, p)
    gw = np.empty(p.weight_shape)
    reference.conv2d_grad_weight(gy64, x64, gw, p)
    gb = gy64.sum(axis=(0, 2, 3))
    return y, gx, gw, gb


def _conv_arrays(xshape, wshape, dtype, seed=0, **kw):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype)
    p = conv_params(xshape, wshape, kw.get("stride", 1), kw.get("padding", 0),
                    kw.get("dilation", 1), kw.get("groups", 1), dtype)
    gy = rng.standard_normal(p.output_shape).astype(dtype)
    return x, w, b, gy


# ---------------------------------------------------------------- larger convolutions

# Channel counts past one copy of padded planes: 60x60 and 70x64 inputs padded by 1, and the
# grad_output planes (96x97) of a 5x5 filter padded by 4 for grad_input.
CHUNKED_60, CHUNKED_70, CHUNKED_GRAD = chunked_channels(62, 62), chunked_channels(72, 66), chunked_channels(104, 105)
# A 5x5 filter's five column-shifted 30 x 16 planes per channel.
CHUNKED_SHIFTED = chunked_channels(30, 5 * 16)

LARGE_CONVS = [
    # name, x shape, w shape, kwargs
    ("depthwise_3x3_same", (2, 12, 30, 33), (12, 1, 3, 3), dict(padding=1, groups=12)),
    ("depthwise_3x3_valid_odd_rows", (1, 5, 9, 40), (5, 1, 3, 3), dict(groups=5)),
    ("depthwise_multiplier_3x3", (2, 4, 17, 19), (8, 1, 3, 3), dict(padding=1, groups=4)),
    ("one_channel_mnist_3x3", (9, 1, 28, 28), (32, 1, 3, 3), {}),
    ("one_channel_lenet_5x5_same", (5, 1, 28, 28), (6, 1, 5, 5), dict(padding=2)),
    ("one_channel_wide_rows", (2, 1, 7, 300), (3, 1, 3, 3), dict(padding=1)),
    ("many_channel_chunks", (2, CHUNKED_60, 60, 60), (6, CHUNKED_60, 3, 3), dict(padding=1)),
    ("k_blocks_with_remainder", (1, 3, 20, 21), (11, 3, 3, 3), dict(padding=1)),
    ("strided_wide_rows", (1, 2, 9, 601), (5, 2, 3, 3), dict(stride=2, padding=1)),
    ("grad_weight_batch_chunks", (16, 2, 10, 10), (2, 2, 3, 3), dict(padding=1)),
    ("pointwise_many_channels", (2, 40, 9, 11), (7, 40, 1, 1), {}),
    # tap_block: more taps than one call takes (15 * 9 > TAP_CHUNK), 4 + 3 output channels,
    # rows that leave 8-wide and scalar tails; 4 + 2 channels with 5x5 (LeNet's conv2);
    # a single output channel (and 4 + 1 channels in grad_input).
    ("tap_chunks_seven_channels", (2, 15, 11, 13), (7, 15, 3, 3), dict(padding=1)),
    ("six_channels_5x5", (3, 6, 14, 14), (16, 6, 5, 5), {}),
    ("one_output_channel", (2, 5, 9, 10), (1, 5, 3, 3), dict(padding=1)),
    # rows summed straight into y: a masked last vector (30 = 3*8 + 6), and channel chunks
    # (later chunks start from the sums already in y) with 4 + 1 output channels.
    ("rows_masked_tail", (2, 3, 9, 30), (6, 3, 3, 3), dict(padding=1)),
    ("rows_channel_chunks", (1, CHUNKED_70, 70, 64), (5, CHUNKED_70, 3, 3), dict(padding=1)),
    # grad_weight over rows of whole vectors (32 wide), several rows per dot_block call and
    # a last call with fewer, on phase planes (the 7x7 stem's layout)
    ("rows_of_whole_vectors_stride2", (2, 3, 40, 64), (5, 3, 7, 7), dict(stride=2, padding=3)),
    # stride-1 grad_input rows that share their zero borders (a read past a row's end lands
    # in the next row's left border): dilated taps, an even kernel's uneven "same" padding,
    # and grad_output planes in several channel chunks (reads past the last row of a plane).
    ("shared_border_dilated", (2, 5, 13, 17), (4, 5, 3, 3), dict(padding=1, dilation=2)),
    ("shared_border_even_same", (2, 3, 12, 15), (4, 3, 4, 4), dict(padding="same")),
    ("shared_border_channel_chunks", (1, 3, 100, 101), (CHUNKED_GRAD, 3, 5, 5), {}),
    # column-shifted planes (rows wasting over 1/8 of their width) in two channel chunks
    ("shifted_channel_chunks", (1, CHUNKED_SHIFTED, 30, 20), (3, CHUNKED_SHIFTED, 5, 5), {}),
    # 1x1 planes as wide as the output, summed in y's own order: read in place with several
    # tap chunks (direct_plan.TAP_CHANNELS), and copied (padding) or phase-split (stride 2)
    ("pointwise_tap_chunks", (2, 150, 7, 9), (11, 150, 1, 1), {}),
    # ... over planes of several 1x1 tiles (direct_plan.ONE_BY_ONE_TILE), the last one partial
    ("pointwise_tap_chunks_tiles", (1, 130, 19, 15), (13, 130, 1, 1), {}),
    ("pointwise_padded", (2, 70, 6, 5), (5, 70, 1, 1), dict(padding=1)),
    ("pointwise_stride2_chunks", (1, 130, 9, 8), (7, 130, 1, 1), dict(stride=2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,xshape,wshape,kw", LARGE_CONVS, ids=[c[0] for c in LARGE_CONVS])
def test_fast_path_convolutions_match_oracle(name, xshape, wshape, kw, dtype):
    x, w, b, gy = _conv_arrays(xshape, wshape, dtype, **kw)
    got = _conv_all(x, w, b, gy, **kw)
    want = _conv_reference(x, w, b, gy, **kw)
    for g, r, what in zip(got, want, ("forward", "grad_input", "grad_weight", "grad_bias")):
        assert_close(g, r, dtype, "direct", what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shift", [1, 2, 3])
def test_output_channel_values_do_not_depend_on_their_channel_block(shift, dtype):
    """Output channels are summed in blocks of up to 4; rotating the filters moves each
    channel into another block (and block size): its values must stay the same bit for bit."""
    x, w, b, _ = _conv_arrays((2, 6, 12, 17), (7, 6, 3, 3), dtype, seed=shift, padding=1)
    y = fastconv.conv2d(x, w, b, padding=1, **CY)
    rolled = fastconv.conv2d(x, np.roll(w, shift, axis=0), np.roll(b, shift), padding=1, **CY)
    np.testing.assert_array_equal(rolled, np.roll(y, shift, axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xshape", [(2, 3, 9, 30), (2, 6, 10, 10)], ids=["rows", "tiles"])
def test_forward_without_bias_matches_oracle(xshape, dtype):
    x, w, _, _ = _conv_arrays(xshape, (5, xshape[1], 3, 3), dtype, padding=1)
    y = fastconv.conv2d(x, w, None, padding=1, **CY)
    want, _, _, _ = _conv_reference(x, w, None, np.zeros((xshape[0], 5) + xshape[2:]), padding=1)
    assert_close(y, want, dtype, "direct", "forward without bias")


@pytest.mark.parametrize("name,xshape,wshape,kw", LARGE_CONVS, ids=[c[0] for c in LARGE_CONVS])
def test_convolutions_do_not_depend_on_thread_count(name, xshape, wshape, kw, threads):
    x, w, b, gy = _conv_arrays(xshape, wshape, "float32", seed=1, **kw)
    threads(1)
    one = _conv_all(x, w, b, gy, **kw)
    threads(2)
    two = _conv_all(x, w, b, gy, **kw)
    for a, c, what in zip(one, two, ("forward", "grad_input", "grad_weight", "grad_bias")):
        np.testing.assert_array_equal(a, c, err_msg=what)


def test_convolution_propagates_nan_and_inf():
    """A NaN or Inf input reaches exactly the outputs whose window covers it."""
    x = np.zeros((1, 1, 8, 9), np.float32)
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 6, 7] = np.inf
    w = np.ones((2, 1, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, padding=1, **CY)
    want = _conv_reference(x, w, None, np.zeros_like(y), padding=1)[0]
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(want))
    assert np.isnan(y[0, :, 1:4, 2:5]).all() and np.isinf(y[0, :, 5:8, 6:9]).all()


NONFINITE_CONVS = [
    ((2, 3, 9, 8), (4, 3, 3, 3), dict(padding=1)),
    ((2, 3, 9, 8), (4, 3, 3, 3), dict(stride=2, padding=1)),
    ((1, 2, 10, 10), (2, 1, 3, 3), dict(groups=2, padding=1)),
    ((3, 1, 12, 12), (5, 1, 3, 3), {}),
    ((2, 1, 11, 13), (3, 1, 5, 5), dict(padding=2)),
]


def _same_nonfinite(got, want, dtype, what):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{what}: Inf positions")
    finite = np.isfinite(want)
    assert_close(np.where(finite, got, 0).astype(dtype), np.where(finite, want, 0), dtype, "direct", what)


@pytest.mark.parametrize("xshape,wshape,kw", NONFINITE_CONVS)
def test_gradients_with_nonfinite_values_match_oracle(xshape, wshape, kw):
    """Inf/NaN in x reach grad_weight, Inf in the weights reach grad_input, exactly where the
    oracle (and PyTorch) put them: no 0 * inf from padding or the kernels' extra columns."""
    x, w, b, gy = _conv_arrays(xshape, wshape, "float64", seed=2, **kw)
    x.reshape(-1)[::17] = np.inf
    x.reshape(-1)[5::23] = np.nan
    w_inf = w.copy()
    w_inf.reshape(-1)[::7] = -np.inf
    with np.errstate(invalid="ignore"):
        _, gx_ref, gw_ref, _ = _conv_reference(x, w_inf, b, gy, **kw)
    _, gx, gw, _ = _conv_all(x, w_inf, b, gy, **kw)
    _same_nonfinite(gw, gw_ref, "float64", "grad_weight")
    _same_nonfinite(gx, gx_ref, "float64", "grad_input")


# ---------------------------------------------------------------- pooling: NaN, Inf, ties

def _pool_reference(x, kernel, stride, padding):
    y, idx = fastconv.max_pool2d(x.astype(np.float64), kernel, stride, padding,
                                 return_indices=True, algo="reference")
    return y, idx


POOL_GEOMETRIES = [
    ((2, 3, 10, 12), 2, 2, 0),    # 2x2 fast path, even
    ((2, 3, 11, 9), 2, 2, 0),     # 2x2 fast path, odd (last row/column in no window)
    ((2, 2, 13, 40), 3, 2, 1),    # general: clipped border windows + vectorised interior
    ((1, 2, 9, 30), 3, 1, 1),     # overlapping, stride 1
    ((1, 2, 12, 35), (2, 4), (1, 3), (1, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel,stride,padding", POOL_GEOMETRIES)
def test_max_pool_nan_inf_and_indices(shape, kernel, stride, padding, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=flat.size // 6, replace=False)
    flat[picks[0::4]] = np.nan
    flat[picks[1::4]] = np.inf
    flat[picks[2::4]] = -np.inf
    flat[picks[3::4]] = 0.0     # ties with the zeros below
    x[0, 0, :3, :] = -np.inf    # whole windows of -inf: the first real element is chosen
    x[-1, -1, -2:, :] = 0.0     # all-equal windows: the first one wins
    y, idx = fastconv.max_pool2d(x, kernel, stride, padding, return_indices=True, **CY)
    y_ref, idx_ref = _pool_reference(x, kernel, stride, padding)
    np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    np.testing.assert_array_equal(y[~np.isnan(y)], y_ref[~np.isnan(y_ref)].astype(dtype))
    # the value path without indices agrees with the indexed one
    y_only = fastconv.max_pool2d(x, kernel, stride, padding, **CY)
    np.testing.assert_array_equal(y_only, y)


def test_max_pool_last_nan_of_window_gives_the_index():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 1] = np.nan    # first NaN of the top-left 2x2 window
    x[0, 0, 1, 0] = np.nan    # last NaN of it: its index wins
    x[0, 0, 2, 2] = 5.0
    x[0, 0, 3, 3] = np.nan
    for kernel, stride, padding in ((2, 2, 0), (3, 1, 1)):
        y, idx = fastconv.max_pool2d(x, kernel, stride, padding, return_indices=True, **CY)
        y_ref, idx_ref = _pool_reference(x, kernel, stride, padding)
        np.testing.assert_array_equal(idx, idx_ref)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True, **CY)
    assert idx[0, 0, 0, 0] == 4 and np.isnan(y[0, 0, 0, 0])
    assert idx[0, 0, 1, 1] == 15 and np.isnan(y[0, 0, 1, 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_backward_overlapping_windows_accumulate(dtype):
    rng = np.random.default_rng(4)
    # Few distinct values: neighbouring windows often share their argmax.
    x = rng.integers(0, 3, size=(2, 3, 15, 17)).astype(dtype)
    for kernel, stride, padding in ((3, 1, 1), (3, 2, 1), (4, 2, 2), ((3, 2), (1, 1), (1, 0))):
        y, idx = fastconv.max_pool2d(x, kernel, stride, padding, return_indices=True, **CY)
        gy = rng.standard_normal(y.shape).astype(dtype)
        got = fastconv.max_pool2d_backward(gy, x, kernel, stride, padding, indices=idx, **CY)
        want = fastconv.max_pool2d_backward(gy.astype(np.float64), x.astype(np.float64), kernel,
                                            stride, padding, algo="reference")
        assert_close(got, want, dtype, "direct", "max backward")
        # the gradient is conserved: every output adds its value somewhere
        np.testing.assert_allclose(got.sum(axis=(2, 3)), gy.sum(axis=(2, 3)), rtol=1e-4, atol=1e-4)
        # shared argmaxes really happen here (the test would be weaker without them)
        assert (np.diff(np.sort(idx.reshape(idx.shape[0] * idx.shape[1], -1), axis=1), axis=1) == 0).any()


def test_max_pool_backward_with_indices_outside_their_window():
    """Indices need not come from this forward (any flat offset in the plane is accepted)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 8)).astype(np.float32)
    gy = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    idx = rng.integers(0, 48, size=gy.shape)
    got = fastconv.max_pool2d_backward(gy, x, 2, indices=idx, **CY)
    want = fastconv.max_pool2d_backward(gy, x, 2, indices=idx, algo="reference")
    assert_close(got, want, "float32", "direct", "max backward")


# ---------------------------------------------------------------- pooling: fast paths, threads

AVG_GEOMETRIES = [
    ((3, 4, 27, 25), 2, 2, 0, True),
    ((2, 3, 14, 300), 3, 2, 1, False),
    ((2, 3, 14, 30), 3, 1, 1, True),
    ((4, 8, 7, 7), (7, 7), None, 0, True),      # global average pooling
    ((2, 3, 5, 9), (5, 9), None, 0, False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel,stride,padding,include", AVG_GEOMETRIES)
def test_avg_pool_fast_paths_match_oracle(shape, kernel, stride, padding, include, dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, count_include_pad=include)
    y = fastconv.avg_pool2d(x, **kw, **CY)
    assert_close(y, fastconv.avg_pool2d(x.astype(np.float64), **kw, algo="reference"), dtype,
                 "direct", "avg forward")
    gy = rng.standard_normal(y.shape).astype(dtype)
    g = fastconv.avg_pool2d_backward(gy, x.shape, **kw, **CY)
    assert_close(g, fastconv.avg_pool2d_backward(gy.astype(np.float64), x.shape, **kw,
                                                 algo="reference"), dtype, "direct", "avg backward")


def test_global_average_pool_helpers():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)
    y = fastconv.global_avg_pool2d(x, **CY)
    np.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3), dtype=np.float64), rtol=1e-5, atol=1e-6)
    gy = rng.standard_normal((3, 5, 1, 1)).astype(np.float32)
    g = fastconv.global_avg_pool2d_backward(gy, x.shape, **CY)
    np.testing.assert_allclose(g, np.broadcast_to(gy / 42, x.shape), rtol=1e-6)


@pytest.mark.parametrize("shape,kernel,stride,padding", POOL_GEOMETRIES)
def test_pooling_does_not_depend_on_thread_count(shape, kernel, stride, padding, threads):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::13] = np.nan

    def run():
        y, idx = fastconv.max_pool2d(x, kernel, stride, padding, return_indices=True, **CY)
        gy = np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape)
        gx = fastconv.max_pool2d_backward(gy, x, kernel, stride, padding, indices=idx, **CY)
        a = fastconv.avg_pool2d(x, kernel, stride, padding, count_include_pad=False, **CY)
        ga = fastconv.avg_pool2d_backward(gy, x.shape, kernel, stride, padding, **CY)
        return y, idx, gx, a, ga

    threads(1)
    one = run()
    threads(2)
    two = run()
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_kernels_write_every_output_element():
    """Outputs start uninitialised (np.empty): poison them and check nothing survives."""
    rng = np.random.default_rng(9)
    from fastconv.kernels.cython import direct, pooling

    for xshape, wshape, kw in [((2, 3, 9, 10), (5, 3, 3, 3), dict(padding=1)),
                               ((1, 4, 9, 9), (4, 1, 3, 3), dict(padding=1, groups=4)),
                               ((2, 2, 11, 7), (3, 2, 3, 2), dict(stride=(2, 3), padding=(1, 0)))]:
        p = conv_params(xshape, wshape, kw.get("stride", 1), kw.get("padding", 0), 1,
                        kw.get("groups", 1), "float32")
        x = rng.standard_normal(xshape).astype(np.float32)
        w = rng.standard_normal(wshape).astype(np.float32)
        gy = rng.standard_normal(p.output_shape).astype(np.float32)
        for out, call in ((np.full(p.output_shape, np.nan, np.float32),
                           lambda o: direct.conv2d_forward(x, w, None, o, p)),
                          (np.full(p.input_shape, np.nan, np.float32),
                           lambda o: direct.conv2d_grad_input(gy, w, o, p)),
                          (np.full(p.weight_shape, np.nan, np.float32),
                           lambda o: direct.conv2d_grad_weight(gy, x, o, p)),
                          (np.full(p.k, np.nan, np.float32),
                           lambda o: direct.conv2d_grad_bias(gy, o, p))):
            call(out)
            assert not np.isnan(out).any()
    for shape, k, s, pad in POOL_GEOMETRIES:
        p = pool_params(shape, k, s, pad, False, "float32")
        x = rng.standard_normal(shape).astype(np.float32)
        y = np.full(p.output_shape, np.nan, np.float32)
        idx = np.full(p.output_shape, -1, np.int64)
        pooling.max_pool2d_forward(x, y, idx, p)
        assert not np.isnan(y).any() and (idx >= 0).all()
        gx = np.full(shape, np.nan, np.float32)
        pooling.max_pool2d_backward(y, idx, gx, p)
        assert not np.isnan(gx).any()
        y.fill(np.nan)
        pooling.avg_pool2d_forward(x, y, p)
        assert not np.isnan(y).any()
        gx.fill(np.nan)
        pooling.avg_pool2d_backward(y, gx, p)
        assert not np.isnan(gx).any()
