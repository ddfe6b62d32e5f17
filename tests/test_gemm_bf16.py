"""bf16 linear-layer GEMMs (kernels/gemm/bf16.py on the vdpbf16ps tile) against NumPy.

Tolerance. The oracle rounds the inputs to bf16 (the kernels' inputs), then multiplies in
float64, so its own error is negligible. A product of two bf16 values (8-bit
significands) is exact in fp32, so the kernels' only errors are the fp32 additions: K
terms summed in any order (vdpbf16ps adds two products per step, lanes in parallel) are
off by at most about K eps32 sum_k |a_k b_k| (the standard bound gamma_K, eps32 = 2^-24
for round to nearest), plus one rounding for the bias add. Each entry is checked against
``(K + 2) eps32 (|A| @ |B| + |b|)``. A lost pair, a wrong k or a misplaced column is off
by ~|a_k b_k|, far above that. The bf16 outputs must be exactly the rounded fp32 ones.
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
from numbadlrm.kernels.gemm import bf16 as kg
from numbadlrm.kernels.gemm import pack_bf16 as kp
from numbadlrm.kernels.gemm import tile_bf16 as mk
from numbadlrm.layers import bf16

pytestmark = pytest.mark.skipif(
    not mk.has_avx512_bf16(), reason="this CPU has no AVX512-BF16 (vdpbf16ps)"
)
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


@pytest.mark.parametrize("tasks", [1, 3, 16])
def test_serial_and_parallel_entries_agree(threads, tasks):
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
        fwd(y, kg.NONE_U16, x16, p.forward, b, True, tasks)
        data(dx, kg.NONE_U16, dz16, p.data, x16, True, tasks)
        weight(dW, db, dz16, x16, tasks)
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


def test_tile_compiles_to_vdpbf16ps():
    """The micro-kernel's machine code holds vdpbf16ps: 4 MR per k pair (LLVM unrolls the
    k loop, so at least that many), a fresh compile (cached code cannot be inspected)."""
    fresh = numba.njit(mk.tile.py_func)
    A, P = np.zeros((mk.MR, 8), np.uint16), np.zeros((4, mk.NR), np.uint32)
    C = np.zeros((mk.MR, mk.NR), np.float32)
    fresh(8, A, 0, 16, 4, P, 0, C, 0, mk.NR, mk.MR, mk.NR, False)
    asm = next(iter(fresh.inspect_asm().values()))
    assert sum("vdpbf16ps" in line for line in asm.splitlines()) >= 4 * mk.MR


def test_missing_avx512_bf16_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(mk, "has_avx512_bf16", lambda: False)
    w = bf16.pack_weight(np.zeros((2, 3), np.uint16))
    with pytest.raises(RuntimeError, match="AVX512-BF16"):
        bf16.linear_forward(np.zeros((4, 3), np.uint16), w, np.zeros(2, np.float32), True)


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
        (__file__, "threads1 and (7-13-17 or 40-13-130) and not disable_jit"),
        (tests / "test_bf16.py", "(17 or 7-11-5 or reference) and not (fp32 or fma)"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path), "-k",
             select],
            cwd=tests.parent, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert " passed" in proc.stdout, proc.stdout[-3000:]
