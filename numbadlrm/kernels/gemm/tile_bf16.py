"""The bf16 GEMM micro-kernel on AVX512-BF16 ``vdpbf16ps`` (or its emulation), in LLVM IR.

``vdpbf16ps acc, a, b`` treats each 32-bit lane of a and b as a pair of bf16 values and
adds both products to the fp32 lane of acc: 16 lanes x 2 products x 2 flops = 64 flops in
one instruction, twice an fp32 FMA's 32. So the k dimension is consumed in pairs, and both
operands must hold two consecutive k values in each 32-bit lane (the "VNNI" pair layout):

    A (M, K) bf16 with pairs of k in 32 bits: row-major with K contiguous (A[r, 2kk : 2kk
        + 2] is one 32-bit pair) or rows' pairs interleaved ((K/2, M) uint32), addressed
        by byte strides; each pair is broadcast to all 16 lanes (one vbroadcastss)
    B packed (kernels/gemm/bf16.py): panels of NR = 64 columns, panel[kk, j] (uint32) =
        the pair (Bm[2kk, j], Bm[2kk + 1, j]); columns past N and the k past an odd K are
        zero, so every B load is a whole vector

    for a tile of MR rows and NR = 64 columns of C (MR x 4 accumulators of 16 floats in
    zmm registers across the k loop):
        for kk in range(kc // 2):
            b_q    = panel[kk, 16 q : 16 q + 16]       q = 0..3   (4 vector loads)
            a_r    = broadcast(A32[r, kk])              r < MR     (MR broadcasts)
            acc_rq = vdpbf16ps(acc_rq, a_r, b_q)                   (4 MR instructions)
        odd kc: one more step with a_r = A[r, kc - 1] alone (the upper bf16 zero)
        C[r, :n] = acc_r (+ C[r, :n] if accumulate)      fp32, masked past n

Rows past m re-read row m - 1 of A and skip their stores, as microkernel.py's fp32 tile.

The instruction itself, its emulation and the CPU check are in dpbf16.py; the 4 x 4
bf16 dot blocks of the interaction in kernels/interaction/dots_bf16.py.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..jit import jit_serial
from .dpbf16 import _LANES, _Q, MR, NR, _dpbf16, _f32, _form, _i16, _i32, _i64, _vf, _vi, _vi64
from .epilogue_bf16 import (
    _epilogue,
    _sgd_epilogue,
)
from .llvm_ir import _accumulate, _splat, _vector_intrinsics


def _step(builder, dp, b_ptr, kk, accs, a_pairs):
    """One k pair: broadcasts of the rows' pairs, 4 B vectors, 4 MR vdpbf16ps."""
    b_row = builder.gep(b_ptr, [builder.mul(kk, ir.Constant(_i64, NR))])
    b_vecs = []
    for q in range(_Q):
        ptr = builder.gep(b_row, [ir.Constant(_i64, _LANES * q)])
        b_vecs.append(builder.load(builder.bitcast(ptr, _vi.as_pointer()), align=4))
    updated = []
    for r, pair in enumerate(a_pairs):
        a_vec = _splat(builder, pair, _vi)
        for q in range(_Q):
            updated.append(builder.call(dp, [accs[r * _Q + q], a_vec, b_vecs[q]]))
    return updated


def _store_tile(builder, sums, cp, ldc, m, n, accumulate, mr):
    """C[r, :n] = sums_r (+ C[r, :n] if accumulate) for r < m, masked past n."""
    mload, mstore, _ = _vector_intrinsics(builder.module)
    zero = ir.Constant(_vf, [0.0] * _LANES)
    align = ir.Constant(_i32, 4)
    n_vec = _splat(builder, n, _vi64)
    masks = [
        builder.icmp_signed("<", ir.Constant(_vi64, [_LANES * q + i for i in range(_LANES)]), n_vec)
        for q in range(_Q)
    ]
    add_old = builder.icmp_signed("!=", accumulate, ir.Constant(_i64, 0))
    for r in range(mr):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, r), m)):
            c_row = builder.gep(cp, [builder.mul(ir.Constant(_i64, r), ldc)])
            for q in range(_Q):
                ptr = builder.gep(c_row, [ir.Constant(_i64, _LANES * q)])
                value = sums[r * _Q + q]
                old = builder.call(mload, [ptr, align, masks[q], zero])
                value = builder.select(add_old, builder.fadd(old, value), value)
                builder.call(mstore, [value, ptr, align, masks[q]])


def _tile_sums(context, builder, kc, a, sa_r, sa_k, b, m, mr, emulated):
    """The MR x 4 accumulators of C[:m, :] = A[:m, :kc] B[:kc, :] (see ``tile``), on
    vdpbf16ps or its emulation."""
    dp = _dpbf16(context, builder, emulated)
    ap = builder.inttoptr(a, ir.IntType(8).as_pointer())
    bp = builder.inttoptr(b, _i32.as_pointer())
    one = ir.Constant(_i64, 1)
    rows = []  # rows past m re-read row m - 1 (their results are not stored)
    for r in range(mr):
        valid = builder.icmp_signed("<", ir.Constant(_i64, r), m)
        row = builder.select(valid, ir.Constant(_i64, r), builder.sub(m, one))
        rows.append(builder.gep(ap, [builder.mul(row, sa_r)]))
    pairs = builder.ashr(kc, one)

    def pair_ptr(row, kk, ty):
        return builder.bitcast(builder.gep(row, [builder.mul(kk, sa_k)]), ty.as_pointer())

    def body(kk, accs):
        a_pairs = [builder.load(pair_ptr(p, kk, _i32), align=2) for p in rows]
        return _step(builder, dp, bp, kk, accs, a_pairs)

    sums = _accumulate(builder, pairs, 1, mr * _Q, body, "bf16tile")
    before = builder.block
    odd = builder.icmp_signed("!=", builder.and_(kc, one), ir.Constant(_i64, 0))
    with builder.if_then(odd):  # the last k alone (its pair's upper half is not read)
        a_pairs = [
            builder.zext(builder.load(pair_ptr(p, pairs, _i16), align=2), _i32) for p in rows
        ]
        tail = _step(builder, dp, bp, pairs, sums, a_pairs)
        tail_end = builder.block
    final = []
    for value, tail_value in zip(sums, tail, strict=True):
        phi = builder.phi(_vf)
        phi.add_incoming(value, before)
        phi.add_incoming(tail_value, tail_end)
        final.append(phi)
    return final


def _tile_codegen(mr: int):
    def codegen(context, builder, signature, args):
        kc, a, sa_r, sa_k, b, c, ldc, m, n, accumulate = args[:10]
        emulated = signature.args[-1].emulated
        sums = _tile_sums(context, builder, kc, a, sa_r, sa_k, b, m, mr, emulated)
        cp = builder.inttoptr(c, _f32.as_pointer())
        _store_tile(builder, sums, cp, ldc, m, n, accumulate, mr)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _tile_sgd_mr(
    typingctx, kc, a, sa_r, sa_k, b, m, n, w_hi, w_lo, ldw, lr, wd, wf, pf, ii, jj, dot
):
    """The tile's product G = A B applied at once as split-SGD: W (w_hi, w_lo: uint16
    addresses, row stride ldw elements) -= lr G, exactly; then the new bf16 weights into
    W's packings (_repack_tile; wd, wf 0: not written). All intp but lr (float32) and
    dot (a Dpbf16)."""
    emulated = _form(dot)

    def codegen(context, builder, signature, args):
        kc, a, sa_r, sa_k, b, m, n, w_hi, w_lo, ldw, lr = args[:11]
        sums = _tile_sums(context, builder, kc, a, sa_r, sa_k, b, m, MR, emulated)
        _sgd_epilogue(builder, sums, m, n, MR, w_hi, w_lo, ldw, lr, args[11:16])
        return context.get_dummy_value()

    sig = types.void(*([types.intp] * 10), types.float32, *([types.intp] * 5), dot)
    return sig, codegen


def _tile_out_codegen(mr: int):
    def codegen(context, builder, signature, args):
        kc, a, sa_r, sa_k, b, m, n = args[:7]
        emulated = signature.args[-1].emulated
        sums = _tile_sums(context, builder, kc, a, sa_r, sa_k, b, m, mr, emulated)
        _epilogue(builder, sums, m, n, mr, args[7:15])
        return context.get_dummy_value()

    return codegen


@intrinsic
def _tile_out_mr(
    typingctx, kc, a, sa_r, sa_k, b, m, n, c, ldc, c16, ldc16, bias, relu, mask, ldmask, dot
):
    """The tile with its epilogue in registers: C = A B (+ bias) (ReLU) (* [x16 > 0]) to an
    fp32 C and/or a bf16 C16 (addresses, 0 when absent; lds in elements); bias: fp32
    address or 0; relu 0 or 1; mask: bf16 x16 address or 0 (all intp); dot a Dpbf16."""
    _form(dot)
    return types.void(*([types.intp] * 15), dot), _tile_out_codegen(MR)


def _make_tile(mr: int):
    @intrinsic
    def _tile(typingctx, kc, a, sa_r, sa_k, b, c, ldc, m, n, accumulate, dot):
        """C[:m, :n] (+)= A[:m, :kc] B[:kc, :n]: a (bf16 pairs), b (packed pairs), c (fp32)
        addresses; A's pair (r, kk) at a + r sa_r + kk sa_k (bytes); ldc in floats;
        accumulate 0 or 1 (all intp); dot a Dpbf16."""
        _form(dot)
        return types.void(*([types.intp] * 10), dot), _tile_codegen(mr)

    return _tile


_tile_mr = _make_tile(MR)


if numba.config.DISABLE_JIT:

    def tile_out(
        kc, A, a_off, sa_r, sa_k, P, p_off, Y, Y16, i, j, bias, relu, X16, mask, m, n, dot
    ):
        """NumPy version of tile_out below, for NUMBA_DISABLE_JIT runs."""
        s = np.empty((MR, NR), np.float32)
        tile(kc, A, a_off, sa_r, sa_k, P, p_off, s, 0, NR, m, n, False, dot)
        v = s[:m, :n] + (bias[j : j + n] if bias.shape[0] > 0 else np.float32(0))
        v = np.where(v > 0, v, np.float32(0)) if relu else v
        if mask:
            x = X16[i : i + m, j : j + n].astype(np.int16)
            v = np.where((x > 0) & (x < 0x7F81), v, np.float32(0))
        if Y.shape[0] > 0:
            Y[i : i + m, j : j + n] = v
        if Y16.shape[0] > 0:
            bits = np.ascontiguousarray(v, np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            nan = (bits & 0x7FFFFFFF) > 0x7F800000
            Y16[i : i + m, j : j + n] = np.where(nan, (bits >> 16) | 0x40, rounded)

    def tile_sgd(kc, A, a_off, sa_r, sa_k, P, p_off, w_hi, w_lo, i, j, lr, m, n, Wd, Wf, dot):
        """NumPy version of tile_sgd below, for NUMBA_DISABLE_JIT runs (the packings are
        left to the caller's repacking)."""
        from ..bf16 import hi_half, lo_half, merge_value, sgd_fma

        s = np.empty((MR, NR), np.float32)
        tile(kc, A, a_off, sa_r, sa_k, P, p_off, s, 0, NR, m, n, False, dot)
        for r in range(m):
            for c in range(n):
                w = sgd_fma(merge_value(w_hi[i + r, j + c], w_lo[i + r, j + c]), s[r, c], lr)
                w_hi[i + r, j + c], w_lo[i + r, j + c] = hi_half(w), lo_half(w)

    def _a_values(A, a_off, sa_r, sa_k, m, kc):
        """A[:m, :kc] as float64, read through the byte strides (NumPy)."""
        buf = A.reshape(-1).view(np.uint8)
        out = np.empty((m, kc), np.uint32)
        for r in range(m):
            for k in range(kc):
                at = a_off + r * sa_r + (k // 2) * sa_k + 2 * (k % 2)
                out[r, k] = buf[at] | (np.uint32(buf[at + 1]) << 8)
        return (out << 16).view(np.float32).astype(np.float64)

    def tile(kc, A, a_off, sa_r, sa_k, P, p_off, C, c_off, ldc, m, n, accumulate, dot):
        """NumPy version of the tile below, for NUMBA_DISABLE_JIT runs (either form: float64
        sums)."""
        a = _a_values(A, a_off, sa_r, sa_k, m, kc)
        pairs = P.reshape(-1)[p_off : p_off + ((kc + 1) // 2) * NR].reshape(-1, NR)
        halves = np.stack([pairs & 0xFFFF, pairs >> 16], axis=1).reshape(-1, NR)[:kc, :n]
        b = (halves.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        c = np.lib.stride_tricks.as_strided(C.reshape(-1)[c_off:], (m, n), (4 * ldc, 4))
        product = (a @ b).astype(np.float32)
        c[...] = c + product if accumulate else product

else:

    @jit_serial
    def _address(a, i, j):
        """The address of a[i, j] of a 2-D array, or 0 for an empty (absent) one."""
        return a.ctypes.data + a.itemsize * (i * a.shape[1] + j) if a.shape[0] > 0 else 0

    @jit_serial
    def tile_out(
        kc, A, a_off, sa_r, sa_k, P, p_off, Y, Y16, i, j, bias, relu, X16, mask, m, n, dot
    ):
        """Y[i:i+m, j:j+n] (fp32, if Y is not empty) and/or Y16 (bf16, rounded) = the tile
        of A B (A, P, dot as ``tile``), + bias[j:j+n] if bias is not empty, ReLU if relu,
        times [X16[i:i+m, j:j+n] > 0] if mask: the whole epilogue on the accumulators
        in registers, one store per output vector."""
        b_addr = bias.ctypes.data + 4 * j if bias.shape[0] > 0 else 0
        _tile_out_mr(
            kc,
            A.ctypes.data + a_off,
            sa_r,
            sa_k,
            P.ctypes.data + 4 * p_off,
            m,
            n,
            _address(Y, i, j),
            Y.shape[1],
            _address(Y16, i, j),
            Y16.shape[1],
            b_addr,
            1 if relu else 0,
            _address(X16, i, j) if mask else 0,
            X16.shape[1],
            dot,
        )

    @jit_serial
    def tile_sgd(kc, A, a_off, sa_r, sa_k, P, p_off, w_hi, w_lo, i, j, lr, m, n, Wd, Wf, dot):
        """W[i:i+m, j:j+n] (split: w_hi, w_lo (O, I) uint16) -= lr (the tile of A B), exact
        fp32 SGD (kernels/bf16.py) on the accumulators in registers: one load and one
        store of each half, no fp32 gradient tile stored anywhere; then the new bf16
        weights into Wd = pack_cols(w_hi) and Wf = pack_rows(w_hi) (panel arrays, uint32;
        empty ones are not written). i must be even (a multiple of MR), j of NR."""
        ldw = w_hi.shape[1]
        at = 2 * (i * ldw + j)
        wd = Wd.ctypes.data + 4 * (((j // NR) * Wd.shape[1] + i // 2) * NR) if Wd.size else 0
        wf = Wf.ctypes.data if Wf.size else 0
        _tile_sgd_mr(
            kc,
            A.ctypes.data + a_off,
            sa_r,
            sa_k,
            P.ctypes.data + 4 * p_off,
            m,
            n,
            w_hi.ctypes.data + at,
            w_lo.ctypes.data + at,
            ldw,
            np.float32(lr),
            wd,
            wf,
            Wf.shape[1],
            i,
            j,
            dot,
        )

    @jit_serial
    def tile(kc, A, a_off, sa_r, sa_k, P, p_off, C, c_off, ldc, m, n, accumulate, dot):
        """C[:m, :n] (+)= A[:m, :kc] B[:kc, :n] on one thread, m <= MR, n <= NR, fp32
        accumulation, on vdpbf16ps or its emulation (dot: VDPBF16PS or EMULATED).

        A is any array of bf16 pairs: the pair (A[r, 2kk], A[r, 2kk + 1]) is the uint32 at
        byte ``a_off + r sa_r + kk sa_k`` of A's buffer (row-major bf16 (M, K): sa_r = 2 K,
        sa_k = 4; pairs of rows interleaved (K/2, M) uint32: sa_r = 4, sa_k = 4 M). B is a
        packed panel of uint32 pairs from ``P.flat[p_off]`` (row kk: NR pairs, zero past
        n and past an odd kc); C is float32 from ``C.flat[c_off]`` with row stride ldc.
        """
        _tile_mr(
            kc,
            A.ctypes.data + a_off,
            sa_r,
            sa_k,
            P.ctypes.data + 4 * p_off,
            C.ctypes.data + 4 * c_off,
            ldc,
            m,
            n,
            1 if accumulate else 0,
            dot,
        )
