"""The shared inputs and tolerance of the kernel checks (checks.py and checks_bf16.py):
case shapes that kernels get wrong, random inputs, and the GEMM error bound (see
checks.py's docstring for the tolerances)."""

from __future__ import annotations

import numpy as np

EPS = float(np.finfo(np.float32).eps)
TOL = {"rtol": 1e-5, "atol": 1e-5}
# (B, I, O): dot form (K >= 256) and panels, k blocks (K > 1024), O < 4, row and column
# tails, O = 1 (the logit layer), a narrow input (I < 32)
LINEAR_SHAPES = [
    (1, 1, 1),
    (7, 13, 17),
    (129, 100, 64),
    (9, 259, 261),
    (3, 20, 1030),
    (33, 150, 3),
    (1030, 20, 9),
    (5, 1030, 6),
    (67, 40, 1),
]
# (table sizes, D, batch sizes, longest bag)
EMBEDDING_CASES = [
    ((7, 11, 5, 1), 5, (1, 7, 33), 5),
    ((3, 50, 2), 6, (9, 64), 6),  # tiny tables: many repeated rows
    ((7, 300, 5), 20, (21,), 40),  # bags longer than the prefetch window
]
# (B, T, D): 26 tables give 7 blocks of 4 features, the last partial, as config c
INTERACTION_CASES = [(1, 5, 19), (13, 5, 19), (3, 26, 40)]


def case_label(op: str, case) -> str:
    """A case named by its fields: ``tables (7, 11, 5, 1), D 5, batch 7`` rather than the
    bare tuple the checks yield; trailing words (``relu``, ``itself``) kept as they are."""
    if isinstance(case, str):
        return case
    if "interaction" in op:
        names = ("B", "T", "D")
    elif "linear" in op:
        names = ("B", "I", "O")
    elif op in ("dense_update_rowwise_adagrad", "bf16_table_update"):
        names = ("rows", "D")
    elif "embedding" in op:
        names = ("tables", "D", "batch")
    else:
        names = ("n",)
    values = list(case)
    named = [f"{n} {v}" for n, v in zip(names, values, strict=False) if not isinstance(v, str)]
    return ", ".join(named + [str(v) for v in values[len(named) :]])


def linear_inputs(rng, B, I, O):
    x = rng.standard_normal((B, I), dtype=np.float32)
    W = rng.standard_normal((O, I), dtype=np.float32)
    b = rng.standard_normal(O, dtype=np.float32)
    y = np.maximum(rng.standard_normal((B, O), dtype=np.float32), 0)  # exact zeros: masked
    dy = rng.standard_normal((B, O), dtype=np.float32)
    return x, W, b, y, dy


def assert_gemm_close(got, want, abs_a, abs_b, K, what):
    """|got - want| <= (K + 2) eps32 (|A| @ |B|) entrywise; abs_a @ abs_b in float64."""
    bound = (K + 2) * EPS * (abs_a @ abs_b) + 1e-30
    err = np.abs(got.astype(np.float64) - want)
    assert np.isfinite(got).all(), f"{what}: non-finite output (an entry never written?)"
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), f"{what}: error {err[worst]:.3e} > bound {bound[worst]:.3e}"


def bags(rng, sizes, batch, max_bag):
    """offsets (T, B+1), indices: bag sizes 0..max_bag (empty bags, repeated rows)."""
    counts = rng.integers(0, max_bag + 1, size=(len(sizes), batch))
    flat = np.concatenate([[0], np.cumsum(counts.ravel())]).astype(np.int64)
    offsets = np.stack([flat[t * batch : (t + 1) * batch + 1] for t in range(len(sizes))])
    indices = np.empty(flat[-1], np.int64)
    for t, rows in enumerate(sizes):
        lo, hi = offsets[t, 0], offsets[t, -1]
        indices[lo:hi] = rng.integers(0, rows, size=hi - lo)
    return np.ascontiguousarray(offsets), indices
