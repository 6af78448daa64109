"""The oracle checked independently: against scalar loops and by finite differences."""
import itertools

import numpy as np
import pytest

import fastconv

from cases import CONV_CASES, POOL_CASES

SMALL_CONV = [c for c in CONV_CASES if np.prod(c.x) * c.k * np.prod(c.rs) < 40_000]


def naive_conv2d(x, w, b, case):
    """Cross-correlation by the definition, one scalar at a time."""
    p = case.params()
    y = np.zeros(p.output_shape)
    cg, kg = p.c_per_group, p.k_per_group
    for n, k, oh, ow in itertools.product(range(p.n), range(p.k), range(p.out_h), range(p.out_w)):
        g = k // kg
        acc = 0.0 if b is None else b[k]
        for c, r, s in itertools.product(range(cg), range(p.r), range(p.s)):
            ih = oh * p.stride_h - p.pad_top + r * p.dil_h
            iw = ow * p.stride_w - p.pad_left + s * p.dil_w
            if 0 <= ih < p.h and 0 <= iw < p.w:
                acc += x[n, g * cg + c, ih, iw] * w[k, c, r, s]
        y[n, k, oh, ow] = acc
    return y


@pytest.mark.parametrize("case", SMALL_CONV, ids=lambda c: c.name)
def test_reference_conv_matches_definition(case):
    x, w, b, _ = case.arrays("float64")
    y = fastconv.conv2d(x, w, b, **case.kwargs(), algo="reference")
    np.testing.assert_allclose(y, naive_conv2d(x, w, b, case), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in SMALL_CONV if np.prod(c.x) < 400], ids=lambda c: c.name)
def test_reference_conv_gradients_by_finite_differences(case):
    """d/dθ sum(conv(x, w, b) * gy) for θ in x, w, b, by central differences."""
    x, w, b, gy = case.arrays("float64")
    b = np.zeros(case.k) if b is None else b
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), algo="reference")

    def loss(x_, w_, b_):
        return float(np.sum(fastconv.conv2d(x_, w_, b_, **case.kwargs(), algo="reference") * gy))

    eps = 1e-6
    rng = np.random.default_rng(1)
    for array, grad, index_of in ((x, gx, 0), (w, gw, 1), (b, gb, 2)):
        for flat in rng.choice(array.size, size=min(array.size, 6), replace=False):
            idx = np.unravel_index(flat, array.shape)
            args_plus = [x.copy(), w.copy(), b.copy()]
            args_minus = [x.copy(), w.copy(), b.copy()]
            args_plus[index_of][idx] += eps
            args_minus[index_of][idx] -= eps
            numeric = (loss(*args_plus) - loss(*args_minus)) / (2 * eps)
            assert abs(numeric - grad[idx]) <= 1e-6 * max(1.0, abs(numeric))


def naive_pool(x, case, mode):
    p = case.params()
    y = np.zeros(p.output_shape)
    index = np.zeros(p.output_shape, dtype=np.int64)
    for n, c, oh, ow in itertools.product(range(p.n), range(p.c), range(p.out_h), range(p.out_w)):
        values, offsets = [], []
        for i, j in itertools.product(range(p.kernel_h), range(p.kernel_w)):
            ih, iw = oh * p.stride_h - p.pad_h + i, ow * p.stride_w - p.pad_w + j
            if 0 <= ih < p.h and 0 <= iw < p.w:
                values.append(x[n, c, ih, iw])
                offsets.append(ih * p.w + iw)
        if mode == "max":
            best = int(np.argmax(values))  # first maximum, as PyTorch
            y[n, c, oh, ow], index[n, c, oh, ow] = values[best], offsets[best]
        else:
            divisor = p.kernel_h * p.kernel_w if p.count_include_pad else len(values)
            y[n, c, oh, ow] = sum(values) / divisor
    return y, index


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_reference_pooling_matches_definition(case):
    x = np.round(2 * np.random.default_rng(0).standard_normal(case.x))  # small integers: many ties
    y, index = fastconv.max_pool2d(x, **case.kwargs(), return_indices=True, algo="reference")
    y_naive, index_naive = naive_pool(x, case, "max")
    np.testing.assert_array_equal(y, y_naive)
    np.testing.assert_array_equal(index, index_naive)
    avg = fastconv.avg_pool2d(x, **case.kwargs(), count_include_pad=case.count_include_pad, algo="reference")
    np.testing.assert_allclose(avg, naive_pool(x, case, "avg")[0], rtol=1e-12)


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_reference_pooling_gradients_are_adjoint(case):
    """<pool(x + e), gy> - <pool(x), gy> = <e, grad> for a small e (avg: exactly linear)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(case.x)
    p = case.params()
    gy = rng.standard_normal(p.output_shape)
    e = rng.standard_normal(case.x) * 1e-7
    kw = dict(case.kwargs(), algo="reference")
    g_max = fastconv.max_pool2d_backward(gy, x, **kw)
    delta = np.sum((fastconv.max_pool2d(x + e, **kw) - fastconv.max_pool2d(x, **kw)) * gy)
    assert abs(delta - np.sum(e * g_max)) <= 1e-9
    avg = dict(kw, count_include_pad=case.count_include_pad)
    g_avg = fastconv.avg_pool2d_backward(gy, x.shape, **avg)
    lhs = np.sum(fastconv.avg_pool2d(e, **avg) * gy)
    assert abs(lhs - np.sum(e * g_avg)) <= 1e-12 * max(1.0, abs(lhs))
