"""Fast paths of the pooling ops: global average pooling (lean public path, vector partial
sums), the index check of max-pool backward (made by its kernels as they scatter), and
max-pool backward with indices that are not window maxima (any offset in the plane must
still receive its gradient)."""
import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.checks import pool_params
from fastconv.threads import get_num_threads

BACKENDS = ("cython", "numba")


@pytest.fixture
def restore_threads():
    n = get_num_threads()
    yield
    fastconv.set_num_threads(n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 3, 14, 14), (1, 2, 1, 1), (1, 3, 1, 9),
                                   (1, 2, 3, 5), (1, 2, 150, 151)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_average_matches_float64_mean(backend, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    # An offset makes the float32 sums long and the cancellation visible in the error.
    x = (rng.standard_normal(shape) + 3.0).astype(dtype)
    y = fastconv.global_avg_pool2d(x, backend=backend)
    assert y.shape == shape[:2] + (1, 1) and y.dtype == dtype
    want = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_average_propagates_nan_and_inf(backend):
    x = np.ones((1, 4, 7, 7), np.float32)
    x[0, 0, 6, 6] = np.nan           # in the tail (49 = 6 x 8 + 1)
    x[0, 1, 0, 0] = np.inf
    x[0, 2, 1, 1] = np.inf
    x[0, 2, 5, 5] = -np.inf
    y = fastconv.global_avg_pool2d(x, backend=backend).ravel()
    assert np.isnan(y[0]) and y[1] == np.inf and np.isnan(y[2]) and y[3] == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_average_contiguous_copy_and_errors(backend):
    x = np.random.default_rng(0).standard_normal((4, 3, 9, 9))
    view = x.transpose(1, 0, 2, 3)   # not contiguous: copied once
    np.testing.assert_allclose(fastconv.global_avg_pool2d(view, backend=backend),
                               view.mean(axis=(2, 3), keepdims=True), rtol=1e-13)
    with pytest.raises(ValueError):  # the same error as avg_pool2d with a 0x3 window
        fastconv.global_avg_pool2d(np.zeros((1, 2, 0, 3)), backend=backend)
    assert fastconv.global_avg_pool2d(np.zeros((0, 2, 3, 3)), backend=backend).shape == (0, 2, 1, 1)


@pytest.mark.parametrize("bad,shown", [(-1, -1), (16, 16), (-(2 ** 62), -(2 ** 62)), (2 ** 40, 2 ** 40)])
def test_pool_indices_one_pass_check_names_the_bad_value(bad, shown):
    x = np.zeros((1, 2, 4, 4), np.float32)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    idx = idx.copy()
    idx[0, 1, 1, 0] = bad
    with pytest.raises(ValueError, match=rf"indices holds {shown}: expected flat offsets in \[0, 16\)"):
        fastconv.max_pool2d_backward(y, x, 2, indices=idx)


@pytest.mark.parametrize("kernels", ["reference", "cython", "numba"])
@pytest.mark.parametrize("hw", [(6, 6), (130, 130)])     # small planes, and planes zeroed row by row
def test_max_backward_kernels_count_and_skip_indices_outside_the_plane(kernels, hw):
    import importlib
    module = importlib.import_module("fastconv.reference" if kernels == "reference"
                                     else f"fastconv.kernels.{kernels}.pooling")
    rng = np.random.default_rng(hw[0])
    x = rng.standard_normal((2, 3) + hw).astype(np.float32)
    p = pool_params(x.shape, 2, None, 0, True, np.float32)
    gy = rng.standard_normal(p.output_shape).astype(np.float32)
    idx = rng.integers(0, hw[0] * hw[1], size=p.output_shape)
    bad = np.zeros(idx.shape, bool)
    bad[0, 1, 0, 0] = bad[1, 2, -1, -1] = bad[1, 0, 1, 2] = True
    idx[bad] = [-1, hw[0] * hw[1], np.iinfo(np.int64).min]
    good = np.where(bad, 0, idx)
    want = np.empty(x.shape, np.float32)
    reference.max_pool2d_backward(np.where(bad, 0, gy).astype(np.float32), good, want, p)
    got = np.full(x.shape, np.nan, np.float32)
    assert module.max_pool2d_backward(gy, idx, got, p) == 3
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)          # the rest as usual
    assert module.max_pool2d_backward(gy, good, got, p) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_indices_raise_for_each_backend(backend):
    x = np.zeros((1, 2, 4, 4), np.float32)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    big = idx.astype(np.uint64)
    big[0, 0, 1, 1] = 2**63 + 5       # wraps to a negative int64; the message shows the value given
    with pytest.raises(ValueError, match=rf"indices holds {2**63 + 5}: expected flat offsets"):
        fastconv.max_pool2d_backward(y, x, 2, indices=big, backend=backend)


def test_pool_indices_other_integer_dtypes_are_accepted():
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    want = fastconv.max_pool2d_backward(y, x, 2, indices=idx)
    for dtype in (np.int32, np.uint16, np.uint64):
        np.testing.assert_array_equal(fastconv.max_pool2d_backward(y, x, 2, indices=idx.astype(dtype)), want)
    with pytest.raises(ValueError, match="indices holds 36"):
        fastconv.max_pool2d_backward(y, x, 2, indices=np.full(idx.shape, 36, np.uint64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw", [(6, 40), (11, 11), (26, 27)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_2x2_ties_give_the_first_maximum(backend, hw, dtype):
    """Small integers (-1, 0, 1): most windows hold their maximum more than once; the index is
    the first in window order (top-left, top-right, bottom-left, bottom-right), as the oracle's."""
    x = np.random.default_rng(hw[1]).integers(-1, 2, (2, 3) + hw).astype(dtype)
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True, backend=backend)
    p = pool_params(x.shape, 2, None, 0, True, dtype)
    want_y, want_idx = np.empty(p.output_shape, dtype), np.empty(p.output_shape, np.int64)
    reference.max_pool2d_forward(x, want_y, want_idx, p)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw", [(6, 40), (11, 11), (26, 27)])
def test_max_2x2_nan_wins_and_its_last_position_is_the_index(backend, hw):
    """Rows narrower than a vector (5 outputs) and wider ones: every window position of a
    NaN, and windows with two NaNs, against the oracle."""
    rng = np.random.default_rng(hw[0] + hw[1])
    x = rng.standard_normal((2, 3) + hw).astype(np.float32)
    for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        x[0, k % 3, r, 2 * k + c] = np.nan           # one NaN, in each position of a window
    x[1, 0, 2:4, 2] = np.nan                         # two NaNs: the later one is the index
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True, backend=backend)
    p = pool_params(x.shape, 2, None, 0, True, np.float32)
    want_y, want_idx = np.empty(p.output_shape, np.float32), np.empty(p.output_shape, np.int64)
    reference.max_pool2d_forward(x, want_y, want_idx, p)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(idx, want_idx)
    assert np.isnan(y).sum() == 5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hw", [(8, 8), (9, 7), (26, 26), (11, 11), (2, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_backward_2x2_matches_reference(backend, hw, dtype):
    rng = np.random.default_rng(hw[0] * 31 + hw[1])
    x = rng.standard_normal((3, 4) + hw).astype(dtype)
    x[0, 0, 0, :2] = np.nan          # NaN windows and ties too
    x[1, 1] = np.round(x[1, 1])
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True, backend=backend)
    gy = rng.standard_normal(y.shape).astype(dtype)
    p = pool_params(x.shape, 2, None, 0, True, dtype)
    want = np.empty(x.shape, dtype)
    reference.max_pool2d_backward(gy, idx, want, p)
    got = fastconv.max_pool2d_backward(gy, x, 2, indices=idx, backend=backend)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_2x2_rows_of_every_width_match_reference(backend, dtype):
    """Disjoint 2x2 windows over widths 2-37 (output rows 1-18: under, at and past a vector
    of either dtype, odd widths leaving a last column in no window): forward and backward
    against the float64 reference; NaN stays in its window, a -0.0 share becomes +0.0 and
    uncovered elements get exactly 0."""
    rng = np.random.default_rng(7)
    for w in range(2, 38):
        x = rng.standard_normal((2, 3, 5, w)).astype(dtype)
        x[1, 2, 2, 0] = np.nan
        y = fastconv.avg_pool2d(x, 2, backend=backend)
        p = pool_params(x.shape, 2, None, 0, False, dtype)
        want = np.empty(p.output_shape, np.float64)
        reference.avg_pool2d_forward(x.astype(np.float64), want, p)
        scale = np.nanmax(np.abs(x))       # rounding of three additions of such values
        np.testing.assert_allclose(y, want, rtol=0, atol=4 * np.finfo(dtype).eps * scale)
        assert np.isnan(y[1, 2, 1, 0]) and np.isnan(y).sum() == 1
        gy = rng.standard_normal(p.output_shape).astype(dtype)
        gy[0, 0, 0, :] = -0.0
        gx = fastconv.avg_pool2d_backward(gy, x.shape, 2, backend=backend)
        want_gx = np.empty(x.shape, np.float64)
        reference.avg_pool2d_backward(gy.astype(np.float64), want_gx, p)
        np.testing.assert_array_equal(gx, want_gx.astype(dtype))
        assert not np.signbit(gx[0, 0, :2]).any()
        assert (gx[:, :, 4] == 0).all() and (gx[:, :, :, 2 * (w // 2):] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_backward_2x2_indices_outside_their_window_still_accumulate(backend):
    # Indices need not come from max_pool2d: any offset in the plane is valid and adds there.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    gy = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    idx = rng.integers(0, 36, size=gy.shape)
    idx[1, 2] = 7                    # a whole plane sending everything to one element
    p = pool_params(x.shape, 2, None, 0, True, np.float32)
    want = np.empty(x.shape, np.float32)
    reference.max_pool2d_backward(gy, idx, want, p)
    got = fastconv.max_pool2d_backward(gy, x, 2, indices=idx, backend=backend)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_do_not_depend_on_thread_count(backend, restore_threads):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 16, 26, 26)).astype(np.float32)
    g = rng.standard_normal((4, 16, 56, 56)).astype(np.float32)
    results = []
    for n in (1, 2):
        fastconv.set_num_threads(n)
        y, idx = fastconv.max_pool2d(x, 2, return_indices=True, backend=backend)
        gx = fastconv.max_pool2d_backward(y, x, 2, indices=idx, backend=backend)
        y3, idx3 = fastconv.max_pool2d(g, 3, 2, 1, return_indices=True, backend=backend)
        gx3 = fastconv.max_pool2d_backward(y3, g, 3, 2, 1, indices=idx3, backend=backend)
        results.append((y, gx, gx3, fastconv.global_avg_pool2d(g, backend=backend),
                        fastconv.global_avg_pool2d(x, backend=backend)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
