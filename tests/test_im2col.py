"""im2col + GEMM kernels: batch chunking, the 1x1 fast path, workspace reuse, threads, NaN.

The parity grid (tests/test_kernel_parity.py) checks the numerics of every geometry; this file
checks what is specific to im2col: results stay right when the workspace budget splits the
batch into chunks (including a last, shorter chunk and a chunk of one image that alone is
over budget), when the per-thread workspace is reused by calls of other shapes and dtypes,
and when the 1x1 fast path skips the unfold.
"""
import threading

import numpy as np
import pytest

import fastconv
from fastconv.kernels import im2col_plan
from fastconv import limits
from fastconv.checks import conv_params

from cases import ConvCase, assert_close, reference_conv

BACKENDS = ["cython", "numba"]


def _module(backend):
    if backend == "cython":
        return pytest.importorskip("fastconv.kernels.cython.im2col",
                                   reason="Cython extension not built")
    pytest.importorskip("numba")
    from fastconv.kernels.numba import im2col
    return im2col


@pytest.fixture
def budget():
    """Set the workspace budget for one test; the default is restored afterwards."""
    def set_budget(nbytes):
        fastconv.set_workspace_limit(nbytes)
    yield set_budget
    fastconv.set_workspace_limit(None)


def _run_all(case, dtype, backend, seed=0):
    """(forward, grad_input, grad_weight) by the im2col kernel, and by the float64 oracle."""
    x, w, b, gy = case.arrays(dtype, seed)
    forced = dict(algo="im2col", backend=backend)
    y = fastconv.conv2d(x, w, b, **case.kwargs(), **forced)
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=("input", "weight"), **forced)
    ref = reference_conv(case, x, w, b, gy)
    return (y, gx, gw), ref[:3]


def _check_all(case, dtype, backend, seed=0):
    got, ref = _run_all(case, dtype, backend, seed)
    for what, g, r in zip(("forward", "grad_input", "grad_weight"), got, ref):
        assert_close(g, r, dtype, "im2col", what)
    return got


def _per_image_bytes(module, case, dtype):
    """Workspace bytes one whole image needs under the module's plan (column + scatter)."""
    plan = module._plan(case.params(dtype))
    assert plan.rows == case.params(dtype).out_h  # whole images, not bands
    return (plan.col_elems + plan.extra_elems) // plan.chunk * np.dtype(dtype).itemsize


# A small image (wide layout: several images share a GEMM) and a large one (per-image GEMMs),
# each with groups, stride or padding so the chunk offsets meet every index path.
WIDE_CASE = ConvCase("wide", (7, 4, 9, 8), 6, (3, 3), stride=(1, 2), padding=(1, 2), groups=2)
PER_IMAGE_CASE = ConvCase("per_image", (5, 3, 36, 34), 4, (3, 2), padding=(2, 1), dilation=(1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case,wide", [(WIDE_CASE, True), (PER_IMAGE_CASE, False)],
                         ids=["wide", "per_image"])
@pytest.mark.parametrize("images_per_chunk", [2, 3])
def test_chunk_boundaries(budget, backend, dtype, case, wide, images_per_chunk):
    """A budget of a few images splits the batch into chunks; the last one is shorter."""
    module = _module(backend)
    assert case.x[0] % images_per_chunk != 0
    budget(images_per_chunk * _per_image_bytes(module, case, dtype))
    plan = module._plan(case.params(dtype))
    assert (plan.wide, plan.chunk) == (wide, images_per_chunk)
    _check_all(case, dtype, backend)


# Large images (no wide layout) whose column matrix is cut into bands of output rows.
BAND_CASES = [
    ConvCase("groups_dilated", (3, 4, 23, 60), 6, (3, 4), stride=(1, 2), padding=(1, 2),
             dilation=(2, 1), groups=2),
    # stride 3 > kernel extent: input rows between bands are read by no tap at all
    ConvCase("gaps", (2, 3, 70, 70), 2, (1, 2), stride=3, padding=(0, 1)),
    ConvCase("stride2_pad", (2, 2, 45, 50), 3, (5, 3), stride=2, padding=(2, 1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", BAND_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("rows_per_band", [1, 4, 7])
def test_row_bands(budget, backend, dtype, case, rows_per_band):
    """An image over budget is split into bands of output rows (the last one shorter); the
    fold of grad_input accumulates the bands onto the input rows they share."""
    module = _module(backend)
    p = case.params(dtype)
    assert p.out_h * p.out_w >= module.WIDE_BELOW_PIXELS and p.out_h > rows_per_band
    row_bytes = p.c * p.r * p.s * p.out_w * np.dtype(dtype).itemsize
    budget(rows_per_band * row_bytes + 1)
    plan = module._plan(p)
    assert (plan.wide, plan.chunk, plan.rows) == (False, 1, rows_per_band)
    assert plan.col_elems * np.dtype(dtype).itemsize <= rows_per_band * row_bytes
    _check_all(case, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [WIDE_CASE, PER_IMAGE_CASE], ids=["wide", "per_image"])
def test_image_over_budget_runs_as_chunk_of_one(budget, backend, case):
    """A budget smaller than one image's column matrix still runs, one image at a time."""
    module = _module(backend)
    budget(64)
    p = case.params("float64")
    plan = module._plan(p)
    assert plan.chunk == 1 and (plan.col_elems + plan.extra_elems) * 8 > 64
    before = module._workspace_cache_bytes()
    _check_all(case, "float64", backend)
    # The over-budget workspace lives for one call only; it is not kept in the cache.
    assert module._workspace_cache_bytes() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_result_equals_unchunked(budget, backend):
    """Chunks and bands change only how the GEMMs are cut: the same terms for every output.

    Not bit for bit: a BLAS may sum the columns at the edge of its register tile in another
    order (OpenBLAS's AVX-512 dgemm does), and where a column falls depends on the cut.
    """
    _module(backend)
    case = ConvCase("per_image", (5, 3, 33, 33), 4, (3, 3), padding=1)
    whole, _ = _run_all(case, "float64", backend)
    budget(64)
    chunked, _ = _run_all(case, "float64", backend)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-12, atol=1e-12)
    # grad_input sums a pixel's taps band by band, grad_weight image by image: same terms,
    # another order.
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-12, atol=1e-12)


# Taps that read nothing but padding (kernel wider than the padded image minus dilation
# gaps): their whole column-matrix row is zero, and no write may spill into the next row.
ALL_PADDING_TAPS = [
    ConvCase("cols", (3, 1, 1, 1), 2, (1, 3), padding=(0, 2), dilation=(1, 2)),
    ConvCase("rows", (3, 2, 1, 2), 2, (3, 1), padding=(2, 0), dilation=(2, 1)),
    ConvCase("both_strided", (4, 2, 2, 2), 3, (3, 3), stride=2, padding=3, dilation=2),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ALL_PADDING_TAPS, ids=lambda c: c.name)
def test_taps_entirely_in_padding(backend, dtype, case):
    _module(backend)
    _check_all(case, dtype, backend)


# ---------------------------------------------------------------- 1x1 fast path

POINTWISE = [
    ConvCase("pointwise", (3, 8, 5, 7), 6, (1, 1)),
    ConvCase("pointwise_groups", (2, 6, 4, 5), 9, (1, 1), groups=3),
    ConvCase("pointwise_no_bias", (2, 5, 3, 3), 4, (1, 1), bias=False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", POINTWISE, ids=lambda c: c.name)
def test_pointwise_fast_path(backend, dtype, case):
    """1x1 stride-1 unpadded: correct results without any column workspace."""
    module = _module(backend)
    assert module._is_plain_pointwise(case.params(dtype))
    seen = {}

    def run():  # in a fresh thread, whose workspace cache starts empty
        seen["result"] = _check_all(case, dtype, backend)
        seen["cache"] = module._workspace_cache_bytes()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert "result" in seen, "the kernels raised in the worker thread"
    assert seen["cache"] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_pointwise_with_stride_or_padding_takes_general_path(backend):
    module = _module(backend)
    for case in (ConvCase("s2", (2, 4, 7, 6), 3, (1, 1), stride=2),
                 ConvCase("pad", (2, 4, 5, 5), 3, (1, 1), padding=1)):
        assert not module._is_plain_pointwise(case.params("float64"))
        _check_all(case, "float64", backend)


# ---------------------------------------------------------------- workspace reuse

@pytest.mark.parametrize("backend", BACKENDS)
def test_workspace_reused_across_calls_and_shapes(backend):
    """The cached buffer is reused; leftovers of an earlier, larger call never leak through."""
    module = _module(backend)
    big = ConvCase("big", (3, 5, 20, 21), 4, (5, 3), padding=(2, 1))
    small = ConvCase("small", (2, 3, 6, 7), 5, (3, 3), stride=2, padding=1)
    other = ConvCase("other", (4, 2, 9, 9), 3, (2, 2), dilation=2)
    expected = {}
    # Interleave shapes and dtypes, twice: the second round runs on dirty buffers.
    for round_ in range(2):
        for case in (big, small, other, small, big):
            for dtype in ("float64", "float32"):
                got = _check_all(case, dtype, backend, seed=round_)
                if round_ == 0:
                    expected[case.name, dtype] = got
    # Same inputs, same shapes: results identical to the first time (no stale state).
    for (name, dtype), first in expected.items():
        case = {"big": big, "small": small, "other": other}[name]
        again, _ = _run_all(case, dtype, backend, seed=0)
        for a, b in zip(again, first):
            np.testing.assert_array_equal(a, b)
    # One buffer per dtype (shared by both backends), large enough for the biggest call, was
    # kept and reused.
    buffers = im2col_plan._buffers.buffers
    assert set(buffers) == {"f", "d"}
    held = buffers["d"]
    _run_all(small, "float64", backend)
    assert im2col_plan._buffers.buffers["d"] is held


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_callers_use_separate_workspaces(backend):
    """Python threads running kernels at once (the GIL is released) do not share buffers."""
    _module(backend)
    cases = [ConvCase(f"t{i}", (3, 2 + i, 11 + i, 12), 3 + i, (3, 3), padding=i % 2) for i in range(4)]
    errors = []

    def work(case):
        try:
            for _ in range(5):
                _check_all(case, "float64", backend)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ---------------------------------------------------------------- threads, NaN, read-only

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [WIDE_CASE, PER_IMAGE_CASE, POINTWISE[1]], ids=lambda c: c.name)
def test_same_result_with_one_and_two_threads(backend, case):
    _module(backend)
    saved = fastconv.get_num_threads()
    try:
        fastconv.set_num_threads(1)
        one, _ = _run_all(case, "float64", backend)
        fastconv.set_num_threads(2)
        two, _ = _run_all(case, "float64", backend)
    finally:
        fastconv.set_num_threads(saved)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_to_the_outputs_that_read_it(backend):
    _module(backend)
    case = ConvCase("nan", (2, 3, 9, 9), 4, (3, 3), stride=2, padding=1)
    x, w, b, gy = case.arrays("float64")
    x[1, 2, 4, 4] = np.nan
    y = fastconv.conv2d(x, w, b, **case.kwargs(), algo="im2col", backend=backend)
    # Output pixel (oy, ox) reads input rows 2*oy-1 .. 2*oy+1: input row/col 4 -> oy, ox in {2}.
    expected = np.zeros(y.shape, bool)
    expected[1, :, 2, 2] = True
    np.testing.assert_array_equal(np.isnan(y), expected)
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=("input", "weight"),
                                         algo="im2col", backend=backend)
    assert not np.isnan(gx).any()  # grad_input does not read x
    # Only tap (1, 1) of channel 2 ever reads input pixel (4, 4) (stride 2, pad 1).
    expected = np.zeros(gw.shape, bool)
    expected[:, 2, 1, 1] = True
    np.testing.assert_array_equal(np.isnan(gw), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_inputs(backend):
    _module(backend)
    case = ConvCase("ro", (2, 4, 8, 9), 3, (3, 3), padding=1)
    x, w, b, gy = case.arrays("float32")
    for a in (x, w, b, gy):
        a.setflags(write=False)
    y = fastconv.conv2d(x, w, b, **case.kwargs(), algo="im2col", backend=backend)
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, **case.kwargs(), needs=("input", "weight"),
                                         algo="im2col", backend=backend)
    ref = reference_conv(case, x, w, b, gy)
    for got, r in zip((y, gx, gw), ref):
        assert_close(got, r, "float32", "im2col")


@pytest.mark.parametrize("backend", BACKENDS)
def test_plan_respects_budget_and_layout_rule(budget, backend):
    """Chunk sizes follow the budget; the layout follows the output size."""
    module = _module(backend)
    p = conv_params((10, 4, 8, 8), (6, 4, 3, 3), 1, 1, 1, 1, "float32")
    assert module._plan(p).wide  # 64 output pixels per image
    p_big = conv_params((3, 2, 40, 40), (2, 2, 3, 3), 1, 1, 1, 1, "float32")
    assert not module._plan(p_big).wide  # 1600 output pixels
    assert not module._plan(conv_params((1, 4, 8, 8), (6, 4, 3, 3), 1, 1, 1, 1, "float32")).wide
    per_image = (4 * 9 * 64 + 6 * 64) * 4
    for images in (1, 3, 10):
        budget(images * per_image + 1)
        plan = module._plan(p)
        assert plan.chunk == images
        assert (plan.col_elems + plan.extra_elems) * 4 <= images * per_image
    budget(50 * per_image)
    assert module._plan(p).chunk == 10  # never more than the batch
