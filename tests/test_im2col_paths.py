"""im2col internals: the fold's row blocks, the unfold's copy path, the batched weight
gradient, and the GEMM-share report (structure only; its timings are never asserted)."""
import numpy as np
import pytest

import fastconv
from fastconv.kernels import im2col_plan
from fastconv.checks import conv_params

from cases import ConvCase, assert_close, reference_conv

BACKENDS = ["cython", "numba"]


def _module(backend):
    if backend == "cython":
        return pytest.importorskip("fastconv.kernels.cython.im2col", reason="Cython extension not built")
    pytest.importorskip("numba")
    from fastconv.kernels.numba import im2col
    return im2col


def _grad_input(module, case, dtype="float64"):
    x, w, b, gy = case.arrays(dtype)
    gx = np.empty(case.params(dtype).input_shape, dtype)
    module.conv2d_grad_input(gy, w, gx, case.params(dtype))
    return gx, reference_conv(case, x, w, b, gy)[1]


# Few planes (1 image x 2 channels, and a 3-channel stem-like stride 2), so the fold splits
# the input rows into blocks; padding and dilation make blocks start mid-tap.
FEW_PLANES = [
    ConvCase("two_planes_pad_dil", (1, 2, 23, 17), 3, (3, 3), padding=2, dilation=2),
    ConvCase("stem_like", (1, 3, 29, 30), 4, (7, 7), stride=2, padding=3),
    ConvCase("stride3_rect", (2, 1, 25, 19), 2, (4, 3), stride=(3, 2), padding=(2, 1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", FEW_PLANES, ids=lambda c: c.name)
def test_fold_blocks_do_not_change_the_sums(backend, case, monkeypatch):
    """Every grad_input element gets its terms in the same order whatever the row blocks."""
    module = _module(backend)
    results = []
    for units in (1, 8, 1000):  # whole planes, a few blocks, one input row per unit
        monkeypatch.setattr(im2col_plan, "FOLD_UNITS", units)
        gx, ref = _grad_input(module, case)
        assert_close(gx, ref, "float64", "im2col", f"grad_input, FOLD_UNITS={units}")
        results.append(gx)
    for gx in results[1:]:
        np.testing.assert_array_equal(gx, results[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_blocks_with_row_bands(backend, budget_rows=3):
    """Bands of output rows (a small workspace budget) and row blocks together."""
    module = _module(backend)
    case = FEW_PLANES[0]
    p = case.params("float64")
    row_bytes = p.c * p.r * p.s * p.out_w * 8
    fastconv.set_workspace_limit(row_bytes * budget_rows)
    try:
        plan = module._plan(p)
        assert not plan.wide and plan.rows == budget_rows
        gx, ref = _grad_input(module, case)
    finally:
        fastconv.set_workspace_limit(None)
    assert_close(gx, ref, "float64", "im2col", "grad_input in bands")


def test_fold_block_covers_every_row():
    p = conv_params((1, 3, 40, 40), (4, 3, 7, 7), 2, 3, 1, 1, "float32")
    for nb in (1, 2, 3, 8):
        for band in im2col_plan.band_table(p, 5):
            nrows = int(band[3] - band[2])
            block = im2col_plan.fold_block(p, nb, band)
            units = nb * p.c * -(-nrows // block)
            assert 1 <= block <= max(1, nrows)
            assert block * -(-nrows // block) >= nrows
            assert units >= min(im2col_plan.FOLD_UNITS, nb * p.c * nrows)


# Stride 1: tap columns that read no padding take the plain-copy path of the unfold, the
# others (and padded rows) the general one; stride 2 never takes it. Rows shorter than
# im2col_plan.SHORT_ROW are copied as vectors, longer ones by loops: with padding 1, a
# SHORT_ROW-wide output has full rows of SHORT_ROW and edge rows one shorter.
UNFOLD_CASES = [
    ConvCase("pad_rows_only", (3, 2, 9, 11), 3, (3, 5), padding=(2, 0)),
    ConvCase("pad_both", (2, 3, 8, 10), 4, (5, 5), padding=1),
    ConvCase("narrow_rows", (9, 6, 14, 14), 16, (5, 5)),
    ConvCase("stride2_no_pad", (2, 2, 13, 12), 3, (3, 3), stride=2),
    ConvCase("rows_at_short_row", (2, 2, 5, im2col_plan.SHORT_ROW), 3, (3, 3), padding=1),
    ConvCase("rows_past_short_row", (2, 2, 5, im2col_plan.SHORT_ROW + 1), 3, (3, 3), padding=1),
    ConvCase("rows_40", (1, 2, 4, 40), 3, (3, 3), padding=(0, 1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", UNFOLD_CASES, ids=lambda c: c.name)
def test_unfold_paths(backend, dtype, case):
    module = _module(backend)
    x, w, b, gy = case.arrays(dtype)
    p = case.params(dtype)
    y = np.empty(p.output_shape, dtype)
    module.conv2d_forward(x, w, b, y, p)
    gw = np.empty(p.weight_shape, dtype)
    module.conv2d_grad_weight(gy, x, gw, p)
    ref = reference_conv(case, x, w, b, gy)
    assert_close(y, ref[0], dtype, "im2col", "forward")
    assert_close(gw, ref[2], dtype, "im2col", "grad_weight")


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_gradient_of_several_images_per_chunk(backend):
    """Per-image layout with several images per chunk (the Numba backend sums them with one
    stacked product per chunk): right, and the same at 1 and 2 threads."""
    module = _module(backend)
    case = ConvCase("chunked", (11, 3, 24, 24), 5, (3, 3), padding=1)
    p = case.params("float64")
    image_bytes = p.c * p.r * p.s * p.out_h * p.out_w * 8
    x, w, b, gy = case.arrays("float64")
    ref = reference_conv(case, x, w, b, gy)[2]
    saved = fastconv.get_num_threads()
    got = []
    fastconv.set_workspace_limit(4 * image_bytes)  # chunks of 4, 4 and 3 images
    try:
        plan = module._plan(p)
        assert not plan.wide and plan.chunk == 4
        for n in (1, 2):
            fastconv.set_num_threads(n)
            gw = np.empty(p.weight_shape)
            module.conv2d_grad_weight(gy, x, gw, p)
            got.append(gw)
    finally:
        fastconv.set_num_threads(saved)
        fastconv.set_workspace_limit(None)
    assert_close(got[0], ref, "float64", "im2col", "grad_weight")
    np.testing.assert_array_equal(got[0], got[1])


# ---------------------------------------------------------------- GEMM share report

REPORT_CASES = [
    ConvCase("wide", (6, 4, 9, 9), 6, (3, 3), padding=1, groups=2),
    ConvCase("per_image", (3, 3, 40, 36), 4, (3, 3), stride=2, padding=1),
    ConvCase("pointwise", (2, 8, 24, 24), 4, (1, 1)),
]


@pytest.mark.parametrize("case", REPORT_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("op", ["forward", "grad_input", "grad_weight"])
def test_gemm_calls_add_up_to_the_layer_flops(case, op):
    p = case.params("float32")
    calls = im2col_plan.gemm_calls(p, op)
    macs = p.n * p.k * p.out_h * p.out_w * p.c_per_group * p.r * p.s
    assert sum(m * n * k * count for (m, n, k), count in calls.items()) == macs
    kg, crs = p.k // p.groups, p.c_per_group * p.r * p.s
    inner = {"forward": crs, "grad_input": kg, "grad_weight": None}[op]
    for (m, n, k), count in calls.items():
        assert count >= 1
        if inner is not None:
            assert k == inner


def test_gemm_calls_rejects_unknown_op():
    with pytest.raises(ValueError):
        im2col_plan.gemm_calls(REPORT_CASES[0].params("float32"), "backward")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["forward", "grad_input", "grad_weight"])
def test_phase_report_structure(backend, op):
    module = _module(backend)
    case = REPORT_CASES[1]
    p = case.params("float32")
    x, w, b, gy = case.arrays("float32")
    kernel, args = {
        "forward": (module.conv2d_forward, (x, w, b, np.empty(p.output_shape, np.float32), p)),
        "grad_input": (module.conv2d_grad_input, (gy, w, np.empty(p.input_shape, np.float32), p)),
        "grad_weight": (module.conv2d_grad_weight, (gy, x, np.empty(p.weight_shape, np.float32), p)),
    }[op]
    report = im2col_plan.phase_report(kernel, args, p, op, repeats=1, sgemm_gflops=50.0)
    assert report["op"] == op
    assert report["gemm_calls"] == im2col_plan.gemm_calls(p, op)
    assert report["flops"] == 2 * p.n * p.k * p.out_h * p.out_w * p.c_per_group * p.r * p.s
    assert report["total_s"] > 0 and report["gemm_s"] > 0
    assert report["other_s"] >= 0 and 0 < report["gemm_share"] <= 1
    assert report["sgemm_gflops"] == 50.0
    assert report["gemm_vs_sgemm"] == pytest.approx(report["gemm_gflops"] / 50.0)
    # the timed call really ran the kernel: its output is the layer's
    ref = reference_conv(case, x, w, b, gy)
    out = args[3] if op == "forward" else args[2]
    assert_close(out, ref[{"forward": 0, "grad_input": 1, "grad_weight": 2}[op]], "float32", "im2col", op)
