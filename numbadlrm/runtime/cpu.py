"""The CPU the kernels are compiled for: its LLVM name, its features and its SIMD level.

Numba compiles every kernel for one target: LLVM's name for the host CPU ("skylake-avx512",
"znver1", ...) and its feature list ("+avx2,+fma,-avx512f,..."), unless the environment
variables NUMBA_CPU_NAME and NUMBA_CPU_FEATURES name others (a portable cache, or another
CPU emulated on this one: NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=<haswell's features>
on an AVX-512 machine compiles AVX2 code). The kernels that write vector code themselves
(kernels/gemm/tile.py) size it for that same target, never for the silicon behind it, so
:func:`target` reads the CPU exactly as Numba's code generator does; a kernel built for a
wider ISA than the code generator's would not compile, and one built for a narrower ISA
would leave registers idle.

An :class:`Isa` is what a register-blocked kernel needs to know of the vector unit:

    name     lanes  registers  fma  masked  when
    avx512   16     32         yes  yes     +avx512f (x86-64)
    avx2     8      16         yes  yes     +avx2 and +fma (x86-64)
    neon     4      32         yes  no      aarch64
    vec128   4      16         no   no      any other CPU (x86-64 without AVX2: SSE2):
                                            the portable fallback

lanes: float32 per vector register; registers: vector registers the code generator may
use; fma: a fused multiply-add instruction (without one, a multiply and an add need a
temporary register); masked: native masked vector loads and stores (vmaskmovps, or AVX-512
mask registers), used at the edges of a tile. An SVE or RISC-V V machine needs a row here
and nothing else.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import llvmlite.binding as llvm
import numba
from numba.core import codegen


@dataclass(frozen=True)
class Isa:
    """The vector unit a kernel is generated for (see the module docstring)."""

    name: str
    lanes: int  # float32 lanes per vector register
    registers: int  # vector registers
    fma: bool  # fused multiply-add instruction
    masked: bool  # native masked loads and stores
    arch: str  # "x86_64", "aarch64", or "any" (the fallback)
    requires: tuple[str, ...] = ()  # LLVM features it needs on that arch

    def __str__(self) -> str:
        fma = "FMA" if self.fma else "no FMA"
        return f"{self.name} ({self.lanes} x fp32 lanes, {self.registers} registers, {fma})"


ISAS = {
    isa.name: isa
    for isa in (
        Isa("avx512", 16, 32, True, True, "x86_64", ("avx512f",)),
        Isa("avx2", 8, 16, True, True, "x86_64", ("avx2", "fma")),
        Isa("neon", 4, 32, True, False, "aarch64", ("neon",)),
        Isa("vec128", 4, 16, False, False, "any"),
    )
}
FALLBACK = ISAS["vec128"]  # any CPU not matched above: 128-bit vectors, 16 registers


@dataclass(frozen=True)
class Cpu:
    """The code generator's target: LLVM's CPU name, its enabled features, its ISA."""

    name: str
    features: frozenset[str]
    arch: str
    isa: Isa
    overridden: bool  # NUMBA_CPU_NAME or NUMBA_CPU_FEATURES chose it, not the host

    def describe(self) -> str:
        """One line for bench headers, e.g. "sapphirerapids, ISA avx512 (16 x fp32 ...)"."""
        how = " (set by NUMBA_CPU_NAME / NUMBA_CPU_FEATURES)" if self.overridden else ""
        return f"{self.name}{how}, ISA {self.isa}"


def enabled(features: str) -> frozenset[str]:
    """The names switched on in an LLVM feature string: "+avx2,-avx512f" -> {"avx2"}."""
    return frozenset(f[1:] for f in features.split(",") if f.startswith("+"))


def normalized_arch(machine: str) -> str:
    """ "x86_64" or "aarch64" from a machine name or triple ("AMD64", "arm64-apple-...")."""
    machine = machine.split("-")[0].lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    return machine


def isa_of(arch: str, features: frozenset[str]) -> Isa:
    """The widest ISA of :data:`ISAS` that exists on ``arch`` with these features."""
    for isa in ISAS.values():  # widest first
        if isa.arch == arch and set(isa.requires) <= features:
            return isa
    return FALLBACK


def runs_here(isa: Isa, cpu: Cpu) -> bool:
    """Whether code for ``isa`` compiles for, and runs on, the target ``cpu``."""
    return isa.arch in (cpu.arch, "any") and set(isa.requires) <= cpu.features


def target() -> Cpu:
    """The CPU Numba compiles for, read as Numba's code generator reads it: NUMBA_CPU_NAME
    and NUMBA_CPU_FEATURES when set, else LLVM's host CPU name and features (with Numba's
    own adjustments, e.g. NUMBA_ENABLE_AVX=0)."""
    name = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    if numba.config.CPU_FEATURES is not None:
        features = numba.config.CPU_FEATURES
    else:
        features = codegen.get_host_cpu_features()
    arch = normalized_arch(llvm.get_process_triple() or platform.machine())
    on = enabled(features)
    overridden = numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None
    return Cpu(name, on, arch, isa_of(arch, on), overridden)
