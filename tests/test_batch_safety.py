"""No public path reaches an embedding kernel with out-of-range offsets or indices.

A Batch's arrays can be changed after a step (item assignment, reassignment); every
step checks them again. The changes that used to crash the interpreter run in a child
process (tests/_unsafe_batches.py), so a regression fails these tests instead of
killing pytest.
"""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm import DLRM
from numbadlrm.batch import lookup_problem
from numbadlrm.kernels.embedding.lookups import check_lookups, check_lookups_serial

from . import _unsafe_batches
from ._helpers import random_batch, run_child_cases, small_config

OPS = ("train_step", "loss", "predict")


@pytest.fixture(scope="module")
def child_results() -> tuple[dict, str]:
    lines, where = run_child_cases("tests._unsafe_batches")
    return {x["case"]: x for x in lines}, where


def _kinds() -> list[str]:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return ["dlrm"]
    return ["dlrm", "mpi"]


@pytest.mark.parametrize("kind", _kinds())
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("change", list(_unsafe_batches.CHANGES))
def test_changed_batch_is_refused_before_any_kernel(child_results, kind, op, change):
    results, where = child_results
    case = f"{kind}-{op}-{change}"
    assert case in results, f"{case} never reported: {where}"
    expected = _unsafe_batches.CHANGES[change][1]
    assert results[case]["error"].startswith("ValueError: Batch: "), results[case]
    assert expected in results[case]["error"], results[case]
    assert results[case]["unchanged"], f"{case}: the model changed before the refusal"


def test_the_skip_validation_argument_is_gone(child_results):
    results, where = child_results
    error = results.get("constructor-_checked_for", {}).get("error", where)
    assert "unexpected keyword argument '_checked_for'" in error


def test_error_names_table_position_and_sample():
    cfg = small_config()
    batch = random_batch(np.random.default_rng(1), cfg, 5, empty_bags=False)
    t1 = batch.offsets[1]
    j = int(t1[3])  # the first lookup of table 1's bag 3
    batch.indices[j] = 11
    with pytest.raises(ValueError) as info:
        batch.check_against(cfg.num_dense, cfg.embedding_sizes)
    assert str(info.value) == (
        f"Batch: table 1 has 11 rows but is looked up at index 11 (indices[{j}], sample 3)"
    )


@pytest.mark.parametrize("kernel", [check_lookups, check_lookups_serial])
def test_check_kernel_matches_the_numpy_wording(kernel):
    """Over many random changes, the kernel flags a table exactly when the NumPy path
    finds a problem in it (empty bags and empty tables included)."""
    rng = np.random.default_rng(7)
    cfg = small_config()
    rows = np.asarray(cfg.embedding_sizes, np.int64)
    for trial in range(300):
        batch = random_batch(rng, cfg, int(rng.integers(1, 9)))
        offsets, indices = batch.offsets, batch.indices
        if trial % 3 and indices.size:
            indices[rng.integers(indices.size)] = rng.integers(-3, 14)
        if trial % 5 == 0:
            offsets[rng.integers(cfg.num_tables), rng.integers(offsets.shape[1])] += rng.integers(
                -3, 4
            )
        bad = np.empty(cfg.num_tables, np.uint8)
        kernel(bad, offsets, indices, rows)
        for t in range(cfg.num_tables):
            alone = lookup_problem(offsets[t : t + 1], indices, rows[t : t + 1])
            assert bool(bad[t]) == (alone is not None), (trial, t, alone)


def test_an_unchanged_batch_still_trains_and_reuses_no_verdict():
    """A batch fixed after a refusal trains again; the check keeps no state."""
    cfg = small_config()
    model = DLRM(cfg, seed=0, gemm="numba")
    batch = random_batch(np.random.default_rng(2), cfg, 4, empty_bags=False)
    good = batch.indices[0]
    model.train_step(batch, 0.1)
    batch.indices[0] = 10**6
    with pytest.raises(ValueError, match="looked up at index 1000000"):
        model.train_step(batch, 0.1)
    batch.indices[0] = good
    assert np.isfinite(model.train_step(batch, 0.1))
