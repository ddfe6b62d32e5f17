"""bf16 numbers and split-SGD storage: conversions, split/merge, the exact split-SGD update.

A bf16 value is the top 16 bits of an fp32 value (sign, 8 exponent bits, 7 mantissa
bits), stored here as uint16. Two ways to make one from an fp32 value x:

    round   bf16(x) = (bits(x) + 0x7FFF + ((bits(x) >> 16) & 1)) >> 16
            round to nearest, ties to even; a NaN stays a NaN (quiet bit set), a finite
            value past bf16's largest rounds to +-inf, as IEEE rounding does
    split   hi = bits(x) >> 16,  lo = bits(x) & 0xFFFF         (hi is x truncated)

Split-SGD (Kalamkar et al., SC20) keeps each fp32 master weight as its two halves: hi is
the bf16 weight the forward and backward compute with, lo the 16 bits below it, so that
``(hi << 16) | lo`` is the fp32 value exactly and memory stays 4 bytes per weight. The
update merges, applies fp32 SGD, and splits again:

    w = merge(hi, lo);  w = w - lr g  (fp32);  hi, lo = split(w)

so merge(hi, lo) after the update is bit for bit what fp32 SGD gives on the merged value.
"What fp32 SGD gives" is the project's fp32 kernels' arithmetic (kernels/elementwise.py
``sgd_update``, kernels/embedding/bags.py): ``w -= lr * g`` with float32 lr, which LLVM
contracts into one fused multiply-add (vfnmadd) under the flags of kernels/jit.py. Here
the FMA is explicit (``sgd_fma``, llvm.fma), so the update rounds once whatever LLVM
decides; ``reference.sgd_fma_f32`` computes the same correctly rounded value in NumPy,
and the tests hold all three equal bit for bit. (Under NUMBA_DISABLE_JIT, plain Python
rounds twice, through float64: equal except in rare double-rounding cases.)

Kernels here work on flat (1-D, contiguous) arrays, outputs first; the parallel entry
runs CHUNK-element chunks on Numba's threads, the ``*_serial`` entry the same loop on
the calling thread. The bit arithmetic is written in LLVM IR (32-bit lanes, bitcasts), so
the loops vectorise to 16 lanes of shifts, adds and selects.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .jit import jit_parallel, jit_serial
from .registry import register

CHUNK = 1 << 14  # elements per parallel task: 32-64 KiB of each array

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()


def _c32(value: int) -> ir.Constant:
    return ir.Constant(_I32, value)


# ------------------------------------------------------------------ bit views
# Written as LLVM IR so that every step stays 32 bits wide: Numba widens integer
# arithmetic on uint16/uint32 to 64 bits, which halves the lanes of the vectorised loops.


def round_bits(builder, x, i32=_I32, i16=_I16):
    """i16 bf16 bits of float x: round to nearest even, NaN kept NaN (quiet bit set).
    For vectors (microkernel_bf16.py's tiles) pass the matching i32 and i16 vector types."""

    def c(value: int) -> ir.Constant:
        return ir.Constant(i32, value)  # a splat for a vector type

    bits = builder.bitcast(x, i32)
    top = builder.lshr(bits, c(16))
    lsb = builder.and_(top, c(1))
    rounded = builder.lshr(builder.add(builder.add(bits, c(0x7FFF)), lsb), c(16))
    nan = builder.icmp_unsigned(">", builder.and_(bits, c(0x7FFFFFFF)), c(0x7F800000))
    quiet = builder.or_(top, c(0x40))
    return builder.trunc(builder.select(nan, quiet, rounded), i16)


def merge_bits(builder, hi, lo, i32=_I32, f32=_F32):
    """float (hi << 16) | lo of two i16 halves (or of two vectors of them, given the
    matching i32 and float vector types)."""
    top = builder.shl(builder.zext(hi, i32), ir.Constant(i32, 16))
    return builder.bitcast(builder.or_(top, builder.zext(lo, i32)), f32)


@intrinsic
def _round_bf16(typingctx, x):
    def codegen(context, builder, signature, args):
        return round_bits(builder, args[0])

    return types.uint16(types.float32), codegen


@intrinsic
def _bf16_value(typingctx, h):
    def codegen(context, builder, signature, args):
        return merge_bits(builder, args[0], ir.Constant(_I16, 0))

    return types.float32(types.uint16), codegen


@intrinsic
def _merge_value(typingctx, hi, lo):
    def codegen(context, builder, signature, args):
        return merge_bits(builder, args[0], args[1])

    return types.float32(types.uint16, types.uint16), codegen


@intrinsic
def _hi_half(typingctx, x):
    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], _I32)
        return builder.trunc(builder.lshr(bits, _c32(16)), _I16)

    return types.uint16(types.float32), codegen


@intrinsic
def _lo_half(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.trunc(builder.bitcast(args[0], _I32), _I16)

    return types.uint16(types.float32), codegen


@intrinsic
def _sgd_fma(typingctx, w, g, lr):
    def codegen(context, builder, signature, args):
        w, g, lr = args
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_F32, [_F32] * 3), "llvm.fma.f32"
        )
        return builder.call(fma, [builder.fneg(lr), g, w])

    return types.float32(types.float32, types.float32, types.float32), codegen


if numba.config.DISABLE_JIT:  # plain Python: the same bit arithmetic on NumPy scalars

    def _bits(x):
        return int(np.array(x, np.float32).view(np.uint32)[()])

    def _float(u):
        return np.array(u, np.uint32).view(np.float32)[()]

    def round_bf16(x):
        bits = _bits(x)
        if bits & 0x7FFFFFFF > 0x7F800000:
            return np.uint16((bits >> 16) | 0x40)
        return np.uint16(((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF)

    def bf16_value(h):
        return _float(int(h) << 16)

    def merge_value(hi, lo):
        return _float((int(hi) << 16) | int(lo))

    def hi_half(x):
        return np.uint16(_bits(x) >> 16)

    def lo_half(x):
        return np.uint16(_bits(x) & 0xFFFF)

    def sgd_fma(w, g, lr):  # lr g exact in float64; one rounding there, one to float32
        return np.float32(float(w) - float(lr) * float(g))

else:

    @jit_serial
    def round_bf16(x):
        """bf16 bits (uint16) of float32 x, round to nearest even; NaN stays NaN."""
        return _round_bf16(np.float32(x))

    @jit_serial
    def bf16_value(h):
        """The float32 value of bf16 bits h (exact: bf16 is a truncated fp32)."""
        return _bf16_value(np.uint16(h))

    @jit_serial
    def merge_value(hi, lo):
        """The float32 whose top half is hi and bottom half lo."""
        return _merge_value(np.uint16(hi), np.uint16(lo))

    @jit_serial
    def hi_half(x):
        """The top 16 bits of float32 x: x truncated to bf16."""
        return _hi_half(np.float32(x))

    @jit_serial
    def lo_half(x):
        """The bottom 16 bits of float32 x."""
        return _lo_half(np.float32(x))

    @jit_serial
    def sgd_fma(w, g, lr):
        """float32 w - lr g rounded once: an explicit fused multiply-add (vfnmadd), the
        instruction LLVM contracts the fp32 SGD kernels' ``w -= lr * g`` into here."""
        return _sgd_fma(np.float32(w), np.float32(g), np.float32(lr))


def as_f32(v):
    """The float32 value of v: a float32 as it is, bf16 bits (uint16) converted (exact).

    Lets one kernel body read an fp32 or a bf16 array (Numba picks the conversion by
    the element type when it compiles the caller)."""
    if isinstance(v, np.uint16):
        return bf16_value(v)
    return np.float32(v)


@overload(as_f32, inline="always")
def _as_f32_jit(v):
    if isinstance(v, types.Integer) and v.bitwidth == 16 and not v.signed:
        return lambda v: bf16_value(v)
    if isinstance(v, types.Float):
        return lambda v: np.float32(v)
    return None


# ------------------------------------------------------------- loop bodies


@jit_serial
def _to_bf16_range(out, x, k0, k1):
    for k in range(k0, k1):
        out[k] = round_bf16(x[k])


@jit_serial
def _from_bf16_range(out, h, k0, k1):
    for k in range(k0, k1):
        out[k] = bf16_value(h[k])


@jit_serial
def _split_range(hi, lo, x, k0, k1):
    for k in range(k0, k1):
        hi[k] = hi_half(x[k])
        lo[k] = lo_half(x[k])


@jit_serial
def _merge_range(out, hi, lo, k0, k1):
    for k in range(k0, k1):
        out[k] = merge_value(hi[k], lo[k])


@jit_serial
def _split_sgd_range(hi, lo, grads, lr, k0, k1):
    for k in range(k0, k1):
        w = sgd_fma(merge_value(hi[k], lo[k]), grads[k], lr)
        hi[k] = hi_half(w)
        lo[k] = lo_half(w)


@jit_serial
def _chunks(n):
    return (n + CHUNK - 1) // CHUNK


# ------------------------------------------------------------- entry points


@jit_parallel
def to_bf16(out, x):
    """out (n,) uint16 = bf16 of x (n,) float32, round to nearest even."""
    n = x.shape[0]
    for c in prange(_chunks(n)):  # chunk c writes only out[c CHUNK : (c + 1) CHUNK]
        _to_bf16_range(out, x, c * CHUNK, min(n, (c + 1) * CHUNK))


@jit_serial
def to_bf16_serial(out, x):
    _to_bf16_range(out, x, 0, x.shape[0])


@jit_parallel
def from_bf16(out, h):
    """out (n,) float32 = the values of bf16 bits h (n,) uint16."""
    n = h.shape[0]
    for c in prange(_chunks(n)):  # chunk c writes only its own range of out
        _from_bf16_range(out, h, c * CHUNK, min(n, (c + 1) * CHUNK))


@jit_serial
def from_bf16_serial(out, h):
    _from_bf16_range(out, h, 0, h.shape[0])


@jit_parallel
def split(hi, lo, x):
    """hi, lo (n,) uint16 = the top and bottom halves of x (n,) float32."""
    n = x.shape[0]
    for c in prange(_chunks(n)):  # chunk c writes only its own range of hi and lo
        _split_range(hi, lo, x, c * CHUNK, min(n, (c + 1) * CHUNK))


@jit_serial
def split_serial(hi, lo, x):
    _split_range(hi, lo, x, 0, x.shape[0])


@jit_parallel
def merge(out, hi, lo):
    """out (n,) float32 = (hi << 16) | lo, bit for bit."""
    n = hi.shape[0]
    for c in prange(_chunks(n)):  # chunk c writes only its own range of out
        _merge_range(out, hi, lo, c * CHUNK, min(n, (c + 1) * CHUNK))


@jit_serial
def merge_serial(out, hi, lo):
    _merge_range(out, hi, lo, 0, hi.shape[0])


@jit_parallel
def split_sgd_update(hi, lo, grads, lr):
    """(hi, lo) (n,) uint16 updated in place to split(merge(hi, lo) - lr grads): exact fp32
    SGD on the master weights (lr float32), the bf16 weights hi refreshed with it."""
    n = hi.shape[0]
    for c in prange(_chunks(n)):  # chunk c reads and writes only its own range
        _split_sgd_range(hi, lo, grads, lr, c * CHUNK, min(n, (c + 1) * CHUNK))


@jit_serial
def split_sgd_update_serial(hi, lo, grads, lr):
    _split_sgd_range(hi, lo, grads, lr, 0, hi.shape[0])


register(
    "bf16_dense_update",
    "v1",
    split_sgd_update,
    split_sgd_update_serial,
    "chunks of the flat buffer; merge, fp32 FMA, split per element",
    default=True,
)
