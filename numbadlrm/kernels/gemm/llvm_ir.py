"""LLVM IR building blocks of the GEMM tiles (tile.py, tile_bf16.py): intrinsics declared
once per module, splats, and the k loop whose accumulators live in registers (phi nodes).
"""

from __future__ import annotations

from llvmlite import ir

_LANES = 16  # the 4 x 4 dot block (tile.py) and tile_bf16's tiles: AVX-512 only

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


def _vector_ops(module: ir.Module, lanes: int, fused: str = "fmuladd"):
    """(masked load, masked store, multiply-add) of ``lanes``-float vectors, declared once
    per module. llvm.fmuladd is one FMA where the target has one, else a multiply and an
    add; llvm.fma is always fused (a library call without the instruction)."""
    vf = ir.VectorType(_f32, lanes)
    vmask = ir.VectorType(_i1, lanes)
    fptr = _f32.as_pointer()
    mload = _declare(
        module, f"llvm.masked.load.v{lanes}f32.p0", ir.FunctionType(vf, [fptr, _i32, vmask, vf])
    )
    mstore = _declare(
        module,
        f"llvm.masked.store.v{lanes}f32.p0",
        ir.FunctionType(ir.VoidType(), [vf, fptr, _i32, vmask]),
    )
    madd = _declare(module, f"llvm.{fused}.v{lanes}f32", ir.FunctionType(vf, [vf, vf, vf]))
    return mload, mstore, madd


def _vector_intrinsics(module: ir.Module):
    """(masked load, masked store, fma) of 16-float vectors (AVX-512 kernels)."""
    return _vector_ops(module, _LANES, "fma")


def _splat(builder: ir.IRBuilder, value, vty: ir.VectorType):
    undef = ir.Constant(vty, ir.Undefined)
    first = builder.insert_element(undef, value, ir.Constant(_i32, 0))
    zeros = ir.Constant(ir.VectorType(_i32, vty.count), [0] * vty.count)
    return builder.shuffle_vector(first, undef, zeros)


class _LoopId(ir.values.MDValue):
    """A loop's ID: a metadata node whose first operand is itself (what LLVM requires),
    compared by identity (llvmlite's MDValue hashes its operands, itself included)."""

    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other


def _no_unroll(builder: ir.IRBuilder, branch) -> None:
    """Mark the loop whose back edge is ``branch`` not to be unrolled. Unrolled twice (LLVM
    does so to loops of a few FMAs), a tile's k loop needs two sets of row addresses, more
    than x86-64's 15 integer registers, and spills them (tests/test_tile_isa.py)."""
    module = builder.module
    flag = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop_id = _LoopId(module, [flag], name=str(len(module.metadata)))
    loop_id.operands = (loop_id, flag)
    branch.set_metadata("llvm.loop", loop_id)


def _accumulate(
    builder: ir.IRBuilder, K, step: int, count: int, body, name: str, vty=_vf, unroll=True
):
    """Emit ``for k in range(0, K, step): accs = body(k, accs)`` over ``count`` vector
    accumulators of type ``vty`` that start at zero and live in phi nodes (registers)
    across the loop; returns their final values (zero when K <= 0). ``body`` emits the
    loop body and returns the updated accumulators."""
    zero = ir.Constant(vty, [0.0] * vty.count)
    entry = builder.block
    loop = builder.append_basic_block(name + ".k")
    done = builder.append_basic_block(name + ".end")
    builder.cbranch(builder.icmp_signed(">", K, ir.Constant(_i64, 0)), loop, done)

    builder.position_at_end(loop)
    k = builder.phi(_i64)
    k.add_incoming(ir.Constant(_i64, 0), entry)
    accs = []
    for _ in range(count):
        acc = builder.phi(vty)
        acc.add_incoming(zero, entry)
        accs.append(acc)
    updated = body(k, accs)
    k_next = builder.add(k, ir.Constant(_i64, step))
    loop_end = builder.block
    k.add_incoming(k_next, loop_end)
    for acc, value in zip(accs, updated, strict=True):
        acc.add_incoming(value, loop_end)
    back_edge = builder.cbranch(builder.icmp_signed("<", k_next, K), loop, done)
    if not unroll:
        _no_unroll(builder, back_edge)

    builder.position_at_end(done)
    sums = []
    for value in updated:
        total = builder.phi(vty)
        total.add_incoming(zero, entry)
        total.add_incoming(value, loop_end)
        sums.append(total)
    return sums
