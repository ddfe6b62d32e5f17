"""The embedding, interaction and elementwise layers and their kernels' special properties
against the NumPy reference, in float32 (every registered kernel version of every op is
checked by tests/test_registry.py).

Tolerances: float32 sums of at most a few dozen terms of O(1) values carry relative
error ~ n * 6e-8, so rtol=1e-5 / atol=1e-5 fails on any real indexing or logic bug
(which shows up as O(1) errors) and passes rounding.
"""

import numpy as np
import pytest

from numbadlrm import reference as ref
from numbadlrm.kernels import elementwise
from numbadlrm.kernels.embedding import bags as embedding
from numbadlrm.kernels.interaction import fp32 as interaction
from numbadlrm.layers.embedding_bag import embedding_backward_sgd, embedding_forward
from numbadlrm.layers.interaction import Interaction
from numbadlrm.layers.loss import sigmoid_bce

from ._helpers import random_batch, small_config

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _tables(rng, cfg):
    sizes = np.asarray(cfg.embedding_sizes)
    row_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    weights = rng.normal(size=(sizes.sum(), cfg.sparse_feature_size)).astype(np.float32)
    return weights, row_start


@pytest.mark.parametrize("batch_size", [1, 7, 33])
def test_embedding_forward(threads, batch_size):
    cfg = small_config(tables="7-11-5-1", dim=5)
    rng = np.random.default_rng(batch_size)
    batch = random_batch(rng, cfg, batch_size, max_bag=5)
    weights, row_start = _tables(rng, cfg)
    pooled = np.full((cfg.num_tables, batch_size, 5), np.nan, np.float32)
    embedding_forward(pooled, weights, row_start, batch.offsets, batch.indices)
    for t in range(cfg.num_tables):
        expect = ref.embedding_bag_forward(
            weights[row_start[t] : row_start[t + 1]], batch.offsets[t], batch.indices
        )
        np.testing.assert_allclose(pooled[t], expect, **TOL)
    naive = np.empty_like(pooled)
    embedding.embedding_bags_forward_naive(naive, weights, row_start, batch.offsets, batch.indices)
    np.testing.assert_allclose(pooled, naive, **TOL)


@pytest.mark.parametrize("batch_size", [1, 9, 64])
def test_embedding_sgd_update_sums_repeated_indices(threads, batch_size):
    cfg = small_config(tables="3-50-2", dim=6)  # tiny tables force many repeats
    rng = np.random.default_rng(batch_size + 100)
    batch = random_batch(rng, cfg, batch_size, max_bag=6)
    weights, row_start = _tables(rng, cfg)
    dpooled = rng.normal(size=(cfg.num_tables, batch_size, 6)).astype(np.float32)
    expect = weights.astype(np.float64)
    for t, rows in enumerate(cfg.embedding_sizes):
        dtable = ref.embedding_bag_backward(
            dpooled[t].astype(np.float64), batch.offsets[t], batch.indices, rows
        )
        expect[row_start[t] : row_start[t + 1]] -= 0.5 * dtable
    embedding_backward_sgd(weights, row_start, batch.offsets, batch.indices, dpooled, 0.5)
    np.testing.assert_allclose(weights, expect, rtol=1e-5, atol=1e-5)


def test_embedding_update_independent_of_owner_count():
    """Row ownership applies each row's updates in lookup order, whoever owns the row."""
    cfg = small_config(tables="4-9", dim=3)
    rng = np.random.default_rng(5)
    batch = random_batch(rng, cfg, 40, max_bag=5)
    w0, row_start = _tables(rng, cfg)
    dpooled = rng.normal(size=(2, 40, 3)).astype(np.float32)
    results = []
    for owners in (1, 2, 3, 7):
        w = w0.copy()
        embedding.embedding_bags_sgd_update(
            w, row_start, batch.offsets, batch.indices, dpooled, np.float32(0.1), owners
        )
        results.append(w)
    for w in results[1:]:
        np.testing.assert_array_equal(w, results[0])


def test_owner_hash_covers_all_owners():
    owners = [embedding._owner(np.uint64(r), 3) for r in range(300)]
    assert set(owners) == {0, 1, 2}


def _features(seed: int, batch_size: int, num_tables: int, dim: int):
    """x (B, D), emb (T, B, D) in float32 and the stacked feats (B, F, D) in float64."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, dim)).astype(np.float32)
    emb = rng.normal(size=(num_tables, batch_size, dim)).astype(np.float32)
    feats = np.concatenate([x[:, None], emb.transpose(1, 0, 2)], axis=1).astype(np.float64)
    return rng, x, emb, feats


@pytest.mark.parametrize("op,itself", [("dot", False), ("dot", True), ("cat", False)])
@pytest.mark.parametrize("batch_size", [1, 13])
def test_interaction(threads, op, itself, batch_size):
    num_tables = 4
    rng, x, emb, feats = _features(7, batch_size, num_tables, 7)
    expect = ref.interaction_forward(feats.astype(np.float64), op, itself)
    layer = Interaction(op, itself, num_tables)
    out = np.full(expect.shape, np.nan, np.float32)
    layer.forward(out, x, emb)
    np.testing.assert_allclose(out, expect, **TOL)

    dout = rng.normal(size=expect.shape).astype(np.float32)
    dfeats = ref.interaction_backward(dout.astype(np.float64), feats.astype(np.float64), op, itself)
    dx = np.full_like(x, np.nan)
    demb = np.full_like(emb, np.nan)
    layer.backward(dx, demb, dout, x, emb)
    np.testing.assert_allclose(dx, dfeats[:, 0], **TOL)
    np.testing.assert_allclose(demb, dfeats[:, 1:].transpose(1, 0, 2), **TOL)


@pytest.mark.parametrize(
    "fn", [interaction.dot_interaction_backward, interaction.dot_interaction_backward_serial]
)
def test_dot_interaction_refuses_pairs_out_of_order(fn):
    """v3's backward reads each row of pairs as one run of dout: it checks the order."""
    _, x, emb, _ = _features(3, 2, 3, 8)
    li, lj = ref.pair_indices(4, False)
    dout = np.zeros((2, 8 + li.shape[0]), np.float32)
    dx, demb = np.empty_like(x), np.empty_like(emb)
    with pytest.raises(ValueError, match="row-major"):
        fn(dx, demb, dout, x, emb, li[::-1].copy(), lj[::-1].copy())
    with pytest.raises(ValueError, match="lower triangle"):
        fn(dx, demb, dout, x, emb, li[:-1].copy(), lj[:-1].copy())


def test_sigmoid_bce_kernel():
    rng = np.random.default_rng(8)
    s = (rng.normal(size=50) * 10).astype(np.float32)
    s[:2] = [90.0, -90.0]  # saturated logits stay finite
    y = rng.integers(0, 2, 50).astype(np.float32)
    p, ds = np.empty_like(s), np.empty_like(s)
    loss = sigmoid_bce(p, ds, s, y)
    ref_loss, ref_p = ref.sigmoid_bce_forward(s.astype(np.float64), y.astype(np.float64))
    assert np.isclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(p, ref_p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ds, ref.sigmoid_bce_backward(ref_p, y), rtol=1e-5, atol=1e-8)


def test_sgd_update(threads):
    rng = np.random.default_rng(9)
    params = rng.normal(size=1001).astype(np.float32)
    grads = rng.normal(size=1001).astype(np.float32)
    expect = params - np.float32(0.25) * grads
    serial = params.copy()
    elementwise.sgd_update(params, grads, np.float32(0.25))
    np.testing.assert_allclose(params, expect, rtol=1e-6, atol=1e-7)
    elementwise.sgd_update_serial(serial, grads, np.float32(0.25))
    np.testing.assert_array_equal(serial, params)


def test_run_serial_picks_small_work(threads):
    """Layers run small problems through the kernels' serial entry points."""
    from numbadlrm.kernels.jit import SERIAL_BELOW_BYTES, run_serial

    assert run_serial(10)
    assert run_serial(SERIAL_BELOW_BYTES) == (threads == 1)


def test_kernels_run_as_plain_python_under_numba_disable_jit():
    """The debugging path the docs promise: NUMBA_DISABLE_JIT=1 runs every kernel in Python."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    tests = Path(__file__).resolve().parent
    for path, select in (
        (__file__, "threads1 and (embedding or interaction) and not disable_jit"),
        (tests / "test_gemm.py", "threads1 and blas_layer_shares_work"),  # sgemm via ctypes
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path), "-k",
             select],
            cwd=tests.parent, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert " passed" in proc.stdout, proc.stdout[-3000:]
