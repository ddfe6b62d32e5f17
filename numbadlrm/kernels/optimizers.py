"""Adagrad kernels: dense over the flat buffer; fused sparse and row-wise for the tables.

The math (derived and checked in numbadlrm/reference_optim.py; lr is the step's lr after
the LR policy and Adagrad's lr_decay, eps defaults to 1e-10 as in torch):

    dense adagrad:     g' = g + weight_decay p;  s += g'^2;  p -= lr g' / (sqrt(s) + eps)
    table row r, with G[r] = sum of dpooled[t, b] over the batch's lookups of r:
    adagrad:           S[r] += G[r]^2;              E[r] -= lr G[r] / (sqrt(S[r]) + eps)
    rowwise adagrad:   s[r] += mean_d G[r, d]^2;    E[r] -= (lr / (sqrt(s[r]) + eps)) G[r]

State: dense ``s`` is shaped like the flat buffer; per-element ``S`` is (R, D) float32
like ``weights``; row-wise ``s`` is (R,) float32. Each starts at the initial accumulator
value (0 by default).

The table kernels share embedding_bags_sgd_update's calling convention (all tables in one
``weights`` (R, D) with ``row_start`` (T+1,), ``offsets`` (T, B+1), ``indices``,
``dpooled`` (T, B, D)) and its race-free row ownership: owner c applies the updates of the
rows that hash to c, and no other owner touches those rows or their state.

Adagrad is non-linear, so a row looked up n times must be updated once, from the sum of
its n bag gradients (torch coalesces its sparse gradient first). Neither a dense (R, D)
gradient nor a (lookups, D) gradient copy is built. Two scratch arrays owned by the
caller link each row's lookups instead:

    marks (R,) int64   marks[r] = rel(j) | bag(j) << 32, j the last lookup of row r so far
    chain (N,) int64   chain[j] = marks[r] as it was just before lookup j (its predecessor)

rel(j) = j - offsets[t, 0] is j's place in its table's lookups. Per table, each owner
makes two passes over the lookups of its rows:

    1. link:   in lookup order, chain[j] = marks[r] if that names an earlier lookup of r,
               then marks[r] = rel(j) | bag(j) << 32
    2. apply:  at the row's last lookup (marks[r] names j itself), G = dpooled[t, bag(j)]
               plus dpooled[t, bag] of every predecessor down the chain; update once

A stored value names "an earlier lookup of r in this batch" iff its rel p satisfies
p < rel(j) and indices[offsets[t, 0] + p] == indices[j]. This test is exact whatever the
arrays held before: a stale value that passed it would point at an earlier lookup of r
in this batch, whose pass-1 visit would already have overwritten marks[r]. So the scratch
arrays need no initialisation, no reset pass and no generation stamp, are not optimizer
state (not checkpointed), and may be shared by every call. Each row's G is summed in the
same order (last lookup first) by whichever owner holds it, so results do not depend on
the thread count.

Each parallel kernel has a ``*_serial`` twin that runs the same loops on the calling
thread (one owner), for work too small to pay for a parallel launch.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .cache_prefetch import prefetch_l2
from .embedding import PREFETCH_AHEAD, _owner
from .jit import jit_parallel_ieee as jit_parallel
from .jit import jit_serial_ieee as jit_serial

# A mark: rel(j) in bits 0-31, bag(j) in bits 32-61, REPEATED (bit 62) if row r was looked
# up before j in this batch. So a table may hold up to 2^32 lookups in up to 2^30 bags.
LOW32 = 0xFFFFFFFF
BAG_MASK = (1 << 30) - 1
REPEATED = 1 << 62
# Rows are owned in blocks of 16 (a 64-byte line of row-wise state, two of marks), so no
# two owners ever write to one cache line of them (given 64-byte aligned arrays).
ROW_BLOCK_SHIFT = 4


@jit_serial
def _row_owner(r, num_owners):
    """Which owner holds row r: its block's hash (kernels/embedding.py's _owner)."""
    return _owner(np.uint64(r >> ROW_BLOCK_SHIFT), num_owners)


# ------------------------------------------------------------------ dense flat buffer


@jit_serial
def _adagrad_range(params, state, grads, lr, eps, weight_decay, lo, hi):
    if weight_decay != 0:
        for k in range(lo, hi):
            g = grads[k] + weight_decay * params[k]
            s = state[k] + g * g
            state[k] = s
            params[k] -= lr * g / (np.sqrt(s) + eps)
    else:
        for k in range(lo, hi):
            g = grads[k]
            s = state[k] + g * g
            state[k] = s
            params[k] -= lr * g / (np.sqrt(s) + eps)


@jit_parallel
def adagrad_update(params, state, grads, lr, eps, weight_decay):
    """params, state (n,) updated in place from grads (n,); lr, eps, weight_decay scalars."""
    n = params.shape[0]
    chunks = min(n, 256)
    # Chunk c reads and writes only elements [c n / chunks, (c + 1) n / chunks): race-free.
    for c in prange(chunks):
        _adagrad_range(
            params, state, grads, lr, eps, weight_decay, c * n // chunks, (c + 1) * n // chunks
        )


@jit_serial
def adagrad_update_serial(params, state, grads, lr, eps, weight_decay):
    """adagrad_update on the calling thread."""
    _adagrad_range(params, state, grads, lr, eps, weight_decay, 0, params.shape[0])


# ------------------------------------------------------------------ embedding tables


# The loops below are written out in one function each: a call taking arrays costs an
# atomic reference-count update per array, and atomics stall on the rows' pending misses.


@jit_serial
def _link_lookups(marks, chain, touched, row_start, offsets, indices, t, owner, num_owners):
    """Pass 1 over table t: list the owner's rows, chain their lookups. Returns the count."""
    batch = offsets.shape[1] - 1
    base, lo, end = row_start[t], offsets[t, 0], offsets[t, batch]
    marks_rows = marks.reshape((marks.shape[0], 1))  # a 2-D view for prefetch
    window = PREFETCH_AHEAD * num_owners  # about PREFETCH_AHEAD of this owner's lookups
    count = 0
    for b in range(batch):
        for j in range(offsets[t, b], offsets[t, b + 1]):
            if j + window < end:
                ahead = base + indices[j + window]
                if _row_owner(ahead, num_owners) == owner:
                    prefetch_l2(marks_rows, ahead, 0)
            idx = indices[j]
            r = base + idx
            if _row_owner(r, num_owners) != owner:
                continue
            rel, mark = j - lo, marks[r]
            if mark & LOW32 < rel and indices[lo + (mark & LOW32)] == idx:  # an earlier lookup
                chain[rel] = mark
                marks[r] = rel | (b << 32) | REPEATED
            else:
                touched[count] = r
                count += 1
                marks[r] = rel | (b << 32)
    return count


@jit_serial
def _apply_rows(weights, state, marks, chain, touched, count, g, dpooled, t, lr, eps, rowwise):
    """Pass 2 over table t: one update of each row in touched[:count], from its summed G."""
    dim = weights.shape[1]
    marks_rows = marks.reshape((marks.shape[0], 1))
    for i in range(count):
        if i + PREFETCH_AHEAD < count:
            ahead = touched[i + PREFETCH_AHEAD]
            prefetch_l2(marks_rows, ahead, 0)
            for d in range(0, dim, 16):  # one prefetch per 64-byte line
                prefetch_l2(weights, ahead, d)
            for d in range(0, state.shape[1], 16):
                prefetch_l2(state, ahead, d)
        r = touched[i]
        link = marks[r]  # the row's last lookup
        for d in range(dim):  # G = its bag's gradient + every earlier lookup's
            g[d] = dpooled[t, (link >> 32) & BAG_MASK, d]
        while link & REPEATED:  # the lookup link names has a predecessor: chain holds it
            link = chain[link & LOW32]
            for d in range(dim):
                g[d] += dpooled[t, (link >> 32) & BAG_MASK, d]
        if rowwise:
            total = 0.0
            for d in range(dim):
                total += g[d] * g[d]
            state[r, 0] += total / dim
            step = lr / (np.sqrt(state[r, 0]) + eps)
            for d in range(dim):
                weights[r, d] -= step * g[d]
        else:
            for d in range(dim):
                s = state[r, d] + g[d] * g[d]
                state[r, d] = s
                weights[r, d] -= lr * g[d] / (np.sqrt(s) + eps)


@jit_serial
def _update_owned_rows(
    weights, state, marks, chain, touched, g, row_start, offsets, indices, dpooled, lr, eps,
    rowwise, owner, num_owners,
):  # fmt: skip
    for t in range(dpooled.shape[0]):
        count = _link_lookups(marks, chain, touched, row_start, offsets, indices, t, owner,
                              num_owners)  # fmt: skip
        _apply_rows(weights, state, marks, chain, touched, count, g, dpooled, t, lr, eps, rowwise)


@jit_parallel
def embedding_bags_adagrad_update(
    weights,
    state,
    marks,
    chain,
    touched,
    row_start,
    offsets,
    indices,
    dpooled,
    lr,
    eps,
    num_owners,
):
    """weights, state (R, D) updated in place: one Adagrad step per looked-up row.

    marks (R,) int64, chain and touched (num_owners, L) int64 are scratch of any contents,
    L at least the most lookups of one table (offsets[t, B] - offsets[t, 0]).
    """
    scratch = np.empty((num_owners, weights.shape[1]), weights.dtype)  # one G per owner
    # Owner c reads and writes only the rows r whose block hashes to c (weights[r],
    # state[r], marks[r]) and its own chain[c], touched[c]; the rest is read-only: race-free.
    for c in prange(num_owners):
        _update_owned_rows(
            weights, state, marks, chain[c], touched[c], scratch[c], row_start, offsets,
            indices, dpooled, lr, eps, False, c, num_owners,
        )  # fmt: skip


@jit_serial
def embedding_bags_adagrad_update_serial(
    weights, state, marks, chain, touched, row_start, offsets, indices, dpooled, lr, eps
):
    """As embedding_bags_adagrad_update with one owner, on the calling thread."""
    g = np.empty(weights.shape[1], weights.dtype)
    _update_owned_rows(
        weights, state, marks, chain[0], touched[0], g, row_start, offsets, indices, dpooled,
        lr, eps, False, 0, 1,
    )  # fmt: skip


@jit_parallel
def embedding_bags_rowwise_adagrad_update(
    weights,
    state,
    marks,
    chain,
    touched,
    row_start,
    offsets,
    indices,
    dpooled,
    lr,
    eps,
    num_owners,
):
    """weights (R, D), state (R,) updated in place: one row-wise Adagrad step per looked-up row.

    marks (R,) int64, chain and touched (num_owners, L) int64 are scratch of any contents,
    L at least the most lookups of one table (offsets[t, B] - offsets[t, 0]).
    """
    state_rows = state.reshape((state.shape[0], 1))  # (R, 1): the per-element code's shape
    scratch = np.empty((num_owners, weights.shape[1]), weights.dtype)
    # Race-free by row ownership, as embedding_bags_adagrad_update.
    for c in prange(num_owners):
        _update_owned_rows(
            weights, state_rows, marks, chain[c], touched[c], scratch[c], row_start, offsets,
            indices, dpooled, lr, eps, True, c, num_owners,
        )  # fmt: skip


@jit_serial
def embedding_bags_rowwise_adagrad_update_serial(
    weights, state, marks, chain, touched, row_start, offsets, indices, dpooled, lr, eps
):
    """As embedding_bags_rowwise_adagrad_update with one owner, on the calling thread."""
    g = np.empty(weights.shape[1], weights.dtype)
    _update_owned_rows(
        weights, state.reshape((state.shape[0], 1)), marks, chain[0], touched[0], g,
        row_start, offsets, indices, dpooled, lr, eps, True, 0, 1,
    )  # fmt: skip
