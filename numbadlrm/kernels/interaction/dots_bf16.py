"""The interaction's 4 x 4 blocks of bf16 dot products on vdpbf16ps (or its emulation), in
LLVM IR: the bf16 twin of kernels/gemm/tile.py's dots_4x4."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..gemm.dpbf16 import (
    _LANES,
    _dpbf16,
    _f32,
    _form,
    _i1,
    _i16,
    _i32,
    _i64,
    _vi,
)
from ..gemm.llvm_ir import _accumulate, _declare, _splat
from ..jit import jit_serial
from .dots import _fold_and_store

# ------------------------------------------------------------ 4 x 4 bf16 dot products

_DR = 4  # rows on each side of a dot block
_PAIRS = 2 * _LANES  # bf16 elements per 512-bit load
_vh = ir.VectorType(_i16, _PAIRS)
_vhmask = ir.VectorType(_i1, _PAIRS)
_vh64 = ir.VectorType(_i64, _PAIRS)


def _masked_load_bf16(module: ir.Module) -> ir.Function:
    hptr = _i16.as_pointer()
    return _declare(
        module, "llvm.masked.load.v32i16.p0", ir.FunctionType(_vh, [hptr, _i32, _vhmask, _vh])
    )


@intrinsic
def _dots_4x4_bf16(typingctx, K, a0, a1, a2, a3, b0, b1, b2, b3, out, dot):
    """out[4 r + c] = sum_k a_r[k] b_c[k], k < K, fp32: each a_r, b_c the address of K
    contiguous bf16 values, out of 16 floats (all intp).

    microkernel.dots_4x4 with vdpbf16ps: each step loads 32 bf16 of each of the 8 rows
    (one zmm: 16 pairs of adjacent k, the layout vdpbf16ps multiplies, so no packing),
    masked to zero past K, and runs 16 vdpbf16ps; the 16 accumulators are folded into
    one vector of sums by microkernel's transpose-and-add tree. dot: a Dpbf16 (the
    instruction or its emulation).
    """
    emulated = _form(dot)
    sig = types.void(*([types.intp] * 10), dot)

    def codegen(context, builder, signature, args):
        K = args[0]
        dp = _dpbf16(context, builder, emulated)
        mload = _masked_load_bf16(builder.module)
        hptr = _i16.as_pointer()
        rows_a = [builder.inttoptr(p, hptr) for p in args[1:5]]
        rows_b = [builder.inttoptr(p, hptr) for p in args[5:9]]
        outp = builder.inttoptr(args[9], _f32.as_pointer())
        zero = ir.Constant(_vh, [0] * _PAIRS)
        align = ir.Constant(_i32, 2)
        lanes = ir.Constant(_vh64, list(range(_PAIRS)))
        k_count = _splat(builder, K, _vh64)

        def load(p, k0, mask):
            vec = builder.call(mload, [builder.gep(p, [k0]), align, mask, zero])
            return builder.bitcast(vec, _vi)

        def body(k0, accs):
            mask = builder.icmp_signed("<", builder.add(_splat(builder, k0, _vh64), lanes), k_count)
            va = [load(p, k0, mask) for p in rows_a]
            vb = [load(p, k0, mask) for p in rows_b]
            return [
                builder.call(dp, [accs[r * _DR + c], va[r], vb[c]])
                for r in range(_DR)
                for c in range(_DR)
            ]

        vecs = _accumulate(builder, K, _PAIRS, _DR * _DR, body, "bf16dots")
        _fold_and_store(builder, vecs, outp)
        return context.get_dummy_value()

    return sig, codegen


if numba.config.DISABLE_JIT:

    def dots_4x4_bf16(K, a0, a1, a2, a3, b0, b1, b2, b3, out, dot):
        """NumPy version of the dot block below, for NUMBA_DISABLE_JIT runs."""
        import ctypes

        def row(address):
            bits = np.ctypeslib.as_array((ctypes.c_uint16 * K).from_address(int(address)))
            return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

        a = np.stack([row(p) for p in (a0, a1, a2, a3)])
        b = np.stack([row(p) for p in (b0, b1, b2, b3)])
        out[:16] = (a @ b.T).reshape(16)

else:

    @jit_serial
    def dots_4x4_bf16(K, a0, a1, a2, a3, b0, b1, b2, b3, out, dot):
        """out[4 r + c] = <a_r, b_c> over K bf16 values for r, c < 4, fp32, on one thread.

        a_r, b_c are addresses (``array.ctypes.data`` plus 2 x an element offset) of K
        contiguous bf16 (uint16) values; out is a float32 array of at least 16; dot:
        VDPBF16PS or EMULATED.
        """
        _dots_4x4_bf16(K, a0, a1, a2, a3, b0, b1, b2, b3, out.ctypes.data, dot)
