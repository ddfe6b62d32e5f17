"""The Adagrad kernels (kernels/embedding/optimizers.py) against the NumPy reference
(optim/reference.py).

float32 kernels against the float64 reference from the same float32 inputs. The tiny
tables (2 rows) gather ~300 bag gradients into one row, a float32 sum that carries up to
~300 x 6e-8 = 2e-5 relative error (measured 1.05e-5 on a state entry of 5254), so we
allow rtol=1e-4 (atol=1e-5). That still fails any indexing or coalescing bug: a missed
or doubled bag moves a weight by ~lr = 0.1 and a state entry by ~1e-3 relative or more.
float64 kernels against the float64 reference: only summation order differs, we allow
1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm.kernels.embedding import optimizers as k
from numbadlrm.optim import reference as ref

from ._helpers import random_batch, small_config

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
LR, EPS = 0.1, 1e-10

SPARSE = {  # name -> (parallel kernel, serial kernel, reference, state shape of (R, D))
    "adagrad": (
        k.embedding_bags_adagrad_update,
        k.embedding_bags_adagrad_update_serial,
        ref.embedding_adagrad,
        lambda shape: shape,
    ),
    "rowwise": (
        k.embedding_bags_rowwise_adagrad_update,
        k.embedding_bags_rowwise_adagrad_update_serial,
        ref.embedding_rowwise_adagrad,
        lambda shape: shape[:1],
    ),
}


# ----------------------------------------------------------------------- dense buffer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("n", [1, 1001])
def test_dense_adagrad(threads, dtype, weight_decay, n):
    rng = np.random.default_rng(n)
    params = rng.normal(size=n).astype(dtype)
    state = np.full(n, 0.1, dtype)
    expect_p, expect_s = params.astype(np.float64), state.astype(np.float64)
    serial_p, serial_s = params.copy(), state.copy()
    scalars = (dtype(LR), dtype(EPS), dtype(weight_decay))
    for _ in range(3):
        grads = rng.normal(size=n).astype(dtype)
        ref.adagrad(expect_p, expect_s, grads.astype(np.float64), LR, EPS, weight_decay)
        k.adagrad_update(params, state, grads, *scalars)
        k.adagrad_update_serial(serial_p, serial_s, grads, *scalars)
    np.testing.assert_allclose(params, expect_p, **TOL[dtype])
    np.testing.assert_allclose(state, expect_s, **TOL[dtype])
    np.testing.assert_array_equal(serial_p, params)
    np.testing.assert_array_equal(serial_s, state)


# ------------------------------------------------------------------- embedding tables


def _problem(rng, tables="3-50-2-300", dim=20, batch_size=30, max_bag=40, dtype=np.float32):
    """Tables of 2..300 rows (repeats certain), D=20 (not a multiple of 16), bags of 0..40
    lookups (empty bags, bags longer than the prefetch window)."""
    cfg = small_config(tables=tables, dim=dim)
    batch = random_batch(rng, cfg, batch_size, max_bag=max_bag)
    sizes = np.asarray(cfg.embedding_sizes)
    row_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    weights = rng.normal(size=(sizes.sum(), dim)).astype(dtype)
    return weights, row_start, batch.offsets, batch.indices


def _garbage_scratch(rng, num_lookups, owners=7):
    """lists of arbitrary contents: the kernels must not depend on them."""
    return (rng.integers(-(2**63), 2**63 - 1, (owners, 2, num_lookups)),)


def _run(kind, name, weights, state, scratch, problem, dpooled, lr, eps, owners=2):
    parallel, serial, _, _ = SPARSE[name]
    _, row_start, offsets, indices = problem
    args = (*scratch, row_start, offsets, indices, dpooled, lr, eps)
    if kind == "serial":
        serial(weights, state, *args)
    else:
        parallel(weights, state, *args, owners)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["parallel", "serial"])
@pytest.mark.parametrize("name", list(SPARSE))
def test_sparse_adagrad_matches_reference(threads, name, kind, dtype):
    """Three steps (the scratch reused, as a layer would) against the reference."""
    rng = np.random.default_rng(1)
    problem = _problem(rng, dtype=dtype)
    weights, row_start, offsets, indices = problem
    state = np.full(SPARSE[name][3](weights.shape), 0.1, dtype)
    expect_w, expect_s = weights.astype(np.float64), state.astype(np.float64)
    scratch = _garbage_scratch(rng, indices.shape[0])
    for _ in range(3):
        dpooled = rng.normal(size=(offsets.shape[0], offsets.shape[1] - 1, 20)).astype(dtype)
        SPARSE[name][2](expect_w, expect_s, row_start, offsets, indices, dpooled, LR, EPS)
        _run(kind, name, weights, state, scratch, problem, dpooled, dtype(LR), dtype(EPS), threads)
    np.testing.assert_allclose(weights, expect_w, **TOL[dtype])
    np.testing.assert_allclose(state, expect_s, **TOL[dtype])


@pytest.mark.parametrize("name", list(SPARSE))
def test_sparse_adagrad_coalesces_repeats(name):
    """A row looked up n times takes one step from the sum of its n bag gradients."""
    weights = np.zeros((4, 2), np.float32)
    state = np.zeros(SPARSE[name][3](weights.shape), np.float32)
    row_start = np.array([0, 4])
    offsets = np.array([[0, 3, 3, 4]])  # bag 0: rows 1, 1, 2; bag 1 empty; bag 2: row 1
    indices = np.array([1, 1, 2, 1])
    dpooled = np.array([[[1.0, 2.0], [9.0, 9.0], [1.0, -4.0]]], np.float32)
    problem = (weights, row_start, offsets, indices)
    scratch = (np.zeros((1, 2, 4), np.int64),)
    _run("serial", name, weights, state, scratch, problem, dpooled, np.float32(1.0),
         np.float32(EPS))  # fmt: skip
    g1 = np.array([3.0, 0.0])  # 2 * [1, 2] + [1, -4], one update
    if name == "adagrad":
        np.testing.assert_allclose(state[1], g1**2)
        np.testing.assert_allclose(weights[1], [-1.0, 0.0])  # -g / (|g| + eps)
    else:
        np.testing.assert_allclose(state[1], np.mean(g1**2))
        np.testing.assert_allclose(weights[1], -g1 / np.sqrt(np.mean(g1**2)), rtol=1e-6)
    assert np.all(weights[[0, 3]] == 0) and np.all(state[[0, 3]] == 0)  # not looked up


def test_dense_adagrad_zero_gradient_with_zero_eps_is_nan_as_torch():
    """eps = 0 and a zero gradient on a zero state gives 0 / 0, as in torch: not hidden."""
    params, state = np.ones(2, np.float32), np.zeros(2, np.float32)
    k.adagrad_update_serial(params, state, np.array([0.0, 1.0], np.float32), 1.0, 0.0, 0.0)
    assert np.isnan(params[0]) and params[1] == 0.0


@pytest.mark.parametrize("name", list(SPARSE))
def test_sparse_adagrad_independent_of_owners_and_scratch(name):
    """Bit-identical for any owner count and any scratch contents (garbage, the previous
    batch's sorted keys), for each entry.

    The serial and the parallel entry are two compiled functions, and fast-math lets LLVM
    shape the row-wise mean of G^2 (a reduction) differently in each: how depends on the
    compile context (a kernel compiled while its helpers came from Numba's cache, written
    by another process, ends a few ulps from one that compiled them fresh; CI saw 2.4e-7
    on weights of 0.2). So across the two entries the check is a tolerance of ~100 ulps
    (1e-5 relative, 1e-6 absolute; a wrong row, bag or step is off by O(1e-2) here),
    and bitwise within each entry, where the code is one and the same.
    """
    rng = np.random.default_rng(2)
    problem = _problem(rng, tables="4-9-300", batch_size=40)
    w0, _, _, indices = problem
    s0 = np.full(SPARSE[name][3](w0.shape), 0.5, np.float32)
    dpooled = rng.normal(size=(3, 40, 20)).astype(np.float32)
    adversarial = _adversarial_scratch(problem)
    results = {"serial": [], "parallel": []}
    for kind, owners, scratch in [
        ("serial", 1, _garbage_scratch(rng, indices.shape[0])),
        ("serial", 1, _adversarial_scratch(problem)),
        ("parallel", 1, adversarial),
        ("parallel", 2, _garbage_scratch(rng, indices.shape[0])),
        ("parallel", 3, (np.zeros((3, 2, indices.size), int),)),
        ("parallel", 7, adversarial),
    ]:
        w, s = w0.copy(), s0.copy()
        _run(kind, name, w, s, scratch, problem, dpooled, np.float32(LR), np.float32(EPS), owners)
        results[kind].append((w, s))
    for runs in results.values():
        for w, s in runs[1:]:
            np.testing.assert_array_equal(w, runs[0][0])
            np.testing.assert_array_equal(s, runs[0][1])
    (ws, ss), (wp, sp) = results["serial"][0], results["parallel"][0]
    assert not np.array_equal(ws, w0)  # the step changed the weights
    np.testing.assert_allclose(wp, ws, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sp, ss, rtol=1e-5, atol=1e-6)


def _adversarial_scratch(problem, owners=7):
    """lists as if a batch had just been sorted there: both buffers full of well-formed
    keys (row << bag bits | bag, sorted by row) of other bags, which a sort that skipped a
    pass (a digit all keys share) and then read the wrong buffer would apply."""
    weights, _, offsets, indices = problem
    bag_bits = int(offsets.shape[1] - 2).bit_length()
    rows = np.sort(np.arange(indices.shape[0]) % weights.shape[0])
    keys = (rows << bag_bits) | (np.arange(indices.shape[0]) % (offsets.shape[1] - 1))
    return (np.broadcast_to(keys, (owners, 2, keys.shape[0])).copy(),)


@pytest.mark.parametrize("row_bits", [0, 1, 10, 11, 12, 22, 23, 33])
@pytest.mark.parametrize("n", [0, 1, 2, 500])
def test_sort_keys_is_a_stable_sort_by_row(row_bits, n):
    """The table kernels' radix sort against NumPy's stable argsort, for 1, 2 and 3 digit
    passes, and keys whose rows share their high digits (a pass the sort skips) or all
    of their digits; the scratch half it does not end in may hold anything."""
    rng = np.random.default_rng(row_bits * 1000 + n)
    bag_bits = 9
    bags = rng.integers(0, 1 << bag_bits, n)
    for rows in (
        rng.integers(0, 1 << row_bits, n),  # every digit varies
        rng.integers(0, min(1 << row_bits, 50), n),  # high digits all zero: passes skipped
        np.full(n, (1 << row_bits) - 1),  # one row: every pass skipped
    ):
        keys = (rows.astype(np.int64) << bag_bits) | bags
        lists = rng.integers(-(2**62), 2**62, (2, n + 3))
        lists[0, :n] = keys
        out = lists[k._sort_keys(lists[0], lists[1], n, bag_bits, row_bits)][:n]
        np.testing.assert_array_equal(out, keys[np.argsort(rows, kind="stable")])


def test_sparse_adagrad_empty_batch_changes_nothing():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(10, 4)).astype(np.float32)
    state = np.ones((10, 4), np.float32)
    before = weights.copy(), state.copy()
    offsets = np.zeros((2, 4), np.int64)  # 2 tables x 3 empty bags
    for owners in (1, 2):
        k.embedding_bags_adagrad_update(
            weights, state, np.zeros((owners, 2, 0), np.int64),
            np.array([0, 5, 10]), offsets, np.zeros(0, np.int64),
            np.ones((2, 3, 4), np.float32), np.float32(1.0), np.float32(EPS), owners,
        )  # fmt: skip
    np.testing.assert_array_equal(weights, before[0])
    np.testing.assert_array_equal(state, before[1])


def test_optimizer_kernels_run_as_plain_python_under_numba_disable_jit():
    """The debugging path (NUMBA_DISABLE_JIT=1): every kernel here runs as plain Python."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    select = "threads1 and not disable_jit or coalesces or empty"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", select],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout, proc.stdout[-3000:]


def test_sgd_references_match_the_sgd_kernels():
    """reference_optim's SGD (dense, and coalesced for the tables) against the fused SGD
    kernels the model runs today: SGD is linear, so coalescing changes nothing."""
    from numbadlrm.kernels import elementwise
    from numbadlrm.kernels.embedding import bags as embedding

    rng = np.random.default_rng(4)
    weights, row_start, offsets, indices = _problem(rng)
    dpooled = rng.normal(size=(offsets.shape[0], offsets.shape[1] - 1, 20)).astype(np.float32)
    expect = weights.astype(np.float64)
    ref.embedding_sgd(expect, row_start, offsets, indices, dpooled.astype(np.float64), LR)
    embedding.embedding_bags_sgd_update(
        weights, row_start, offsets, indices, dpooled, np.float32(LR), 2
    )
    np.testing.assert_allclose(weights, expect, **TOL[np.float32])
    params, grads = rng.normal(size=(2, 101)).astype(np.float32)
    expect = params.astype(np.float64)
    ref.sgd(expect, grads.astype(np.float64), LR)
    elementwise.sgd_update_serial(params, grads, np.float32(LR))
    np.testing.assert_allclose(params, expect, **TOL[np.float32])
