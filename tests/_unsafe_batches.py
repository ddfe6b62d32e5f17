"""Batches changed after they were checked, run against the models in a child process.

Before every step re-checked its batch, these crashed the interpreter (segmentation
fault, heap corruption) or wrote silently into another table, so tests/test_batch_safety.py
runs them here, in a process of its own: ``python -m tests._unsafe_batches``. Each case
prints one JSON line {"case", "error", "unchanged"} as soon as it is done, so a crash
still reports the cases before it.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from numbadlrm import DLRM, Batch
from numbadlrm.batch import batch_from_lists

from ._helpers import random_batch, small_config

B = 6


def _rebuilt_with_checked_for(b: Batch) -> Batch:
    return Batch(b.dense, b.offsets, b.indices * 10**9, b.labels, _checked_for=(5, (7, 11, 5)))


# name -> (change to the batch after one good step, expected error text)
CHANGES = {
    "index_huge": (lambda b: b.indices.__setitem__(0, 10**12), "looked up at index 10000000000"),
    "index_negative": (lambda b: b.indices.__setitem__(1, -5), "looked up at index -5"),
    "index_next_table": (lambda b: b.indices.__setitem__(0, 7), "table 0 has 7 rows"),
    "offset_end": (lambda b: b.offsets.__setitem__((2, -1), 10**7), "end at 10000000"),
    "offset_negative": (lambda b: b.offsets.__setitem__((0, 0), -1), "start at -1"),
    "offset_decreasing": (lambda b: b.offsets.__setitem__((1, 3), 0), "decrease at bag"),
    "indices_int32": (
        lambda b: setattr(b, "indices", b.indices.astype(np.int32)),
        "indices must be int64",
    ),
    "indices_short": (lambda b: setattr(b, "indices", b.indices[:3].copy()), "nnz=3"),
    "indices_strided": (
        lambda b: setattr(b, "indices", np.repeat(b.indices, 2)[::2]),
        "indices must be C-contiguous",
    ),
    "indices_list": (lambda b: setattr(b, "indices", b.indices.tolist()), "numpy array"),
    "offsets_short": (
        lambda b: setattr(b, "offsets", b.offsets[:, :-1].copy()),
        r"offsets must have shape (T, B+1)",
    ),
    "dense_more_rows": (
        lambda b: setattr(b, "dense", np.zeros((B + 5, 5), np.float32)),
        "labels has 6 rows, dense has 11",
    ),
    "labels_short": (lambda b: setattr(b, "labels", b.labels[:2].copy()), "labels has 2 rows"),
    "local_rows": (lambda b: setattr(b, "local_rows", (0, 10**6)), "local_rows (0, 1000000)"),
}


def _batch() -> Batch:
    return random_batch(np.random.default_rng(0), small_config(), B, empty_bags=False)


def _models():
    """(name, model) pairs: the single-process DLRM and, with mpi4py, the MPI model."""
    cfg = small_config()
    yield "dlrm", DLRM(cfg, seed=0, gemm="numba")
    try:
        from mpi4py import MPI
    except ImportError:
        return
    from numbadlrm.parallel.distributed import DistributedDLRM

    yield "mpi", DistributedDLRM(cfg, MPI.COMM_SELF, seed=0, gemm="numba")


def _report(case: str, error: str, unchanged: bool) -> None:
    print(json.dumps({"case": case, "error": error, "unchanged": unchanged}), flush=True)


def main() -> int:
    for kind, model in _models():
        for op in ("train_step", "loss", "predict"):
            for name, (change, _) in CHANGES.items():
                batch = _batch()
                model.train_step(batch, 0.1)
                before = model.state_dict()
                change(batch)
                call = getattr(model, op)
                try:
                    call(batch, 0.1) if op == "train_step" else call(batch)
                    error = "no error"
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                after = model.state_dict()
                same = all(np.array_equal(before[k], after[k]) for k in before)
                _report(f"{kind}-{op}-{name}", error, same)
    try:
        _rebuilt_with_checked_for(_batch())
        error = "no error"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    _report("constructor-_checked_for", error, True)
    batch_from_lists(np.zeros((1, 5)), [[[0]], [[0]], [[0]]], np.zeros(1))  # still fine
    return 0


if __name__ == "__main__":
    sys.exit(main())
