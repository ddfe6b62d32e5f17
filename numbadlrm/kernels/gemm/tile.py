"""Register-blocked GEMM micro-kernels written in LLVM IR, shaped for the target's ISA:
the core of GEMM version v4.

Numba has no SIMD vector type, so a loop written in Python syntax reaches vector registers
only when LLVM's vectoriser decides so (the v1-v3 kernels in fp32.py are written around
what it does). This kernel is emitted directly as LLVM IR through a Numba ``@intrinsic``,
so what runs is exactly what is written here, for a tile of MR rows and NR = NV L columns
of C, L floats per vector:

    MR x NV accumulators of L floats, held in SSA values (registers) across the k loop:
    for k in range(K):
        b_q    = B[k, L q : L q + L]                    q < NV    (NV vector loads)
        a_r    = broadcast(A[r, k])                     r < MR    (MR broadcasts)
        acc_rq = a_r b_q + acc_rq                                  (MR NV multiply-adds)
    C[r, :] = alpha acc_r (+ C[r, :] if accumulate)    (once per tile)

MR + NV loads per MR NV multiply-adds and no store in the k loop. The shape comes from the
ISA of the CPU Numba compiles for (numbadlrm/runtime/cpu.py; NUMBA_CPU_NAME and
NUMBA_CPU_FEATURES move both together). The k loop keeps MR NV accumulators, NV vectors
of B and one broadcast of A in vector registers, plus a product where there is no FMA:
while that fits the register file it never spills, and within it more accumulators
amortise the loads better (measurements: bench/RESULTS.md, "GEMM tiles per ISA"):

    ISA     L   registers  tile MR x NR (x NV)  registers used  loads per FMA
    avx512  16  32         8 x 48  (x 3)        28              0.46
    avx2     8  16         6 x 16  (x 2)        15              0.67
    neon     4  32         8 x 12  (x 3)        28              0.46
    vec128   4  16         4 x  8  (x 2)        12 (+1)         0.75

tests/test_tile_isa.py compiles each for its ISA (x86-64 with and without AVX-512, and
aarch64, which this machine cannot run) and checks that the k loop's machine code has no
stack spill. A new ISA is a row in runtime/cpu.ISAS and one in :data:`TILES`.

Full tiles (n = NR) load and store whole vectors. The last tile of a row (n < NR) masks
its loads and stores of B and C (llvm.masked.load/store: vmaskmovps on AVX2, mask
registers on AVX-512; elsewhere LLVM expands them into per-lane code, legal everywhere
and run only at edges). Rows past m read row m-1 of A and skip their stores. A is
addressed with a row and a k stride, so A^T is read as it lies (the weight pass reads
dz^T without a transpose); B and C are row-major with leading dimensions.

Under NUMBA_DISABLE_JIT :func:`tile` runs the same arithmetic with NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ...runtime import cpu
from ..jit import jit_serial
from .llvm_ir import (
    _accumulate,
    _declare,
    _f32,
    _i32,
    _i64,
    _splat,
    _vector_ops,
)


@dataclass(frozen=True)
class TileShape:
    """MR rows by NV vectors of ``lanes`` floats: the tile of C held in registers."""

    mr: int  # rows of C
    nv: int  # vectors per row of C
    lanes: int  # floats per vector

    @property
    def nr(self) -> int:
        """Columns of C."""
        return self.nv * self.lanes

    def registers(self, fma: bool = True) -> int:
        """Vector registers live in the k loop: accumulators, B's vectors, the broadcast of
        A, and without an FMA instruction the product."""
        return self.mr * self.nv + self.nv + 1 + (0 if fma else 1)

    def __str__(self) -> str:
        return f"{self.mr}x{self.nr}"


TILES = {  # ISA: (MR, NV), chosen by bench_gemm.py --tiles (bench/RESULTS.md)
    "avx512": (8, 3),
    "avx2": (6, 2),
    "neon": (8, 3),
    "vec128": (4, 2),
}


def shape_for(isa: cpu.Isa) -> TileShape:
    """The tile of :data:`TILES` for an ISA."""
    mr, nv = TILES[isa.name]
    return TileShape(mr, nv, isa.lanes)


TARGET = cpu.target()  # the CPU Numba compiles for
SHAPE = shape_for(TARGET.isa)  # its tile: what :func:`tile` runs
MR = SHAPE.mr  # rows of C per tile
NR = SHAPE.nr  # columns of C per tile
_NV = SHAPE.nv
_TL = SHAPE.lanes


def emit_tile(builder: ir.IRBuilder, shape: TileShape, *args) -> None:
    """Emit C[:m, :n] = (C if accumulate else 0) + alpha A[:m, :K] B[:K, :n] at the
    builder's position; ``args`` = (K, a, sa_r, sa_k, b, ldb, c, ldc, m, n, accumulate,
    alpha): a, b, c addresses, strides in floats, accumulate 0 or 1 (all i64), alpha
    float; 1 <= m <= MR, 1 <= n <= NR.

    A full tile (n = NR) runs all NV vectors unmasked. A narrower one runs only the
    vectors that hold columns < n, the last of them masked: one k loop per count of
    vectors, chosen by a switch, so a 16-wide C costs one vector per row, not NV.
    """
    K, a, sa_r, sa_k, b, ldb, c, ldc, m, n, accumulate, alpha = args
    fptr = _f32.as_pointer()
    ap = builder.inttoptr(a, fptr)
    last_row = builder.sub(m, ir.Constant(_i64, 1))
    a_rows = []
    for r in range(shape.mr):  # rows past m re-read row m-1 (their results are not stored)
        valid = builder.icmp_signed("<", ir.Constant(_i64, r), m)
        row = builder.select(valid, ir.Constant(_i64, r), last_row)
        a_rows.append(builder.gep(ap, [builder.mul(row, sa_r)]))
    cp = builder.inttoptr(c, fptr)
    _prefetch_rows(builder, shape, cp, ldc, last_row)
    operands = (K, a_rows, sa_k, builder.inttoptr(b, fptr), ldb, cp, ldc, m, accumulate, alpha)
    done = builder.append_basic_block("tile.done")
    full = builder.append_basic_block("tile.full")
    # n < NR: vectors 0..f hold columns < n, f = (n - 1) // L; vector f is masked
    last = builder.udiv(builder.sub(n, ir.Constant(_i64, 1)), ir.Constant(_i64, shape.lanes))
    narrow = builder.icmp_signed("<", n, ir.Constant(_i64, shape.nr))
    switch = builder.switch(builder.select(narrow, last, ir.Constant(_i64, -1)), full)
    for f in range(shape.nv):
        block = builder.append_basic_block(f"tile.edge{f + 1}")
        switch.add_case(ir.Constant(_i64, f), block)
        builder.position_at_end(block)
        lanes = ir.Constant(_vi32(shape.lanes), [shape.lanes * f + i for i in range(shape.lanes)])
        mask = builder.icmp_signed("<", lanes, _splat(builder, builder.trunc(n, _i32), lanes.type))
        _tile_path(builder, shape, f + 1, mask, *operands, f"tile.edge{f + 1}")
        builder.branch(done)
    builder.position_at_end(full)
    _tile_path(builder, shape, shape.nv, None, *operands, "tile.full")
    builder.branch(done)
    builder.position_at_end(done)


def _prefetch_rows(builder, shape, cp, ldc, last_row) -> None:
    """Prefetch the tile's rows of C (rows past m re-fetch row m-1) for writing, so that
    they arrive during the k loop, not at its stores (C is revisited once per k block
    from L2 or L3, its rows a row stride apart, which the hardware does not prefetch)."""
    i8p = ir.IntType(8).as_pointer()
    fnty = ir.FunctionType(ir.VoidType(), [i8p, _i32, _i32, _i32])
    prefetch = _declare(builder.module, "llvm.prefetch.p0", fnty)
    write, keep, data = ir.Constant(_i32, 1), ir.Constant(_i32, 3), ir.Constant(_i32, 1)
    offsets = sorted({*range(0, shape.nr, 16), shape.nr - 1})  # every 64-byte line
    for r in range(shape.mr):
        row = builder.select(
            builder.icmp_signed("<", ir.Constant(_i64, r), last_row), ir.Constant(_i64, r), last_row
        )
        c_row = builder.gep(cp, [builder.mul(row, ldc)])
        for offset in offsets:
            ptr = builder.bitcast(builder.gep(c_row, [ir.Constant(_i64, offset)]), i8p)
            builder.call(prefetch, [ptr, write, keep, data])


def _vi32(lanes: int) -> ir.VectorType:
    return ir.VectorType(_i32, lanes)


def _tile_path(
    builder, shape, count, mask, K, a_rows, sa_k, bp, ldb, cp, ldc, m, accumulate, alpha, name
):
    """The k loop and the stores of the first ``count`` vectors of each row of the tile;
    the last one masked by ``mask`` (None: all whole)."""
    lanes = shape.lanes
    vf = ir.VectorType(_f32, lanes)
    mload, mstore, madd = _vector_ops(builder.module, lanes)
    zero = ir.Constant(vf, [0.0] * lanes)
    align = ir.Constant(_i32, 4)

    def load(ptr, q):
        if mask is None or q < count - 1:
            return builder.load(builder.bitcast(ptr, vf.as_pointer()), align=4)
        return builder.call(mload, [ptr, align, mask, zero])

    def store(value, ptr, q):
        if mask is None or q < count - 1:
            builder.store(value, builder.bitcast(ptr, vf.as_pointer()), align=4)
        else:
            builder.call(mstore, [value, ptr, align, mask])

    def body(k, accs):
        b_row = builder.gep(bp, [builder.mul(k, ldb)])
        b_vecs = [load(builder.gep(b_row, [ir.Constant(_i64, lanes * q)]), q) for q in range(count)]
        a_k = builder.mul(k, sa_k)
        updated = []
        for r in range(shape.mr):
            a_val = _splat(builder, builder.load(builder.gep(a_rows[r], [a_k])), vf)
            for q in range(count):
                updated.append(builder.call(madd, [a_val, b_vecs[q], accs[r * count + q]]))
        return updated

    sums = _accumulate(builder, K, 1, shape.mr * count, body, name, vf, unroll=False)
    add_old = builder.icmp_signed("!=", accumulate, ir.Constant(_i64, 0))
    alpha_vec = _splat(builder, alpha, vf)
    for r in range(shape.mr):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, r), m)):
            c_row = builder.gep(cp, [builder.mul(ir.Constant(_i64, r), ldc)])
            for q in range(count):
                ptr = builder.gep(c_row, [ir.Constant(_i64, lanes * q)])
                value = builder.fmul(alpha_vec, sums[r * count + q])
                with builder.if_then(add_old):
                    store(builder.fadd(load(ptr, q), value), ptr, q)
                with builder.if_then(builder.not_(add_old)):
                    store(value, ptr, q)


def tile_module(shape: TileShape, triple: str = "") -> ir.Module:
    """A module holding the tile alone, as function ``numbadlrm_tile(K, a, sa_r, sa_k, b,
    ldb, c, ldc, m, n, accumulate, alpha)``: to compile it for any target and read its
    machine code (tests/test_tile_isa.py)."""
    module = ir.Module(name=f"tile_{shape}")
    module.triple = triple
    fnty = ir.FunctionType(ir.VoidType(), [_i64] * 11 + [_f32])
    fn = ir.Function(module, fnty, name="numbadlrm_tile")
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    emit_tile(builder, shape, *fn.args)
    builder.ret_void()
    return module


@intrinsic
def _tile_ir(typingctx, mr, nv, lanes, K, a, sa_r, sa_k, b, ldb, c, ldc, m, n, accumulate, alpha):
    """The tile of shape (mr, nv, lanes), compile-time integers; the rest as emit_tile's
    arguments (all intp but alpha, float32)."""
    if not all(isinstance(t, types.IntegerLiteral) for t in (mr, nv, lanes)):
        raise numba.core.errors.TypingError("the tile's shape must be compile-time integers")
    shape = TileShape(mr.literal_value, nv.literal_value, lanes.literal_value)
    sig = types.void(mr, nv, lanes, *([types.intp] * 11), types.float32)

    def codegen(context, builder, signature, args):
        emit_tile(builder, shape, *args[3:])
        return context.get_dummy_value()

    return sig, codegen


if numba.config.DISABLE_JIT:

    def tile_of(
        mr,
        nv,
        lanes,
        K,
        A,
        a_off,
        sa_r,
        sa_k,
        B,
        b_off,
        ldb,
        C,
        c_off,
        ldc,
        m,
        n,
        accumulate,
        alpha,
    ):
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
    def tile_of(
        mr,
        nv,
        lanes,
        K,
        A,
        a_off,
        sa_r,
        sa_k,
        B,
        b_off,
        ldb,
        C,
        c_off,
        ldc,
        m,
        n,
        accumulate,
        alpha,
    ):
        """C[:m, :n] = (C[:m, :n] if accumulate else 0) + alpha A[:m, :K] B[:K, :n] on one
        thread with a tile of mr rows and nv vectors of ``lanes`` floats (compile-time
        integers), m <= mr, n <= nv lanes.

        Element (r, k) of A is ``A.flat[a_off + r sa_r + k sa_k]``; B and C start at element
        offsets ``b_off`` and ``c_off`` with row strides ``ldb`` and ``ldc`` (in elements).
        """
        _tile_ir(
            mr,
            nv,
            lanes,
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


@jit_serial
def tile(K, A, a_off, sa_r, sa_k, B, b_off, ldb, C, c_off, ldc, m, n, accumulate, alpha):
    """:func:`tile_of` with the target ISA's tile, MR x NR (m <= MR, n <= NR)."""
    tile_of(
        MR, _NV, _TL, K, A, a_off, sa_r, sa_k, B, b_off, ldb, C, c_off, ldc, m, n, accumulate, alpha
    )
