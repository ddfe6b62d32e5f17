"""The fp32 GEMM tile on every ISA of its table, including those this machine cannot run.

Each ISA's tile (kernels/gemm/tile.py) is compiled by llvmlite for that ISA's target (x86-64
with AVX-512, with AVX2 as on Haswell and Zen 1, with SSE2 only, and aarch64 with NEON), and
its k loop's machine code is read: the accumulators must stay in registers, so the loop
may not touch the stack (no spill, no reload). Then runtime/cpu.py: the ISA follows the
features Numba compiles for, NUMBA_CPU_NAME / NUMBA_CPU_FEATURES included, and the AVX2
tile passes the GEMM checks when Numba compiles for Haswell on this machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import llvmlite.binding as llvm
import pytest

from numbadlrm.kernels.gemm import tile
from numbadlrm.runtime import cpu

llvm.initialize_all_targets()
llvm.initialize_all_asmprinters()

HASWELL_FEATURES = (
    "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+fsgsbase,+fxsr,+invpcid,"
    "+lzcnt,+mmx,+movbe,+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,"
    "+ssse3,+xsave,+xsaveopt,-avx512f"
)
X86 = "x86_64-unknown-linux-gnu"
TARGETS = [  # (ISA, triple, LLVM cpu name, features)
    ("avx512", X86, "skylake-avx512", ""),
    ("avx512", X86, "znver4", ""),
    ("avx2", X86, "haswell", ""),
    ("avx2", X86, "znver1", ""),
    ("vec128", X86, "x86-64", ""),
    ("neon", "aarch64-unknown-linux-gnu", "generic", "+neon"),
    ("neon", "aarch64-unknown-linux-gnu", "neoverse-n1", ""),
]
STACK = {"x86": re.compile(r"\(%rsp|\(%rbp"), "aarch64": re.compile(r"\[sp|\[x29")}
MULTIPLY = re.compile(r"\b(vfmadd\d+ps|mulps|fmla)\b")
BRANCH = re.compile(r"^\s+(j\w+|b\.\w+|b|cbnz|cbz)\s+(?:\w+,\s*)*(\.?L\w+)\s*$")


def assembly(shape: tile.TileShape, triple: str, cpu_name: str, features: str) -> str:
    """The tile (tile.tile_module) optimised as Numba would (O3) and compiled for a target."""
    try:
        target = llvm.Target.from_triple(triple)
    except RuntimeError as exc:
        pytest.skip(f"this llvmlite has no {triple} target: {exc}")
    machine = target.create_target_machine(cpu=cpu_name, features=features, opt=3)
    module = llvm.parse_assembly(str(tile.tile_module(shape, triple)))
    module.verify()
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(3))
    builder.getModulePassManager().run(module, builder)
    return machine.emit_assembly(module)


def single_block_loops(asm: str) -> list[list[str]]:
    """Loops of one basic block: a label, its instructions, a branch back to the label."""
    loops, label, start = [], None, 0
    lines = asm.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"^(\.?L\w+):", line):
            label, start = m.group(1), i
        elif (m := BRANCH.match(line)) and m.group(2) == label:
            loops.append(lines[start : i + 1])
    return loops


@pytest.mark.parametrize(("isa", "triple", "cpu_name", "features"), TARGETS)
def test_the_k_loop_never_touches_the_stack(isa, triple, cpu_name, features):
    shape = tile.shape_for(cpu.ISAS[isa])
    asm = assembly(shape, triple, cpu_name, features)
    stack = STACK["aarch64" if triple.startswith("aarch64") else "x86"]
    loops = single_block_loops(asm)
    full = [lp for lp in loops if sum(bool(MULTIPLY.search(x)) for x in lp) == shape.mr * shape.nv]
    assert full, f"no k loop of {shape.mr * shape.nv} multiplies in the {shape} tile:\n{asm}"
    # every loop of one block: the full tile's, and on AVX2 / AVX-512 the edges' too (their
    # masked loads are instructions there; elsewhere LLVM expands them into branches)
    for loop in loops:
        spills = [x for x in loop if stack.search(x)]
        assert not spills, f"{shape} tile for {cpu_name}: the k loop spills\n" + "\n".join(loop)
    assert "fmaf" not in asm  # no libm call for a multiply-add without an FMA instruction
    if isa == "avx2":
        assert "vmaskmovps" in asm  # the edges' masked loads and stores legalise natively
    if isa == "avx512":
        assert "{%k" in asm


@pytest.mark.parametrize("isa", list(cpu.ISAS.values()), ids=str)
def test_every_tile_fits_its_register_file(isa):
    shape = tile.shape_for(isa)
    assert shape.registers(isa.fma) <= isa.registers, (isa, shape)
    assert shape.lanes == isa.lanes


def test_the_isa_follows_the_features():
    assert cpu.isa_of("x86_64", cpu.enabled("+avx2,+fma,+avx512f")).name == "avx512"
    assert cpu.isa_of("x86_64", cpu.enabled(HASWELL_FEATURES)).name == "avx2"
    assert cpu.isa_of("x86_64", cpu.enabled("+avx2,-fma")).name == "vec128"
    assert cpu.isa_of("x86_64", frozenset()).name == "vec128"
    assert cpu.isa_of("aarch64", cpu.enabled("+neon,+fp-armv8")).name == "neon"
    assert cpu.isa_of("ppc64le", frozenset({"altivec"})) is cpu.FALLBACK
    assert cpu.normalized_arch("arm64-apple-darwin") == "aarch64"
    target = cpu.target()
    assert target.isa.name in cpu.ISAS and target.name in target.describe()
    assert cpu.runs_here(target.isa, target) and cpu.runs_here(cpu.FALLBACK, target)
    assert tile.SHAPE == tile.shape_for(target.isa)


def _run(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_numba_cpu_overrides_choose_the_tile(tmp_path):
    """NUMBA_CPU_NAME / NUMBA_CPU_FEATURES move Numba's code generator and the tile
    together: Haswell's features give the AVX2 tile, and where this CPU can run AVX2 code
    the v4 GEMM compiled for Haswell passes its checks."""
    env = {
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": HASWELL_FEATURES,
        "NUMBA_CACHE_DIR": str(tmp_path),
    }
    code = "from numbadlrm.kernels.gemm import tile; print(tile.TARGET.isa.name, tile.SHAPE)"
    assert _run(code, env).split() == ["avx2", "6x16"]
    if not cpu.runs_here(cpu.ISAS["avx2"], cpu.target()):
        pytest.skip("this CPU cannot run AVX2 code")
    checks = (
        "from numbadlrm.kernels.checks import ops\n"
        "for op in ('linear_forward', 'linear_backward_data', 'linear_backward_weight'):\n"
        "    ops.validate(op, 'v4')\n"
        "print('checked')"
    )
    assert _run(checks, env).strip() == "checked"
