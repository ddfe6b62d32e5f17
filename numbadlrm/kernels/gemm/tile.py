"""A register-blocked GEMM micro-kernel written in LLVM IR: the core of GEMM version v4.

Numba has no SIMD vector type, so a loop written in Python syntax reaches vector registers
only when LLVM's vectoriser decides so (the v1-v3 kernels in gemm.py are written around
what it does). This kernel is emitted directly as LLVM IR through a Numba ``@intrinsic``,
so what runs is exactly what is written here:

    for a tile of MR = 4 rows and NR = 64 columns of C (16 accumulators of 16 floats,
    16 of the 32 zmm registers, held in SSA values across the k loop):
        for k in range(K):
            b_q   = B[k, 16 q : 16 q + 16]               q = 0..3   (4 vector loads)
            a_r   = broadcast(A[r, k])                    r = 0..3   (4 broadcasts)
            acc_rq = fma(a_r, b_q, acc_rq)                            (16 FMAs)
        C[r, :] = alpha acc_r (+ C[r, :] if accumulate)  (once per tile)

8 loads per 16 FMAs and no store in the k loop, against the axpy form's load and store of
C for every 4 FMAs. The last tile of a row or column is handled by masks: columns past n
are masked in every load and store of B and C (llvm.masked.load/store), rows past m read
row m-1 of A and skip their stores. A is addressed with a row and a k stride, so A^T is
read as it lies (the weight pass reads dz^T without a transpose); B and C are row-major
with leading dimensions.

Under NUMBA_DISABLE_JIT :func:`tile` runs the same arithmetic with NumPy.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..jit import jit_serial

MR = 4  # rows of C per tile
NR = 64  # columns of C per tile: 4 vectors of 16 floats
_LANES = 16
_Q = NR // _LANES

_f32 = ir.FloatType()
_i1 = ir.IntType(1)
_i32 = ir.IntType(32)
_i64 = ir.IntType(64)
_vf = ir.VectorType(_f32, _LANES)
_vmask = ir.VectorType(_i1, _LANES)
_vi64 = ir.VectorType(_i64, _LANES)


def _declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    existing = module.globals.get(name)
    return existing if existing is not None else ir.Function(module, fnty, name=name)


def _vector_intrinsics(module: ir.Module):
    """(masked load, masked store, fma) of 16-float vectors, declared once per module."""
    fptr = _f32.as_pointer()
    mload = _declare(
        module, "llvm.masked.load.v16f32.p0", ir.FunctionType(_vf, [fptr, _i32, _vmask, _vf])
    )
    mstore = _declare(
        module,
        "llvm.masked.store.v16f32.p0",
        ir.FunctionType(ir.VoidType(), [_vf, fptr, _i32, _vmask]),
    )
    fma = _declare(module, "llvm.fma.v16f32", ir.FunctionType(_vf, [_vf, _vf, _vf]))
    return mload, mstore, fma


def _splat(builder: ir.IRBuilder, value, vty: ir.VectorType):
    undef = ir.Constant(vty, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(_i32, 0))
    zeros = ir.Constant(ir.VectorType(_i32, vty.count), [0] * vty.count)
    return builder.shuffle_vector(first, undef, zeros)


def _accumulate(builder: ir.IRBuilder, K, step: int, count: int, body, name: str):
    """Emit ``for k in range(0, K, step): accs = body(k, accs)`` over ``count`` vector
    accumulators that start at zero and live in phi nodes (registers) across the loop;
    returns their final values (zero when K <= 0). ``body`` emits the loop body and
    returns the updated accumulators."""
    zero = ir.Constant(_vf, [0.0] * _LANES)
    entry = builder.block
    loop = builder.append_basic_block(name + ".k")
    done = builder.append_basic_block(name + ".end")
    builder.cbranch(builder.icmp_signed(">", K, ir.Constant(_i64, 0)), loop, done)

    builder.position_at_end(loop)
    k = builder.phi(_i64)
    k.add_incoming(ir.Constant(_i64, 0), entry)
    accs = []
    for _ in range(count):
        acc = builder.phi(_vf)
        acc.add_incoming(zero, entry)
        accs.append(acc)
    updated = body(k, accs)
    k_next = builder.add(k, ir.Constant(_i64, step))
    loop_end = builder.block
    k.add_incoming(k_next, loop_end)
    for acc, value in zip(accs, updated, strict=True):
        acc.add_incoming(value, loop_end)
    builder.cbranch(builder.icmp_signed("<", k_next, K), loop, done)

    builder.position_at_end(done)
    sums = []
    for value in updated:
        total = builder.phi(_vf)
        total.add_incoming(zero, entry)
        total.add_incoming(value, loop_end)
        sums.append(total)
    return sums


@intrinsic
def _tile_4x64(typingctx, K, a, sa_r, sa_k, b, ldb, c, ldc, m, n, accumulate, alpha):
    """C[:m, :n] = (C if accumulate else 0) + alpha A[:m, :K] B[:K, :n]: a, b, c addresses,
    strides (sa_r, sa_k, ldb, ldc) in floats, accumulate 0 or 1 (all intp), alpha float32."""
    sig = types.void(*([types.intp] * 11), types.float32)

    def codegen(context, builder, signature, args):
        K, a, sa_r, sa_k, b, ldb, c, ldc, m, n, accumulate, alpha = args
        fptr = _f32.as_pointer()
        mload, mstore, fma = _vector_intrinsics(builder.module)
        ap = builder.inttoptr(a, fptr)
        bp = builder.inttoptr(b, fptr)
        cp = builder.inttoptr(c, fptr)
        zero = ir.Constant(_vf, [0.0] * _LANES)
        align = ir.Constant(_i32, 4)
        one = ir.Constant(_i64, 1)
        # lane l of vector q is column 16 q + l: valid while < n
        n_vec = _splat(builder, n, _vi64)
        masks = [
            builder.icmp_signed(
                "<", ir.Constant(_vi64, [_LANES * q + lane for lane in range(_LANES)]), n_vec
            )
            for q in range(_Q)
        ]
        last_row = builder.sub(m, one)
        a_rows = []
        for r in range(MR):  # rows past m re-read row m-1 (their results are not stored)
            valid = builder.icmp_signed("<", ir.Constant(_i64, r), m)
            row = builder.select(valid, ir.Constant(_i64, r), last_row)
            a_rows.append(builder.gep(ap, [builder.mul(row, sa_r)]))

        def body(k, accs):
            b_row = builder.gep(bp, [builder.mul(k, ldb)])
            b_vecs = [
                builder.call(
                    mload,
                    [builder.gep(b_row, [ir.Constant(_i64, _LANES * q)]), align, masks[q], zero],
                )
                for q in range(_Q)
            ]
            a_k = builder.mul(k, sa_k)
            updated = []
            for r in range(MR):
                a_val = _splat(builder, builder.load(builder.gep(a_rows[r], [a_k])), _vf)
                for q in range(_Q):
                    updated.append(builder.call(fma, [a_val, b_vecs[q], accs[r * _Q + q]]))
            return updated

        sums = _accumulate(builder, K, 1, MR * _Q, body, "tile")
        add_old = builder.icmp_signed("!=", accumulate, ir.Constant(_i64, 0))
        alpha_vec = _splat(builder, alpha, _vf)
        for r in range(MR):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, r), m)):
                c_row = builder.gep(cp, [builder.mul(ir.Constant(_i64, r), ldc)])
                for q in range(_Q):
                    ptr = builder.gep(c_row, [ir.Constant(_i64, _LANES * q)])
                    value = builder.fmul(alpha_vec, sums[r * _Q + q])
                    with builder.if_then(add_old):
                        old = builder.call(mload, [ptr, align, masks[q], zero])
                        builder.call(mstore, [builder.fadd(old, value), ptr, align, masks[q]])
                    with builder.if_then(builder.not_(add_old)):
                        builder.call(mstore, [value, ptr, align, masks[q]])
        return context.get_dummy_value()

    return sig, codegen


if numba.config.DISABLE_JIT:

    def tile(K, A, a_off, sa_r, sa_k, B, b_off, ldb, C, c_off, ldc, m, n, accumulate, alpha):
        """NumPy version of the tile below, for NUMBA_DISABLE_JIT runs."""
        a = np.lib.stride_tricks.as_strided(
            A.reshape(-1)[a_off:], (m, K), (4 * sa_r, 4 * sa_k), writeable=False
        )
        b = np.lib.stride_tricks.as_strided(B.reshape(-1)[b_off:], (K, n), (4 * ldb, 4))
        c = np.lib.stride_tricks.as_strided(C.reshape(-1)[c_off:], (m, n), (4 * ldc, 4))
        product = np.float32(alpha) * (a.astype(np.float64) @ b).astype(np.float32)
        c[...] = c + product if accumulate else product

else:

    @jit_serial
    def tile(K, A, a_off, sa_r, sa_k, B, b_off, ldb, C, c_off, ldc, m, n, accumulate, alpha):
        """C[:m, :n] = (C[:m, :n] if accumulate else 0) + alpha A[:m, :K] B[:K, :n] on one
        thread, m <= MR, n <= NR.

        Element (r, k) of A is ``A.flat[a_off + r sa_r + k sa_k]``; B and C start at element
        offsets ``b_off`` and ``c_off`` with row strides ``ldb`` and ``ldc`` (in elements).
        """
        _tile_4x64(
            K,
            A.ctypes.data + 4 * a_off,
            sa_r,
            sa_k,
            B.ctypes.data + 4 * b_off,
            ldb,
            C.ctypes.data + 4 * c_off,
            ldc,
            m,
            n,
            1 if accumulate else 0,
            np.float32(alpha),
        )


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
