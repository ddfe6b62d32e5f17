"""Embedding-bag kernels: sum-pooled forward and the fused backward + SGD update.

All T tables live in one buffer ``weights`` (total_rows, D); table t is the row range
``row_start[t]:row_start[t + 1]``. Offsets (T, B+1) index into the concatenated
``indices`` (see numbadlrm.batch).

    forward:  pooled[t, b] = sum_{j in bag (t, b)} weights[row_start[t] + indices[j]]
    update:   weights[row_start[t] + indices[j]] -= lr * dpooled[t, b]  for every lookup j

The update never builds a dense (rows, D) gradient nor a (lookups, D) copy: each
lookup reads its bag's pooled gradient and applies it straight to the row.

Both are random row gathers from tables far larger than the caches, so they are bound by
how many row misses are in flight, not by arithmetic. Versions (registered at the
bottom of this module; bench/bench_embedding.py times them side by side):

    v1  prefetch 8 lookups ahead into L1 (prefetcht0)
    v2  prefetch 16 lookups ahead (per owner in the update) into L2 only (prefetcht1):
        the L1 tracks few outstanding misses, the L2 many, so more rows are in flight
        (1.3-1.7x v1 at config b: bench/RESULTS.md, "Embedding versions")

v2's loop bodies are serial functions over a range of bags (forward) or one owner
(update); the parallel kernel runs them over chunks, and the ``*_serial`` entry points
run them whole on the calling thread, which the layer picks for small batches (a
parallel launch costs more than config a's microseconds of work).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..jit import jit_parallel, jit_serial
from ..prefetch import prefetch_l1 as prefetch
from ..prefetch import prefetch_l2
from ..registry import register

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
def _add_owned_rows(weights, row_start, offsets, indices, dpooled, scale, owner, num_owners):
    """weights[row] += scale * dpooled[t, b], in lookup order, for every lookup of bag (t, b)
    whose row belongs to ``owner``: the SGD update (scale = -lr) or a dense gradient
    (scale = 1)."""
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
                        weights[r, d] += scale * dpooled[t, b, d]


@jit_parallel
def _add_rows(weights, row_start, offsets, indices, dpooled, scale, num_owners):
    """weights[row] += scale * dpooled[t, b] for each lookup, in place.

    Race-free by row ownership: owner c applies every update whose row hashes to c, and
    no other owner touches that row. Each owner scans all lookups (cheap: 8 bytes each)
    but moves only its own rows (D * 4 bytes each, the expensive part). Updates to one
    row are applied in lookup order by one thread, so repeated indices sum exactly and
    the result does not depend on the thread count.
    """
    for c in prange(num_owners):
        _add_owned_rows(weights, row_start, offsets, indices, dpooled, scale, c, num_owners)


@jit_serial
def embedding_bags_sgd_update(weights, row_start, offsets, indices, dpooled, lr, num_owners):
    """weights (R, D) -= lr * dpooled[t, b] for each lookup of bag (t, b), in place (v2)."""
    _add_rows(weights, row_start, offsets, indices, dpooled, -lr, num_owners)


@jit_serial
def embedding_bags_sgd_update_serial(weights, row_start, offsets, indices, dpooled, lr):
    """As embedding_bags_sgd_update with one owner, on the calling thread (small batches)."""
    _add_owned_rows(weights, row_start, offsets, indices, dpooled, -lr, 0, 1)


@jit_serial
def embedding_bags_gradient(dweights, row_start, offsets, indices, dpooled, num_owners):
    """dweights (R, D) += dpooled[t, b] for each lookup: the dense gradient of small tables
    (the MPI model's replicated tables, whose gradients are allreduced)."""
    _add_rows(dweights, row_start, offsets, indices, dpooled, np.float32(1.0), num_owners)


@jit_serial
def embedding_bags_gradient_serial(dweights, row_start, offsets, indices, dpooled):
    """As embedding_bags_gradient on the calling thread."""
    _add_owned_rows(dweights, row_start, offsets, indices, dpooled, np.float32(1.0), 0, 1)


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


def embedding_bags_sgd_update_naive(weights, row_start, offsets, indices, dpooled, lr):
    """The obvious scatter-add, kept beside the kernel as its specification."""
    num_tables, batch, _ = dpooled.shape
    for t in range(num_tables):
        for b in range(batch):
            rows = row_start[t] + indices[offsets[t, b] : offsets[t, b + 1]]
            np.subtract.at(weights, rows, np.float32(lr) * dpooled[t, b])


# ----------------------------------------------------------------- registry
# The ops' calling conventions (numbadlrm.kernels.registry): the update's owner count is
# the thread count, read here, outside the kernels, so that they cache.


def _update_v2(weights, row_start, offsets, indices, dpooled, lr):
    owners = numba.get_num_threads()  # one owner per thread
    embedding_bags_sgd_update(weights, row_start, offsets, indices, dpooled, np.float32(lr), owners)


def _update_v2_serial(weights, row_start, offsets, indices, dpooled, lr):
    embedding_bags_sgd_update_serial(weights, row_start, offsets, indices, dpooled, np.float32(lr))


def _update_v1(weights, row_start, offsets, indices, dpooled, lr):
    owners = numba.get_num_threads()
    embedding_bags_sgd_update_v1(
        weights, row_start, offsets, indices, dpooled, np.float32(lr), owners
    )


def _gradient(dweights, row_start, offsets, indices, dpooled):
    embedding_bags_gradient(dweights, row_start, offsets, indices, dpooled, numba.get_num_threads())


register(
    "embedding_forward",
    "naive",
    embedding_bags_forward_naive,
    description="the obvious NumPy loop over bags (the specification)",
)
register(
    "embedding_forward",
    "v1",
    embedding_bags_forward_v1,
    description="one bag per iteration, prefetch 8 lookups ahead into L1",
)
register(
    "embedding_forward",
    "v2",
    embedding_bags_forward,
    embedding_bags_forward_serial,
    "chunks of bags, prefetch 16 lookups ahead into L2 only",
    default=True,
)
register(
    "embedding_update",
    "naive",
    embedding_bags_sgd_update_naive,
    description="np.subtract.at per bag (the specification)",
)
register(
    "embedding_update",
    "v1",
    _update_v1,
    description="row ownership by hash, prefetch 8 raw lookups ahead into L1",
)
register(
    "embedding_update",
    "v2",
    _update_v2,
    _update_v2_serial,
    "row ownership by hash, prefetch 16 of the owner's rows ahead into L2",
    default=True,
)
register(
    "embedding_gradient",
    "v1",
    _gradient,
    embedding_bags_gradient_serial,
    "the v2 update's loop adding dpooled (scale 1) into a zeroed gradient",
    default=True,
)
