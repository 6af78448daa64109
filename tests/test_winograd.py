"""Winograd F(2x2,3x3) / F(4x4,3x3): the transform tables, both backends' kernels, the filter cache.

The parity grid (test_kernel_parity.py) covers the registered kernels on the shared cases;
this file checks what is specific to Winograd: the matrices themselves, partial tiles,
padding beyond the filter, asymmetric padding, chunking, threads, NaN and the cache.
"""
import importlib
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

import fastconv
from fastconv import limits, reference
from fastconv.checks import conv_params
from fastconv.kernels import dilation_phases as phases, winograd_plan as plan, winograd_tables as tables

from cases import tolerance

ALGOS = {"winograd_f23": 2, "winograd_f43": 4}


def _backend_module(backend):
    name = f"fastconv.kernels.{backend}.winograd"
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # the Cython extension is not built
        pytest.skip(f"{name} not importable: {exc}")


@pytest.fixture(params=["numba", "cython"])
def backend(request):
    _backend_module(request.param)
    return request.param


# ---------------------------------------------------------------- the tables

@pytest.mark.parametrize("m", [2, 4])
def test_matrices_compute_1d_correlation_exactly_in_rationals(m):
    """A^T [(G g) * (B^T d)] is the valid correlation of d with g, in exact arithmetic."""
    at, g, bt = tables.transform_matrices_exact(m, 3, tables.POINTS[m])
    rng = np.random.default_rng(m)
    for _ in range(20):
        d = [Fraction(int(v)) for v in rng.integers(-50, 50, m + 2)]
        f = [Fraction(int(v)) for v in rng.integers(-50, 50, 3)]
        gf = [sum(g[i][k] * f[k] for k in range(3)) for i in range(m + 2)]
        bd = [sum(bt[i][k] * d[k] for k in range(m + 2)) for i in range(m + 2)]
        y = [sum(at[o][i] * gf[i] * bd[i] for i in range(m + 2)) for o in range(m)]
        assert y == [sum(d[o + k] * f[k] for k in range(3)) for o in range(m)]


@pytest.mark.parametrize("m", [2, 4])
def test_float_matrices_match_np_correlate(m):
    at, g, bt = tables.MATRICES[m]
    assert at.shape == (m, m + 2) and g.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
    assert at.dtype == g.dtype == bt.dtype == np.float64
    rng = np.random.default_rng(0)
    for _ in range(100):
        d = rng.standard_normal(m + 2)
        f = rng.standard_normal(3)
        np.testing.assert_allclose(at @ ((g @ f) * (bt @ d)), np.correlate(d, f, "valid"),
                                   rtol=0, atol=1e-14 * np.abs(d).max() * np.abs(f).max() * 10)


@pytest.mark.parametrize("m", [2, 4])
def test_2d_tile_formula_matches_direct_correlation(m):
    at, g, bt = tables.MATRICES[m]
    rng = np.random.default_rng(1)
    d = rng.standard_normal((m + 2, m + 2))
    f = rng.standard_normal((3, 3))
    y = at @ ((g @ f @ g.T) * (bt @ d @ bt.T)) @ at.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * f) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, direct, rtol=0, atol=1e-13)


def test_f23_matrices_are_lavin_grays_up_to_signs():
    """Equal to Lavin & Gray's F(2,3) up to sign flips of position i in two of A^T, G, B^T."""
    at, g, bt = tables.MATRICES[2]
    lavin_at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)
    lavin_g = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    lavin_bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
    s_at = np.sign(np.sum(at * lavin_at, axis=0))
    s_g = np.sign(np.sum(g * lavin_g, axis=1))
    s_bt = np.sign(np.sum(bt * lavin_bt, axis=1))
    np.testing.assert_array_equal(s_at * s_g * s_bt, 1)
    np.testing.assert_array_equal(at * s_at, lavin_at)
    np.testing.assert_array_equal(g * s_g[:, None], lavin_g)
    np.testing.assert_array_equal(bt * s_bt[:, None], lavin_bt)


def test_lavin_grays_points_give_lavin_grays_f43_matrices():
    at, g, bt = tables.transform_matrices_exact(4, 3, (0, 1, -1, 2, -2))
    F = Fraction
    assert bt == [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    assert g == [[F(1, 4), 0, 0], [F(-1, 6), F(-1, 6), F(-1, 6)], [F(-1, 6), F(1, 6), F(-1, 6)],
                 [F(1, 24), F(1, 12), F(1, 6)], [F(1, 24), F(-1, 12), F(1, 6)], [0, 0, 1]]
    assert at == [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


def test_transform_matrices_reject_wrong_point_count():
    with pytest.raises(ValueError, match="distinct finite points"):
        tables.transform_matrices_exact(4, 3, (0, 1, -1))
    with pytest.raises(ValueError, match="distinct finite points"):
        tables.transform_matrices_exact(2, 3, (0, 1, 1))


def test_filters_channel_last_is_the_flipped_transposed_filter_for_grad_input():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 2, 3, 3))          # K=6, C/g=2, groups=3
    f = tables.filters_channel_last(w, 3, grad_input=True)
    assert f.shape == (3, 2, 3, 3, 2)              # (G, K/G in, 3, 3, C/G out)
    for g in range(3):
        for k in range(2):
            for c in range(2):
                np.testing.assert_array_equal(f[g, k, :, :, c], w[g * 2 + k, c, ::-1, ::-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_f43_transforms_take_their_factored_kernels_and_nothing_else_does(backend, dtype):
    # The factored kernels are written for these exact matrices; a table that differed would
    # silently fall back to the dense kernels (correct, but slower).
    mod = _backend_module(backend)
    at, _, bt = tables.MATRICES[4]
    mats = {"bt43": bt, "b43": bt.T, "at43": at, "a43": tables.grad_output_transform(4)}
    for name, mat in mats.items():
        assert mod._factored_kernel(mat.astype(dtype)) == name
        changed = mat.astype(dtype).copy()
        changed[1, 1] += 1
        assert mod._factored_kernel(changed) is None
    at2, _, bt2 = tables.MATRICES[2]
    for mat in (bt2, bt2.T, at2, tables.grad_output_transform(2)):
        assert mod._factored_kernel(mat) is None


@pytest.mark.parametrize("algo", list(ALGOS))
def test_filter_transform_kernels_match_the_table_formula(backend, algo):
    mod = _backend_module(backend)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 4, 3, 3))
    u = mod._transformed_filters(w, ALGOS[algo], 2, grad_input=False)
    expected = tables.filter_transform_reference(tables.filters_channel_last(w, 2, False), ALGOS[algo])
    np.testing.assert_allclose(u, expected, rtol=1e-14, atol=1e-14)


# ---------------------------------------------------------------- the kernels

def _check(backend, algo, x_shape, k, padding=0, groups=1, dtype="float64", seed=0, bias=True, dilation=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((k, x_shape[1] // groups, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if bias else None
    kw = dict(padding=padding, groups=groups, dilation=dilation)
    y = fastconv.conv2d(x, w, b, **kw, algo=algo, backend=backend)
    y_ref = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64),
                            None if b is None else b.astype(np.float64), **kw, algo="reference")
    gy = rng.standard_normal(y_ref.shape).astype(dtype)
    gx, gw = fastconv.conv2d_backward(gy, x, w, **kw, needs=("input", "weight"), algo=algo, backend=backend)[:2]
    gx_ref, gw_ref = fastconv.conv2d_backward(gy.astype(np.float64), x.astype(np.float64), w.astype(np.float64),
                                              **kw, needs=("input", "weight"), algo="reference")[:2]
    tol = tolerance(dtype, algo)
    for got, ref, what in ((y, y_ref, "forward"), (gx, gx_ref, "grad_input"), (gw, gw_ref, "grad_weight")):
        assert got.dtype == np.dtype(dtype) and got.shape == ref.shape
        err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)
        assert err <= tol, f"{what}: relative error {err:.2e} > {tol:.0e}"
    return y, gx


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,k,padding", [
    ((2, 3, 9, 7), 4, 0),          # 7x5 output: partial tiles in both directions
    ((1, 5, 11, 13), 3, 1),        # batch 1, odd sizes
    ((2, 4, 6, 10), 5, 2),         # padding 2: the whole filter overhangs
    ((3, 1, 8, 5), 2, 1),          # C = 1
    ((2, 6, 7, 9), 1, 1),          # K = 1
    ((1, 2, 3, 3), 2, 0),          # a single output pixel
    ((2, 2, 4, 4), 3, 3),          # padding beyond the filter: grad_input crops the far rows
])
def test_forward_and_gradients_match_reference(backend, algo, dtype, shape, k, padding):
    _check(backend, algo, shape, k, padding, dtype=dtype)


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("groups,c,k", [(2, 4, 6), (3, 6, 3), (4, 4, 4)])
def test_groups(backend, algo, groups, c, k):
    _check(backend, algo, (2, c, 9, 8), k, padding=1, groups=groups)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_no_bias(backend, algo):
    _check(backend, algo, (2, 3, 7, 7), 4, padding=1, bias=False)


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("pads", [(2, 0, 1, 0), (0, 1, 0, 2), (3, 1, 0, 4)])
def test_asymmetric_padding_through_the_kernel_contract(backend, algo, pads):
    """Kernels read only pad_top/pad_left + out_h/out_w, whatever the four pads are."""
    mod = _backend_module(backend)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    p = replace(conv_params(x.shape, w.shape, 1, 0, 1, 1, "float64"),
                pad_top=pads[0], pad_bottom=pads[1], pad_left=pads[2], pad_right=pads[3])
    y, y_ref = np.empty(p.output_shape), np.empty(p.output_shape)
    getattr(mod, f"conv2d_forward_f{ALGOS[algo]}3")(x, w, b, y, p)
    reference.conv2d_forward(x, w, b, y_ref, p)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-10 * np.abs(y_ref).max())
    gy = rng.standard_normal(p.output_shape)
    gx, gx_ref = np.empty(p.input_shape), np.empty(p.input_shape)
    getattr(mod, f"conv2d_grad_input_f{ALGOS[algo]}3")(gy, w, gx, p)
    reference.conv2d_grad_input(gy, w, gx_ref, p)
    np.testing.assert_allclose(gx, gx_ref, rtol=0, atol=1e-10 * np.abs(gx_ref).max())
    gw, gw_ref = np.empty(w.shape), np.empty(w.shape)
    getattr(mod, f"conv2d_grad_weight_f{ALGOS[algo]}3")(gy, x, gw, p)
    reference.conv2d_grad_weight(gy, x, gw_ref, p)
    np.testing.assert_allclose(gw, gw_ref, rtol=0, atol=1e-10 * np.abs(gw_ref).max())


# ---------------------------------------------------------------- dilation: the phase images

@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,k,padding,dilation,groups", [
    ((2, 3, 12, 10), 4, 2, 2, 1),               # "same" size, every phase equally large
    ((2, 3, 11, 9), 4, 2, 2, 1),                # odd sizes: the last phase is a row/column short
    ((1, 2, 13, 14), 3, (1, 3), (3, 2), 1),     # unequal dilation and padding
    ((3, 4, 10, 10), 4, 0, (2, 3), 2),          # no padding (grad_input by the adjoint), groups
    ((2, 2, 7, 12), 3, (5, 0), (4, 1), 1),      # padding wider than the dilation, dilation 1 across
    ((1, 3, 9, 7), 2, "same", 2, 1),
])
def test_dilated_layers_match_reference(backend, algo, dtype, shape, k, padding, dilation, groups):
    _check(backend, algo, shape, k, padding, groups=groups, dtype=dtype, dilation=dilation)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_dilated_grad_input_formulations_agree(backend, algo, monkeypatch):
    """The adjoint (alone and with grad_weight) and the flipped dilated convolution."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 5, 18, 17))
    w = rng.standard_normal((6, 5, 3, 3))
    gy = rng.standard_normal((2, 6, 14, 13))
    run = lambda needs: fastconv.conv2d_backward(gy, x, w, dilation=2, needs=needs, algo=algo, backend=backend)
    assert plan.adjoint_pays(gy.shape[2:], x.shape[2:], ALGOS[algo], (2, 2))
    gx_adjoint = run(("input",))[0]
    gx_fused, gw_fused = run(("input", "weight"))[:2]
    gw_alone = run(("weight",))[1]
    monkeypatch.setattr(plan, "adjoint_pays", lambda *args: False)
    gx_flipped, gw_flipped = run(("input", "weight"))[:2]
    np.testing.assert_array_equal(gx_fused, gx_adjoint)
    np.testing.assert_allclose(gx_adjoint, gx_flipped, rtol=0, atol=1e-10 * np.abs(gx_flipped).max())
    for gw in (gw_fused, gw_flipped):
        np.testing.assert_allclose(gw, gw_alone, rtol=0, atol=1e-10 * np.abs(gw_alone).max())


def _phase_images_by_definition(x, pad_tl, dilation, sub_hw):
    """The phase images from an explicitly zero-padded copy of x, slice by slice."""
    (dh, dw), (sh, sw) = dilation, sub_hw
    n, c, h, w = x.shape
    big = np.zeros((n, c, pad_tl[0] + h + dh * sh, pad_tl[1] + w + dw * sw), x.dtype)
    big[:, :, pad_tl[0]:pad_tl[0] + h, pad_tl[1]:pad_tl[1] + w] = x
    return np.concatenate([big[:, :, i:i + dh * sh:dh, j:j + dw * sw:dw] for i in range(dh) for j in range(dw)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,pad_tl,dilation,sub_hw", [
    ((2, 3, 9, 8), (2, 2), (2, 2), (7, 6)),
    ((1, 2, 10, 7), (0, 3), (3, 2), (4, 7)),
    ((2, 1, 5, 6), (4, 1), (1, 3), (11, 4)),
    ((1, 2, 37, 41), (2, 3), (2, 2), (20, 22)),    # rows longer than a vector (vectorised copies)
    ((1, 1, 4, 5), (3, 0), (2, 2), (2, 2)),        # phase planes smaller than the padded plane
])
def test_phase_split_and_merge(backend, dtype, shape, pad_tl, dilation, sub_hw):
    steps = _backend_module(backend)._STEPS
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(dtype)
    z = phases.split(steps.split_phases, x, pad_tl, dilation, sub_hw, 2, "x")
    np.testing.assert_array_equal(z, _phase_images_by_definition(x, pad_tl, dilation, sub_hw))
    # merge is split's adjoint: <split(x), g> = <x, merge(g)>.
    g = rng.standard_normal(z.shape).astype(dtype)
    back = np.full(shape, np.nan, dtype=dtype)
    phases.merge(steps.merge_phases, g, back, pad_tl, dilation, 2)
    assert not np.isnan(back).any()     # every position is written (0 if no phase holds it)
    np.testing.assert_allclose(np.vdot(z.astype(np.float64), g), np.vdot(x.astype(np.float64), back),
                               rtol=1e-12 if dtype == np.float64 else 1e-5)
    # An output's split and merge (no padding) invert each other (short phases padded with zeros).
    y = rng.standard_normal(shape).astype(dtype)
    yz = phases.split(steps.split_phases, y, (0, 0), dilation, phases.phase_output_shape(shape[2:], dilation),
                      2, "y")
    np.testing.assert_array_equal(yz, _phase_images_by_definition(y, (0, 0), dilation, yz.shape[2:]))
    again = np.empty_like(y)
    phases.merge(steps.merge_phases, yz, again, (0, 0), dilation, 2)
    np.testing.assert_array_equal(again, y)
    assert np.count_nonzero(yz) == y.size


def test_phase_steps_reject_mismatched_shapes(backend):
    steps = _backend_module(backend)._STEPS
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="phase images"):
        steps.split_phases(x, np.zeros((4, 3, 5, 5), np.float32), 1, 1, 2, 2, 1)     # 2*2*2 images needed
    with pytest.raises(ValueError, match="phase images"):
        steps.merge_phases(np.zeros((8, 2, 5, 5), np.float32), x, 1, 1, 2, 2, 1)     # 3 channels needed


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("padding", [0, 1])   # 0: grad_input by the adjoint (overlapping tiles)
@pytest.mark.parametrize("dilation", [1, 2])    # 2: the phase images go in chunks of one image
def test_tiny_workspace_splits_into_chunks_with_the_same_result(backend, algo, padding, dilation):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 10, 11)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    kw = dict(padding=padding, dilation=dilation, algo=algo, backend=backend)
    whole = fastconv.conv2d(x, w, **kw)
    limits.set_workspace_limit(1)       # one tile row per chunk
    try:
        chunked = fastconv.conv2d(x, w, **kw)
        gx, gw = fastconv.conv2d_backward(whole, x, w, needs=("input", "weight"), **kw)[:2]
        gw_alone = fastconv.conv2d_backward(whole, x, w, needs=("weight",), **kw)[1]
    finally:
        limits.set_workspace_limit(None)
    gx_whole, gw_whole = fastconv.conv2d_backward(whole, x, w, needs=("input", "weight"), **kw)[:2]
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6 * np.abs(whole).max())
    np.testing.assert_allclose(gx, gx_whole, rtol=1e-6, atol=1e-6 * np.abs(gx_whole).max())
    # grad_weight sums the chunks' GEMMs: same terms, another order.
    for got in (gw, gw_alone):
        np.testing.assert_allclose(got, gw_whole, rtol=1e-5, atol=1e-5 * np.abs(gw_whole).max())


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("padding", [0, 1])
def test_one_and_two_threads_give_the_same_result(backend, algo, padding):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 8, 13, 12)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    saved = fastconv.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            fastconv.set_num_threads(n)
            y = fastconv.conv2d(x, w, padding=padding, algo=algo, backend=backend)
            gx, gw = fastconv.conv2d_backward(y, x, w, padding=padding, needs=("input", "weight"), algo=algo,
                                              backend=backend)[:2]
            results.append((y, gx, gw))
    finally:
        fastconv.set_num_threads(saved)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(a).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt,cg,kg", [
    (9, 32, 64),     # MNIST conv2's channels: one panel of 4 (AVX-512) or 3 + 1 float32 vectors
    (7, 5, 13),      # rows past the last full block, columns past the last vector
    (1, 1, 1),       # one row, one channel each way
    (6, 64, 40),     # 5 float32 vectors
    (13, 65, 150),   # panels past the first, a part-vector last panel, 2 rows past 6 + 6
])
def test_batched_gemm_is_the_matrix_product_per_position(backend, dtype, nt, cg, kg):
    mod = _backend_module(backend)
    rng = np.random.default_rng(nt * 1000 + cg * 10 + kg)
    v = rng.standard_normal((3, 2, nt, cg)).astype(dtype)
    u = rng.standard_normal((3, 2, cg, kg)).astype(dtype)
    mm = np.full((3, 2, nt, kg), np.nan, dtype=dtype)       # every element must be written
    mod._batched_gemm(v, u, mm, 2)
    expected = np.matmul(v.astype(np.float64), u.astype(np.float64))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(mm, expected, rtol=0, atol=8 * eps * cg * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nt,cg,kg", [
    (9, 32, 64),     # MNIST conv2's channels
    (7, 5, 13),      # result rows past the last full block, columns past the last vector
    (1, 1, 1),       # one tile, one channel each way
    (150, 13, 70),   # tiles past the first pass over d's rows, a part-vector last panel
])
def test_batched_gemm_tn_adds_the_transposed_product_per_position(backend, dtype, nt, cg, kg):
    mod = _backend_module(backend)
    rng = np.random.default_rng(nt * 1000 + cg * 10 + kg)
    v = rng.standard_normal((3, 2, nt, cg)).astype(dtype)
    d = rng.standard_normal((3, 2, nt, kg)).astype(dtype)
    dm = rng.standard_normal((3, 2, cg, kg)).astype(dtype)       # the sum so far: added to
    expected = dm.astype(np.float64) + np.matmul(v.astype(np.float64).swapaxes(2, 3), d.astype(np.float64))
    mod._batched_gemm_tn(v, d, dm, 2)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(dm, expected, rtol=0, atol=8 * eps * nt * np.abs(expected).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,groups,cg,kg", [(4, 1, 3, 37), (2, 2, 5, 4), (4, 1, 1, 1)])
def test_filter_gradient_is_the_adjoint_of_the_filter_transform(backend, dtype, m, groups, cg, kg):
    """<filter_transform(f), dm> = <f, filter_gradient(dm)> for every f and dm, per channel
    pair: the two are each other's transposes (checked in float64 against einsum too)."""
    mod = _backend_module(backend)
    rng = np.random.default_rng(m * 100 + cg)
    a = m + 2
    g = tables.MATRICES[m][1]
    dm = rng.standard_normal((a * a, groups, cg, kg))
    gw = np.full((groups * kg, cg, 3, 3), np.nan, dtype=dtype)          # every element must be written
    mod._STEPS.filter_gradient(dm.astype(dtype), g.astype(dtype), gw, 2)
    expected = np.einsum("pi,pqgck,qj->gkcij", g, dm.reshape(a, a, groups, cg, kg), g).reshape(gw.shape)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(gw, expected, rtol=0, atol=64 * eps * np.abs(expected).max())
    f = rng.standard_normal((groups, cg, 3, 3, kg))                     # filters, output channels last
    u = np.empty((a * a, groups, cg, kg))
    if backend == "cython":
        mod._filter_transform(f, g, u, 2)
    else:
        mod._filter_transform(f, g, u)
    w = f.transpose(0, 4, 1, 2, 3).reshape(groups * kg, cg, 3, 3)       # the same filters as gw's layout
    assert np.isclose(np.vdot(u, dm), np.vdot(w, gw.astype(np.float64)), rtol=256 * eps)


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("threads,workspace", [(1, None), (2, None), (2, 1)])   # 1 byte: a tile row per chunk
def test_one_region_per_chunk_equals_the_three_steps(backend, algo, threads, workspace, monkeypatch):
    """Small products run a chunk's steps in one parallel region, each thread on its own
    tile rows (images, for the adjoint); the result is the three steps' bit for bit (the
    weight gradient's sums over the tiles go in per-thread parts: equal within rounding)."""
    rng = np.random.default_rng(threads)
    x = rng.standard_normal((5, 6, 13, 10)).astype(np.float32)
    w = rng.standard_normal((9, 6, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((5, 9, 11, 8)).astype(np.float32)
    kw = dict(algo=algo, backend=backend)
    saved = fastconv.get_num_threads()
    fastconv.set_num_threads(threads)
    limits.set_workspace_limit(workspace)
    try:
        assert plan._fused(6, 9)
        run = lambda: (fastconv.conv2d(x, w, **kw), fastconv.conv2d_backward(gy, x, w, needs=("input",), **kw)[0],
                       fastconv.conv2d_backward(gy, x, w, needs=("weight",), **kw)[1])
        fused = run()
        monkeypatch.setattr(plan, "_fused", lambda c, k: False)
        steps = run()
    finally:
        fastconv.set_num_threads(saved)
        limits.set_workspace_limit(None)
    np.testing.assert_array_equal(fused[0], steps[0])
    np.testing.assert_array_equal(fused[1], steps[1])
    np.testing.assert_allclose(fused[2], steps[2], rtol=0, atol=1e-5 * np.abs(steps[2]).max())


@pytest.mark.parametrize("algo", list(ALGOS))
def test_channels_past_the_fused_chunks_run_the_separate_steps(backend, algo):
    rng = np.random.default_rng(65)
    x = rng.standard_normal((2, 66, 7, 6)).astype(np.float32)
    w = rng.standard_normal((3, 66, 3, 3)).astype(np.float32)
    assert not plan._fused(66, 3)
    y = fastconv.conv2d(x, w, padding=1, algo=algo, backend=backend)
    gx = fastconv.conv2d_backward(y, x, w, padding=1, needs=("input",), algo=algo, backend=backend)[0]
    gw = fastconv.conv2d_backward(y, x, w, padding=1, needs=("weight",), algo=algo, backend=backend)[1]
    p = conv_params(x.shape, w.shape, 1, 1, 1, 1, np.float32)
    want_y = np.empty(y.shape); reference.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, want_y, p)
    want_gx = np.empty(x.shape)
    reference.conv2d_grad_input(y.astype(np.float64), w.astype(np.float64), want_gx, p)
    want_gw = np.empty(w.shape)
    reference.conv2d_grad_weight(y.astype(np.float64), x.astype(np.float64), want_gw, p)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=2e-5 * np.abs(want_y).max())
    np.testing.assert_allclose(gx, want_gx, rtol=0, atol=2e-5 * np.abs(want_gx).max())
    np.testing.assert_allclose(gw, want_gw, rtol=0, atol=2e-5 * np.abs(want_gw).max())


def test_adjoint_pays_only_with_fewer_tiles():
    assert plan.adjoint_pays((11, 11), (13, 13), 4)        # 9 tiles per image against 16
    assert not plan.adjoint_pays((56, 56), (56, 56), 4)    # "same" padding: as many tiles
    assert plan.adjoint_pays((4, 4), (6, 6), 2)            # 4 F(2x2) tiles against 9
    assert plan.adjoint_pays((7, 7), (9, 9), 4)            # 4 F(4x4) tiles against 9
    assert not plan.adjoint_pays((5, 5), (7, 7), 4)        # 4 against 4


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adjoint_grad_input_equals_the_flipped_convolution(backend, algo, dtype, monkeypatch):
    """Both grad_input formulations, alone and fused with grad_weight, against each other."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 6, 13, 11)).astype(dtype)
    w = rng.standard_normal((8, 6, 3, 3)).astype(dtype)
    gy = rng.standard_normal((3, 8, 11, 9)).astype(dtype)
    run = lambda needs: fastconv.conv2d_backward(gy, x, w, needs=needs, algo=algo, backend=backend)
    assert plan.adjoint_pays(gy.shape[2:], x.shape[2:], ALGOS[algo])
    gx_adjoint = run(("input",))[0]
    gx_fused, gw_fused = run(("input", "weight"))[:2]
    gw_alone = run(("weight",))[1]
    monkeypatch.setattr(plan, "adjoint_pays", lambda *args: False)
    gx_flipped = run(("input",))[0]
    np.testing.assert_array_equal(gx_fused, gx_adjoint)
    tol = 10 * np.finfo(dtype).eps
    np.testing.assert_allclose(gw_fused, gw_alone, rtol=tol, atol=tol * np.abs(gw_alone).max())
    tol = tolerance(dtype, algo)
    np.testing.assert_allclose(gx_adjoint, gx_flipped, rtol=0, atol=tol * np.abs(gx_flipped).max())


def test_backward_uses_the_one_pass_kernel_only_when_both_picks_share_it(monkeypatch):
    import fastconv.conv as conv
    from fastconv.dispatch import select
    p = conv_params((2, 4, 9, 9), (4, 4, 3, 3), 1, 0, 1, 1, "float64")
    pick = lambda name, algo: select(f"conv2d_grad_{name}", p, algo, "cython")
    assert conv._input_weight_kernel({"input": pick("input", "winograd_f43"),
                                      "weight": pick("weight", "im2col")}) is None
    assert conv._input_weight_kernel({"input": pick("input", "winograd_f43")}) is None
    both = conv._input_weight_kernel({"input": pick("input", "winograd_f43"),
                                      "weight": pick("weight", "winograd_f43")})
    assert both is _backend_module("cython").conv2d_grad_input_weight_f43
    calls = []
    monkeypatch.setattr(_backend_module("cython"), "conv2d_grad_input_weight_f43",
                        lambda *args: calls.append(args) or both(*args))
    fastconv.dispatch.registry.lookup("conv2d_grad_input_weight", "winograd_f43", "cython")._function = None
    try:
        rng = np.random.default_rng(9)
        x, w, gy = rng.standard_normal((2, 4, 9, 9)), rng.standard_normal((4, 4, 3, 3)), rng.standard_normal((2, 4, 7, 7))
        fastconv.conv2d_backward(gy, x, w, needs=("input", "weight"), algo="winograd_f43", backend="cython")
        fastconv.conv2d_backward(gy, x, w, needs=("input",), algo="winograd_f43", backend="cython")
    finally:
        monkeypatch.undo()
        fastconv.dispatch.registry.lookup("conv2d_grad_input_weight", "winograd_f43", "cython")._function = None
    assert len(calls) == 1
    assert "conv2d_grad_input_weight" in fastconv.explain("conv2d_backward", gy, x, w, algo="winograd_f43",
                                                          backend="cython")
    assert "conv2d_grad_input_weight" not in fastconv.explain("conv2d_backward", gy, x, w, needs=("input",),
                                                              algo="winograd_f43", backend="cython")


@pytest.mark.parametrize("algo", list(ALGOS))
def test_nan_reaches_exactly_the_tiles_that_read_it(backend, algo):
    m = ALGOS[algo]
    x = np.ones((1, 2, 12, 12))
    x[0, 1, 5, 6] = np.nan
    w = np.ones((3, 2, 3, 3))
    y = fastconv.conv2d(x, w, algo=algo, backend=backend)      # 10x10 output
    read_nan = np.zeros((10, 10), bool)
    read_nan[3:6, 4:7] = True                                  # windows that contain (5, 6)
    assert np.isnan(y[0][:, read_nan]).all()
    # Outside the tiles that hold those outputs everything stays finite and exact.
    tiles = np.zeros((10, 10), bool)
    for ty in range(0, 10, m):
        for tx in range(0, 10, m):
            tile = (slice(ty, ty + m), slice(tx, tx + m))
            if read_nan[tile].any():
                tiles[tile] = True
    np.testing.assert_allclose(y[0][:, ~tiles], 18.0, rtol=1e-12)


# ---------------------------------------------------------------- the filter-transform cache

@pytest.mark.parametrize("algo", list(ALGOS))
def test_filter_cache_reuses_unchanged_weights_and_sees_in_place_updates(backend, algo):
    mod = _backend_module(backend)
    m = ALGOS[algo]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    u1 = mod._transformed_filters(w, m, 1, grad_input=False)
    assert mod._transformed_filters(w, m, 1, grad_input=False) is u1      # cached
    assert not u1.flags.writeable
    y1 = fastconv.conv2d(x, w, padding=1, algo=algo, backend=backend)
    w[2, 1, 0, 2] += 1.0                                                   # in place: same id, pointer
    u2 = mod._transformed_filters(w, m, 1, grad_input=False)
    assert u2 is not u1
    y2 = fastconv.conv2d(x, w, padding=1, algo=algo, backend=backend)
    np.testing.assert_allclose(y2, reference_conv(x, w), rtol=0, atol=1e-10 * np.abs(y2).max())
    assert not np.allclose(y1[:, 2], y2[:, 2])
    w[...] = -w                                                            # every value changes
    y3 = fastconv.conv2d(x, w, padding=1, algo=algo, backend=backend)
    np.testing.assert_allclose(y3, reference_conv(x, w), rtol=0, atol=1e-10 * np.abs(y3).max())
    gx = fastconv.conv2d_backward(y3, x, w, padding=1, needs=("input",), algo=algo, backend=backend)[0]
    gx_ref = fastconv.conv2d_backward(y3, x, w, padding=1, needs=("input",), algo="reference")[0]
    np.testing.assert_allclose(gx, gx_ref, rtol=0, atol=1e-10 * np.abs(gx_ref).max())


def reference_conv(x, w):
    return fastconv.conv2d(x, w, padding=1, algo="reference")


def test_filter_cache_distinguishes_arrays_with_equal_shapes():
    cache = tables.FilterTransformCache(max_entries=2)
    calls = []

    def compute(w):
        calls.append(w.copy())
        return w * 2

    a = np.arange(9.0).reshape(1, 1, 3, 3)
    b = a + 1
    np.testing.assert_array_equal(cache.get(a, "k", compute), a * 2)
    np.testing.assert_array_equal(cache.get(b, "k", compute), b * 2)
    np.testing.assert_array_equal(cache.get(a, "k", compute), a * 2)
    assert len(calls) == 2                      # the second look-up of a was a hit
    c = a + 2
    cache.get(c, "k", compute)                  # evicts the least recently used (b)
    assert len(cache) == 2
    cache.get(b, "k", compute)
    assert len(calls) == 4
    a[0, 0, 0, 0] = -0.0                        # equal to 0.0 but a different bit pattern
    cache.get(a, "k", compute)
    assert len(calls) == 5


def test_filter_cache_keeps_within_its_byte_budget():
    cache = tables.FilterTransformCache(max_entries=10, max_bytes=3 * 2 * 72)   # 3 entries of 9 doubles x 2
    arrays = [np.full((1, 1, 3, 3), float(i)) for i in range(5)]
    for a in arrays:
        cache.get(a, "k", lambda w: w + 1)
    assert len(cache) == 3 and cache.nbytes() <= cache.max_bytes
    big = np.zeros((2, 2, 3, 3))                                                 # 2 * 288 bytes
    small_cache = tables.FilterTransformCache(max_bytes=100)
    np.testing.assert_array_equal(small_cache.get(big, "k", lambda w: w - 1), big - 1)
    assert len(small_cache) == 0


# ---------------------------------------------------------------- applicability

@pytest.mark.parametrize("algo", ["winograd", "winograd_f23", "winograd_f43"])
@pytest.mark.parametrize("kwargs,w_shape", [
    (dict(), (2, 3, 5, 5)),
    (dict(stride=2), (2, 3, 3, 3)),
    (dict(stride=(1, 2), dilation=2), (2, 3, 3, 3)),
])
def test_forced_winograd_refuses_what_it_cannot_compute(algo, kwargs, w_shape):
    x = np.ones((1, 3, 9, 9), np.float32)
    w = np.ones(w_shape, np.float32)
    with pytest.raises(fastconv.UnsupportedError, match="winograd"):
        fastconv.conv2d(x, w, **kwargs, algo=algo)
    with pytest.raises(fastconv.UnsupportedError):
        y = np.ones(conv_params(x.shape, w.shape, kwargs.get("stride", 1), 0, kwargs.get("dilation", 1),
                                1, "float32").output_shape, np.float32)
        fastconv.conv2d_backward(y, x, w, **kwargs, needs=("input",), algo=algo)


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_error_on_a_realistic_layer_is_within_the_documented_bound(backend, algo, dtype):
    """x ~ N(0, 1), Kaiming-scaled weights, 32 -> 32 channels: the regime of a real network."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 32, 15, 15)).astype(dtype)
    w = (rng.standard_normal((32, 32, 3, 3)) * np.sqrt(2 / (9 * 32))).astype(dtype)
    y = fastconv.conv2d(x, w, padding=1, algo=algo, backend=backend)
    y_ref = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1, algo="reference")
    err = np.abs(y - y_ref).max() / np.abs(y_ref).max()
    assert err <= tolerance(dtype, algo)
    # Not better than float arithmetic allows either: the kernel really ran in this dtype.
    assert err > np.finfo(dtype).eps / 10
