"""Embedding-bag kernels: sum-pooled forward and the fused backward + SGD update.

All T tables live in one buffer ``weights`` (total_rows, D); table t is the row range
``row_start[t]:row_start[t + 1]``. Offsets (T, B+1) index into the concatenated
``indices`` (see numbadlrm.batch).

    forward:  pooled[t, b] = sum_{j in bag (t, b)} weights[row_start[t] + indices[j]]
    update:   weights[row_start[t] + indices[j]] -= lr * dpooled[t, b]  for every lookup j

The update never builds a dense (rows, D) gradient nor a (lookups, D) copy: each
lookup reads its bag's pooled gradient and applies it straight to the row.

Both are random row gathers from tables far larger than the caches, so they are bound by
how many row misses are in flight, not by arithmetic. Versions (bench/bench_embedding.py
times them side by side; the unsuffixed names are the best, called by the layers):

    v1  prefetch 8 lookups ahead into L1 (prefetcht0)
    v2  prefetch 16 lookups ahead (per owner in the update) into L2 only (prefetcht1):
        the L1 tracks few outstanding misses, the L2 many, so more rows are in flight
        (bench_embedding.py, config b, uniform ids, Zen 4 VM, v1 -> v2: one thread, forward
        7.0 -> 10.5 GB/s, update 11.6 -> 19.6 GB/s; two threads 10.9 -> 13.7, 13.6 -> 22.1)

v2's loop bodies are serial functions over a range of bags (forward) or one owner
(update); the parallel kernel runs them over chunks, and the ``*_serial`` entry points
run them whole on the calling thread, which the layer picks for small batches (a
parallel launch costs more than config a's microseconds of work).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._jit import jit_parallel, jit_serial
from .prefetch import _prefetch as prefetch
from .prefetch import _prefetch_l2 as prefetch_l2

# Prefetch distances in lookups. v1: far enough ahead to cover DRAM latency (~100 ns) at a
# few ns per 256-byte row. v2: twice that; the lines wait in L2, which holds far more.
PREFETCH_AHEAD_V1 = 8
PREFETCH_AHEAD = 16
# v2's forward splits the T * B bags into this many chunks (static split over threads).
CHUNKS = 256


@jit_serial
def _forward_bags(pooled, weights, row_start, offsets, indices, lo, hi):
    """pooled[t, b] for the flat bag numbers t * B + b in [lo, hi)."""
    batch, dim = pooled.shape[1], pooled.shape[2]
    for tb in range(lo, hi):
        t = tb // batch
        b = tb - t * batch
        base = row_start[t]
        end = offsets[t, batch]  # the table's last lookup: prefetch runs on into later bags
        for d in range(dim):
            pooled[t, b, d] = 0.0
        for j in range(offsets[t, b], offsets[t, b + 1]):
            if j + PREFETCH_AHEAD < end:
                ahead = base + indices[j + PREFETCH_AHEAD]
                for d in range(0, dim, 16):  # one prefetch per 64-byte line
                    prefetch_l2(weights, ahead, d)
            r = base + indices[j]
            for d in range(dim):
                pooled[t, b, d] += weights[r, d]


@jit_parallel
def embedding_bags_forward(pooled, weights, row_start, offsets, indices):
    """pooled (T, B, D) out; weights (R, D); row_start (T+1,); offsets (T, B+1); indices (nnz,)."""
    bags = pooled.shape[0] * pooled.shape[1]
    chunks = min(bags, CHUNKS)
    # Chunk c writes only its own bags pooled[t, b]: race-free.
    for c in prange(chunks):
        _forward_bags(
            pooled,
            weights,
            row_start,
            offsets,
            indices,
            c * bags // chunks,
            (c + 1) * bags // chunks,
        )


@jit_serial
def embedding_bags_forward_serial(pooled, weights, row_start, offsets, indices):
    """As embedding_bags_forward on the calling thread alone (small batches)."""
    bags = pooled.shape[0] * pooled.shape[1]
    _forward_bags(pooled, weights, row_start, offsets, indices, 0, bags)


@jit_parallel
def embedding_bags_forward_v1(pooled, weights, row_start, offsets, indices):
    """As embedding_bags_forward, prefetching 8 lookups ahead into L1."""
    num_tables, batch, dim = pooled.shape
    # Each iteration (t, b) writes only pooled[t, b]: race-free.
    for tb in prange(num_tables * batch):
        t = tb // batch
        b = tb - t * batch
        base = row_start[t]
        end = offsets[t, batch]
        out = pooled[t, b]
        out[:] = 0.0
        for j in range(offsets[t, b], offsets[t, b + 1]):
            if j + PREFETCH_AHEAD_V1 < end:
                ahead = base + indices[j + PREFETCH_AHEAD_V1]
                for d in range(0, dim, 16):
                    prefetch(weights, ahead, d)
            row = weights[base + indices[j]]
            for d in range(dim):
                out[d] += row[d]


@jit_serial
def _owner(row, num_owners):
    """Which of num_owners threads owns a row: a multiplicative hash, then range reduction.

    Hashing spreads consecutive (often equally hot) rows over owners, and the
    multiply-shift avoids an integer division in the inner loop.
    """
    h = (row * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return ((h & np.uint64(0xFFFFFFFF)) * np.uint64(num_owners)) >> np.uint64(32)


@jit_serial
def _update_owned_rows(weights, row_start, offsets, indices, dpooled, lr, owner, num_owners):
    """Apply, in lookup order, every lookup's update whose row belongs to ``owner``."""
    num_tables, batch, dim = dpooled.shape
    window = PREFETCH_AHEAD * num_owners  # holds about PREFETCH_AHEAD of this owner's rows
    for t in range(num_tables):
        base = row_start[t]
        end = offsets[t, batch]
        for b in range(batch):
            for j in range(offsets[t, b], offsets[t, b + 1]):
                if j + window < end:  # only rows this owner will write
                    ahead = base + indices[j + window]
                    if _owner(np.uint64(ahead), num_owners) == owner:
                        for d in range(0, dim, 16):
                            prefetch_l2(weights, ahead, d)
                r = base + indices[j]
                if _owner(np.uint64(r), num_owners) == owner:
                    for d in range(dim):
                        weights[r, d] -= lr * dpooled[t, b, d]


@jit_parallel
def embedding_bags_sgd_update(weights, row_start, offsets, indices, dpooled, lr, num_owners):
    """weights (R, D) updated in place: weights[row] -= lr * dpooled[t, b] for each lookup.

    Race-free by row ownership: owner c applies every update whose row hashes to c, and
    no other owner touches that row. Each owner scans all lookups (cheap: 8 bytes each)
    but moves only its own rows (D * 4 bytes each, the expensive part). Updates to one
    row are applied in lookup order by one thread, so repeated indices sum exactly and
    the result does not depend on the thread count.
    """
    for c in prange(num_owners):
        _update_owned_rows(weights, row_start, offsets, indices, dpooled, lr, c, num_owners)


@jit_serial
def embedding_bags_sgd_update_serial(weights, row_start, offsets, indices, dpooled, lr):
    """As embedding_bags_sgd_update with one owner, on the calling thread (small batches)."""
    _update_owned_rows(weights, row_start, offsets, indices, dpooled, lr, 0, 1)


@jit_parallel
def embedding_bags_sgd_update_v1(weights, row_start, offsets, indices, dpooled, lr, num_owners):
    """As embedding_bags_sgd_update, prefetching 8 raw lookups ahead into L1."""
    num_tables, batch, dim = dpooled.shape
    # Race-free by row ownership, as embedding_bags_sgd_update.
    for c in prange(num_owners):
        for t in range(num_tables):
            base = row_start[t]
            end = offsets[t, batch]
            for b in range(batch):
                grad = dpooled[t, b]
                for j in range(offsets[t, b], offsets[t, b + 1]):
                    if j + PREFETCH_AHEAD_V1 < end:
                        ahead = base + indices[j + PREFETCH_AHEAD_V1]
                        if _owner(np.uint64(ahead), num_owners) == c:
                            for d in range(0, dim, 16):
                                prefetch(weights, ahead, d)
                    r = base + indices[j]
                    if _owner(np.uint64(r), num_owners) == c:
                        row = weights[r]
                        for d in range(dim):
                            row[d] -= lr * grad[d]


def embedding_bags_forward_naive(pooled, weights, row_start, offsets, indices):
    """The obvious loop, kept beside the kernel as its specification."""
    num_tables, batch, _ = pooled.shape
    for t in range(num_tables):
        for b in range(batch):
            rows = row_start[t] + indices[offsets[t, b] : offsets[t, b + 1]]
            pooled[t, b] = weights[rows].sum(axis=0)


# name -> kernel, for bench/bench_embedding.py and the tests; the best one first.
FORWARD_VERSIONS = {"v2": embedding_bags_forward, "v1": embedding_bags_forward_v1}
UPDATE_VERSIONS = {"v2": embedding_bags_sgd_update, "v1": embedding_bags_sgd_update_v1}
