"""How an im2col call walks the batch, and its scratch buffers: shared by both backends.

The Numba (``kernels/numba/im2col.py``) and Cython (``kernels/cython/im2col.pyx``) kernels
plan a call identically; only the loops and the GEMM calls differ.

Layouts. Two column layouts, chosen per call by the number of output pixels ``P``:

* per image (``P >= WIDE_BELOW_PIXELS``): ``col`` is ``(chunk, C R S, rows * OW)``; each
  image and group is one GEMM that writes straight into ``y`` (and reads ``grad_output``
  in place). A large image is cut into bands of ``rows`` output rows so that its column
  matrix stays within ``CACHE_TARGET_BYTES``: the band is still in cache when the GEMM
  reads it. For grad_input each band's columns are folded at once
  onto the input rows they touch; rows shared with the previous band keep their sums
  (``band_table``).
* wide (``P < WIDE_BELOW_PIXELS``, small images such as MNIST or late ResNet stages): ``col``
  is ``(C R S, chunk * P)`` so one GEMM per group covers about ``WIDE_COLUMNS`` columns;
  per-image GEMMs would be too thin for BLAS to run at speed. The forward result is then
  scattered into ``y`` (adding the bias on the way), and the gradients first gather
  ``grad_output`` of the chunk into a ``(K, chunk * P)`` matrix.

A 1x1, stride-1, unpadded convolution needs no unfolding at all: the input of one image is
already the ``(C, H W)`` column matrix, so each image and group is one GEMM on the arrays as
they are (``W @ X``, ``W^T @ gY``, and ``X @ gY^T`` summed over images for the weight).

Workspace policy. The column matrix (plus, in the wide layout, the ``(K, chunk * P)``
scatter/gather matrix) never exceeds ``fastconv.limits.workspace_limit_bytes()`` (64 MiB by
default; ``fastconv.set_workspace_limit`` / ``FASTCONV_WORKSPACE_MB``), with one exception
below: the batch is processed in chunks of ``chunk`` images, the last chunk possibly
shorter, with ``chunk = clamp(wanted, 1, min(N, budget // bytes_per_image))``. ``wanted``
is ``ceil(WIDE_COLUMNS / P)`` images in the wide layout and ``min(budget,
CACHE_TARGET_BYTES) // bytes_per_image`` in the per-image layout. An image whose column
matrix is larger than that is processed alone, in bands of as many output rows as fit
(``plan``). The exception: one image of the wide layout, or one output row, whose
matrices alone exceed the budget still runs (a chunk of one image, a band of one row);
only ``fastconv.limits.max_allocation_bytes()`` can refuse it. Workspaces within the
budget are kept in a per-thread cache (``threading.local``: one buffer per thread and
dtype, grown when a call needs more) and reused by later calls; a kernel never calls
another kernel, so a buffer is never in use twice at once. Over-budget workspaces are
freed after their call. (The weight gradient's small transposed accumulator, the size of
the weight, is allocated per call.)
"""
import threading
from collections import namedtuple

import numpy as np

from .. import limits

#: Below this many output pixels per image, the images of a chunk share one wide GEMM.
WIDE_BELOW_PIXELS = 512
#: A wide chunk holds enough images for about this many GEMM columns: wider GEMMs ran no
#: faster (OpenBLAS, 1 thread: e.g. 64x288 by 1452 columns 71-81 GFLOP/s, by 3872 65-71).
WIDE_COLUMNS = 1536
#: A per-image chunk is cut down to about this much workspace (at least one image) so the
#: column matrix is still in cache (L2 and the shared L3) when the GEMM reads it. Not less:
#: every band is one unfold region and one multi-threaded GEMM, each a wake-up of the other
#: threads, and at 2 threads 8 MiB bands took 0.63-0.90x the time of 2 MiB ones on the
#: ResNet 3x3, stride-2, stem and dilated layers (forward, grad input, grad weight, both
#: backends; 1 thread: 0.93-1.08x).
CACHE_TARGET_BYTES = 8 * 2**20


#: Unfolded rows shorter than this are copied as whole vectors, the last one masked
#: (``copy_run`` in both backends); longer rows by the compilers' own loops. LLVM turns
#: Numba's element loop into a call of memmove, whose overhead exceeds the copy of a short
#: row. In-process A/B against the loops, 1 and 2 threads, forward and weight gradient:
#: Numba MNIST conv2 (rows of 11) 0.62-0.72x the time, LeNet conv2 (10) 0.70-0.76x, ResNet
#: 256 (14) 0.94-0.97x; Cython (gcc's loops had no call) LeNet conv2 0.88-0.99x, MNIST conv2
#: and ResNet 256 0.97-0.99x. With copy_run also for CIFAR conv1's rows of 31-32 the Numba
#: forward took 1.04-1.15x, so longer rows keep the loops (ResNet 64 and 128, the dilated
#: layer: Numba 1.00-1.03x, Cython 0.98-1.00x).
SHORT_ROW = 16


def is_plain_pointwise(p):
    """1x1, stride 1, no padding: the input is its own column matrix."""
    return p.is_pointwise and p.stride_h == 1 and p.stride_w == 1


#: How a call walks the batch (see the module docstring): ``wide`` (images side by side in
#: one GEMM, else one GEMM per image or per band), ``chunk`` (images per pass), ``rows``
#: (output rows per band; out_h for whole images), and the workspace sizes in elements of
#: the column matrix and of the wide layout's (K, chunk * P) scatter/gather matrix.
Plan = namedtuple("Plan", "wide chunk rows col_elems extra_elems")


def plan(p):
    """The layout, chunk and band size of a call, and its workspace sizes."""
    pixels = p.out_h * p.out_w
    itemsize = np.dtype(p.dtype).itemsize
    budget = limits.workspace_limit_bytes()
    crs_all = p.c * p.r * p.s
    if pixels < WIDE_BELOW_PIXELS and p.n > 1:
        per_image_bytes = (crs_all + p.k) * pixels * itemsize
        chunk = max(1, min(p.n, budget // per_image_bytes, -(-WIDE_COLUMNS // pixels)))
        return Plan(True, chunk, p.out_h, crs_all * pixels * chunk, p.k * pixels * chunk)
    target = min(budget, CACHE_TARGET_BYTES)
    row_bytes = crs_all * p.out_w * itemsize  # column matrix of one output row
    if row_bytes * p.out_h > target:
        rows = max(1, min(p.out_h, target // row_bytes))
        return Plan(False, 1, rows, crs_all * p.out_w * rows, 0)
    chunk = max(1, min(p.n, target // (row_bytes * p.out_h)))
    return Plan(False, chunk, p.out_h, crs_all * pixels * chunk, 0)


def tap_columns(p):
    """(S, 2) array: for each kernel column j, the output columns ``[lo, hi)`` it reads inside
    the image (the others read padding)."""
    taps = np.empty((p.s, 2), np.intp)
    for j in range(p.s):
        off = j * p.dil_w - p.pad_left
        lo = 0 if off >= 0 else min(p.out_w, (-off + p.stride_w - 1) // p.stride_w)
        last = p.w - 1 - off
        hi = 0 if last < 0 else min(p.out_w, last // p.stride_w + 1)
        taps[j] = lo, max(lo, hi)
    return taps


#: The fold gives each thread at least this many units of work when it can (image, channel,
#: block of input rows); a block is a whole band of the plane unless images x channels are
#: fewer (e.g. the 3-channel ResNet stem).
FOLD_UNITS = 8


def fold_block(p, nb, band):
    """Input rows per parallel unit of the fold of ``band`` for ``nb`` images."""
    nrows = int(band[3] - band[2])
    planes = nb * p.c
    if planes >= FOLD_UNITS or nrows <= 1:
        return max(1, nrows)
    split = min(nrows, -(-FOLD_UNITS // planes))
    return -(-nrows // split)


def band_table(p, rows):
    """(bands, 5) array, one row ``(oy0, oy1, iy0, iy1, zero_from)`` per band of output rows.

    A band covers output rows ``[oy0, oy1)``; its fold (grad_input) visits input rows
    ``[iy0, iy1)``: the rows its taps read, plus any row not visited by an earlier band up
    to them (read by no tap: left at zero); the last band visits all remaining rows. Rows
    from ``zero_from`` on were not visited before and start at zero.
    """
    table = []
    done = 0
    for oy0 in range(0, p.out_h, rows):
        oy1 = min(p.out_h, oy0 + rows)
        lo = max(0, oy0 * p.stride_h - p.pad_top)
        if oy1 == p.out_h:
            hi = p.h
        else:
            hi = min(p.h, (oy1 - 1) * p.stride_h - p.pad_top + (p.r - 1) * p.dil_h + 1)
        table.append((oy0, oy1, min(lo, done), max(hi, done), done))
        done = max(hi, done)
    return np.array(table, np.intp)


_buffers = threading.local()


def workspace(nelems, dtype):
    """A scratch array of ``nelems`` elements, reused between calls on this thread."""
    dtype = np.dtype(dtype)
    buffers = getattr(_buffers, "buffers", None)
    if buffers is None:
        buffers = _buffers.buffers = {}
    buf = buffers.get(dtype.char)
    if buf is not None and buf.size >= nelems:
        return buf[:nelems]
    nbytes = nelems * dtype.itemsize
    if nbytes > limits.workspace_limit_bytes():
        # One image that alone exceeds the budget: allocate for this call only.
        limits.check_allocation((nelems,), dtype.itemsize, "im2col workspace")
        return np.empty(nelems, dtype)
    buf = np.empty(nelems, dtype)
    buffers[dtype.char] = buf
    return buf


def workspace_cache_bytes():
    """Bytes held by this thread's workspace cache (for tests and diagnostics)."""
    buffers = getattr(_buffers, "buffers", None) or {}
    return sum(b.nbytes for b in buffers.values())


# ---------------------------------------------------------------- where the time goes

def gemm_calls(p, op):
    """The GEMMs an im2col kernel makes for ``op``, as ``{(m, n, k): count}``.

    ``op`` is "forward", "grad_input" or "grad_weight"; ``(m, n, k)`` is one product of an
    ``m x k`` by a ``k x n`` matrix, in the orientation the kernels use (forward ``W_g @ col``,
    grad_input ``W_g^T @ gY``, grad_weight ``col @ gY^T``). Their flops add up to the layer's.
    """
    if op not in ("forward", "grad_input", "grad_weight"):
        raise ValueError(f"op={op!r}: expected forward, grad_input or grad_weight")
    groups, kg, pixels = p.groups, p.k // p.groups, p.out_h * p.out_w
    crs = p.c_per_group * p.r * p.s

    def shape(cols):
        return {"forward": (kg, cols, crs), "grad_input": (crs, cols, kg), "grad_weight": (crs, kg, cols)}[op]

    calls = {}

    def add(cols, count):
        key = shape(cols)
        calls[key] = calls.get(key, 0) + count

    if is_plain_pointwise(p):
        add(pixels, p.n * groups)
        return calls
    pl = plan(p)
    bands = band_table(p, pl.rows)
    for n0 in range(0, p.n, pl.chunk):
        nb = min(pl.chunk, p.n - n0)
        if pl.wide:
            add(nb * pixels, groups)
            continue
        for oy0, oy1 in bands[:, :2]:
            add(int(oy1 - oy0) * p.out_w, nb * groups)
    return calls


def phase_report(kernel, args, p, op, repeats=5, sgemm_gflops=None):
    """Time one im2col kernel call and, apart, the GEMMs it makes: the GEMM share of its time.

    ``kernel(*args)`` is the call to time (e.g. ``conv2d_forward, (x, w, b, y, params)``);
    the same GEMM shapes (``gemm_calls``) are then timed alone with NumPy's matmul on scratch
    matrices, so ``other_s = total_s - gemm_s`` is the unfold / fold / gather / scatter /
    bias work and the Python overhead. ``sgemm_gflops`` is the machine's rate to compare
    with (measured on 1024^3 float32 matrices at the current thread count when None). Medians
    of ``repeats`` runs; for reports, never for assertions on speed. The Cython backend's
    GEMMs run in SciPy's BLAS, which NumPy's matmul only approximates.
    """
    import statistics
    import time

    def median_seconds(fn):
        fn()
        samples = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    dtype = np.dtype(p.dtype)
    calls = gemm_calls(p, op)
    mats = [(np.ones((m, k), dtype), np.ones((k, n), dtype), np.empty((m, n), dtype), count)
            for (m, n, k), count in calls.items()]

    def gemms():
        for a, b, c, count in mats:
            for _ in range(count):
                np.matmul(a, b, out=c)

    total = median_seconds(lambda: kernel(*args))
    gemm = median_seconds(gemms)
    if sgemm_gflops is None:
        a = np.ones((1024, 1024), np.float32)
        c = np.empty_like(a)
        sgemm_gflops = 2.0 * 1024 ** 3 / median_seconds(lambda: np.matmul(a, a, out=c)) / 1e9
    flops = sum(2.0 * m * n * k * count for (m, n, k), count in calls.items())
    gemm_gflops = flops / gemm / 1e9 if gemm > 0 else float("inf")
    return {
        "op": op, "gemm_calls": calls, "flops": flops,
        "total_s": total, "gemm_s": gemm, "other_s": max(0.0, total - gemm),
        "gemm_share": min(1.0, gemm / total) if total > 0 else 1.0,
        "gemm_gflops": gemm_gflops, "sgemm_gflops": sgemm_gflops,
        "gemm_vs_sgemm": gemm_gflops / sgemm_gflops,
        "total_vs_sgemm": flops / total / 1e9 / sgemm_gflops if total > 0 else float("inf"),
    }
