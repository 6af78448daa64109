"""What every Numba kernel module shares: the JIT options and the per-call thread setting."""
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

from ... import threads

#: ``cache=True`` compiles once per machine; ``nogil`` lets callers overlap work. No
#: ``fastmath=True``: its nnan/ninf assumptions would break NaN/Inf propagation. A reduction
#: may ask for ``fastmath={"reassoc"}`` alone (reordering a sum keeps NaN/Inf intact and lets
#: it vectorise), saying so where it does.
JIT_OPTIONS = dict(cache=True, nogil=True)
PARALLEL_JIT_OPTIONS = dict(JIT_OPTIONS, parallel=True)


def use_configured_threads() -> None:
    """Give Numba's parallel regions ``fastconv.get_num_threads()`` threads.

    Numba keeps this setting per calling thread, so kernels call it on every entry.
    """
    numba.set_num_threads(threads.numba_threads())


@intrinsic
def prefetch(typingctx, array, index, for_write, locality):
    """Ask the CPU to bring the cache line of ``array.flat[index]`` closer (``llvm.prefetch``).

    A hint only: no fault, no result. ``for_write`` must be a literal ``True``/``False``,
    ``locality`` a literal 0-3 (3: into every cache level, L1 included; 2: L2 and beyond).
    Kernels use it where their reads or writes are strided across channels, a pattern the
    hardware prefetchers do not follow.
    """
    if not isinstance(for_write, types.BooleanLiteral) or not isinstance(locality, types.IntegerLiteral):
        return None
    rw = int(for_write.literal_value)
    level = int(locality.literal_value)

    def codegen(context, builder, sig, args):
        array_type = sig.args[0]
        ary = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, array_type, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        # (address, read 0 / write 1, locality, data cache 1)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, rw), ir.Constant(i32, level),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, index, for_write, locality), codegen


@register_jitable
def prefetch_lines(array, start, stop):
    """``prefetch`` for the cache lines of the 1-D ``array[start:stop]``, to be read a while
    later: into L2, where lines asked for a whole plane ahead do not push the working set
    out of L1.

    A hint (no fault): the range may reach past the array's end. As ``_prefetch_lines`` in
    cython/direct.pyx.
    """
    i = start
    while i < stop:
        prefetch(array, i, False, 2)
        i += 64 // array.itemsize


@register_jitable
def prefetch_lines_for_write(array, start, stop):
    """``prefetch_lines`` for lines about to be written (fetched in the exclusive state)."""
    i = start
    while i < stop:
        prefetch(array, i, True, 3)
        i += 64 // array.itemsize
