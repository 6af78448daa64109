"""Register-level building blocks the Numba kernels cannot get from LLVM's loop vectoriser,
written as LLVM IR (``numba.extending.intrinsic``); the Cython twins are C with AVX
intrinsics (``cython/microkernels.pxd``, ``cython/winograd.pyx``).

* ``transpose_block``: one 8 x 8 float32 (4 x 4 float64) block transposed in registers.
  From element loops LLVM emits one strided scalar load or store per element.
* ``gemm_block``: up to GEMM_ROWS rows x GEMM_PANEL_VECTORS vectors of a small matrix
  product summed in registers over the whole inner dimension. A loop nest leaves the sums in memory (a load and a store
  per term), and ``np.dot`` goes through BLAS, which packs both operands and zeroes the
  output first: a third of its time on the 32-64-channel products of Winograd.
* ``tap_block``: the direct convolution's taps for up to TAP_ROWS output channels x
  TAP_VECTORS vectors of one run of outputs, summed in registers over all the taps, the run's
  last vector masked. LLVM's vectoriser summed each channel's taps separately (one load per
  term) in 32-byte vectors: LeNet conv1's forward took 2.6x, MNIST conv1's 2x the time.
* ``dot_block``: the weight gradient's dot products of up to DOT_ROWS filters x DOT_TAPS taps
  as lane partial sums held in registers over many runs of outputs (the first layers'
  grad_weight: 0.54-0.63x the time of per-filter loops).
* ``stencil3x3_rows``: a 3x3 correlation of whole rows of one plane, STENCIL_ROWS output rows
  per pass sharing their input vectors (depthwise forward and grad input: 0.91-0.95x).
* ``copy_run``: a run of elements copied in vectors, the last one masked (the depthwise
  kernels' row copies into padded planes: forward 0.71-0.78x, grad input 0.76-0.81x).

All work on 1-D contiguous arrays of one float dtype at element indices the caller keeps in
bounds (nothing is checked at run time). ``transpose_block`` moves 32-byte vectors (AVX);
the others' vectors are ``VECTOR_BYTES`` long: 64 where the code is compiled for a CPU
with AVX-512 (two 512-bit FMA units do twice the work of AVX2 per cycle), else 32. On
machines without them LLVM splits the vectors, with the same results.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic


def _target_has_avx512() -> bool:
    """Whether Numba compiles for a CPU with AVX-512F: the host's, unless NUMBA_CPU_NAME /
    NUMBA_CPU_FEATURES name another target (a portable cache, for example)."""
    if config.CPU_FEATURES is not None:
        return "+avx512f" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME is not None and config.CPU_NAME != "host":
        return False
    return bool(llvm.get_host_cpu_features().get("avx512f"))


#: Bytes per vector of ``gemm_block`` (the callers step their columns by VECTOR_BYTES // itemsize).
VECTOR_BYTES = 64 if _target_has_avx512() else 32
#: ``gemm_block``'s largest block: with 64-byte vectors 6 rows x 4 vectors of sums (24 of the
#: 32 registers: 4 loads and 6 broadcasts per 24 FMAs), else 4 x 3 (12 of the 16).
GEMM_ROWS = 6 if VECTOR_BYTES == 64 else 4
GEMM_PANEL_VECTORS = 4 if VECTOR_BYTES == 64 else 3
#: Rows of b per pass of a transposed product (a^T @ b, summed over many rows): a panel of
#: them (16 KiB at 64-byte vectors) stays in L1 across the blocks of rows of the result.
GEMM_TN_DEPTH = 64

def _float_arrays(*arrays) -> bool:
    """Whether all are 1-D arrays of one float dtype (float32 or float64)."""
    return all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == arrays[0].dtype
               for a in arrays) and arrays[0].dtype in (types.float32, types.float64)


def _masked_memory_ops(builder, vec, ptr_type, lanes, bits):
    """LLVM's masked load and store of ``vec`` (``lanes`` floats of ``bits`` bits) through
    ``ptr_type``: lanes whose mask bit is off are neither read nor written."""
    i32, mask_type = ir.IntType(32), ir.VectorType(ir.IntType(1), lanes)
    load = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [ptr_type, i32, mask_type, vec]), f"llvm.masked.load.v{lanes}f{bits}.p0")
    store = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vec, ptr_type, i32, mask_type]),
        f"llvm.masked.store.v{lanes}f{bits}.p0")
    return load, store


def _first_lanes(builder, k, lanes):
    """The mask of vector lanes j < k (``k`` an i32; no lane when k <= 0): a run's last,
    partly filled vector."""
    i32v = ir.VectorType(ir.IntType(32), lanes)
    k_v = builder.shuffle_vector(builder.insert_element(ir.Constant(i32v, ir.Undefined), k, ir.Constant(ir.IntType(32), 0)),
                                 ir.Constant(i32v, ir.Undefined), ir.Constant(i32v, [0] * lanes))
    return builder.icmp_signed("<", ir.Constant(i32v, list(range(lanes))), k_v)


def _element_pointer(context, builder, array_type, array, index_type, index):
    """Pointer to ``array[index]`` (no bounds or negative-index handling)."""
    ary = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, ary,
                                    [context.cast(builder, index, index_type, types.intp)], wraparound=False)


class _RowVectors:
    """VECTOR_BYTES vectors of one float dtype for the row blocks (``copy_run``,
    ``split_pairs``, ``avg2x2_row``, ``spread_pairs``): loads and stores at an element
    pointer plus an index, whole, or for a row's last vector masked to its first ``k`` lanes
    (an i32; lanes past it are neither read, reading as 0, nor written)."""

    def __init__(self, context, builder, dtype, lanes):
        self.builder = builder
        self.lanes = lanes
        self.i32 = ir.IntType(32)
        elem = context.get_data_type(dtype)
        self.vec = ir.VectorType(elem, lanes)
        self.align = dtype.bitwidth // 8
        self._masked_load, self._masked_store = _masked_memory_ops(builder, self.vec, elem.as_pointer(), lanes,
                                                                   dtype.bitwidth)

    def load(self, ptr, i, k=None):
        at = self.builder.gep(ptr, [i])
        if k is None:
            return self.builder.load(self.builder.bitcast(at, self.vec.as_pointer()), align=self.align)
        return self.builder.call(self._masked_load, [at, ir.Constant(self.i32, self.align),
                                                     _first_lanes(self.builder, k, self.lanes),
                                                     ir.Constant(self.vec, None)])

    def store(self, v, ptr, i, k=None):
        at = self.builder.gep(ptr, [i])
        if k is None:
            self.builder.store(v, self.builder.bitcast(at, self.vec.as_pointer()), align=self.align)
        else:
            self.builder.call(self._masked_store, [v, at, ir.Constant(self.i32, self.align),
                                                   _first_lanes(self.builder, k, self.lanes)])

    def splat(self, x):
        return ir.Constant(self.vec, [ir.Constant(self.vec.element, x)] * self.lanes)

    def order(self, positions):
        """A shufflevector mask."""
        return ir.Constant(ir.VectorType(self.i32, self.lanes), list(positions))

    def pairs(self, ptr, i, k=None):
        """(even, odd): elements i, i+2, ... and i+1, i+3, ... of the two vectors at ``ptr``
        from ``i`` (the first ``k`` elements of them, if given), one two-source permute each."""
        b = self.builder
        v0 = self.load(ptr, i, k)
        v1 = self.load(ptr, self.plus(i, self.lanes), self.plus(k, -self.lanes))
        return (b.shuffle_vector(v0, v1, self.order(2 * j for j in range(self.lanes))),
                b.shuffle_vector(v0, v1, self.order(2 * j + 1 for j in range(self.lanes))))

    def plus(self, i, n):
        """i + n for an index (intp) or a lane count (i32; None, a whole vector, stays None)."""
        return None if i is None else self.builder.add(i, ir.Constant(i.type, n))

    def each(self, count, step, width=1):
        """step(i, k) for the elements of ``count`` (intp) in blocks of width vectors: i
        their first element, k None for whole blocks and the elements left (an i32) for a
        last, partly filled one."""
        b = self.builder
        size = ir.Constant(count.type, width * self.lanes)
        blocks = b.sdiv(count, size)
        with cgutils.for_range(b, blocks) as loop:
            step(b.mul(loop.index, size), None)
        i = b.mul(blocks, size)
        k = b.trunc(b.sub(count, i), self.i32)
        with b.if_then(b.icmp_signed(">", k, ir.Constant(self.i32, 0))):
            step(i, k)


# The shuffles of a transpose of one 32-byte-vector square block, as LLVM shufflevector masks
# over the concatenation of two vectors: for float32 (8 x 8) the unpack / shuffle / 128-bit
# lane-swap network the x86 backend lowers to one instruction each; for float64 (4 x 4) the
# unpack and lane-swap steps.
_TRANSPOSE_NETWORK = {
    8: [
        # (first, second, mask) per output register, rounds applied in order
        [(0, 1, (0, 8, 1, 9, 4, 12, 5, 13)), (0, 1, (2, 10, 3, 11, 6, 14, 7, 15)),
         (2, 3, (0, 8, 1, 9, 4, 12, 5, 13)), (2, 3, (2, 10, 3, 11, 6, 14, 7, 15)),
         (4, 5, (0, 8, 1, 9, 4, 12, 5, 13)), (4, 5, (2, 10, 3, 11, 6, 14, 7, 15)),
         (6, 7, (0, 8, 1, 9, 4, 12, 5, 13)), (6, 7, (2, 10, 3, 11, 6, 14, 7, 15))],
        [(0, 2, (0, 1, 8, 9, 4, 5, 12, 13)), (0, 2, (2, 3, 10, 11, 6, 7, 14, 15)),
         (1, 3, (0, 1, 8, 9, 4, 5, 12, 13)), (1, 3, (2, 3, 10, 11, 6, 7, 14, 15)),
         (4, 6, (0, 1, 8, 9, 4, 5, 12, 13)), (4, 6, (2, 3, 10, 11, 6, 7, 14, 15)),
         (5, 7, (0, 1, 8, 9, 4, 5, 12, 13)), (5, 7, (2, 3, 10, 11, 6, 7, 14, 15))],
        [(0, 4, (0, 1, 2, 3, 8, 9, 10, 11)), (1, 5, (0, 1, 2, 3, 8, 9, 10, 11)),
         (2, 6, (0, 1, 2, 3, 8, 9, 10, 11)), (3, 7, (0, 1, 2, 3, 8, 9, 10, 11)),
         (0, 4, (4, 5, 6, 7, 12, 13, 14, 15)), (1, 5, (4, 5, 6, 7, 12, 13, 14, 15)),
         (2, 6, (4, 5, 6, 7, 12, 13, 14, 15)), (3, 7, (4, 5, 6, 7, 12, 13, 14, 15))],
    ],
    4: [
        [(0, 1, (0, 4, 2, 6)), (0, 1, (1, 5, 3, 7)), (2, 3, (0, 4, 2, 6)), (2, 3, (1, 5, 3, 7))],
        [(0, 2, (0, 1, 4, 5)), (1, 3, (0, 1, 4, 5)), (0, 2, (2, 3, 6, 7)), (1, 3, (2, 3, 6, 7))],
    ],
}


@intrinsic
def transpose_block(typingctx, src, s_index, ss, dst, d_index, ds):
    """``dst[d_index + j*ds + i] = src[s_index + i*ss + j]`` for i, j < L, L = 32 // itemsize
    (an 8 x 8 float32 or 4 x 4 float64 block; src, dst 1-D contiguous, same dtype).

    Loads L rows as vectors, transposes them in registers and stores L vectors: LLVM does
    not form this from element loops, which move one element per strided load or store.
    The caller keeps every index in bounds (no checks here).
    """
    if not _float_arrays(src, dst):
        return None
    lanes = 256 // src.dtype.bitwidth

    def codegen(context, builder, sig, args):
        elem = context.get_data_type(sig.args[0].dtype)
        vec = ir.VectorType(elem, lanes)
        align = sig.args[0].dtype.bitwidth // 8
        s_stride = context.cast(builder, args[2], sig.args[2], types.intp)
        d_stride = context.cast(builder, args[5], sig.args[5], types.intp)
        s_ptr = _element_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        d_ptr = _element_pointer(context, builder, sig.args[3], args[3], sig.args[4], args[4])
        i32 = ir.IntType(32)
        rows = []
        for i in range(lanes):
            p = builder.gep(s_ptr, [builder.mul(s_stride, ir.Constant(s_stride.type, i))])
            rows.append(builder.load(builder.bitcast(p, vec.as_pointer()), align=align))
        for rnd in _TRANSPOSE_NETWORK[lanes]:
            rows = [builder.shuffle_vector(rows[a], rows[b], ir.Constant(ir.VectorType(i32, lanes), list(mask)))
                    for a, b, mask in rnd]
        for j in range(lanes):
            p = builder.gep(d_ptr, [builder.mul(d_stride, ir.Constant(d_stride.type, j))])
            builder.store(rows[j], builder.bitcast(p, vec.as_pointer()), align=align)
        return context.get_dummy_value()

    return types.void(src, s_index, ss, dst, d_index, ds), codegen


@intrinsic
def gemm_block(typingctx, a, a_index, a_stride, a_step, b, b_index, b_stride, c, c_index, c_stride, depth, zero,
               rows, vectors):
    """``c[c_index + r*c_stride + j] = s + sum_k a[a_index + r*a_stride + k*a_step] * b[b_index + k*b_stride + j]``
    for r < rows, j < vectors * L, k < depth (k ascending, one FMA per term), where s is 0
    if ``zero`` else c's own value.

    L = VECTOR_BYTES // itemsize. ``rows`` (1-GEMM_ROWS) and ``vectors``
    (1-GEMM_PANEL_VECTORS) are literal ints: rows x vectors sums stay in registers, with the
    b vectors and a broadcast a.
    """
    if not (_float_arrays(a, b, c) and isinstance(rows, types.IntegerLiteral)
            and isinstance(vectors, types.IntegerLiteral)):
        return None
    n_rows, n_vec = rows.literal_value, vectors.literal_value
    if not (1 <= n_rows <= GEMM_ROWS and 1 <= n_vec <= GEMM_PANEL_VECTORS):
        return None
    lanes = VECTOR_BYTES * 8 // a.dtype.bitwidth

    def codegen(context, builder, sig, args):
        at, ait, ast, akt, bt, bit, bst, ct, cit, cst, dt, zt = sig.args[:12]
        elem = context.get_data_type(at.dtype)
        vec = ir.VectorType(elem, lanes)
        align = at.dtype.bitwidth // 8
        a_ptr = _element_pointer(context, builder, at, args[0], ait, args[1])
        b_ptr = _element_pointer(context, builder, bt, args[4], bit, args[5])
        c_ptr = _element_pointer(context, builder, ct, args[7], cit, args[8])
        a_row = context.cast(builder, args[2], ast, types.intp)
        a_step = context.cast(builder, args[3], akt, types.intp)
        b_step = context.cast(builder, args[6], bst, types.intp)
        c_step = context.cast(builder, args[9], cst, types.intp)
        depth_ = context.cast(builder, args[10], dt, types.intp)
        zero_ = context.cast(builder, args[11], zt, types.boolean)
        intp = a_step.type
        i32 = ir.IntType(32)
        broadcast = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{lanes}f{at.dtype.bitwidth}")

        def c_vector(r, j):
            c_row = builder.gep(c_ptr, [builder.mul(c_step, ir.Constant(intp, r))])
            return builder.bitcast(builder.gep(c_row, [ir.Constant(intp, j * lanes)]), vec.as_pointer())

        # Sums live in allocas that LLVM promotes to registers (one vector each).
        sums = [[cgutils.alloca_once(builder, vec) for _ in range(n_vec)] for _ in range(n_rows)]
        for r, row in enumerate(sums):
            for j, slot in enumerate(row):
                start = builder.select(zero_, ir.Constant(vec, None), builder.load(c_vector(r, j), align=align))
                builder.store(start, slot)
        with cgutils.for_range(builder, depth_) as loop:
            k = loop.index
            b_row = builder.gep(b_ptr, [builder.mul(k, b_step)])
            b_vecs = [builder.load(builder.bitcast(builder.gep(b_row, [ir.Constant(intp, j * lanes)]),
                                                   vec.as_pointer()), align=align) for j in range(n_vec)]
            for r in range(n_rows):
                x = builder.load(builder.gep(a_ptr, [builder.add(builder.mul(a_row, ir.Constant(intp, r)),
                                                                 builder.mul(a_step, k))]))
                xv = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), x,
                                                                   ir.Constant(i32, 0)),
                                            ir.Constant(vec, ir.Undefined), broadcast)
                for j in range(n_vec):
                    builder.store(builder.call(fma, [xv, b_vecs[j], builder.load(sums[r][j])]), sums[r][j])
        for r in range(n_rows):
            for j in range(n_vec):
                builder.store(builder.load(sums[r][j]), c_vector(r, j), align=align)
        return context.get_dummy_value()

    return types.void(a, a_index, a_stride, a_step, b, b_index, b_stride, c, c_index, c_stride, depth, zero,
                      rows, vectors), codegen


#: ``tap_block``'s largest block: output channels x vectors of outputs (as ``gemm_block``'s).
TAP_ROWS = GEMM_ROWS
TAP_VECTORS = GEMM_PANEL_VECTORS


@intrinsic
def tap_block(typingctx, w, w_index, w_stride, src, src_index, offsets, taps, acc, acc_index, acc_stride, count,
              init, init_index, first, rows):
    """``acc[acc_index + r*acc_stride + j] = s + sum_t w[w_index + r*w_stride + t] * src[src_index + offsets[t] + j]``
    for r < rows, j < count, t < taps (t ascending, one FMA per term), where s is
    ``init[init_index + r]`` if ``first`` else acc's own value: the direct convolution's
    correlation of ``rows`` output channels over one run of outputs.

    ``rows`` (1-TAP_ROWS) and ``count`` (1 to TAP_VECTORS * L, L = VECTOR_BYTES // itemsize)
    are run-time values: the block is generated for every rows x vectors shape and one is
    picked by a switch, so rows x vectors sums stay in registers over all the taps, each
    tap costing ``vectors`` loads and ``rows`` broadcasts. The lanes of the last vector past
    ``count`` are neither read nor written (masked loads and stores), so a run can end
    exactly where an output row or plane does. Other values of rows or count do nothing.
    The Cython twin is ``tap_block`` in ``cython/microkernels.pxd``.
    """
    if not (_float_arrays(w, src, acc, init) and isinstance(offsets, types.Array) and offsets.ndim == 1
            and isinstance(offsets.dtype, types.Integer)):
        return None
    lanes = VECTOR_BYTES * 8 // w.dtype.bitwidth

    def codegen(context, builder, sig, args):
        (wt, wit, wst, st, sit, ot, tt, at, ait, ast, ct, it, iit, ft, rt) = sig.args
        elem = context.get_data_type(wt.dtype)
        vec = ir.VectorType(elem, lanes)
        align = wt.dtype.bitwidth // 8
        i32 = ir.IntType(32)
        w_ptr = _element_pointer(context, builder, wt, args[0], wit, args[1])
        s_ptr = _element_pointer(context, builder, st, args[3], sit, args[4])
        a_ptr = _element_pointer(context, builder, at, args[7], ait, args[8])
        i_ptr = _element_pointer(context, builder, it, args[11], iit, args[12])
        offs = context.make_array(ot)(context, builder, args[5])
        w_row = context.cast(builder, args[2], wst, types.intp)
        a_row = context.cast(builder, args[9], ast, types.intp)
        taps_ = context.cast(builder, args[6], tt, types.intp)
        count_ = context.cast(builder, args[10], ct, types.intp)
        first_ = context.cast(builder, args[13], ft, types.boolean)
        rows_ = context.cast(builder, args[14], rt, types.intp)
        intp = w_row.type
        broadcast = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        bits = wt.dtype.bitwidth
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{lanes}f{bits}")
        ptr_type = s_ptr.type
        masked_load, masked_store = _masked_memory_ops(builder, vec, ptr_type, lanes, bits)
        zero_vec = ir.Constant(vec, None)

        def splat(x, vtype):
            return builder.shuffle_vector(builder.insert_element(ir.Constant(vtype, ir.Undefined), x, ir.Constant(i32, 0)),
                                          ir.Constant(vtype, ir.Undefined), broadcast)

        def block(n_rows, n_vec):
            # The lanes of the last vector below count - (n_vec - 1) * L.
            rest = builder.trunc(builder.sub(count_, ir.Constant(intp, (n_vec - 1) * lanes)), i32)
            mask = _first_lanes(builder, rest, lanes)

            def load(ptr, j):
                p = builder.gep(ptr, [ir.Constant(intp, j * lanes)])
                if j < n_vec - 1:
                    return builder.load(builder.bitcast(p, vec.as_pointer()), align=align)
                return builder.call(masked_load, [p, ir.Constant(i32, align), mask, zero_vec])

            def acc_row(r):
                return builder.gep(a_ptr, [builder.mul(a_row, ir.Constant(intp, r))])

            # Sums live in allocas that LLVM promotes to registers (one vector each).
            sums = [[cgutils.alloca_once(builder, vec) for _ in range(n_vec)] for _ in range(n_rows)]
            with builder.if_else(first_) as (then, otherwise):
                with then:
                    for r, row in enumerate(sums):
                        start = splat(builder.load(builder.gep(i_ptr, [ir.Constant(intp, r)])), vec)
                        for slot in row:
                            builder.store(start, slot)
                with otherwise:
                    for r, row in enumerate(sums):
                        for j, slot in enumerate(row):
                            builder.store(load(acc_row(r), j), slot)
            with cgutils.for_range(builder, taps_) as loop:
                t = loop.index
                off = context.cast(builder, builder.load(cgutils.get_item_pointer(context, builder, ot, offs, [t],
                                                                                  wraparound=False)),
                                   ot.dtype, types.intp)
                x_row = builder.gep(s_ptr, [off])
                x_vecs = [load(x_row, j) for j in range(n_vec)]
                for r in range(n_rows):
                    wv = splat(builder.load(builder.gep(w_ptr, [builder.add(builder.mul(w_row, ir.Constant(intp, r)),
                                                                            t)])), vec)
                    for j in range(n_vec):
                        builder.store(builder.call(fma, [wv, x_vecs[j], builder.load(sums[r][j])]), sums[r][j])
            for r in range(n_rows):
                for j in range(n_vec):
                    p = builder.gep(acc_row(r), [ir.Constant(intp, j * lanes)])
                    v = builder.load(sums[r][j])
                    if j < n_vec - 1:
                        builder.store(v, builder.bitcast(p, vec.as_pointer()), align=align)
                    else:
                        builder.call(masked_store, [v, p, ir.Constant(i32, align), mask])

        # One case per (rows, vectors): key rows * 8 + vectors.
        n_vectors = builder.sdiv(builder.add(count_, ir.Constant(intp, lanes - 1)), ir.Constant(intp, lanes))
        key = builder.add(builder.mul(rows_, ir.Constant(intp, 8)), n_vectors)
        done = builder.append_basic_block("tap_block.done")
        switch = builder.switch(key, done)
        for n_rows in range(1, TAP_ROWS + 1):
            for n_vec in range(1, TAP_VECTORS + 1):
                case = builder.append_basic_block(f"tap_block.{n_rows}x{n_vec}")
                switch.add_case(ir.Constant(intp, n_rows * 8 + n_vec), case)
                builder.position_at_end(case)
                block(n_rows, n_vec)
                builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return types.void(w, w_index, w_stride, src, src_index, offsets, taps, acc, acc_index, acc_stride, count,
                      init, init_index, first, rows), codegen


#: ``dot_block``'s largest block: filters x taps of lane sums (12 vectors, 3 loads of the
#: input and one of grad_output per filter per step). Cython's twin takes 6 taps with
#: AVX-512 (FC_DOT_TAPS); here 4 x 6 measured level with 4 x 3 (LeNet conv2, CIFAR conv1,
#: the 7x7 stem, 1 and 2 threads), so the smaller block stays.
DOT_ROWS = 4
DOT_TAPS = 3


@intrinsic
def dot_block(typingctx, g, g_index, g_stride, g_run, src, src_index, src_run, offsets, taps, lanes, l_index,
              l_stride, count, runs, rows):
    """``lanes[l_index + r*l_stride + t*L + l] += sum over u < runs, i < count, i = l (mod L)
    of g[g_index + r*g_stride + u*g_run + i] * src[src_index + offsets[t] + u*src_run + i]``
    for r < rows (filters, 1-DOT_ROWS), t < taps: the weight gradient's dot products, each
    kept as L lane partial sums (L = VECTOR_BYTES // itemsize) that carry over calls.

    ``runs`` runs of ``count`` outputs each (rows of grad_output, ``g_run`` apart, against
    input rows ``src_run`` apart); the lanes past ``count`` in a run's last vector are neither
    read nor summed (masked loads), so runs never read a neighbouring row. Taps go DOT_TAPS
    at a time with their rows x DOT_TAPS sums in registers over all the runs (one filter's
    nine taps in one block). Other values
    of rows do nothing. The Cython twin is ``dot_block`` in ``cython/microkernels.pxd``.
    """
    if not (_float_arrays(g, src, lanes) and isinstance(offsets, types.Array) and offsets.ndim == 1
            and isinstance(offsets.dtype, types.Integer)):
        return None
    n_lanes = VECTOR_BYTES * 8 // g.dtype.bitwidth

    def codegen(context, builder, sig, args):
        (gt, git, gst, grt, st, sit, srt, ot, tt, lt, lit, lst, ct, rut, rot) = sig.args
        elem = context.get_data_type(gt.dtype)
        vec = ir.VectorType(elem, n_lanes)
        align = gt.dtype.bitwidth // 8
        i32 = ir.IntType(32)
        bits = gt.dtype.bitwidth
        g_ptr = _element_pointer(context, builder, gt, args[0], git, args[1])
        s_ptr = _element_pointer(context, builder, st, args[4], sit, args[5])
        l_ptr = _element_pointer(context, builder, lt, args[9], lit, args[10])
        offs = context.make_array(ot)(context, builder, args[7])

        def intp_arg(i, t):
            return context.cast(builder, args[i], t, types.intp)

        g_row, g_run_ = intp_arg(2, gst), intp_arg(3, grt)
        s_run = intp_arg(6, srt)
        taps_, l_row = intp_arg(8, tt), intp_arg(11, lst)
        count_, runs_, rows_ = intp_arg(12, ct), intp_arg(13, rut), intp_arg(14, rot)
        intp = g_row.type
        ptr_type = g_ptr.type
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{n_lanes}f{bits}")
        masked_load = _masked_memory_ops(builder, vec, ptr_type, n_lanes, bits)[0]
        zero_vec = ir.Constant(vec, None)
        full = builder.sdiv(count_, ir.Constant(intp, n_lanes))
        rest = builder.trunc(builder.sub(count_, builder.mul(full, ir.Constant(intp, n_lanes))), i32)
        mask = _first_lanes(builder, rest, n_lanes)
        has_rest = builder.icmp_signed(">", rest, ir.Constant(i32, 0))

        def offset(t):
            p = cgutils.get_item_pointer(context, builder, ot, offs, [t], wraparound=False)
            return context.cast(builder, builder.load(p), ot.dtype, types.intp)

        def block(n_rows, n_taps, t0):
            sums = [[cgutils.alloca_once(builder, vec) for _ in range(n_taps)] for _ in range(n_rows)]
            slots = [[builder.gep(l_ptr, [builder.add(builder.mul(l_row, ir.Constant(intp, r)),
                                                      builder.mul(builder.add(t0, ir.Constant(intp, t)),
                                                                  ir.Constant(intp, n_lanes)))])
                      for t in range(n_taps)] for r in range(n_rows)]
            for r in range(n_rows):
                for t in range(n_taps):
                    builder.store(builder.load(builder.bitcast(slots[r][t], vec.as_pointer()), align=align), sums[r][t])
            taps_at = [builder.gep(s_ptr, [offset(builder.add(t0, ir.Constant(intp, t)))]) for t in range(n_taps)]

            def step(g_at, x_at, masked):
                def load(p):
                    if masked:
                        return builder.call(masked_load, [p, ir.Constant(i32, align), mask, zero_vec])
                    return builder.load(builder.bitcast(p, vec.as_pointer()), align=align)
                xs = [load(p) for p in x_at]
                for r in range(n_rows):
                    gv = load(builder.gep(g_at, [builder.mul(g_row, ir.Constant(intp, r))]))
                    for t in range(n_taps):
                        builder.store(builder.call(fma, [gv, xs[t], builder.load(sums[r][t])]), sums[r][t])

            with cgutils.for_range(builder, runs_) as run_loop:
                u = run_loop.index
                g_at = builder.gep(g_ptr, [builder.mul(u, g_run_)])
                x_at = [builder.gep(p, [builder.mul(u, s_run)]) for p in taps_at]
                with cgutils.for_range(builder, full) as vec_loop:
                    i = builder.mul(vec_loop.index, ir.Constant(intp, n_lanes))
                    step(builder.gep(g_at, [i]), [builder.gep(p, [i]) for p in x_at], False)
                with builder.if_then(has_rest):
                    i = builder.mul(full, ir.Constant(intp, n_lanes))
                    step(builder.gep(g_at, [i]), [builder.gep(p, [i]) for p in x_at], True)
            for r in range(n_rows):
                for t in range(n_taps):
                    builder.store(builder.load(sums[r][t]), builder.bitcast(slots[r][t], vec.as_pointer()), align=align)

        def tap_groups():
            # Taps DOT_TAPS at a time (the last group may be shorter): one case per (rows, taps).
            n_groups = builder.sdiv(builder.add(taps_, ir.Constant(intp, DOT_TAPS - 1)), ir.Constant(intp, DOT_TAPS))
            with cgutils.for_range(builder, n_groups) as group_loop:
                t0 = builder.mul(group_loop.index, ir.Constant(intp, DOT_TAPS))
                m = builder.sub(taps_, t0)
                m = builder.select(builder.icmp_signed(">", m, ir.Constant(intp, DOT_TAPS)), ir.Constant(intp, DOT_TAPS), m)
                key = builder.add(builder.mul(rows_, ir.Constant(intp, 8)), m)
                done = builder.append_basic_block("dot_block.done")
                switch = builder.switch(key, done)
                for n_rows in range(1, DOT_ROWS + 1):
                    for n_taps in range(1, DOT_TAPS + 1):
                        case = builder.append_basic_block(f"dot_block.{n_rows}x{n_taps}")
                        switch.add_case(ir.Constant(intp, n_rows * 8 + n_taps), case)
                        builder.position_at_end(case)
                        block(n_rows, n_taps, t0)
                        builder.branch(done)
                builder.position_at_end(done)

        # One filter's nine taps (depthwise 3x3) in one block: nine chains of FMAs, where
        # three groups of three taps left three, too few to cover the FMA latency.
        nine = builder.and_(builder.icmp_signed("==", rows_, ir.Constant(intp, 1)),
                            builder.icmp_signed("==", taps_, ir.Constant(intp, 9)))
        with builder.if_else(nine) as (single, grouped):
            with single:
                block(1, 9, ir.Constant(intp, 0))
            with grouped:
                tap_groups()
        return context.get_dummy_value()

    return types.void(g, g_index, g_stride, g_run, src, src_index, src_run, offsets, taps, lanes, l_index, l_stride,
                      count, runs, rows), codegen


#: ``stencil3x3_rows``'s largest block of output rows (their 3 + 2 input rows' vectors load once).
STENCIL_ROWS = 4


@intrinsic
def stencil3x3_rows(typingctx, w, w_index, src, src_index, src_row, dst, dst_index, dst_row, count, bias, rows):
    """``dst[dst_index + r*dst_row + j] = bias + sum_{a, b < 3} w[w_index + 3*a + b] * src[src_index + (r + a)*src_row + b + j]``
    for r < rows (1-STENCIL_ROWS), j < count (any length): a 3x3 correlation of one plane,
    ``rows`` output rows at a time, the nine weights broadcast once, each input vector
    loaded once for all the output rows it feeds, the sum formed tap after tap in (a, b)
    order with one FMA per term. The last vector of a row is masked where the row ends.
    The Cython twin is gcc's vectorisation of ``_plane3x3`` (``cython/direct.pyx``); LLVM
    vectorised Numba's loop with 32-byte vectors and left a 56-wide row's last 24 outputs to
    scalar code.
    """
    if not (_float_arrays(w, src, dst) and isinstance(rows, types.IntegerLiteral)):
        return None
    n_rows = rows.literal_value
    if not 1 <= n_rows <= STENCIL_ROWS:
        return None
    lanes = VECTOR_BYTES * 8 // w.dtype.bitwidth

    def codegen(context, builder, sig, args):
        (wt, wit, st, sit, srt, dt, dit, drt, ct, bt) = sig.args[:10]
        elem = context.get_data_type(wt.dtype)
        vec = ir.VectorType(elem, lanes)
        align = wt.dtype.bitwidth // 8
        bits = wt.dtype.bitwidth
        i32 = ir.IntType(32)
        i32v = ir.VectorType(i32, lanes)
        broadcast = ir.Constant(i32v, [0] * lanes)
        w_ptr = _element_pointer(context, builder, wt, args[0], wit, args[1])
        s_ptr = _element_pointer(context, builder, st, args[2], sit, args[3])
        d_ptr = _element_pointer(context, builder, dt, args[5], dit, args[6])
        s_row = context.cast(builder, args[4], srt, types.intp)
        d_row = context.cast(builder, args[7], drt, types.intp)
        count_ = context.cast(builder, args[8], ct, types.intp)
        bias_ = context.cast(builder, args[9], bt, wt.dtype)
        intp = s_row.type
        ptr_type = s_ptr.type
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]),
                                             f"llvm.fma.v{lanes}f{bits}")
        masked_load, masked_store = _masked_memory_ops(builder, vec, ptr_type, lanes, bits)
        zero_vec = ir.Constant(vec, None)

        def splat(x, vtype=vec):
            return builder.shuffle_vector(builder.insert_element(ir.Constant(vtype, ir.Undefined), x, ir.Constant(i32, 0)),
                                          ir.Constant(vtype, ir.Undefined), broadcast)

        weights = [splat(builder.load(builder.gep(w_ptr, [ir.Constant(intp, t)]))) for t in range(9)]
        start = splat(bias_)
        in_rows = [builder.gep(s_ptr, [builder.mul(s_row, ir.Constant(intp, a))]) for a in range(n_rows + 2)]
        out_rows = [builder.gep(d_ptr, [builder.mul(d_row, ir.Constant(intp, r))]) for r in range(n_rows)]

        def step(i, mask):
            def load(p):
                if mask is None:
                    return builder.load(builder.bitcast(p, vec.as_pointer()), align=align)
                return builder.call(masked_load, [p, ir.Constant(i32, align), mask, zero_vec])
            xs = [[load(builder.gep(row, [builder.add(i, ir.Constant(intp, b))])) for b in range(3)]
                  for row in in_rows]
            for r in range(n_rows):
                v = start
                for a in range(3):
                    for b in range(3):
                        v = builder.call(fma, [weights[3 * a + b], xs[r + a][b], v])
                p = builder.gep(out_rows[r], [i])
                if mask is None:
                    builder.store(v, builder.bitcast(p, vec.as_pointer()), align=align)
                else:
                    builder.call(masked_store, [v, p, ir.Constant(i32, align), mask])

        full = builder.sdiv(count_, ir.Constant(intp, lanes))
        with cgutils.for_range(builder, full) as loop:
            step(builder.mul(loop.index, ir.Constant(intp, lanes)), None)
        i = builder.mul(full, ir.Constant(intp, lanes))
        rest = builder.trunc(builder.sub(count_, i), i32)
        with builder.if_then(builder.icmp_signed(">", rest, ir.Constant(i32, 0))):
            mask = _first_lanes(builder, rest, lanes)
            step(i, mask)
        return context.get_dummy_value()

    return types.void(w, w_index, src, src_index, src_row, dst, dst_index, dst_row, count, bias, rows), codegen


@intrinsic
def copy_run(typingctx, src, src_index, dst, dst_index, count):
    """``dst[dst_index + j] = src[src_index + j]`` for j < count, in VECTOR_BYTES vectors with
    the last one masked: a row of a few dozen elements in one pass (LLVM's loop left up to 24
    of a 56-element row to scalar code)."""
    if not _float_arrays(src, dst):
        return None
    lanes = VECTOR_BYTES * 8 // src.dtype.bitwidth

    def codegen(context, builder, sig, args):
        st, sit, dt, dit, ct = sig.args
        rv = _RowVectors(context, builder, st.dtype, lanes)
        s_ptr = _element_pointer(context, builder, st, args[0], sit, args[1])
        d_ptr = _element_pointer(context, builder, dt, args[2], dit, args[3])
        rv.each(context.cast(builder, args[4], ct, types.intp),
                lambda i, k: rv.store(rv.load(s_ptr, i, k), d_ptr, i, k))
        return context.get_dummy_value()

    return types.void(src, src_index, dst, dst_index, count), codegen


@intrinsic
def split_pairs(typingctx, src, src_index, count, dst, even_index, odd_index):
    """``dst[even_index + m] = src[src_index + 2m]`` for m < (count + 1) // 2 and
    ``dst[odd_index + m] = src[src_index + 2m + 1]`` for m < count // 2: the stride-2 phase
    copy of one input row, bit for bit. Two VECTOR_BYTES vectors of the row become one of
    each phase (one two-source permute each), the last pair masked: LLVM's stride-2 loop
    left up to a vector of each phase row to scalar code. Cython's twin is ``split_pairs``
    in ``cython/microkernels.pxd``."""
    if not _float_arrays(src, dst):
        return None
    lanes = VECTOR_BYTES * 8 // src.dtype.bitwidth

    def codegen(context, builder, sig, args):
        st, sit, ct, dt, eit, oit = sig.args
        rv = _RowVectors(context, builder, st.dtype, lanes)
        s_ptr = _element_pointer(context, builder, st, args[0], sit, args[1])
        e_ptr = _element_pointer(context, builder, dt, args[3], eit, args[4])
        o_ptr = _element_pointer(context, builder, dt, args[3], oit, args[5])

        def step(i, k):     # i even: outputs from m = i / 2
            m = builder.ashr(i, ir.Constant(i.type, 1))
            even, odd = rv.pairs(s_ptr, i, k)
            half_up = None if k is None else builder.ashr(rv.plus(k, 1), ir.Constant(rv.i32, 1))
            half = None if k is None else builder.ashr(k, ir.Constant(rv.i32, 1))
            rv.store(even, e_ptr, m, half_up)
            rv.store(odd, o_ptr, m, half)

        rv.each(context.cast(builder, args[2], ct, types.intp), step, width=2)
        return context.get_dummy_value()

    return types.void(src, src_index, count, dst, even_index, odd_index), codegen


@intrinsic
def avg2x2_row(typingctx, src, r0_index, r1_index, count, dst, dst_index):
    """``dst[dst_index + m] = (((r0[2m] + r0[2m + 1]) + r1[2m]) + r1[2m + 1]) * 0.25`` for
    m < count, r0 / r1 the rows of ``src`` from ``r0_index`` / ``r1_index`` (reading their
    first 2 * count elements only): one output row of 2x2 stride-2 average pooling, in the
    scalar loop's order (* 0.25 is / 4 exactly). Even and odd elements of two vectors of each
    row by two-source permutes (as ``split_pairs``), the last output vector masked: LLVM left
    MNIST pool2's 5-wide output rows to scalar code. Cython's twin is ``avg2x2_row`` in
    ``cython/microkernels.pxd``."""
    if not _float_arrays(src, dst):
        return None
    lanes = VECTOR_BYTES * 8 // src.dtype.bitwidth

    def codegen(context, builder, sig, args):
        st, r0t, r1t, ct, dt, dit = sig.args
        rv = _RowVectors(context, builder, st.dtype, lanes)
        p0 = _element_pointer(context, builder, st, args[0], r0t, args[1])
        p1 = _element_pointer(context, builder, st, args[0], r1t, args[2])
        d_ptr = _element_pointer(context, builder, dt, args[4], dit, args[5])
        quarter = rv.splat(0.25)

        def step(m, k):     # outputs from m: inputs from 2m, 2k of them in a last vector
            i = builder.add(m, m)
            k2 = None if k is None else builder.add(k, k)
            a, b = rv.pairs(p0, i, k2)
            c, d = rv.pairs(p1, i, k2)
            s = builder.fadd(builder.fadd(builder.fadd(a, b), c), d)
            rv.store(builder.fmul(s, quarter), d_ptr, m, k)

        rv.each(context.cast(builder, args[3], ct, types.intp), step)
        return context.get_dummy_value()

    return types.void(src, r0_index, r1_index, count, dst, dst_index), codegen


@intrinsic
def spread_pairs(typingctx, src, src_index, count, dst, dst_index):
    """``dst[dst_index + 2m] = dst[dst_index + 2m + 1] = src[src_index + m] * 0.25 + 0`` for
    m < count (+ 0: a -0.0 share becomes +0.0, as added to a zeroed gradient): one row of
    the 2x2 stride-2 average pool's backward, each vector of shares doubled into two by
    permutes, the last ones masked. Cython's twin is ``spread_pairs`` in
    ``cython/microkernels.pxd``."""
    if not _float_arrays(src, dst):
        return None
    lanes = VECTOR_BYTES * 8 // src.dtype.bitwidth

    def codegen(context, builder, sig, args):
        st, sit, ct, dt, dit = sig.args
        rv = _RowVectors(context, builder, st.dtype, lanes)
        s_ptr = _element_pointer(context, builder, st, args[0], sit, args[1])
        d_ptr = _element_pointer(context, builder, dt, args[3], dit, args[4])
        lows = rv.order(j // 2 for j in range(lanes))
        highs = rv.order(lanes // 2 + j // 2 for j in range(lanes))
        quarter, zero = rv.splat(0.25), rv.splat(0.0)

        def step(m, k):     # shares from m, written from 2m (2k of them in a last vector)
            v = builder.fadd(builder.fmul(rv.load(s_ptr, m, k), quarter), zero)
            i = builder.add(m, m)
            k2 = None if k is None else builder.add(k, k)
            rv.store(builder.shuffle_vector(v, v, lows), d_ptr, i, k2)
            rv.store(builder.shuffle_vector(v, v, highs), d_ptr, rv.plus(i, lanes), rv.plus(k2, -lanes))

        rv.each(context.cast(builder, args[2], ct, types.intp), step)
        return context.get_dummy_value()

    return types.void(src, src_index, count, dst, dst_index), codegen
