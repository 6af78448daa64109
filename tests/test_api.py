"""Behaviour of the public calls beyond the kernels: layouts, dtypes, empty batches, out=,
NaN/Inf, explain(), the kernel listing, thread control and import cost."""
import subprocess
import sys

import numpy as np
import pytest

import fastconv

from cases import CONV_CASES, assert_close, reference_conv

CASE = next(c for c in CONV_CASES if c.name == "groups2")


def test_empty_batch_gives_empty_results_of_the_right_shape():
    x = np.zeros((0, 4, 7, 7), np.float32)
    w = np.ones((6, 2, 3, 3), np.float32)
    y = fastconv.conv2d(x, w, np.ones(6, np.float32), padding=1, groups=2)
    assert y.shape == (0, 6, 7, 7) and y.dtype == np.float32
    gx, gw, gb = fastconv.conv2d_backward(y, x, w, padding=1, groups=2)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (6,)
    assert not gw.any() and not gb.any()  # sums over an empty batch
    p, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    assert p.shape == (0, 4, 3, 3) and idx.shape == (0, 4, 3, 3)
    assert fastconv.max_pool2d_backward(p, x, 2).shape == x.shape
    assert fastconv.avg_pool2d(x, 3, 2, 1).shape == (0, 4, 4, 4)
    assert fastconv.avg_pool2d_backward(np.zeros((0, 4, 4, 4)), x.shape, 3, 2, 1).shape == x.shape


@pytest.mark.parametrize("layout", ["fortran", "negative_strides", "strided_slice"])
def test_non_contiguous_inputs_match_a_contiguous_copy(layout):
    x, w, b, gy = CASE.arrays("float64")
    if layout == "fortran":
        xv, wv = np.asfortranarray(x), np.asfortranarray(w)
    elif layout == "negative_strides":
        xv, wv = x[:, :, ::-1, ::-1].copy()[:, :, ::-1, ::-1], w[::-1].copy()[::-1]
    else:
        big = np.zeros(x.shape[:3] + (x.shape[3] * 2,))
        big[..., ::2] = x
        xv, wv = big[..., ::2], w
    assert not (xv.flags.c_contiguous and wv.flags.c_contiguous)
    np.testing.assert_array_equal(fastconv.conv2d(xv, wv, b, **CASE.kwargs()),
                                  fastconv.conv2d(x, w, b, **CASE.kwargs()))
    for got, want in zip(fastconv.conv2d_backward(gy, xv, wv, **CASE.kwargs()),
                         fastconv.conv2d_backward(gy, x, w, **CASE.kwargs())):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fastconv.max_pool2d(xv, 2), fastconv.max_pool2d(x, 2))
    np.testing.assert_array_equal(fastconv.avg_pool2d(xv, 2), fastconv.avg_pool2d(x, 2))


def test_mixed_dtypes_follow_the_input_dtype():
    x, w, b, gy = CASE.arrays("float32")
    y = fastconv.conv2d(x, w.astype(np.float64), b.astype(np.float64), **CASE.kwargs())
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, fastconv.conv2d(x, w, b, **CASE.kwargs()))
    y64 = fastconv.conv2d(x.astype(np.float64), w, b, **CASE.kwargs())
    assert y64.dtype == np.float64
    gx, gw, gb = fastconv.conv2d_backward(gy.astype(np.float64), x, w, **CASE.kwargs())
    assert gx.dtype == gw.dtype == gb.dtype == np.float32
    assert fastconv.avg_pool2d_backward(np.zeros((1, 1, 2, 2), np.float32), (1, 1, 4, 4), 2).dtype == np.float32


def test_array_likes_are_accepted():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y = fastconv.conv2d(x.tolist(), [[[[1.0]]]])
    np.testing.assert_array_equal(y, x)


def test_inputs_are_never_modified():
    x, w, b, gy = CASE.arrays("float32")
    saved = [a.copy() for a in (x, w, b, gy)]
    for a in (x, w, b, gy):
        a.flags.writeable = False  # any write attempt raises
    fastconv.conv2d(x, w, b, **CASE.kwargs())
    fastconv.conv2d_backward(gy, x, w, **CASE.kwargs())
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    y.flags.writeable = False
    idx.flags.writeable = False
    fastconv.max_pool2d_backward(y, x, 2, indices=idx)
    fastconv.avg_pool2d_backward(y, x.shape, 2)
    for a, s in zip((x, w, b, gy), saved):
        np.testing.assert_array_equal(a, s)


def test_out_receives_the_result():
    x, w, b, _ = CASE.arrays("float64")
    out = np.full(CASE.params().output_shape, np.nan)
    y = fastconv.conv2d(x, w, b, **CASE.kwargs(), out=out)
    assert y is out
    assert_close(out, reference_conv(CASE, x, w, b, np.zeros_like(out))[0], "float64")


def test_nan_and_inf_propagate_like_pytorch():
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    y = fastconv.conv2d(x, np.ones((1, 1, 2, 2)))
    assert np.isnan(y[0, 0, 0, 0]) and np.isinf(y[0, 0, 2, 2]) and np.isfinite(y[0, 0, 1, 1])
    m, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(m[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 0
    assert m[0, 0, 1, 1] == np.inf
    assert np.isnan(fastconv.avg_pool2d(x, 2)[0, 0, 0, 0])


def test_explain_names_the_choice_and_the_reasons():
    x = np.empty((8, 64, 56, 56), np.float32)  # never touched
    w = np.empty((64, 64, 3, 3), np.float32)
    text = fastconv.explain("conv2d", x, w, padding=1)
    assert "conv2d_forward" in text and "->" in text
    forced = fastconv.explain(fastconv.conv2d, x, w, stride=2, algo="reference")
    assert "reference/numpy" in forced
    back = fastconv.explain("conv2d_backward", np.empty((8, 64, 56, 56), np.float32), x, w, padding=1,
                            needs=("weight",))
    assert "conv2d_grad_weight" in back and "conv2d_grad_input" not in back
    assert "max_pool2d_forward" in fastconv.explain("max_pool2d_backward", x[:, :, :28, :28], x, 2)
    with pytest.raises(ValueError, match="groups=3"):
        fastconv.explain("conv2d", x, w, groups=3)
    with pytest.raises(ValueError, match="op='conv3d'"):
        fastconv.explain("conv3d", x, w)


def test_auto_sends_small_reductions_to_direct_but_a_large_filters_grad_input_to_im2col():
    """The rule of ``dispatch.rules.auto_algos`` for a 7x7 stride-2 stem (reduction 3*49):
    direct for the forward pass and the weight gradient, im2col for the input gradient
    (direct's strided scatter measured 4x slower there)."""
    x = np.empty((1, 3, 32, 32), np.float32)
    w = np.empty((8, 3, 7, 7), np.float32)
    forward = fastconv.explain("conv2d", x, w, stride=2, padding=3)
    assert "chosen: direct/" in forward and "small reduction" in forward
    gy = np.empty((1, 8, 16, 16), np.float32)
    weight = fastconv.explain("conv2d_backward", gy, x, w, stride=2, padding=3, needs=("weight",))
    assert "chosen: direct/" in weight
    grad_input = fastconv.explain("conv2d_backward", gy, x, w, stride=2, padding=3, needs=("input",))
    assert "chosen: im2col/" in grad_input


def test_auto_sends_a_strided_forward_to_direct_whatever_its_reduction():
    """A 3x3 stride-2 layer of 64 channels (reduction 576): its forward pass goes to direct,
    its gradients stay with the GEMM-sized rule (im2col), as does the same layer at stride 1
    with too few channels for Winograd."""
    x = np.empty((1, 64, 16, 16), np.float32)
    w = np.empty((16, 64, 3, 3), np.float32)
    forward = fastconv.explain("conv2d", x, w, stride=2, padding=1)
    assert "chosen: direct/" in forward and "strided forward" in forward
    gy = np.empty((1, 16, 8, 8), np.float32)
    for needs in ("input", "weight"):
        text = fastconv.explain("conv2d_backward", gy, x, w, stride=2, padding=1, needs=(needs,))
        assert "chosen: im2col/" in text
    assert "chosen: im2col/" in fastconv.explain("conv2d", x, w, padding=1)


def test_auto_sends_a_1x1_forward_to_direct_and_its_gradients_to_im2col():
    x = np.empty((1, 256, 14, 14), np.float32)
    w = np.empty((64, 256, 1, 1), np.float32)
    forward = fastconv.explain("conv2d", x, w)
    assert "chosen: direct/" in forward and "1x1 forward" in forward
    gy = np.empty((1, 64, 14, 14), np.float32)
    for needs in ("input", "weight"):
        assert "chosen: im2col/" in fastconv.explain("conv2d_backward", gy, x, w, needs=(needs,))


def test_auto_backend_order_is_per_op_and_algorithm_and_a_forced_backend_is_kept():
    from fastconv.checks import conv_params
    from fastconv.dispatch import rules
    from fastconv.dispatch.selection import candidates

    p = conv_params((8, 256, 14, 14), (64, 256, 1, 1), 1, 0, 1, 1, "float32")  # im2col and direct both candidates
    for op in ("conv2d_forward", "conv2d_grad_input", "conv2d_grad_weight"):
        listed = [(c.algo, c.backend) for c in candidates(op, p)]
        for algo in ("im2col", "direct"):
            order = [b for a, b in listed if a == algo]
            assert order == [b for b in rules.backend_order(op, algo) if b in order]
        # im2col's forward and grad_input measured faster in Numba, its grad_weight in Cython.
        im2col_first = "cython" if op == "conv2d_grad_weight" else "numba"
        assert [b for a, b in listed if a == "im2col"][0] == im2col_first
        assert [b for a, b in listed if a == "direct"][:2] == ["cython", "numba"]
    assert {c.backend for c in candidates("conv2d_forward", p, backend="cython")} == {"cython"}


def test_list_kernels_covers_every_op_with_a_reference():
    rows = fastconv.list_kernels(load=True)
    ops = {r["op"] for r in rows}
    assert ops == set(fastconv.dispatch.OPS) | set(fastconv.dispatch.registry.FUSED_OPS)
    for op in fastconv.dispatch.OPS:
        assert any(r["op"] == op and r["algo"] == "reference" and r["available"] for r in rows)


def test_thread_setting_reaches_openmp_and_blas():
    from threadpoolctl import threadpool_info

    from fastconv.kernels.cython import runtime

    before = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        assert fastconv.get_num_threads() == 1
        assert runtime.threads_used(fastconv.get_num_threads()) == 1
        assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")
        fastconv.set_num_threads(2)
        if runtime.has_openmp():
            assert runtime.threads_used(fastconv.get_num_threads()) == 2
    finally:
        fastconv.set_num_threads(before)
    with pytest.raises(ValueError, match="n=0"):
        fastconv.set_num_threads(0)
    with pytest.raises(TypeError, match="n=2.5"):
        fastconv.set_num_threads(2.5)


def test_import_is_light():
    """``import fastconv`` imports neither Numba nor the compiled kernels (they load lazily)."""
    code = ("import sys, fastconv; "
            "print(any(m == 'numba' or m.startswith('numba.') for m in sys.modules), "
            "'fastconv.kernels.cython.runtime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_import_sets_passive_thread_waiting_unless_the_user_chose():
    import os
    import subprocess
    import sys

    code = "import fastconv, os; print(os.environ['OMP_WAIT_POLICY'], os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "4"]
    env["OPENBLAS_THREAD_TIMEOUT"] = "8"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "8"]
