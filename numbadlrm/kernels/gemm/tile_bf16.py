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

llvmlite's IR builder has no bfloat type and Numba's JIT refuses inline asm, so the
instruction comes from a small function in textual IR (``_DPBF16_IR``) that takes
``<16 x i32>`` and bitcasts to ``<32 x bfloat>`` for ``llvm.x86.avx512bf16.dpbf16ps.512``;
the intrinsic parses it (``llvmlite.binding.parse_assembly``) and links it into the
calling kernel's library. Its linkage is ``weak_odr``: kept when linked in before any
caller exists (``linkonce_odr`` is dropped then, and the call jumps to address 0) and
merged when several libraries carry it. ``alwaysinline`` puts the instruction in the tile.

Every kernel here (and every kernel above them, gemm_bf16.py and interaction_bf16.py)
takes the *form* of the instruction as its last argument, a :class:`Dpbf16`:

    VDPBF16PS   the instruction itself (AVX512-BF16: Cooper Lake, Sapphire Rapids, Zen 4)
    EMULATED    the same arithmetic in portable vector IR, for any x86-64 CPU: each lane's
                pair widened to fp32 (a shift or a mask: exact) and two ``llvm.fma`` in
                the instruction's order, acc = fma(a.hi, b.hi, acc), then
                acc = fma(a.lo, b.lo, acc) (Intel's pseudo-code adds bf16 2j + 1's
                product first; measured so on Sapphire Rapids). A product of two bf16
                values is exact in fp32, so each step rounds once, as the instruction
                does. LLVM legalises the <16 x float> operations for AVX-512 or as pairs
                of AVX2 registers (where the tile spills, as the fp32 tile does)

The form is a Numba type (``Dpbf16Type``), so each form is its own compiled (and cached)
specialisation of every kernel, and the IR builder picks the instruction or its
emulation when the tile is generated: one generator, two kernels. The registry holds
them as two versions of each op (``v1``: VDPBF16PS, ``v1-emu``: EMULATED); the default
is the instruction where :func:`has_avx512_bf16`, the emulation elsewhere.

Where the two forms differ (measured on Sapphire Rapids, tests/test_gemm_bf16.py):
vdpbf16ps ignores MXCSR, treats denormal inputs (bf16 values below 2^-126 in magnitude,
a denormal fp32 accumulator) as zero and flushes the denormal result of either of its
two steps to zero (DAZ, FTZ); the FMAs keep denormals. So 2^-133 x 2^100 is 0 against
2^-33, 2^-70 x 2^-70 is 0 against 2^-140, and a pair whose first product (2^-140) is
flushed before the second (2^-126) is added gives 2^-126 against 2^-126 + 2^-140. A
denormal product added to a normal partial sum counts in both. Elsewhere, on normal
range values, the two agree bit for bit (the tests compare every kernel; a model's
values are far from 2^-126); overflow gives Inf in both, and NaN results agreed in
every case tried (not guaranteed: LLVM may swap an FMA's factors, and x86 returns the
first NaN operand's payload).

Compiling VDPBF16PS for a CPU without AVX512-BF16 is refused when the kernel is typed
(LLVM would abort the process), and :func:`require_avx512_bf16` gives the same one-line
error before a registered ``v1`` entry runs. Under NUMBA_DISABLE_JIT :func:`tile` runs
in NumPy (float64 sums, either form).
"""

from __future__ import annotations

import functools

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import codegen as numba_codegen
from numba.core.errors import TypingError
from numba.core.imputils import lower_constant
from numba.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox

from ..bf16 import merge_bits, round_bits
from ..jit import jit_serial
from .tile import _accumulate, _declare, _fold_and_store, _splat, _vector_intrinsics

MR = 6  # rows of C per tile: 24 accumulators + 4 B vectors + 1 broadcast of 32 zmm
NR = 64  # columns of C per tile: 4 vectors of 16 floats
_LANES = 16
_Q = NR // _LANES

_i1 = ir.IntType(1)
_i16 = ir.IntType(16)
_i32 = ir.IntType(32)
_i64 = ir.IntType(64)
_f32 = ir.FloatType()
_vf = ir.VectorType(_f32, _LANES)
_vi = ir.VectorType(_i32, _LANES)
_vmask = ir.VectorType(_i1, _LANES)
_vi64 = ir.VectorType(_i64, _LANES)

_DPBF16 = "numbadlrm_dpbf16ps_512"
_DPBF16_IR = f"""
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)

define weak_odr <16 x float> @{_DPBF16}(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {{
  %pa = bitcast <16 x i32> %a to <32 x bfloat>
  %pb = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %pa, <32 x bfloat> %pb)
  ret <16 x float> %r
}}

attributes #0 = {{ alwaysinline nounwind }}
"""  # noqa: E501


def _feature_on(features: str, name: str) -> bool:
    """True if the LLVM feature string ("+avx2,-avx512f,...") turns ``name`` on (the last
    mention wins, as in LLVM)."""
    on = False
    for item in features.split(","):
        item = item.strip()
        if item[1:] == name and item[:1] in "+-":
            on = item[0] == "+"
    return on


@functools.cache
def has_avx512_bf16() -> bool:
    """True if vdpbf16ps can run in this process's kernels: this CPU has AVX512-BF16
    (LLVM's host feature "avx512bf16") and so has the CPU Numba compiles for, whose
    features are NUMBA_CPU_FEATURES when set (NUMBA_CPU_NAME=generic: none), else the
    host's (none of AVX's with NUMBA_ENABLE_AVX=0), as numba.core.codegen passes them to
    LLVM. NUMBA_CPU_NAME alone keeps the host's features (LLVM still emits AVX-512 for
    them), so it changes nothing here; ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=<its
    features>`` compiles and runs the emulated kernels for AVX2 on any newer CPU."""
    if not llvm.get_host_cpu_features().get("avx512bf16", False):
        return False
    target = numba.config.CPU_FEATURES
    if target is None:
        target = numba_codegen.get_host_cpu_features()
    return _feature_on(target, "avx512bf16")


def require_avx512_bf16() -> None:
    """Raise a one-line RuntimeError where vdpbf16ps cannot run (see has_avx512_bf16)."""
    if not has_avx512_bf16():
        raise RuntimeError(_NO_VDPBF16PS.format(cpu=llvm.get_host_cpu_name()))


_NO_VDPBF16PS = (
    "bf16 kernel version v1 needs a CPU with AVX512-BF16 (vdpbf16ps); this one ({cpu}) "
    "has none: use the emulated version v1-emu (the default on this CPU)"
)


class Dpbf16:
    """The form of vdpbf16ps a bf16 kernel is generated with (the module docstring):
    :data:`VDPBF16PS` or :data:`EMULATED`, passed as the kernels' last argument, and
    registered as the ops' versions ``version``."""

    def __init__(self, emulated: bool, version: str, what: str):
        self.emulated, self.version, self.what = emulated, version, what

    @property
    def is_default(self) -> bool:
        """True for the form the registry's defaults use in this process."""
        return self is default_dot()

    def require(self) -> None:
        """RuntimeError (one line) if this form cannot run here (VDPBF16PS without
        AVX512-BF16)."""
        if not self.emulated:
            require_avx512_bf16()

    def bind(self, kernel):
        """A registry entry: ``kernel(*args, self)`` after :meth:`require`."""

        def entry(*args):
            self.require()
            return kernel(*args, self)

        entry.__name__ = entry.__qualname__ = f"{kernel.__name__}[{self.version}]"
        entry.__doc__ = kernel.__doc__
        return entry

    def __repr__(self) -> str:
        return "EMULATED" if self.emulated else "VDPBF16PS"


class Dpbf16Type(types.Dummy):
    """Numba's type of a :class:`Dpbf16`: one type per form, so each form compiles (and
    caches) apart and the IR builders read ``emulated`` off the signature."""

    def __init__(self, emulated: bool):
        self.emulated = emulated
        super().__init__(f"dpbf16({'emulated' if emulated else 'vdpbf16ps'})")


VDPBF16PS = Dpbf16(False, "v1", "vdpbf16ps")
EMULATED = Dpbf16(True, "v1-emu", "emulated-vdpbf16ps (2 fp32 FMAs)")
DOTS = (VDPBF16PS, EMULATED)


def default_dot() -> Dpbf16:
    """VDPBF16PS where it can run (:func:`has_avx512_bf16`), else EMULATED."""
    return VDPBF16PS if has_avx512_bf16() else EMULATED


@typeof_impl.register(Dpbf16)
def _typeof_dpbf16(value, c):
    return Dpbf16Type(value.emulated)


register_model(Dpbf16Type)(models.OpaqueModel)  # no data: the type is the information


@unbox(Dpbf16Type)
def _unbox_dpbf16(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


@lower_constant(Dpbf16Type)
def _constant_dpbf16(context, builder, typ, value):
    return context.get_dummy_value()


def _form(dot) -> bool:
    """``emulated`` of an intrinsic's Dpbf16Type argument; a TypingError where the
    instruction cannot run (compiling it would abort the process inside LLVM)."""
    if not isinstance(dot, Dpbf16Type):
        raise TypingError(f"expected a Dpbf16 (microkernel_bf16.DOTS), got {dot}")
    if not dot.emulated and not has_avx512_bf16():
        raise TypingError(_NO_VDPBF16PS.format(cpu=llvm.get_host_cpu_name()))
    return dot.emulated


def _dpbf16(context, builder: ir.IRBuilder, emulated: bool = False) -> ir.Function:
    """``acc = f(acc, a, b)`` on <16 x float> and two <16 x i32>, declared in the module of
    the kernel being compiled: vdpbf16ps (the textual-IR wrapper, linked into the
    kernel's library) or, if ``emulated``, :func:`_emulated_dpbf16`."""
    if emulated:
        return _emulated_dpbf16(builder.module)
    if _DPBF16 not in builder.module.globals:
        module = llvm.parse_assembly(_DPBF16_IR)
        module.verify()
        context.active_code_library.add_llvm_module(module)
    return _declare(builder.module, _DPBF16, ir.FunctionType(_vf, [_vf, _vi, _vi]))


_DPBF16_EMU = "numbadlrm_dpbf16ps_512_emulated"


def _emulated_dpbf16(module: ir.Module) -> ir.Function:
    """vdpbf16ps in portable IR, an internal always-inlined function of ``module``: lane j
    of a and b holds bf16 2j (low half) and 2j + 1 (high half); each widened to fp32
    exactly (the high half masked, the low half shifted up), then

        acc = fma(a.hi, b.hi, acc);  acc = fma(a.lo, b.lo, acc)

    the instruction's order, one rounding per product (each exact in fp32). No DAZ/FTZ
    (the module docstring)."""
    existing = module.globals.get(_DPBF16_EMU)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(_vf, [_vf, _vi, _vi]), _DPBF16_EMU)
    fn.linkage = "internal"
    fn.attributes.add("alwaysinline")
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    acc, a, w = fn.args
    _, _, fma = _vector_intrinsics(module)

    def halves(v):  # (high bf16, low bf16) of each lane as fp32
        high = b.bitcast(b.and_(v, _c32v(-0x10000)), _vf)
        return high, b.bitcast(b.shl(v, _c32v(16)), _vf)

    (a_hi, a_lo), (w_hi, w_lo) = halves(a), halves(w)
    b.ret(b.call(fma, [a_lo, w_lo, b.call(fma, [a_hi, w_hi, acc])]))
    return fn


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


# ------------------------------------------------------------------ tile epilogue
_vh16 = ir.VectorType(_i16, _LANES)


def _c32v(value: int) -> ir.Constant:
    return ir.Constant(_vi, [value] * _LANES)


def _round_bf16_vec(builder, v):
    """<16 x i16> bf16 bits of <16 x float> v: kernels/bf16.py's rounding on 16 lanes."""
    return round_bits(builder, v, _vi, _vh16)


def _h16_intrinsics(module):
    hptr = _i16.as_pointer()
    mload = _declare(
        module, "llvm.masked.load.v16i16.p0", ir.FunctionType(_vh16, [hptr, _i32, _vmask, _vh16])
    )
    mstore = _declare(
        module,
        "llvm.masked.store.v16i16.p0",
        ir.FunctionType(ir.VoidType(), [_vh16, hptr, _i32, _vmask]),
    )
    return mload, mstore


def _epilogue(builder, sums, m, n, mr, out):
    """Row r < m, columns < n of the tile: v = sums (+ bias) (ReLU) (* [x16 > 0]), then
    stored as fp32 and/or rounded to bf16; ``out`` holds the epilogue's intp arguments
    (addresses 0 when absent)."""
    c, ldc, c16, ldc16, bias, relu, mask, ldmask = out
    mload, mstore, _ = _vector_intrinsics(builder.module)
    hload, hstore = _h16_intrinsics(builder.module)
    zero, hzero = ir.Constant(_vf, [0.0] * _LANES), ir.Constant(_vh16, [0] * _LANES)
    a4, a2 = ir.Constant(_i32, 4), ir.Constant(_i32, 2)
    nil = ir.Constant(_i64, 0)
    n_vec = _splat(builder, n, _vi64)
    lanes = [
        builder.icmp_signed("<", ir.Constant(_vi64, [_LANES * q + i for i in range(_LANES)]), n_vec)
        for q in range(_Q)
    ]
    has = {
        k: builder.icmp_signed("!=", v, nil) for k, v in (("c", c), ("c16", c16), ("mask", mask))
    }
    biases = []
    bias_p = builder.inttoptr(
        builder.select(builder.icmp_signed("!=", bias, nil), bias, c), _f32.as_pointer()
    )
    for q in range(_Q):  # zero when there is no bias (its pointer is then never read)
        ptr = builder.gep(bias_p, [ir.Constant(_i64, _LANES * q)])
        use = builder.and_(lanes[q], _splat(builder, builder.icmp_signed("!=", bias, nil), _vmask))
        biases.append(builder.call(mload, [ptr, a4, use, zero]))
    relu_on = builder.icmp_signed("!=", relu, nil)
    cp, hp = builder.inttoptr(c, _f32.as_pointer()), builder.inttoptr(c16, _i16.as_pointer())
    xp = builder.inttoptr(mask, _i16.as_pointer())
    for r in range(mr):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, r), m)):
            row = ir.Constant(_i64, r)
            for q in range(_Q):
                col = ir.Constant(_i64, _LANES * q)
                v = builder.fadd(sums[r * _Q + q], biases[q])
                positive = builder.fcmp_ordered(">", v, zero)
                v = builder.select(relu_on, builder.select(positive, v, zero), v)
                x_ptr = builder.gep(xp, [builder.add(builder.mul(row, ldmask), col)])
                use = builder.and_(lanes[q], _splat(builder, has["mask"], _vmask))
                x = builder.call(hload, [x_ptr, a2, use, hzero])
                keep = builder.and_(
                    builder.icmp_signed(">", x, hzero),
                    builder.icmp_signed("<", x, ir.Constant(_vh16, [0x7F81] * _LANES)),
                )
                v = builder.select(has["mask"], builder.select(keep, v, zero), v)
                with builder.if_then(has["c"]):
                    ptr = builder.gep(cp, [builder.add(builder.mul(row, ldc), col)])
                    builder.call(mstore, [v, ptr, a4, lanes[q]])
                with builder.if_then(has["c16"]):
                    ptr = builder.gep(hp, [builder.add(builder.mul(row, ldc16), col)])
                    builder.call(hstore, [_round_bf16_vec(builder, v), ptr, a2, lanes[q]])


def _sgd_epilogue(builder, sums, m, n, mr, w_hi, w_lo, ldw, lr, packs):
    """Rows r < m, columns < n: split-SGD of W (w_hi, w_lo halves) with the gradient tile
    sums: w = (hi << 16) | lo;  w = fma(-lr, g, w);  hi, lo = w >> 16, w & 0xFFFF, the
    arithmetic of kernels/bf16.py's split_sgd_update on 16 lanes (bit for bit); then the
    new bf16 weights into W's packings (``_repack_tile``) when ``packs`` name them."""
    _, _, fma = _vector_intrinsics(builder.module)
    hload, hstore = _h16_intrinsics(builder.module)
    hzero = ir.Constant(_vh16, [0] * _LANES)
    a2 = ir.Constant(_i32, 2)
    n_vec = _splat(builder, n, _vi64)
    lanes = [
        builder.icmp_signed("<", ir.Constant(_vi64, [_LANES * q + i for i in range(_LANES)]), n_vec)
        for q in range(_Q)
    ]
    neg_lr = _splat(builder, builder.fneg(lr), _vf)
    hp, lp = builder.inttoptr(w_hi, _i16.as_pointer()), builder.inttoptr(w_lo, _i16.as_pointer())
    new_his = {}
    for r in range(mr):  # masked per lane and row (no branch: the values feed the packing)
        row_ok = _splat(builder, builder.icmp_signed("<", ir.Constant(_i64, r), m), _vmask)
        for q in range(_Q):
            use = builder.and_(lanes[q], row_ok)
            at = builder.add(builder.mul(ir.Constant(_i64, r), ldw), ir.Constant(_i64, _LANES * q))
            hi_ptr, lo_ptr = builder.gep(hp, [at]), builder.gep(lp, [at])
            hi = builder.call(hload, [hi_ptr, a2, use, hzero])
            lo = builder.call(hload, [lo_ptr, a2, use, hzero])
            w = merge_bits(builder, hi, lo, _vi, _vf)
            bits = builder.bitcast(builder.call(fma, [neg_lr, sums[r * _Q + q], w]), _vi)
            new_hi = builder.trunc(builder.lshr(bits, _c32v(16)), _vh16)
            builder.call(hstore, [new_hi, hi_ptr, a2, use])
            builder.call(hstore, [builder.trunc(bits, _vh16), lo_ptr, a2, use])
            new_his[r, q] = builder.select(use, new_hi, hzero)  # zero past n and m
    _repack_tile(builder, new_his, m, n, mr, packs)


def _repack_tile(builder, his, m, n, mr, packs):
    """Write the tile's new bf16 weights (rows ii + r < ii + m, columns jj + c < jj + n
    of W (O, I)) into W's two packings (pack_bf16.py), so no repacking pass is needed.

    data (pack_cols(W), pairs of W's rows): rows 2s and 2s + 1 of the tile (ii is even)
        are one uint32 vector per 16 columns at ``wd + 4 (s 64 + 16 q)``: a contiguous
        store (a last row without a partner, O odd, pairs with zero)
    forward (pack_rows(W), pairs of W's columns): row o = ii + r is lane o % 64 of panel
        o // 64; each pair of columns (jj + 2t, jj + 2t + 1) is one uint32 at
        ``wf + 4 ((o // 64) pairs_f 64 + (jj / 2 + t) 64 + o % 64)``: stored one by one
    ``packs`` = (wd, wf, pairs_f, ii, jj): addresses (0: that packing is not written)."""
    wd, wf, pairs_f, ii, jj = packs
    nil, one = ir.Constant(_i64, 0), ir.Constant(_i64, 1)
    i32p = _i32.as_pointer()
    _, mstore32 = _i32_vector_store(builder.module)
    n_vec = _splat(builder, n, _vi64)
    lanes = [
        builder.icmp_signed("<", ir.Constant(_vi64, [_LANES * q + i for i in range(_LANES)]), n_vec)
        for q in range(_Q)
    ]
    with builder.if_then(builder.icmp_signed("!=", wd, nil)):
        dp = builder.inttoptr(wd, i32p)
        for s in range(0, mr, 2):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, s), m)):
                pair = builder.icmp_signed("<", ir.Constant(_i64, s + 1), m)
                for q in range(_Q):
                    low = builder.zext(his[s, q], _vi)
                    high = builder.zext(his[s + 1, q], _vi) if s + 1 < mr else None
                    value = (
                        low
                        if high is None
                        else builder.select(
                            pair, builder.or_(low, builder.shl(high, _c32v(16))), low
                        )
                    )
                    ptr = builder.gep(dp, [ir.Constant(_i64, (s // 2) * NR + _LANES * q)])
                    builder.call(mstore32, [value, ptr, ir.Constant(_i32, 4), lanes[q]])
    with builder.if_then(builder.icmp_signed("!=", wf, nil)):
        fp = builder.inttoptr(wf, i32p)
        half_j = builder.ashr(jj, one)
        for r in range(mr):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, r), m)):
                o = builder.add(ii, ir.Constant(_i64, r))
                panel = builder.mul(builder.ashr(o, ir.Constant(_i64, 6)), pairs_f)
                lane = builder.and_(o, ir.Constant(_i64, NR - 1))
                base = builder.add(
                    builder.mul(builder.add(panel, half_j), ir.Constant(_i64, NR)), lane
                )
                for q in range(_Q):
                    words = builder.bitcast(his[r, q], ir.VectorType(_i32, _LANES // 2))
                    for t in range(_LANES // 2):
                        col = ir.Constant(_i64, _LANES * q + 2 * t)
                        with builder.if_then(builder.icmp_signed("<", col, n)):
                            at = builder.add(base, ir.Constant(_i64, (8 * q + t) * NR))
                            word = builder.extract_element(words, ir.Constant(_i32, t))
                            builder.store(word, builder.gep(fp, [at]), align=4)


def _i32_vector_store(module):
    ip = _i32.as_pointer()
    mload = _declare(
        module, "llvm.masked.load.v16i32.p0", ir.FunctionType(_vi, [ip, _i32, _vmask, _vi])
    )
    mstore = _declare(
        module,
        "llvm.masked.store.v16i32.p0",
        ir.FunctionType(ir.VoidType(), [_vi, ip, _i32, _vmask]),
    )
    return mload, mstore


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
