"""Bounds check of a batch's lookups, run before every step's embedding kernels.

The embedding kernels (kernels/embedding/bags.py) read ``indices[offsets[t, b]:offsets[t, b+1]]``
and the rows ``row_start[t] + indices[j]`` without bounds checks, so a batch is checked
on every step (numbadlrm.batch.Batch.check_against). Table t is valid when

    0 <= offsets[t, 0],   offsets[t, b] <= offsets[t, b + 1],   offsets[t, B] <= nnz
    0 <= min(indices[offsets[t, 0]:offsets[t, B]]),  max(...) < rows[t]

(non-decreasing offsets that start at 0 or more and end at nnz or less all lie in
[0, nnz]). One pass over the offsets and one over the indices, the min and max kept in
registers: this is 8 bytes read per lookup against the gather's D * 4 + 8
(bench/bench_batch_check.py). Only a yes/no per table comes out; the caller finds and
words the first problem with NumPy (numbadlrm.batch).
"""

from __future__ import annotations

from numba import prange

from ..jit import jit_parallel, jit_serial


@jit_serial
def _table_ok(offsets, indices, rows, t):
    """True if table t's offsets are in range and non-decreasing and its ids < rows[t]."""
    row = offsets[t]  # (B+1,)
    first, last = row[0], row[-1]
    if first < 0 or last > indices.shape[0]:
        return False
    rising = True
    for b in range(row.shape[0] - 1):  # no early exit: the loop vectorises
        rising &= row[b + 1] >= row[b]
    if not rising:
        return False
    if last == first:
        return True
    ids = indices[first:last]  # a view: its loop index starts at 0, so the loop vectorises
    low = high = ids[0]
    for j in range(1, ids.shape[0]):
        low = min(low, ids[j])
        high = max(high, ids[j])
    return low >= 0 and high < rows[t]


@jit_parallel
def check_lookups(bad, offsets, indices, rows):
    """bad (T,) uint8 out: 1 where table t fails; offsets (T, B+1), indices (nnz,), rows (T,)."""
    # Iteration t writes only bad[t]: race-free.
    for t in prange(offsets.shape[0]):
        bad[t] = 0 if _table_ok(offsets, indices, rows, t) else 1


@jit_serial
def check_lookups_serial(bad, offsets, indices, rows):
    """As check_lookups on the calling thread alone (small batches)."""
    for t in range(offsets.shape[0]):
        bad[t] = 0 if _table_ok(offsets, indices, rows, t) else 1
