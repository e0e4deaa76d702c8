"""A software prefetch usable inside numba kernels (LLVM's ``llvm.prefetch``).

A prefetch starts loading a cache line and retires at once, so a loop can have the lines
of many keys in flight together; a plain load would hold its place in the CPU's reorder
buffer until the line arrives.
"""

from __future__ import annotations

import numba as nb
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, arr, i):
    """Hints that ``arr[i]`` (a 1-D array, any strides) will be read soon; no effect on
    results. ``i`` must be in bounds (it is not checked)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # (address, read, locality 3 = keep in all cache levels, data cache)
        builder.call(fn, [i8p, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen


@nb.njit(inline="always", cache=True)
def prefetch_row(flat, r, width):
    """Prefetches row ``r`` of a C-ordered (rows, width) array given as its flat view."""
    for j in range(0, width, 16):  # 16 four-byte values: one 64-byte line
        prefetch(flat, r * width + j)
    prefetch(flat, r * width + width - 1)
