"""The Numba backend's LLVM-IR building blocks (``kernels/numba/microkernels.py``) against NumPy."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from fastconv.kernels.numba import winograd
from fastconv.kernels.numba.microkernels import (DOT_ROWS, DOT_TAPS, GEMM_PANEL_VECTORS, GEMM_ROWS, STENCIL_ROWS,
                                                 TAP_ROWS, TAP_VECTORS, VECTOR_BYTES, avg2x2_row, copy_run,
                                                 dot_block, gemm_block, split_pairs, spread_pairs, stencil3x3_rows,
                                                 tap_block, transpose_block)


@njit
def _transpose_block(src, s_index, ss, dst, d_index, ds):
    transpose_block(src, s_index, ss, dst, d_index, ds)


@njit
def _gemm_block_4x3(a, ai, ast, astep, b, bi, bst, c, ci, cst, depth, zero):
    gemm_block(a, ai, ast, astep, b, bi, bst, c, ci, cst, depth, zero, 4, 3)


@njit
def _gemm_block_1x2(a, ai, ast, astep, b, bi, bst, c, ci, cst, depth, zero):
    gemm_block(a, ai, ast, astep, b, bi, bst, c, ci, cst, depth, zero, 1, 2)


@njit
def _gemm_block_3x1(a, ai, ast, astep, b, bi, bst, c, ci, cst, depth, zero):
    gemm_block(a, ai, ast, astep, b, bi, bst, c, ci, cst, depth, zero, 3, 1)


@njit
def _gemm_block_largest(a, ai, ast, astep, b, bi, bst, c, ci, cst, depth, zero):
    gemm_block(a, ai, ast, astep, b, bi, bst, c, ci, cst, depth, zero, GEMM_ROWS, GEMM_PANEL_VECTORS)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, 8), (np.float64, 4)])
def test_transpose_block_moves_one_block_and_nothing_else(dtype, lanes):
    rng = np.random.default_rng(lanes)
    src = rng.standard_normal(400).astype(dtype)
    dst = np.zeros(400, dtype=dtype)
    _transpose_block(src, 3, 17, dst, 5, 11)           # odd offsets and strides: unaligned
    expected = np.zeros(400, dtype=dtype)
    for i in range(lanes):
        for j in range(lanes):
            expected[5 + j * 11 + i] = src[3 + i * 17 + j]
    np.testing.assert_array_equal(dst, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,cols", [(13, 32), (32, 13), (11, 64), (3, 20), (20, 3), (8, 8), (1, 1)])
def test_transpose_covers_partial_blocks(dtype, rows, cols):
    rng = np.random.default_rng(rows * cols)
    ss, ds = cols + 3, rows + 5
    src = rng.standard_normal(2 + rows * ss).astype(dtype)
    dst = np.full(1 + cols * ds, np.nan, dtype=dtype)
    winograd._transpose(src, 2, ss, dst, 1, ds, rows, cols)
    got = dst[1:].reshape(cols, ds)[:, :rows]
    np.testing.assert_array_equal(got, src[2:].reshape(rows, ss)[:, :cols].T)
    assert np.isnan(dst[1:].reshape(cols, ds)[:, rows:]).all()      # nothing written past a row


@pytest.mark.parametrize("dtype,lanes", [(np.float32, VECTOR_BYTES // 4), (np.float64, VECTOR_BYTES // 8)])
@pytest.mark.parametrize("kernel,rows,vectors", [(_gemm_block_4x3, 4, 3), (_gemm_block_1x2, 1, 2),
                                                 (_gemm_block_3x1, 3, 1),
                                                 (_gemm_block_largest, GEMM_ROWS, GEMM_PANEL_VECTORS)])
@pytest.mark.parametrize("depth", [1, 7, 32])
@pytest.mark.parametrize("transposed,zero", [(False, True), (True, False)])
def test_gemm_block_is_a_small_matrix_product(dtype, lanes, kernel, rows, vectors, depth, transposed, zero):
    """c = (0 or c) + a @ b on a block, a read row-major or (``transposed``) down its columns."""
    rng = np.random.default_rng(depth)
    width = vectors * lanes
    b_stride, c_stride = width + 5, width + 3
    if transposed:      # a's rows are the columns of a depth x (rows + 2) matrix
        a_stride, a_step = 1, rows + 2
        a = rng.standard_normal(1 + depth * a_step).astype(dtype)
        am = a[1:].reshape(depth, a_step)[:, :rows].T.astype(np.float64)
    else:
        a_stride, a_step = depth + 2, 1
        a = rng.standard_normal(1 + rows * a_stride).astype(dtype)
        am = a[1:].reshape(rows, a_stride)[:, :depth].astype(np.float64)
    b = rng.standard_normal(2 + depth * b_stride).astype(dtype)
    c = np.full(3 + rows * c_stride, np.nan, dtype=dtype)
    start = rng.standard_normal((rows, width))
    if not zero:
        c[3:].reshape(rows, c_stride)[:, :width] = start
    kernel(a, 1, a_stride, a_step, b, 2, b_stride, c, 3, c_stride, depth, zero)
    bm = b[2:].reshape(depth, b_stride)[:, :width].astype(np.float64)
    expected = am @ bm + (0 if zero else start.astype(dtype))
    got = c[3:].reshape(rows, c_stride)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got[:, :width], expected, rtol=0, atol=4 * eps * (depth + 1) * np.abs(expected).max())
    assert np.isnan(got[:, width:]).all()
    assert np.isnan(c[:3]).all()


@njit
def _tap_block(w, wi, ws, src, si, offs, taps, acc, ai, ast, count, init, ii, first, rows):
    tap_block(w, wi, ws, src, si, offs, taps, acc, ai, ast, count, init, ii, first, rows)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, VECTOR_BYTES // 4), (np.float64, VECTOR_BYTES // 8)])
@pytest.mark.parametrize("rows", list(range(1, TAP_ROWS + 1)))
@pytest.mark.parametrize("first", [True, False])
def test_tap_block_correlates_a_run_of_every_length(dtype, lanes, rows, first):
    """acc = (init or acc) + taps of src at arbitrary offsets, for every run length from one
    output to TAP_VECTORS full vectors: nothing read or written past the run."""
    rng = np.random.default_rng(rows)
    taps = 7
    offs = rng.permutation(40)[:taps].astype(np.intp)        # any order, any gaps
    w_stride, acc_stride = taps + 2, TAP_VECTORS * lanes + 3
    w = rng.standard_normal(1 + rows * w_stride).astype(dtype)
    init = rng.standard_normal(2 + rows).astype(dtype)
    wm = w[1:].reshape(rows, w_stride)[:, :taps].astype(np.float64)
    for count in sorted({1, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, TAP_VECTORS * lanes}):
        # src ends right after the last element the run reads: a read past it would fault
        # under a bounds-checking allocator and would show as NaN here.
        src = rng.standard_normal(5 + offs.max() + count).astype(dtype)
        acc = np.full(4 + rows * acc_stride, np.nan, dtype=dtype)
        start = rng.standard_normal((rows, count)).astype(dtype)
        if not first:
            acc[4:].reshape(rows, acc_stride)[:, :count] = start
        _tap_block(w, 1, w_stride, src, 5, offs, taps, acc, 4, acc_stride, count, init, 2, first, rows)
        windows = np.stack([src[5 + o:5 + o + count] for o in offs]).astype(np.float64)
        expected = wm @ windows + (init[2:2 + rows, None] if first else start)
        got = acc[4:].reshape(rows, acc_stride)
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(got[:, :count], expected, rtol=0, atol=4 * eps * (taps + 1) * np.abs(expected).max())
        assert np.isnan(got[:, count:]).all()
        assert np.isnan(acc[:4]).all()


def test_tap_block_ignores_shapes_past_its_largest_block():
    acc = np.full(64, np.nan, np.float32)
    args = (np.ones(64, np.float32), 0, 1, np.ones(64, np.float32), 0, np.zeros(1, np.intp), 1, acc, 0, 8)
    _tap_block(*args, 0, np.zeros(8, np.float32), 0, True, 1)                    # an empty run
    _tap_block(*args, 4, np.zeros(8, np.float32), 0, True, TAP_ROWS + 1)         # too many rows
    assert np.isnan(acc).all()


@njit
def _dot_block(g, gi, gs, gr, src, si, sr, offs, taps, lanes, li, ls, count, runs, rows):
    dot_block(g, gi, gs, gr, src, si, sr, offs, taps, lanes, li, ls, count, runs, rows)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, VECTOR_BYTES // 4), (np.float64, VECTOR_BYTES // 8)])
@pytest.mark.parametrize("rows", list(range(1, DOT_ROWS + 1)))
@pytest.mark.parametrize("taps", [1, 2, DOT_TAPS, 7, 9])
def test_dot_block_adds_lane_sums_of_dot_products_over_runs(dtype, lanes, rows, taps):
    """lanes += per-lane partial sums of sum_u g_r[run u] . src[offset_t + run u], whose lane
    totals are the dot products; lanes outside the block untouched, nothing read past a run
    (a NaN just past every run of g and src would poison a sum)."""
    rng = np.random.default_rng(rows * 10 + taps)
    offs = rng.permutation(30)[:taps].astype(np.intp)
    for count in sorted({1, lanes - 1, lanes, lanes + 3, 3 * lanes + 5}):
        runs, g_run, s_run = 3, count + 4, count + 40
        g_stride = runs * g_run + 2
        g = np.full(1 + rows * g_stride, np.nan, dtype=dtype)
        gm = g[1:].reshape(rows, g_stride)[:, :runs * g_run].reshape(rows, runs, g_run)
        gm[:, :, :count] = rng.standard_normal((rows, runs, count))
        src = np.full(2 + offs.max() + (runs - 1) * s_run + count + 1, np.nan, dtype=dtype)
        for t in offs:
            for u in range(runs):
                src[2 + t + u * s_run:2 + t + u * s_run + count] = rng.standard_normal(count)
        l_stride = taps * lanes + 3
        out = rng.standard_normal(5 + rows * l_stride).astype(dtype)
        before = out.copy()
        _dot_block(g, 1, g_stride, g_run, src, 2, s_run, offs, taps, out, 5, l_stride, count, runs, rows)
        added = (out[5:] - before[5:]).reshape(rows, l_stride)
        totals = added[:, :taps * lanes].reshape(rows, taps, lanes).astype(np.float64).sum(axis=2)
        windows = np.stack([[src[2 + t + u * s_run:2 + t + u * s_run + count] for u in range(runs)] for t in offs])
        expected = np.einsum("ruc,tuc->rt", gm[:, :, :count].astype(np.float64), windows.astype(np.float64))
        eps = np.finfo(dtype).eps
        scale = np.abs(gm[:, :, :count]).sum() * 4
        np.testing.assert_allclose(totals, expected, rtol=0, atol=16 * eps * scale)
        np.testing.assert_array_equal(out[:5], before[:5])
        np.testing.assert_array_equal(added[:, taps * lanes:], 0)


@njit
def _stencil_rows(w, src, si, sr, dst, di, dr, count, bias, rows):
    if rows == 1:
        stencil3x3_rows(w, 1, src, si, sr, dst, di, dr, count, bias, 1)
    elif rows == 2:
        stencil3x3_rows(w, 1, src, si, sr, dst, di, dr, count, bias, 2)
    elif rows == 3:
        stencil3x3_rows(w, 1, src, si, sr, dst, di, dr, count, bias, 3)
    else:
        stencil3x3_rows(w, 1, src, si, sr, dst, di, dr, count, bias, STENCIL_ROWS)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, VECTOR_BYTES // 4), (np.float64, VECTOR_BYTES // 8)])
@pytest.mark.parametrize("rows", list(range(1, STENCIL_ROWS + 1)))
def test_stencil3x3_rows_is_a_3x3_correlation_of_whole_rows(dtype, lanes, rows):
    """rows output rows = bias + 3x3 correlation, for row lengths around the vector width;
    nothing written past a row's end, nothing read past the input's last needed element."""
    rng = np.random.default_rng(rows)
    w = rng.standard_normal(10).astype(dtype)
    for count in sorted({1, lanes - 1, lanes, lanes + 1, 3 * lanes + 5}):
        src_row, dst_row = count + 2 + 3, count + 4
        src = rng.standard_normal(7 + (rows + 2) * src_row).astype(dtype)
        src = src[:7 + (rows + 1) * src_row + count + 2]        # ends where the last read does
        dst = np.full(2 + rows * dst_row, np.nan, dtype=dtype)
        _stencil_rows(w, src, 7, src_row, dst, 2, dst_row, count, dtype(0.25), rows)
        planes = np.stack([src[7 + a * src_row:7 + a * src_row + count + 2] for a in range(rows + 2)])
        expected = np.array([[0.25 + sum(w[1 + 3 * a + b] * np.float64(planes[r + a, j + b])
                                         for a in range(3) for b in range(3)) for j in range(count)]
                             for r in range(rows)])
        got = dst[2:].reshape(rows, dst_row)
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(got[:, :count], expected, rtol=0, atol=32 * eps * np.abs(expected).max())
        assert np.isnan(got[:, count:]).all() and np.isnan(dst[:2]).all()


@njit
def _copy_run(src, si, dst, di, count):
    copy_run(src, si, dst, di, count)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, VECTOR_BYTES // 4), (np.float64, VECTOR_BYTES // 8)])
def test_copy_run_copies_exactly_the_run(dtype, lanes):
    rng = np.random.default_rng(lanes)
    src = rng.standard_normal(8 * lanes + 9).astype(dtype)
    src[[1, 4, 7]] = [np.nan, -0.0, np.inf]            # bit patterns must survive the copy
    for count in sorted({0, 1, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, 5 * lanes}):
        dst = np.full(src.size + 11, 7.5, dtype=dtype)
        _copy_run(src, 1, dst, 3, count)
        expected = np.full_like(dst, 7.5)
        expected[3:3 + count] = src[1:1 + count]
        assert dst.tobytes() == expected.tobytes(), count


@njit
def _avg2x2_row(src, i0, i1, count, dst, di):
    avg2x2_row(src, i0, i1, count, dst, di)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, VECTOR_BYTES // 4), (np.float64, VECTOR_BYTES // 8)])
def test_avg2x2_row_averages_pairs_of_two_rows_and_writes_nothing_else(dtype, lanes):
    """dst[m] = (((r0[2m] + r0[2m+1]) + r1[2m]) + r1[2m+1]) / 4 in that order, bit for bit
    with the scalar form; a NaN just past either row's 2*count elements would show in an
    output if it were read, and the values around the outputs must stay."""
    rng = np.random.default_rng(lanes + 3)
    for count in sorted({1, 2, lanes // 2 + 1, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, 5 * lanes - 1}):
        n = 2 * count
        src = np.full(2 * n + 10, np.nan, dtype=dtype)
        r0, r1 = 2, n + 6
        src[r0:r0 + n] = rng.standard_normal(n)
        src[r1:r1 + n] = rng.standard_normal(n)
        dst = np.full(count + 9, 7.5, dtype=dtype)
        _avg2x2_row(src, r0, r1, count, dst, 4)
        a, b = src[r0:r0 + n:2], src[r0 + 1:r0 + n:2]
        c, d = src[r1:r1 + n:2], src[r1 + 1:r1 + n:2]
        expected = np.full_like(dst, 7.5)
        expected[4:4 + count] = (((a + b) + c) + d) / dtype(4)
        assert dst.tobytes() == expected.tobytes(), count


@njit
def _spread_pairs(src, si, count, dst, di):
    spread_pairs(src, si, count, dst, di)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, VECTOR_BYTES // 4), (np.float64, VECTOR_BYTES // 8)])
def test_spread_pairs_doubles_quarter_shares_and_writes_nothing_else(dtype, lanes):
    """dst[2m] = dst[2m+1] = src[m] / 4 + 0 (a -0.0 share is +0.0) for m < count, nothing read
    past src's count elements (a NaN there would show) nor written outside 2*count."""
    rng = np.random.default_rng(lanes + 5)
    for count in sorted({1, 2, lanes // 2, lanes // 2 + 1, lanes - 1, lanes, lanes + 1, 3 * lanes + 2}):
        src = np.full(count + 8, np.nan, dtype=dtype)
        src[3:3 + count] = rng.standard_normal(count)
        src[3] = -0.0
        dst = np.full(2 * count + 9, 7.5, dtype=dtype)
        _spread_pairs(src, 3, count, dst, 5)
        expected = np.full_like(dst, 7.5)
        share = src[3:3 + count] / dtype(4) + dtype(0)
        expected[5:5 + 2 * count:2] = share
        expected[6:6 + 2 * count:2] = share
        assert dst.tobytes() == expected.tobytes(), count
        assert not np.signbit(dst[5])


@njit
def _split_pairs(src, si, count, dst, ei, oi):
    split_pairs(src, si, count, dst, ei, oi)


@pytest.mark.parametrize("dtype,lanes", [(np.float32, VECTOR_BYTES // 4), (np.float64, VECTOR_BYTES // 8)])
def test_split_pairs_writes_each_phase_and_nothing_else(dtype, lanes):
    rng = np.random.default_rng(lanes + 1)
    src = rng.standard_normal(8 * lanes + 9).astype(dtype)
    src[[1, 2, 5]] = [np.nan, -0.0, np.inf]            # bit patterns must survive the copy
    counts = {0, 1, 2, lanes - 1, lanes, lanes + 1, 2 * lanes - 1, 2 * lanes, 2 * lanes + 1, 3 * lanes + 3,
              4 * lanes, 6 * lanes + 5}
    for count in sorted(counts):
        dst = np.full(src.size + 40, 7.5, dtype=dtype)
        _split_pairs(src, 1, count, dst, 3, 8 + 4 * lanes)
        expected = np.full_like(dst, 7.5)
        run = src[1:1 + count]
        expected[3:3 + (count + 1) // 2] = run[0::2]
        expected[8 + 4 * lanes:8 + 4 * lanes + count // 2] = run[1::2]
        assert dst.tobytes() == expected.tobytes(), count


def test_vector_width_follows_the_target():
    """64-byte vectors exactly where LLVM compiles for AVX-512F (the host, by default)."""
    import llvmlite.binding as llvm
    from numba.core import config
    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        pytest.skip("NUMBA_CPU_NAME / NUMBA_CPU_FEATURES choose another target")
    assert VECTOR_BYTES == (64 if llvm.get_host_cpu_features().get("avx512f") else 32)


def test_gemm_block_refuses_mixed_dtypes():
    with pytest.raises(TypingError):
        _gemm_block_4x3(np.zeros(64, np.float32), 0, 8, 1, np.zeros(64, np.float64), 0, 8,
                        np.zeros(64, np.float32), 0, 8, 1, True)
