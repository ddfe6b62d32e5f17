"""vdpbf16ps (AVX512-BF16) for the bf16 tiles, its emulation, and the CPU check.

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
from llvmlite import ir
from numba import types
from numba.core import codegen as numba_codegen
from numba.core.errors import TypingError
from numba.core.imputils import lower_constant
from numba.extending import NativeValue, models, register_model, typeof_impl, unbox

from .llvm_ir import _declare, _vector_intrinsics

_LANES = 16  # floats in a 512-bit vector
# the bf16 tile's shape (tile_bf16.py), shared by its epilogues and the packing
MR = 6  # rows of C per tile: 24 accumulators + 4 B vectors + 1 broadcast of 32 zmm
NR = 64  # columns of C per tile: 4 vectors of 16 floats
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
        high = b.bitcast(b.and_(v, _i32_splat(-0x10000)), _vf)
        return high, b.bitcast(b.shl(v, _i32_splat(16)), _vf)

    (a_hi, a_lo), (w_hi, w_lo) = halves(a), halves(w)
    b.ret(b.call(fma, [a_lo, w_lo, b.call(fma, [a_hi, w_hi, acc])]))
    return fn


def _i32_splat(value: int) -> ir.Constant:
    return ir.Constant(_vi, [value] * _LANES)
