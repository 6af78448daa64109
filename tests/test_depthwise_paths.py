"""Depthwise convolutions (one input channel per group) on the direct kernels of both backends.

The 3x3 / stride 1 / dilation 1 layers take a dedicated plane path (zero-bordered row
copies, two output rows per pass, nine lane-summed dot products for grad_weight); grad_input
with stride 1 reaches it through the flipped-filter correlation. These tests drive that path
and its neighbours (stride 2, dilation 2, per-side and "same" padding, padding wider than the
kernel, cropping in grad_input, odd and tiny planes, channel multipliers) against the float64
oracle, and check thread-count independence and NaN/Inf propagation.
"""
import numpy as np
import pytest

import fastconv
from fastconv.threads import get_num_threads

from cases import ConvCase, assert_close, reference_conv

BACKENDS = ["numba", "cython"]
DTYPES = ["float32", "float64"]

CASES = [
    # the plane path: 3x3, stride 1, dilation 1, one input channel per group
    ConvCase("dw_pad1", (2, 4, 11, 13), 4, (3, 3), padding=1, groups=4),
    ConvCase("dw_same", (1, 3, 9, 10), 3, (3, 3), padding="same", groups=3),
    ConvCase("dw_valid_odd", (3, 2, 7, 5), 2, (3, 3), groups=2),
    ConvCase("dw_pad_rows_cols", (2, 3, 8, 9), 3, (3, 3), padding=(2, 1), groups=3, bias=False),
    ConvCase("dw_pad_wide", (1, 2, 5, 6), 2, (3, 3), padding=3, groups=2),  # grad_input crops
    ConvCase("dw_one_pixel", (2, 3, 1, 1), 3, (3, 3), padding=1, groups=3),
    ConvCase("dw_one_row", (1, 2, 1, 9), 2, (3, 3), padding=1, groups=2),
    ConvCase("dw_odd_rows", (2, 2, 6, 4), 2, (3, 3), padding=(1, 0), groups=2),
    ConvCase("dw_multiplier2", (2, 3, 9, 8), 6, (3, 3), padding=1, groups=3),
    ConvCase("dw_multiplier3_valid", (1, 2, 6, 7), 6, (3, 3), groups=2, bias=False),
    ConvCase("dw_many_planes", (3, 40, 12, 17), 40, (3, 3), padding=1, groups=40),
    # neighbours that must keep working (other paths)
    ConvCase("dw_stride2", (2, 4, 11, 10), 4, (3, 3), stride=2, padding=1, groups=4),
    ConvCase("dw_dilation2", (2, 3, 10, 11), 3, (3, 3), padding=2, dilation=2, groups=3),
    ConvCase("dw_dilation2_same", (1, 3, 9, 8), 3, (3, 3), padding="same", dilation=(2, 1), groups=3),
    ConvCase("dw_same_even_kernel", (2, 3, 8, 7), 3, (4, 4), padding="same", groups=3),
    ConvCase("dw_5x5", (1, 2, 9, 9), 2, (5, 5), padding=2, groups=2),
    ConvCase("dw_3x1", (2, 3, 8, 9), 3, (3, 1), padding=(1, 0), groups=3),
]


@pytest.fixture
def restore_threads():
    before = get_num_threads()
    yield
    fastconv.set_num_threads(before)


def _all_ops(case, x, w, b, gy, backend):
    kw = dict(case.kwargs(), algo="direct", backend=backend)
    y = fastconv.conv2d(x, w, b, **kw)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, needs=("input", "weight", "bias"), **kw)
    return y, gx, gw, gb


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_depthwise_matches_oracle(case, backend, dtype):
    x, w, b, gy = case.arrays(dtype, seed=len(case.name))
    want = reference_conv(case, x, w, b, gy)
    got = _all_ops(case, x, w, b, gy, backend)
    for g, r, what in zip(got, want, ("forward", "grad_input", "grad_weight", "grad_bias")):
        assert_close(g, r, dtype, "direct", f"{case.name} {backend} {what}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_results_do_not_depend_on_thread_count(backend, dtype, restore_threads):
    # Enough planes for several tasks per thread, an odd row count, a channel multiplier.
    case = ConvCase("dw_threads", (5, 12, 23, 29), 24, (3, 3), padding=1, groups=12)
    x, w, b, gy = case.arrays(dtype, seed=7)
    fastconv.set_num_threads(1)
    one = _all_ops(case, x, w, b, gy, backend)
    fastconv.set_num_threads(2)
    two = _all_ops(case, x, w, b, gy, backend)
    for a, c, what in zip(one, two, ("forward", "grad_input", "grad_weight", "grad_bias")):
        np.testing.assert_array_equal(a, c, err_msg=f"{backend} {what}")


def _same_nonfinite(got, want, dtype, what):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{what}: Inf positions")
    finite = np.isfinite(want)
    assert_close(np.where(finite, got, 0).astype(dtype), np.where(finite, want, 0), dtype, "direct", what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_nan_inf_reach_exactly_the_covering_outputs(backend, dtype):
    case = ConvCase("dw_nan", (2, 3, 10, 9), 3, (3, 3), padding=1, groups=3)
    x, w, b, gy = case.arrays(dtype, seed=3)
    x[0, 1, 4, 5] = np.nan
    x[1, 2, 0, 0] = np.inf      # a corner: its windows are partly padding
    x[1, 0, 9, 8] = -np.inf
    gy[0, 0, 3, 3] = np.nan
    gy[1, 1, 9, 0] = np.inf
    with np.errstate(invalid="ignore"):
        want = reference_conv(case, x, w, b, gy)
    got = _all_ops(case, x, w, b, gy, backend)
    for g, r, what in zip(got, want, ("forward", "grad_input", "grad_weight", "grad_bias")):
        _same_nonfinite(g, r, dtype, f"{backend} {what}")
    # The NaN input poisons exactly its 3x3 neighbourhood of outputs in its own channel.
    y = got[0]
    assert np.isnan(y[0, 1, 3:6, 4:7]).all()
    assert np.isfinite(y[0, 0]).all() and np.isfinite(y[0, 2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_grad_input_with_infinite_weights_matches_scatter(backend):
    """Inf weights: grad_input must not multiply the zero border of grad_output by them
    (0 * inf = NaN where the oracle, a scatter of real values, has none)."""
    case = ConvCase("dw_inf_w", (2, 3, 8, 7), 3, (3, 3), padding=1, groups=3)
    x, w, b, gy = case.arrays("float64", seed=5)
    w[1, 0, 0, 0] = np.inf
    w[2, 0, 2, 1] = -np.inf
    with np.errstate(invalid="ignore"):
        want = reference_conv(case, x, w, b, gy)
    got = _all_ops(case, x, w, b, gy, backend)
    _same_nonfinite(got[0], want[0], "float64", f"{backend} forward")
    _same_nonfinite(got[1], want[1], "float64", f"{backend} grad_input")
