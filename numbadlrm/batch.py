"""A mini-batch of DLRM inputs, validated before any kernel sees it.

    dense    (B, I)     float32   continuous features
    offsets  (T, B+1)   int64     bag b of table t is indices[offsets[t, b]:offsets[t, b + 1]]
    indices  (nnz,)     int64     every table's lookups, concatenated
    labels   (B,)       float32   0 or 1

Offsets index straight into ``indices``, so table t's lookups are the slice
``indices[offsets[t, 0]:offsets[t, B]]``, and the tables' slices chain: table 0 starts
at 0, table t where table t - 1 ends, the last ends at nnz. A bag with no lookups pools
to zeros. The reference's layout (per table, B bag starts each counted from 0, and the
table's own indices: ``lS_o``, ``lS_i``) becomes this one with :meth:`Batch.from_reference`.

The arrays stay ordinary, writable NumPy arrays, so a Batch can be changed after it was
built. The models therefore call :meth:`Batch.check_against` on every step: it checks
every array's dtype, shape and layout again and every lookup against the model's
tables (one pass of a Numba kernel, kernels/embedding/lookups.py), so no change made between
steps can make an embedding kernel read or write outside its arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels.embedding.lookups import check_lookups, check_lookups_serial
from .kernels.jit import run_serial


@dataclass(eq=False)
class Batch:
    dense: np.ndarray  # (B, I) float32
    offsets: np.ndarray  # (T, B+1) int64
    indices: np.ndarray  # (nnz,) int64
    labels: np.ndarray  # (B,) float32
    # (lo, hi) when only samples lo..hi-1 carry dense features and labels (one MPI rank's
    # slice, read by that rank alone; the other rows are zeros); None: every sample does
    local_rows: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self._check_arrays()
        bad = (self.labels != 0) & (self.labels != 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"Batch: labels must be 0 or 1, labels[{i}] = {self.labels[i]}")
        if not np.isfinite(self.dense).all():
            row = int(np.argmax(~np.isfinite(self.dense).all(axis=1)))
            raise ValueError(f"Batch: dense has a non-finite value in row {row}")
        problem = lookup_problem(self.offsets, self.indices)
        if problem:
            raise ValueError(problem)
        self._check_chained()

    @classmethod
    def from_reference(cls, dense, lS_o, lS_i, labels) -> Batch:
        """A Batch from the reference's per-table layout (dlrm_s_pytorch.py's inputs):

            lS_o  T arrays (or a (T, B) array) of B bag starts, each table's from 0
            lS_i  T arrays of that table's row ids (bag b is lS_i[t][lS_o[t][b]:lS_o[t][b+1]],
                  the last bag runs to the end)
            dense (B, I) and labels (B,) or (B, 1), any float dtype (converted to float32)

        NumPy arrays, lists or torch tensors (CPU) are accepted.
        """
        starts = [np.asarray(o, dtype=np.int64).reshape(-1) for o in lS_o]
        ids = [np.asarray(i, dtype=np.int64).reshape(-1) for i in lS_i]
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        labels = np.ascontiguousarray(np.asarray(labels, dtype=np.float32).reshape(-1))
        if len(starts) != len(ids):
            raise ValueError(
                f"Batch.from_reference: lS_o has {len(starts)} tables, lS_i {len(ids)}"
            )
        b = dense.shape[0] if dense.ndim == 2 else -1
        offsets = np.empty((len(starts), max(b, 0) + 1), np.int64)
        base = 0
        for t, (o, i) in enumerate(zip(starts, ids, strict=True)):
            if o.shape[0] != b or (b > 0 and o[0] != 0):
                raise ValueError(
                    f"Batch.from_reference: lS_o[{t}] must hold the B={b} bag starts of table "
                    f"{t}, the first 0; got {o.shape[0]} starting at {o[:1].tolist()}"
                )
            if (np.diff(o) < 0).any() or (b > 0 and o[-1] > i.shape[0]):
                raise ValueError(
                    f"Batch.from_reference: lS_o[{t}] must not decrease and stay within "
                    f"lS_i[{t}]'s {i.shape[0]} ids"
                )
            offsets[t, :-1] = base + o
            base += i.shape[0]
            offsets[t, -1] = base
        indices = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        return cls(dense=dense, offsets=offsets, indices=indices, labels=labels)

    def _check_chained(self) -> None:
        """Table 0's lookups start at 0, table t's where table t - 1's end, the last's at
        nnz: other offsets would make tables read each other's lookups."""
        if self.num_tables == 0:
            return
        starts, ends = self.offsets[:, 0], self.offsets[:, -1]
        expected = np.concatenate(([0], ends[:-1]))
        bad = np.flatnonzero(starts != expected)
        hint = (
            "offsets must chain (table t starts where table t - 1 ends, the last ends at nnz); "
            "for the reference's per-table offsets that each start at 0, use "
            "Batch.from_reference(dense, lS_o, lS_i, labels)"
        )
        if bad.size:
            t = int(bad[0])
            want = "0" if t == 0 else f"{expected[t]}, where table {t - 1} ends"
            raise ValueError(
                f"Batch: offsets of table {t} start at {starts[t]}, not {want}: {hint}"
            )
        nnz = self.indices.shape[0]
        if ends[-1] != nnz:
            raise ValueError(
                f"Batch: offsets of the last table end at {ends[-1]}, not at nnz={nnz}: {hint}"
            )

    def _check_arrays(self) -> None:
        """Types, dtypes, shapes and layout of the four arrays, and local_rows."""
        _expect_array("dense", self.dense, np.float32, 2)
        _expect_array("offsets", self.offsets, np.int64, 2)
        _expect_array("indices", self.indices, np.int64, 1)
        _expect_array("labels", self.labels, np.float32, 1)
        b = self.dense.shape[0]
        if b == 0:
            raise ValueError("Batch: dense has zero rows; a batch needs at least one sample")
        if self.labels.shape[0] != b:
            raise ValueError(f"Batch: labels has {self.labels.shape[0]} rows, dense has {b}")
        if self.offsets.shape[1] != b + 1:
            raise ValueError(
                f"Batch: offsets must have shape (T, B+1) = (T, {b + 1}), got {self.offsets.shape}"
            )
        if self.local_rows is not None:
            lo, hi = self.local_rows
            if not 0 <= lo <= hi <= b:
                raise ValueError(f"Batch: local_rows {self.local_rows} outside [0, {b}]")

    def require_rows(self, start: int, stop: int) -> None:
        """Refuse a batch whose dense features and labels do not cover samples start..stop-1."""
        if self.local_rows is None:
            return
        lo, hi = self.local_rows
        if not lo <= start <= stop <= hi:
            raise ValueError(
                f"Batch: holds dense features and labels of samples [{lo}, {hi}) only (one MPI "
                f"rank's slice), but samples [{start}, {stop}) are needed"
            )

    @property
    def batch_size(self) -> int:  # B
        return self.dense.shape[0]

    @property
    def num_tables(self) -> int:  # T
        return self.offsets.shape[0]

    def table_indices(self, t: int) -> np.ndarray:
        """The lookups of table t, a view into ``indices``."""
        return self.indices[self.offsets[t, 0] : self.offsets[t, -1]]

    def check_against(self, num_dense: int, embedding_sizes: tuple[int, ...]) -> None:
        """Check the batch fits a model: arrays, feature count, table count, every lookup.

        The models call this on every step, since the arrays may have changed since the
        last one; the lookups cost one pass of kernels/embedding/lookups.py (bench/RESULTS.md).
        """
        self._check_arrays()
        if self.dense.shape[1] != num_dense:
            raise ValueError(
                f"Batch: dense has {self.dense.shape[1]} features, the model expects {num_dense}"
            )
        if self.num_tables != len(embedding_sizes):
            raise ValueError(
                f"Batch: offsets describe {self.num_tables} tables, the model has "
                f"{len(embedding_sizes)}"
            )
        rows = np.asarray(embedding_sizes, dtype=np.int64)
        bad = np.empty(self.num_tables, np.uint8)
        if run_serial(self.indices.nbytes + self.offsets.nbytes):
            check_lookups_serial(bad, self.offsets, self.indices, rows)
        else:
            check_lookups(bad, self.offsets, self.indices, rows)
        if bad.any():
            raise ValueError(lookup_problem(self.offsets, self.indices, rows))
        self._check_chained()


def require_batch(value: object, who: str) -> Batch:
    """``value`` if it is a Batch, else a one-line TypeError naming ``who``."""
    if not isinstance(value, Batch):
        raise TypeError(
            f"{who}: batch must be a numbadlrm Batch (Batch(...), Batch.from_reference(...)), "
            f"got {type(value).__name__}"
        )
    return value


def lookup_problem(
    offsets: np.ndarray, indices: np.ndarray, rows: np.ndarray | None = None
) -> str | None:
    """The first problem of a batch's lookups, in words (None if there is none).

    Offsets must lie in [0, nnz] and not decrease; given ``rows`` (T,), table t's ids
    must lie in [0, rows[t]). The NumPy twin of kernels/embedding/lookups.py, run to word what
    that kernel found (and in the constructor, where the tables are not known yet).
    """
    nnz = indices.shape[0]
    for t in range(offsets.shape[0]):
        row = offsets[t]
        if row[0] < 0:
            return f"Batch: offsets of table {t} start at {row[0]}; offsets must be >= 0"
        steps = np.diff(row)
        if (steps < 0).any():
            b = int(np.argmax(steps < 0))
            return (
                f"Batch: offsets of table {t} decrease at bag {b}: "
                f"{row[b]} -> {row[b + 1]} (offsets must be non-decreasing)"
            )
        if row[-1] > nnz:
            return f"Batch: offsets of table {t} end at {row[-1]}, past the indices (nnz={nnz})"
        if rows is None:
            continue
        ids = indices[row[0] : row[-1]]
        bad = (ids < 0) | (ids >= rows[t])
        if bad.any():
            j = int(np.argmax(bad))
            sample = int(np.searchsorted(row, row[0] + j, side="right")) - 1
            return (
                f"Batch: table {t} has {rows[t]} rows but is looked up at index {ids[j]} "
                f"(indices[{row[0] + j}], sample {sample})"
            )
    return None


def _expect_array(name: str, value: object, dtype: type, ndim: int) -> None:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"Batch: {name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        raise ValueError(f"Batch: {name} must be {np.dtype(dtype).name}, got {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"Batch: {name} must be {ndim}-D, got shape {value.shape}")
    if not value.flags.c_contiguous:
        raise ValueError(f"Batch: {name} must be C-contiguous (use np.ascontiguousarray)")


def batch_from_lists(dense: np.ndarray, bags: list[list[list[int]]], labels: np.ndarray) -> Batch:
    """Build a Batch from per-table, per-sample lists of row ids: ``bags[t][b]``.

    Convenient for tests and small examples; generators build the arrays directly.
    """
    num_tables = len(bags)
    b = len(labels)
    offsets = np.zeros((num_tables, b + 1), dtype=np.int64)
    flat: list[int] = []
    for t in range(num_tables):
        offsets[t, 0] = len(flat)
        for i in range(b):
            flat.extend(bags[t][i])
            offsets[t, i + 1] = len(flat)
    return Batch(
        dense=np.ascontiguousarray(dense, dtype=np.float32),
        offsets=offsets,
        indices=np.asarray(flat, dtype=np.int64),
        labels=np.ascontiguousarray(labels, dtype=np.float32),
    )
