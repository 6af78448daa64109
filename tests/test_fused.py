"""conv2d_relu_max_pool2d: the fused kernels of both backends against the three separate ops."""
import numpy as np
import pytest

import fastconv
from fastconv import fused, nn
from fastconv.nn import model as nn_model

BACKENDS = ["cython", "numba"]
DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-12, atol=1e-12)}

# (n, c, h, w, k, groups, padding): C = 1 first layers with even and odd convolution outputs,
# padding (the copied-plane path), depthwise with a channel multiplier, the smallest output.
CASES = [
    (3, 1, 9, 8, 4, 1, 0),
    (2, 1, 28, 28, 5, 1, 1),
    (2, 3, 7, 10, 6, 3, 1),
    (2, 4, 11, 6, 4, 4, 0),
    (1, 1, 4, 4, 2, 1, 0),
]


def _data(case, dtype, seed=0):
    n, c, h, w, k, groups, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    weight = rng.standard_normal((k, c // groups, 3, 3)).astype(dtype)
    bias = rng.standard_normal(k).astype(dtype)
    return x, weight, bias, dict(padding=padding, groups=groups)


def _separately(x, weight, bias, geometry, backend):
    """The three ops one after the other, and the convolution output they pooled."""
    conv = fastconv.conv2d(x, weight, bias, backend=backend, **geometry)
    y, indices = fastconv.max_pool2d(conv, 2, return_indices=True)
    return np.maximum(y, 0), indices, conv


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_fused_matches_the_separate_ops(case, backend, dtype):
    x, weight, bias, geometry = _data(case, dtype)
    p = fastconv.checks.conv_forward_args(x, weight, bias, 1, geometry["padding"], 1,
                                          geometry["groups"])[3]
    assert fused.fused_kernel(fused.FORWARD_OP, p, "auto", backend) is not None  # really fused
    y, indices = fastconv.conv2d_relu_max_pool2d(x, weight, bias, backend=backend, **geometry)
    y0, indices0, conv = _separately(x, weight, bias, geometry, backend)
    np.testing.assert_allclose(y, y0, **TOL[dtype])
    assert indices.dtype == np.uint8 and indices.max() <= 3
    np.testing.assert_array_equal(fused.window_offsets(indices, conv.shape[3]), indices0)  # no near-ties
    if backend == "cython":  # the same plane loop as its conv2d: the same bits
        np.testing.assert_array_equal(y, y0)

    g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gx, gw, gb = fastconv.conv2d_relu_max_pool2d_backward(g, y, indices, x, weight,
                                                          backend=backend, **geometry)
    # The reference: the ReLU's mask, the pool's scatter, then the oracle's gradients.
    g_conv = fastconv.max_pool2d_backward(g * (y0 > 0), conv, 2, indices=indices0)
    rx, rw, rb = fastconv.conv2d_backward(g_conv, x, weight, algo="reference", **geometry)
    np.testing.assert_allclose(gw, rw, **TOL[dtype])
    np.testing.assert_allclose(gb, rb, **TOL[dtype])
    np.testing.assert_allclose(gx, rx, **TOL[dtype])
    assert gw.dtype == gb.dtype == gx.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_maxima_give_max_pool2ds_choice(backend, dtype):
    """Small integers: exact sums and many windows whose maximum appears more than once."""
    rng = np.random.default_rng(5)
    x = rng.integers(-1, 2, (2, 1, 12, 13)).astype(dtype)
    weight = rng.integers(-1, 2, (4, 1, 3, 3)).astype(dtype)
    geometry = dict(padding=0, groups=1)
    y, codes = fastconv.conv2d_relu_max_pool2d(x, weight, None, backend=backend, **geometry)
    y0, indices0, conv = _separately(x, weight, None, geometry, backend)
    windows = conv[:, :, :10, :10].reshape(2, 4, 5, 2, 5, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    assert ((windows == windows.max(axis=1, keepdims=True)).sum(axis=1) > 1).mean() > 0.2
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(fused.window_offsets(codes, conv.shape[3]), indices0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_needs_and_no_bias(backend):
    x, weight, _, geometry = _data(CASES[1], "float64")
    y, indices = fastconv.conv2d_relu_max_pool2d(x, weight, None, backend=backend, **geometry)
    y0, indices0, conv = _separately(x, weight, None, geometry, backend)
    np.testing.assert_allclose(y, y0, rtol=1e-12)
    g = np.random.default_rng(2).standard_normal(y.shape)
    gx, gw, gb = fastconv.conv2d_relu_max_pool2d_backward(g, y, indices, x, weight, needs=("weight",),
                                                          backend=backend, **geometry)
    assert gx is None and gb is None
    g_conv = fastconv.max_pool2d_backward(g * (y0 > 0), conv, 2, indices=indices0)
    np.testing.assert_allclose(gw, fastconv.conv2d_backward(g_conv, x, weight, needs=("weight",),
                                                            algo="reference", **geometry)[1],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_nan_reaches_the_same_outputs(backend):
    x, weight, bias, geometry = _data(CASES[0], "float32")
    x[0, 0, 3, 4] = np.nan
    y, indices = fastconv.conv2d_relu_max_pool2d(x, weight, bias, backend=backend, **geometry)
    y0, indices0, _ = _separately(x, weight, bias, geometry, backend)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y0))
    assert np.isnan(y).any()
    np.testing.assert_array_equal(fused.window_offsets(indices, x.shape[3] - 2), indices0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_results_do_not_depend_on_thread_count(backend):
    x, weight, bias, geometry = _data((8, 1, 16, 16, 8, 1, 1), "float32")
    g = np.random.default_rng(3).standard_normal((8, 8, 8, 8)).astype(np.float32)
    before = fastconv.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            fastconv.set_num_threads(threads)
            y, indices = fastconv.conv2d_relu_max_pool2d(x, weight, bias, backend=backend, **geometry)
            results.append((y, indices) + fastconv.conv2d_relu_max_pool2d_backward(
                g, y, indices, x, weight, needs=("weight", "bias"), backend=backend, **geometry)[1:])
    finally:
        fastconv.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_other_layers_run_the_three_ops():
    """Two input channels per group: no fused kernel; the result is the separate ops' exactly."""
    x, weight, bias, _ = _data((2, 2, 9, 9, 3, 1, 0), "float64")
    p = fastconv.checks.conv_forward_args(x, weight, bias, 1, 0, 1, 1)[3]
    assert not fused.fuses(p)
    assert "run after the convolution" in fastconv.explain(fastconv.conv2d_relu_max_pool2d, x, weight, bias)
    y, indices = fastconv.conv2d_relu_max_pool2d(x, weight, bias)
    y0, indices0, _ = _separately(x, weight, bias, {}, "auto")
    np.testing.assert_array_equal(y, y0)
    assert indices.dtype == np.uint8
    np.testing.assert_array_equal(fused.window_offsets(indices, 7), indices0)
    x1, w1, b1, _ = _data(CASES[0], "float32")
    assert "fused into direct/" in fastconv.explain(fastconv.conv2d_relu_max_pool2d, x1, w1, b1)


def test_bad_backward_arguments_are_clear_errors():
    x, weight, bias, geometry = _data(CASES[0], "float32")
    y, indices = fastconv.conv2d_relu_max_pool2d(x, weight, bias, **geometry)
    g = np.ones_like(y)
    with pytest.raises(ValueError, match="grad_output has shape"):
        fastconv.conv2d_relu_max_pool2d_backward(g[:, :, :1], y, indices, x, weight, **geometry)
    with pytest.raises(ValueError, match="codes has shape"):
        fastconv.conv2d_relu_max_pool2d_backward(g, y, indices[:1], x, weight, **geometry)
    with pytest.raises(TypeError, match="codes has dtype"):
        fastconv.conv2d_relu_max_pool2d_backward(g, y, indices.astype(np.float32), x, weight, **geometry)
    for value in (4, -1):
        bad = indices.astype(np.int16)
        bad[0, 0, 0, 0] = value
        with pytest.raises(ValueError, match=f"codes holds {value}"):
            fastconv.conv2d_relu_max_pool2d_backward(g, y, bad, x, weight, **geometry)
    with pytest.raises(ValueError, match="convolution output is 1x1"):
        fastconv.conv2d_relu_max_pool2d(x[:, :, :3, :3], weight)
    with pytest.raises(ValueError, match="needs relu=True"):
        nn.Conv2d(1, 2, 3).forward(x, max_pool=True)


def _first_layer_model(fuse, dtype):
    nn.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 3, 3, dtype=dtype), nn.ReLU(), nn.Flatten(),
                         nn.Linear(12, 3, dtype=dtype), fuse=fuse)


@pytest.mark.parametrize("dtype", DTYPES)
def test_model_with_fused_first_layer_equals_unfused(dtype):
    plan = nn_model.plan(_first_layer_model(True, dtype).layers)
    assert plan[0].pool is not None and plan[0].absorbed is not None
    results = []
    for fuse in (True, False):
        model = _first_layer_model(fuse, dtype)
        x = np.random.default_rng(6).standard_normal((4, 1, 8, 8)).astype(dtype)
        y = model.forward(x)
        g = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
        gx = model.backward(g, need_input_grad=True)
        results.append((y, gx, [p.grad.copy() for p in model.parameters()]))
    (y1, gx1, g1), (y2, gx2, g2) = results
    np.testing.assert_allclose(y1, y2, **TOL[dtype])
    np.testing.assert_allclose(gx1, gx2, **TOL[dtype])
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def test_fusion_plan_leaves_other_pools_alone():
    layers = [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2, stride=1)]
    assert all(s.pool is None for s in nn_model.plan(layers))
    layers = [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2, backend="numba")]
    assert all(s.pool is None for s in nn_model.plan(layers))
    layers = [nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2)]
    assert all(s.pool is None for s in nn_model.plan(layers))


def test_train_kernel_summary_names_the_fused_op():
    from fastconv import train

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(200, 10))
    lines = train.kernel_summary(model, 8)
    assert "fused into direct/" in lines[0] and lines[0].startswith("  layer 0 Conv2d")
    assert "layer 0's fused op" in lines[1]
    assert "conv2d_forward=" in lines[2] and "max_pool2d_forward=" in lines[3]  # not fused: C = 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_results_and_zero_gradients(backend):
    x = np.zeros((0, 1, 8, 8), np.float32)
    weight = np.ones((4, 1, 3, 3), np.float32)
    y, indices = fastconv.conv2d_relu_max_pool2d(x, weight, backend=backend)
    assert y.shape == indices.shape == (0, 4, 3, 3)
    gx, gw, gb = fastconv.conv2d_relu_max_pool2d_backward(np.zeros(y.shape, np.float32), y, indices, x,
                                                          weight, backend=backend)
    assert gx.shape == x.shape and gw.shape == weight.shape and gb.shape == (4,)
    assert not gw.any() and not gb.any()


def test_window_offsets_invert_the_codes():
    """Codes 0-3 of every window map to the four offsets of that window, and back."""
    p = fastconv.checks.conv_forward_args(np.zeros((1, 1, 8, 10)), np.zeros((1, 1, 3, 3)), None, 1, 0, 1, 1)[3]
    for code, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        codes = np.full((1, 1, 3, 4), code, np.uint8)
        offsets = fused.window_offsets(codes, p.out_w)
        rows, cols = np.divmod(offsets[0, 0], p.out_w)
        np.testing.assert_array_equal(rows, 2 * np.arange(3)[:, None] + dy + 0 * cols)
        np.testing.assert_array_equal(cols, 2 * np.arange(4)[None, :] + dx + 0 * rows)
        np.testing.assert_array_equal(fused._window_codes(offsets, p), codes)
