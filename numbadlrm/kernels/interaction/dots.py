"""The dot interaction's 4 x 4 blocks of fp32 dot products in LLVM IR: 16 sums in
registers, folded into one vector by a transpose-and-add tree (used by interaction/fp32.py's
v3; dots_bf16.py is its bf16 twin)."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..gemm.llvm_ir import _LANES, _accumulate, _f32, _i32, _splat, _vector_intrinsics, _vf, _vi64
from ..jit import jit_serial

# ------------------------------------------------------------ 4 x 4 dot products

_DR = 4  # rows on each side of a dot block: 4 x 4 dots, 16 accumulators


def _tree_levels() -> list[tuple[list[int], int]]:
    """(first shuffle's lanes, second shuffle's shift) of each level of the 4-level
    transpose-and-add tree that folds 16 vectors into one vector of their 16 sums (lane i
    = sum of vector i); see :func:`_dots_4x4`."""
    return [
        (list(range(0, 8)) + list(range(16, 24)), 8),
        ([q * 8 + e for q in range(4) for e in range(4)], 4),
        ([q * 4 + e for q in range(8) for e in range(2)], 2),
        ([2 * q for q in range(16)], 1),
    ]


def _fold_and_store(builder, vecs, outp) -> None:
    """Fold 16 vectors of 16 partial sums into one vector of their 16 totals (the
    transpose-and-add tree of _tree_levels) and store it at float pointer outp."""
    for first, shift in _tree_levels():
        lo = ir.Constant(ir.VectorType(_i32, _LANES), first)
        hi = ir.Constant(ir.VectorType(_i32, _LANES), [i + shift for i in first])
        vecs = [
            builder.fadd(
                builder.shuffle_vector(vecs[2 * p], vecs[2 * p + 1], lo),
                builder.shuffle_vector(vecs[2 * p], vecs[2 * p + 1], hi),
            )
            for p in range(len(vecs) // 2)
        ]
    builder.store(vecs[0], builder.bitcast(outp, _vf.as_pointer()), align=4)


@intrinsic
def _dots_4x4(typingctx, K, a0, a1, a2, a3, b0, b1, b2, b3, out):
    """out[4 r + c] = sum_k a_r[k] b_c[k], k < K, for r, c < 4: each a_r, b_c is the
    address of K contiguous floats, out of 16 (all intp).

    The k loop holds the 16 sums as 16 vector accumulators (8 loads per 16 FMAs, the last
    chunk masked); a transpose-and-add tree then folds them into one vector of 16 sums (15
    adds and 30 shuffles, against 16 x 8 for 16 separate horizontal sums).
    """
    sig = types.void(*([types.intp] * 10))

    def codegen(context, builder, signature, args):
        K = args[0]
        fptr = _f32.as_pointer()
        mload, _, fma = _vector_intrinsics(builder.module)
        rows_a = [builder.inttoptr(p, fptr) for p in args[1:5]]
        rows_b = [builder.inttoptr(p, fptr) for p in args[5:9]]
        outp = builder.inttoptr(args[9], fptr)
        zero = ir.Constant(_vf, [0.0] * _LANES)
        align = ir.Constant(_i32, 4)
        lanes = ir.Constant(_vi64, list(range(_LANES)))
        k_vec_count = _splat(builder, K, _vi64)

        def body(k0, accs):
            lanes_k = builder.add(_splat(builder, k0, _vi64), lanes)
            mask = builder.icmp_signed("<", lanes_k, k_vec_count)
            va = [builder.call(mload, [builder.gep(p, [k0]), align, mask, zero]) for p in rows_a]
            vb = [builder.call(mload, [builder.gep(p, [k0]), align, mask, zero]) for p in rows_b]
            return [
                builder.call(fma, [va[r], vb[c], accs[r * _DR + c]])
                for r in range(_DR)
                for c in range(_DR)
            ]

        vecs = _accumulate(builder, K, _LANES, _DR * _DR, body, "dots")
        _fold_and_store(builder, vecs, outp)
        return context.get_dummy_value()

    return sig, codegen


if numba.config.DISABLE_JIT:

    def dots_4x4(K, a0, a1, a2, a3, b0, b1, b2, b3, out):
        """NumPy version of the dot block below, for NUMBA_DISABLE_JIT runs."""
        import ctypes

        def row(address):
            return np.ctypeslib.as_array((ctypes.c_float * K).from_address(int(address)))

        a = np.stack([row(p) for p in (a0, a1, a2, a3)]).astype(np.float64)
        b = np.stack([row(p) for p in (b0, b1, b2, b3)]).astype(np.float64)
        out[:16] = (a @ b.T).reshape(16)

else:

    @jit_serial
    def dots_4x4(K, a0, a1, a2, a3, b0, b1, b2, b3, out):
        """out[4 r + c] = <a_r, b_c> over K floats for r, c < 4, on one thread.

        a_r, b_c are addresses (``array.ctypes.data`` plus 4 x an element offset) of K
        contiguous floats; out is a float32 array of at least 16.
        """
        _dots_4x4(K, a0, a1, a2, a3, b0, b1, b2, b3, out.ctypes.data)
