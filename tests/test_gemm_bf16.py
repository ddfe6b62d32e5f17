"""bf16 linear-layer GEMMs (kernels/gemm/bf16.py on the vdpbf16ps tile) against NumPy.

Tolerance. The oracle rounds the inputs to bf16 (the kernels' inputs), then multiplies in
float64, so its own error is negligible. A product of two bf16 values (8-bit
significands) is exact in fp32, so the kernels' only errors are the fp32 additions: K
terms summed in any order (vdpbf16ps adds two products per step, lanes in parallel) are
off by at most about K eps32 sum_k |a_k b_k| (the standard bound gamma_K, eps32 = 2^-24
for round to nearest), plus one rounding for the bias add. Each entry is checked against
``(K + 2) eps32 (|A| @ |B| + |b|)``. A lost pair, a wrong k or a misplaced column is off
by ~|a_k b_k|, far above that. The bf16 outputs must be exactly the rounded fp32 ones.

These run on any x86-64 CPU: the kernels take vdpbf16ps's form (the instruction, or its
emulation by two fp32 FMAs, the default without AVX512-BF16). Where the CPU has the
instruction, the emulation is compared with it bit for bit (and the denormal inputs
and results where the two differ are shown); elsewhere those comparisons skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from numbadlrm import reference
from numbadlrm.config import pair_indices
from numbadlrm.kernels import registry
from numbadlrm.kernels.gemm import bf16 as kg
from numbadlrm.kernels.gemm import dpbf16
from numbadlrm.kernels.gemm import pack_bf16 as kp
from numbadlrm.kernels.gemm import tile_bf16 as mk
from numbadlrm.layers import bf16

needs_vdpbf16ps = pytest.mark.skipif(
    not dpbf16.has_avx512_bf16(), reason="this CPU has no AVX512-BF16 (vdpbf16ps)"
)
# both forms of the instruction; the hardware one only where the CPU has it
DOTS = [
    pytest.param(dpbf16.VDPBF16PS, id="vdpbf16ps", marks=needs_vdpbf16ps),
    pytest.param(dpbf16.EMULATED, id="emulated"),
]
EPS = 2.0**-24
# (B, I, O): tails of MR = 6 rows and NR = 64 columns, odd K, K = 1, O = 1 (the logit
# path), narrow I with wide O (the weight pass's transposed form), few rows (column tasks)
SHAPES = [
    (1, 1, 1),
    (7, 13, 17),
    (6, 64, 64),
    (13, 1, 65),
    (129, 100, 64),
    (9, 259, 261),
    (33, 150, 1),
    (40, 13, 130),
    (200, 31, 7),
    (3, 20, 1030),
]


def rounded(rng, shape, scale=1.0) -> np.ndarray:
    return reference.bf16_round((scale * rng.standard_normal(shape)).astype(np.float32))


def value(h: np.ndarray) -> np.ndarray:
    return reference.bf16_to_f32(h).astype(np.float64)


def make(rng, B, I, O):
    x16 = reference.bf16_round(np.maximum(rng.standard_normal((B, I)), 0).astype(np.float32))
    return (
        x16,
        rounded(rng, (O, I)),
        rng.standard_normal(O).astype(np.float32),
        rounded(rng, (B, O)),
    )


def assert_close(got, want, bound, what):
    err = np.abs(got.astype(np.float64) - want)
    assert np.isfinite(got).all(), f"{what}: non-finite output"
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"{what}: error {err[worst]:.3e} > bound {bound[worst]:.3e}"


@pytest.mark.parametrize("B, I, O", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_forward(threads, B, I, O, relu):
    rng = np.random.default_rng(B * I + O)
    x16, w16, b, _ = make(rng, B, I, O)
    y, y16 = bf16.linear_forward(x16, bf16.pack_weight(w16), b, relu, out="both")
    want = reference.linear_forward(value(x16), value(w16), b.astype(np.float64), relu)[0]
    bound = (I + 2) * EPS * (np.abs(value(x16)) @ np.abs(value(w16)).T + np.abs(b))
    assert_close(y, want, bound, "y")
    np.testing.assert_array_equal(y16, reference.bf16_round(y))


@pytest.mark.parametrize("B, I, O", SHAPES)
@pytest.mark.parametrize("mask", [False, True])
def test_backward_data(threads, B, I, O, mask):
    rng = np.random.default_rng(B + I * O)
    x16, w16, _, dz16 = make(rng, B, I, O)
    dx, dx16 = bf16.linear_backward_data(dz16, bf16.pack_weight(w16), x16 if mask else None, "both")
    want = value(dz16) @ value(w16)
    if mask:
        want *= value(x16) > 0
    bound = (O + 2) * EPS * (np.abs(value(dz16)) @ np.abs(value(w16)))
    assert_close(dx, want, bound, "dx")
    np.testing.assert_array_equal(dx16, reference.bf16_round(dx))


@pytest.mark.parametrize("B, I, O", SHAPES)
def test_backward_weight(threads, B, I, O):
    rng = np.random.default_rng(B * O + I)
    x16, _, _, dz16 = make(rng, B, I, O)
    dW, db = bf16.linear_backward_weight(dz16, x16)
    bound = (B + 2) * EPS * (np.abs(value(dz16)).T @ np.abs(value(x16)))
    assert_close(dW, value(dz16).T @ value(x16), bound, "dW")
    db_bound = (B + 2) * EPS * np.abs(value(dz16)).sum(axis=0)
    assert_close(db, value(dz16).sum(axis=0), db_bound, "db")


@pytest.mark.parametrize("B, I, O", SHAPES)
def test_weight_split_sgd_is_the_weight_pass_then_split_sgd(threads, B, I, O):
    """The fused update equals dW, db from the weight pass followed by fp32 SGD, bit for
    bit (same tiles, same FMA), on W's and b's master values."""
    rng = np.random.default_rng(I + O + B)
    x16, _, _, dz16 = make(rng, B, I, O)
    w = rng.standard_normal((O, I)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    lr = np.float32(0.013)
    (w_hi, w_lo), (b_hi, b_lo) = reference.split_f32(w), reference.split_f32(b)
    bf16.linear_backward_weight_split_sgd(w_hi, w_lo, b_hi, b_lo, dz16, x16, lr)
    dW, db = bf16.linear_backward_weight(dz16, x16)
    for got, want in (
        (reference.merge_f32(w_hi, w_lo), reference.sgd_fma_f32(w, dW, lr)),
        (reference.merge_f32(b_hi, b_lo), reference.sgd_fma_f32(b, db, lr)),
    ):
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("dot", DOTS)
@pytest.mark.parametrize("tasks", [1, 3, 16])
def test_serial_and_parallel_entries_agree(threads, tasks, dot):
    """Both entries of every pass, any task count: identical bits (each element is one
    tile's sum over the whole K, whoever computes it)."""
    rng = np.random.default_rng(tasks)
    B, I, O = 50, 45, 130
    x16, w16, b, dz16 = make(rng, B, I, O)
    p = bf16.pack_weight(w16)
    outs = []
    for fwd, data, weight in (
        (kg.linear_forward, kg.linear_backward_data, kg.linear_backward_weight),
        (
            kg.linear_forward_serial,
            kg.linear_backward_data_serial,
            kg.linear_backward_weight_serial,
        ),
    ):
        y, dx = np.empty((B, O), np.float32), np.empty((B, I), np.float32)
        dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
        fwd(y, kg.NONE_U16, x16, p.forward, b, True, tasks, dot)
        data(dx, kg.NONE_U16, dz16, p.data, x16, True, tasks, dot)
        weight(dW, db, dz16, x16, tasks, dot)
        outs.append((y, dx, dW, db))
    for a, c in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, c)


def test_packing_layouts():
    """pack_rows / pack_cols: pair (k, k + 1) in the low / high half of a uint32, zeros
    past N and past an odd K."""
    S = np.arange(1, 3 * 70 + 1, dtype=np.uint16).reshape(3, 70)  # (K = 3, N = 70)
    cols = np.empty(kp.panels_shape(70, 3), np.uint32)
    kp.pack_cols(cols, S)
    rows = np.empty(kp.panels_shape(70, 3), np.uint32)
    kp.pack_rows_serial(rows, np.ascontiguousarray(S.T))
    np.testing.assert_array_equal(cols, rows)
    assert cols.shape == (2, 2, 64)
    assert cols[0, 0, 5] == S[0, 5] | (np.uint32(S[1, 5]) << 16)
    assert cols[1, 1, 69 - 64] == S[2, 69] and cols[1, 0, 6:].sum() == 0


def _tile_asm(dot) -> list[str]:
    """The machine code of a fresh compile of the tile in form ``dot`` (cached code cannot
    be inspected)."""
    fresh = numba.njit(mk.tile.py_func)
    A, P = np.zeros((mk.MR, 8), np.uint16), np.zeros((4, mk.NR), np.uint32)
    C = np.zeros((mk.MR, mk.NR), np.float32)
    fresh(8, A, 0, 16, 4, P, 0, C, 0, mk.NR, mk.MR, mk.NR, False, dot)
    return next(iter(fresh.inspect_asm().values())).splitlines()


@needs_vdpbf16ps
def test_tile_compiles_to_vdpbf16ps():
    """The micro-kernel's machine code holds vdpbf16ps: 4 MR per k pair (LLVM unrolls the
    k loop, so at least that many)."""
    asm = _tile_asm(dpbf16.VDPBF16PS)
    assert sum("vdpbf16ps" in line for line in asm) >= 4 * mk.MR


def test_emulated_tile_compiles_to_fp32_fmas():
    """The emulated tile holds no vdpbf16ps (nor any AVX512-BF16 instruction) but two
    FMAs per vdpbf16ps: 8 MR per k pair with AVX-512, twice that on AVX2's halves."""
    asm = _tile_asm(dpbf16.EMULATED)
    assert not any("vdpbf16ps" in line or "2bf16" in line for line in asm)
    assert sum("vfmadd" in line for line in asm) >= 8 * mk.MR


def test_vdpbf16ps_without_avx512_bf16_is_a_clear_error(monkeypatch):
    """Version v1 (the instruction) on a CPU without AVX512-BF16: one line naming v1-emu,
    before anything is compiled; the default there is v1-emu."""
    monkeypatch.setattr(dpbf16, "has_avx512_bf16", lambda: False)
    assert dpbf16.default_dot() is dpbf16.EMULATED
    w = bf16.pack_weight(np.zeros((2, 3), np.uint16))
    x16, b = np.zeros((4, 3), np.uint16), np.zeros(2, np.float32)
    y, y16 = np.empty((4, 2), np.float32), np.empty((4, 2), np.uint16)
    forward = registry.get("bf16_linear_forward", "v1").entry(small=True)
    with pytest.raises(RuntimeError, match=r"AVX512-BF16.*v1-emu"):
        forward(y, y16, x16, w, b, True)
    registry.get("bf16_linear_forward", "v1-emu").entry(small=True)(y, y16, x16, w, b, True)
    assert (y == 0).all()


def test_feature_strings_decide_the_default(monkeypatch):
    """has_avx512_bf16 answers for the CPU Numba compiles for: NUMBA_CPU_FEATURES'
    avx512bf16 (the last mention wins), and the host must have it too."""
    assert dpbf16._feature_on("+avx2,+avx512bf16", "avx512bf16")
    assert not dpbf16._feature_on("+avx512bf16,-avx512bf16", "avx512bf16")
    assert not dpbf16._feature_on("+avx2,+fma", "avx512bf16")
    assert not dpbf16._feature_on("", "avx512bf16")
    host = dpbf16.llvm.get_host_cpu_features().get("avx512bf16", False)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+fma,-avx512bf16")
    assert not dpbf16.has_avx512_bf16.__wrapped__()
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+fma,+avx512bf16")
    assert dpbf16.has_avx512_bf16.__wrapped__() == host


# -------------------------------------------- the emulation against the instruction


def _versions(op):
    """(hardware, emulated) versions of op: v1 and v1-emu."""
    return registry.get(op, dpbf16.VDPBF16PS.version), registry.get(op, dpbf16.EMULATED.version)


def _same_bits(a, b, what):
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=what)


@needs_vdpbf16ps
@pytest.mark.parametrize("small", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("B, I, O", SHAPES)
def test_emulation_is_vdpbf16ps_bit_for_bit(threads, B, I, O, small):
    """Every pass of v1-emu (forward with bias and ReLU, data with the mask, weight, the
    fused split-SGD with its packings) gives v1's bits on normal-range values: the
    emulation adds the two products of a pair in the instruction's order, each rounded
    once, and the kernels around it are the same code."""
    rng = np.random.default_rng(B + 7 * I + 31 * O)
    x16, w16, b, dz16 = make(rng, B, I, O)
    w = rng.standard_normal((O, I)).astype(np.float32)
    outs = []
    for version in _versions("bf16_linear_forward"):
        y, y16 = np.empty((B, O), np.float32), np.empty((B, O), np.uint16)
        version.entry(small)(y, y16, x16, bf16.pack_weight(w16), b, True)
        outs.append((y, y16))
    for version in _versions("bf16_linear_backward_data"):
        dx, dx16 = np.empty((B, I), np.float32), np.empty((B, I), np.uint16)
        version.entry(small)(dx, dx16, dz16, bf16.pack_weight(w16), x16, True)
        outs.append((dx, dx16))
    for version in _versions("bf16_linear_backward_weight"):
        dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
        version.entry(small)(dW, db, dz16, x16)
        (w_hi, w_lo), (b_hi, b_lo) = reference.split_f32(w), reference.split_f32(b)
        W = bf16.pack_weight(w_hi)
        sgd = version.extras["split_sgd_serial" if small else "split_sgd"]
        sgd(W, w_lo, b_hi, b_lo, dz16, x16, np.float32(0.05))
        outs.append((dW, db, w_hi, w_lo, b_hi, b_lo, W.forward, W.data))
    for hw, emu in zip(outs[0::2], outs[1::2], strict=True):
        for k, (a, c) in enumerate(zip(hw, emu, strict=True)):
            _same_bits(a, c, f"output {k}")


@needs_vdpbf16ps
@pytest.mark.parametrize("small", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("B, T, D", [(1, 3, 1), (13, 5, 19), (7, 26, 64), (3, 8, 100)])
def test_emulated_dot_interaction_is_vdpbf16ps_bit_for_bit(threads, B, T, D, small):
    rng = np.random.default_rng(B * T * D)
    x16 = reference.bf16_round(np.maximum(rng.standard_normal((B, D)), 0).astype(np.float32))
    emb16 = rounded(rng, (T, B, D), 3.0)
    for itself in (False, True):
        li, lj = pair_indices(T + 1, itself)
        outs = []
        for version in _versions("bf16_dot_interaction_forward"):
            out16 = np.full((B, D + li.shape[0]), 0xFFFF, np.uint16)
            version.entry(small)(out16, x16, emb16, li, lj)
            outs.append(out16)
        _same_bits(*outs, f"itself={itself}")


def _pair(lo: float, hi: float = 0.0) -> int:
    """A 32-bit lane of two bf16 values: k (the low half) and k + 1 (the high half)."""
    lo16, hi16 = (int(reference.bf16_round(np.array([v], np.float32))[0]) for v in (lo, hi))
    return lo16 | hi16 << 16


def _both(a_pairs, b_pairs) -> list[float]:
    """C[0, 0] = sum_k a_k b_k over the pairs, by vdpbf16ps and by its emulation."""
    a = np.array(a_pairs, np.uint32).view(np.uint16)
    A = np.repeat(a[None], mk.MR, axis=0)
    P = np.zeros((len(b_pairs), mk.NR), np.uint32)
    P[:] = np.array(b_pairs, np.uint32)[:, None]
    out = []
    for dot in (dpbf16.VDPBF16PS, dpbf16.EMULATED):
        C = np.zeros((mk.MR, mk.NR), np.float32)
        mk.tile(a.shape[0], A, 0, 2 * a.shape[0], 4, P, 0, C, 0, mk.NR, mk.MR, mk.NR, False, dot)
        out.append(float(C[0, 0]))
    return out


@needs_vdpbf16ps
def test_where_the_emulation_differs_from_vdpbf16ps():
    """The pair order, and denormals: vdpbf16ps ignores MXCSR, treats denormal inputs as
    zero (DAZ) and flushes each of its two steps' denormal result to zero (FTZ); the
    emulation's FMAs keep them. So the two differ only where a bf16 input is below 2^-126
    or a pair's partial sum falls there (a denormal product added to a normal partial sum
    counts in both)."""
    # order: 1 (k = 0), then k = 3's 2^-24 before k = 2's -1: (1 + 2^-24) - 1 = 0 in both
    # (the other order would give 2^-24)
    assert _both([_pair(1), _pair(1, 2.0**-24)], [_pair(1), _pair(-1, 1)]) == [0, 0]
    # a denormal input (bf16 0x0001, 2^-133) times 2^100: zero on the instruction
    assert _both([1], [_pair(2.0**100)]) == [0, 2.0**-33]
    # a denormal result, 2^-70 2^-70 = 2^-140: flushed by the instruction
    assert _both([_pair(2.0**-70)], [_pair(2.0**-70)]) == [0, 2.0**-140]
    # a pair's first step (k + 1's product) denormal: flushed before k's is added
    a = [_pair(2.0**-63, 2.0**-70)]
    assert _both(a, a) == [2.0**-126, 2.0**-126 + 2.0**-140]
    # a denormal product added to a normal partial sum counts in both
    a = [_pair(2.0**-70, 2.0**-62)]
    assert _both(a, a) == [2.0**-124 + 2.0**-140] * 2


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w, x, b: bf16.linear_forward(x.astype(np.float32), w, b, True), "x16: dtype"),
        (lambda w, x, b: bf16.linear_forward(x[:, :2], w, b, True), "x16: must be C-contig"),
        (lambda w, x, b: bf16.linear_forward(x, w, b[:1], True), r"b: shape must be \(2,\)"),
        (lambda w, x, b: bf16.linear_forward(x, w, b, True, out="fp16"), "out: expected"),
        (lambda w, x, b: bf16.linear_backward_weight(x, x[:3]), r"x16: shape must be \(4,"),
    ],
)
def test_bad_arguments_are_one_line_errors(call, match):
    w = bf16.pack_weight(np.zeros((2, 3), np.uint16))
    with pytest.raises(ValueError, match=match):
        call(w, np.zeros((4, 3), np.uint16), np.zeros(2, np.float32))


def test_gemm_runs_as_plain_python_under_numba_disable_jit():
    """NUMBA_DISABLE_JIT=1: the tile's NumPy path and every loop run as plain Python (not
    the comparisons with the fp32 kernels, which round w - lr g twice in plain Python)."""
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    tests = Path(__file__).resolve().parent
    for path, select in (
        (__file__, "threads1 and (7-13-17 or 40-13-130) and not (disable_jit or emulation)"),
        (tests / "test_bf16.py", "(17 or 7-11-5 or reference) and not (fp32 or fma)"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path), "-k",
             select],
            cwd=tests.parent, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert " passed" in proc.stdout, proc.stdout[-3000:]
