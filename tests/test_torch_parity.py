"""The public calls give torch.nn.functional's answers (forward and gradients), when torch is installed.

One helper runs both sides on the same values and compares with the shared tolerances; it
checks ``algo="auto"`` (what users get) and the reference oracle itself.
"""
import numpy as np
import pytest

import fastconv

from cases import CONV_CASES, POOL_CASES, assert_close

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch
ALGOS = ["auto", "reference"]


def torch_conv(case, x, w, b, gy):
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    y = F.conv2d(tx, tw, tb, **case.kwargs())
    y.backward(torch.tensor(gy))
    return (y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(),
            None if tb is None else tb.grad.numpy())


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
def test_conv2d_matches_torch(case, dtype, algo):
    x, w, b, gy = case.arrays(dtype)
    y_t, gx_t, gw_t, gb_t = torch_conv(case, x.astype(np.float64), w.astype(np.float64),
                                       None if b is None else b.astype(np.float64), gy.astype(np.float64))
    assert_close(fastconv.conv2d(x, w, b, **case.kwargs(), algo=algo), y_t, dtype, what="forward")
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), algo=algo)
    assert_close(gx, gx_t, dtype, what="grad_input")
    assert_close(gw, gw_t, dtype, what="grad_weight")
    if gb_t is not None:
        assert_close(gb, gb_t, dtype, what="grad_bias")


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
def test_pooling_matches_torch(case, dtype, algo):
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal(case.x) * 3).astype(dtype)  # ties exercise the argmax rule
    x.reshape(-1)[::7] = np.nan  # NaN must win its window, as in torch
    gy = rng.standard_normal(case.params().output_shape).astype(dtype)
    kw = case.kwargs()
    tx = torch.tensor(x, requires_grad=True)
    y_t, i_t = F.max_pool2d(tx, **kw, return_indices=True)
    y_t.backward(torch.tensor(gy))
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True, algo=algo)
    np.testing.assert_array_equal(y, y_t.detach().numpy())  # NaN where torch has NaN
    np.testing.assert_array_equal(idx, i_t.numpy())
    np.testing.assert_allclose(fastconv.max_pool2d_backward(gy, x, **kw, algo=algo), tx.grad.numpy(),
                               rtol=1e-6, atol=1e-6)
    finite = np.nan_to_num(x)
    tx = torch.tensor(finite, requires_grad=True)
    y_t = F.avg_pool2d(tx, **kw, count_include_pad=case.count_include_pad)
    y_t.backward(torch.tensor(gy))
    avg_kw = dict(kw, count_include_pad=case.count_include_pad, algo=algo)
    assert_close(fastconv.avg_pool2d(finite, **avg_kw), y_t.detach().numpy(), dtype, what="avg forward")
    assert_close(fastconv.avg_pool2d_backward(gy, x.shape, **avg_kw), tx.grad.numpy(), dtype,
                 what="avg backward")
