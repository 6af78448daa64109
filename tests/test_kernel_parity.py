"""Every registered (op, algo, backend) against the float64 oracle, over the shared grid.

The kernel list comes from the registry, so a newly registered kernel is tested here
without any change to this file. An algorithm that cannot compute a case must refuse it
with ``UnsupportedError`` when forced.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
from fastconv.dispatch import rules

from cases import CONV_CASES, POOL_CASES, ConvCase, PoolCase, assert_close, reference_conv

DTYPES = ["float32", "float64"]


def _algo_backends(*op_prefixes):
    """Non-reference (algo, backend) pairs registered for any op starting with a prefix."""
    pairs = sorted({(k["algo"], k["backend"]) for k in fastconv.list_kernels()
                    if k["op"].startswith(op_prefixes) and k["algo"] != "reference"})
    return pairs or [pytest.param(None, None, marks=pytest.mark.skip(reason="no fast kernel registered"))]


def _registered(op, algo, backend):
    return any(k["op"] == op and k["algo"] == algo and k["backend"] == backend
               for k in fastconv.list_kernels(op))


def _read_only(*arrays):
    """Kernels must accept read-only inputs (memory maps, broadcast results) and never write them."""
    for a in arrays:
        if a is not None:
            a.flags.writeable = False


def _check_conv_case(case, dtype, algo, backend):
    x, w, b, gy = case.arrays(dtype)
    _read_only(x, w, b, gy)
    y_ref, gx_ref, gw_ref, gb_ref = reference_conv(case, x, w, b, gy)
    p = case.params(dtype)
    forced = dict(algo=algo, backend=backend)
    if _registered("conv2d_forward", algo, backend):
        if rules.unsupported_reason("conv2d_forward", algo, p):
            with pytest.raises(fastconv.UnsupportedError, match=algo):
                fastconv.conv2d(x, w, b, **case.kwargs(), **forced)
        else:
            y = fastconv.conv2d(x, w, b, **case.kwargs(), **forced)
            assert_close(y, y_ref, dtype, algo, "forward")
    for name, ref in (("input", gx_ref), ("weight", gw_ref), ("bias", gb_ref)):
        op = f"conv2d_grad_{name}"
        actual_algo = rules.delegate(op, algo)
        if not _registered(op, actual_algo, backend):
            continue
        if rules.unsupported_reason(op, algo, p):
            with pytest.raises(fastconv.UnsupportedError):
                fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=(name,), **forced)
            continue
        grads = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=(name,), **forced)
        got = grads[("input", "weight", "bias").index(name)]
        assert_close(got, ref, dtype, algo, f"grad_{name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("algo,backend", _algo_backends("conv2d"))
def test_conv_kernels_match_oracle(algo, backend, case, dtype):
    _check_conv_case(case, dtype, algo, backend)


conv_geometry = st.builds(
    lambda n, c_g, k_g, groups, r, s, h, w, stride, dil, pad: ConvCase(
        "hypothesis", (n, c_g * groups, max(h, dil[0] * (r - 1) + 1 - 2 * pad[0]),
                       max(w, dil[1] * (s - 1) + 1 - 2 * pad[1])),
        k_g * groups, (r, s), stride=stride, padding=pad, dilation=dil, groups=groups),
    n=st.integers(1, 3), c_g=st.integers(1, 5), k_g=st.integers(1, 5), groups=st.integers(1, 3),
    r=st.integers(1, 5), s=st.integers(1, 5), h=st.integers(1, 12), w=st.integers(1, 12),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dil=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
)


@pytest.mark.parametrize("algo,backend", _algo_backends("conv2d"))
@settings(max_examples=25, deadline=None)
@given(case=conv_geometry, dtype=st.sampled_from(DTYPES))
def test_conv_kernels_match_oracle_hypothesis(algo, backend, case, dtype):
    _check_conv_case(case, dtype, algo, backend)


# ---------------------------------------------------------------- pooling

def _pool_inputs(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.x).astype(dtype)
    gy = rng.standard_normal(case.params(dtype).output_shape).astype(dtype)
    return x, gy


def _check_pool_case(case, dtype, algo, backend):
    x, gy = _pool_inputs(case, dtype)
    _read_only(x, gy)
    ref = dict(algo="reference")
    forced = dict(algo=algo, backend=backend)
    if _registered("max_pool2d_forward", algo, backend):
        y_ref, i_ref = fastconv.max_pool2d(x.astype(np.float64), **case.kwargs(), return_indices=True, **ref)
        y, i = fastconv.max_pool2d(x, **case.kwargs(), return_indices=True, **forced)
        assert_close(y, y_ref, dtype, algo, "max forward")
        np.testing.assert_array_equal(i, i_ref)
        _read_only(i)
        g = fastconv.max_pool2d_backward(gy, x, **case.kwargs(), indices=i, **forced)
        g_ref = fastconv.max_pool2d_backward(gy.astype(np.float64), x.astype(np.float64),
                                             **case.kwargs(), **ref)
        assert_close(g, g_ref, dtype, algo, "max backward with indices")
    if _registered("max_pool2d_backward", algo, backend):
        g_ref = fastconv.max_pool2d_backward(gy.astype(np.float64), x.astype(np.float64),
                                             **case.kwargs(), **ref)
        g = fastconv.max_pool2d_backward(gy, x, **case.kwargs(), **forced)
        assert_close(g, g_ref, dtype, algo, "max backward")
    avg = dict(case.kwargs(), count_include_pad=case.count_include_pad)
    if _registered("avg_pool2d_forward", algo, backend):
        y_ref = fastconv.avg_pool2d(x.astype(np.float64), **avg, **ref)
        assert_close(fastconv.avg_pool2d(x, **avg, **forced), y_ref, dtype, algo, "avg forward")
    if _registered("avg_pool2d_backward", algo, backend):
        g_ref = fastconv.avg_pool2d_backward(gy.astype(np.float64), x.shape, **avg, **ref)
        g = fastconv.avg_pool2d_backward(gy, x.shape, **avg, **forced)
        assert_close(g, g_ref, dtype, algo, "avg backward")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("algo,backend", _algo_backends("max_pool2d", "avg_pool2d"))
def test_pool_kernels_match_oracle(algo, backend, case, dtype):
    _check_pool_case(case, dtype, algo, backend)


pool_geometry = st.builds(
    lambda n, c, kh, kw, sh, sw, ph, pw, extra_h, extra_w, include: PoolCase(
        "hypothesis", (n, c, kh + extra_h, kw + extra_w), (kh, kw), stride=(sh, sw),
        padding=(min(ph, kh // 2), min(pw, kw // 2)), count_include_pad=include),
    n=st.integers(1, 2), c=st.integers(1, 3), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
    extra_h=st.integers(0, 7), extra_w=st.integers(0, 7), include=st.booleans(),
)


@pytest.mark.parametrize("algo,backend", _algo_backends("max_pool2d", "avg_pool2d"))
@settings(max_examples=25, deadline=None)
@given(case=pool_geometry, dtype=st.sampled_from(DTYPES))
def test_pool_kernels_match_oracle_hypothesis(algo, backend, case, dtype):
    _check_pool_case(case, dtype, algo, backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algo,backend", _algo_backends("conv2d_forward"))
def test_stride2_identity_filter_samples_the_padded_input_exactly(algo, backend, dtype):
    """Rows of 1-45 pixels (vector pairs, masked tails under and over one vector: the direct
    kernels' stride-2 phase rows, ``split_pairs``) with 0-3 columns of padding, strides (2, 2)
    and (3, 2): a 1x1 identity filter must give back the padded input sampled at the stride,
    bit for bit (1 * x + 0 * x' is exact)."""
    rng = np.random.default_rng(7)
    eye = np.eye(2, dtype=dtype).reshape(2, 2, 1, 1)
    for stride in ((2, 2), (3, 2)):
        if rules.unsupported_reason("conv2d_forward", algo, _conv_params_for((1, 2, 5, 8), eye, stride)):
            pytest.skip(f"{algo} does not take strided calls")
        for width in range(1, 46):
            x = rng.standard_normal((1, 2, 5, width)).astype(dtype)
            for pad in range(4):
                y = fastconv.conv2d(x, eye, None, stride=stride, padding=pad, algo=algo, backend=backend)
                padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
                np.testing.assert_array_equal(y, padded[:, :, ::stride[0], ::stride[1]],
                                              err_msg=f"width {width}, padding {pad}, stride {stride}")


def _conv_params_for(xshape, w, stride):
    from fastconv.checks import conv_params
    return conv_params(xshape, w.shape, stride, 0, 1, 1, str(w.dtype))
