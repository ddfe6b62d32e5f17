"""Adagrad kernels: dense over the flat buffer; fused sparse and row-wise for the tables.

The math (derived and checked in numbadlrm/reference_optim.py; lr is the step's lr after
the LR policy and Adagrad's lr_decay, eps defaults to 1e-10 as in torch):

    dense adagrad:     g' = g + weight_decay p;  s += g'^2;  p -= lr g' / (sqrt(s) + eps)
    table row r, with G[r] = sum of dpooled[t, b] over the batch's lookups of r:
    adagrad:           S[r] += G[r]^2;              E[r] -= lr G[r] / (sqrt(S[r]) + eps)
    rowwise adagrad:   s[r] += mean_d G[r, d]^2;    E[r] -= (lr / (sqrt(s[r]) + eps)) G[r]

State: dense ``s`` is shaped like the flat buffer; per-element ``S`` is (R, D) float32
like ``weights``; row-wise ``s`` is (R,) float32. Each starts at the initial accumulator
value (0 by default). The table kernels take no weight decay: torch refuses it with
sparse gradients, and so does the reference's RWSAdagrad.

The table kernels share embedding_bags_sgd_update's calling convention (all tables in one
``weights`` (R, D) with ``row_start`` (T+1,), ``offsets`` (T, B+1), ``indices``,
``dpooled`` (T, B, D)) and its race-free row ownership: owner c applies the updates of the
rows whose block of 16 rows hashes to c, and no other owner touches them or their state.

Adagrad is non-linear, so a row looked up n times must be updated once, from the sum of
its n bag gradients (torch coalesces its sparse gradient first). Neither a dense (R, D)
gradient nor a (lookups, D) gradient copy is built: scratch owned by the caller links
each row's lookups instead. Per table, owner c keeps in ``lists[c]`` (4, L) int64:

    owned[i]     its i-th lookup j: rel | bag << 32 (rel = j - offsets[t, 0])
    rows[k]      its k-th distinct row (in first-lookup order)
    last[k]      that row's last lookup so far: i | bag << 32 | REPEATED (if not the first)
    chain[i]     for a repeated lookup i, the ``last`` value of the row's previous lookup
    marks[r]     (R,) int32, shared: k, row r's place in its owner's list

and three passes run per table:

    0. select: owned[:n] = the owner's lookups, in order (branch-free: with several
               owners "is it mine?" is a coin toss a branch would mispredict)
    1. link:   for each owned lookup i (bag b, row r): if k = marks[r] is a listed place
               (0 <= k < count and rows[k] == r), chain[i] = last[k] and
               last[k] = i | b << 32 | REPEATED; else list r: rows[count] = r,
               last[count] = i | b << 32, marks[r] = count, count += 1
    2. apply:  for each listed row: G = dpooled[t, bag of last[k]], plus dpooled[t, bag]
               of each earlier lookup down the chain while REPEATED; one update from G
               (read from the owner's copy of dpooled[t], (B+1, D), whose row B holds
               the G of a repeated row: one array for both, no copy of a row used once)

The test "0 <= marks[r] < count and rows[marks[r]] == r" is exact whatever marks held
before: a stale k that passed it would name a place where r was listed in this pass, and
listing r set marks[r] to that k. So the scratch needs no initialisation, no reset pass
and no generation stamp, is not optimizer state (not checkpointed), and may be shared by
every call. Each row's G is summed in the same order (last lookup first) by whichever
owner holds it, so results do not depend on the thread count. Pass 2 touches only the
owner's lists, its rows and their state, so each row's lines are prefetched exactly.

Each parallel kernel has a ``*_serial`` twin that runs the same loops on the calling
thread (one owner), for work too small to pay for a parallel launch.

    rowwise from a dense gradient (the MPI model's replicated tables, allreduced):
                       per row r of grads (R, D): the row-wise line above, G = grads[r]

Registered (bottom of this module) as the ops dense_update_adagrad,
embedding_update_adagrad, embedding_update_rowwise_adagrad and
dense_update_rowwise_adagrad, each with a "naive" version that runs
numbadlrm.reference_optim; the model calls them through numbadlrm/optimizers.py.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import reference_optim
from .cache_prefetch import prefetch_l2
from .embedding import PREFETCH_AHEAD, _owner
from .jit import jit_parallel_ieee as jit_parallel
from .jit import jit_serial_ieee as jit_serial
from .registry import register

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

# owned, last and chain entries: rel or i in bits 0-31, bag in bits 32-61, REPEATED (bit 62).
# So a table holds fewer than 2^31 lookups (marks is int32) in fewer than 2^30 bags.
LOW32 = 0xFFFFFFFF
BAG_MASK = (1 << 30) - 1
REPEATED = 1 << 62
# Rows are owned in blocks of 16 (a 64-byte line of marks, of row-wise state), so no two
# owners ever write to one cache line of them (given 64-byte aligned arrays).
ROW_BLOCK_SHIFT = 4
# Prefetch distances. Pass 1 does little per lookup, so it looks further ahead: marks
# 64 lookups ahead, then the listed place marks names 16 ahead. Pass 2 prefetches each
# row's lines 16 rows ahead and, for a repeated row, its first chain entry 32 rows ahead,
# then that entry's bag gradient 16 ahead. Measured (config b, uniform ids, row-wise):
# the link window 16 -> 64 lookups, pass 1 2.8 -> 2.0 ms (one table, 1 thread); the chain
# prefetch, pass 2 8.1 -> 6.0 ms (same); the listed-place prefetch, the whole update
# 46.7 -> 42.7 ms (8 tables, 2 threads, one process, alternating batches).
LINK_AHEAD = 64

# Each pass is one function whose loops call no function taking arrays: such a call costs
# atomic reference-count updates, which wait for the rows' pending misses (200 ns a row).


@jit_serial
def _row_owner(r, num_owners):
    """Which owner holds row r: its block's hash (kernels/embedding.py's _owner)."""
    return _owner(np.uint64(r >> ROW_BLOCK_SHIFT), num_owners)


@jit_serial
def _select_lookups(owned, offsets, indices, base, t, owner, num_owners):
    """Pass 0 over table t: owned[:n] = rel | bag << 32 of the owner's lookups. Returns n."""
    lo, n = offsets[t, 0], 0
    for b in range(offsets.shape[1] - 1):
        for j in range(offsets[t, b], offsets[t, b + 1]):
            owned[n] = (j - lo) | (b << 32)  # kept only if mine: no branch
            n += _row_owner(base + indices[j], num_owners) == owner
    return n


@jit_serial
def _link_lookups(marks, rows, last, chain, owned, n, base, lo, indices):
    """Pass 1 over owned[:n]: list the owner's rows, chain their lookups. Returns the count."""
    marks_rows, rows_rows = marks.reshape((marks.shape[0], 1)), rows.reshape((rows.shape[0], 1))
    top = rows.shape[0] - 1
    count = 0
    for i in range(n):
        if i + LINK_AHEAD < n:
            prefetch_l2(marks_rows, base + indices[lo + (owned[i + LINK_AHEAD] & LOW32)], 0)
        if i + PREFETCH_AHEAD < n:  # the place marks names (its line arrived by now)
            ahead = marks[base + indices[lo + (owned[i + PREFETCH_AHEAD] & LOW32)]]
            prefetch_l2(rows_rows, min(max(ahead, 0), top), 0)
        rel = owned[i] & LOW32
        r = base + indices[lo + rel]
        k = marks[r]
        here = (owned[i] & ~LOW32) | i  # bag | i: this lookup by its place in owned
        if (k >= 0) & (k < count) & (rows[min(max(k, 0), top)] == r):  # r is listed
            chain[i] = last[k]
            last[k] = here | REPEATED
        else:
            rows[count] = r
            last[count] = here
            marks[r] = count
            count += 1
    return count


@jit_serial
def _apply_rows(weights, state, rows, last, chain, count, grads, lr, eps, rowwise):
    """Pass 2: one update of each listed row from its G. grads (B+1, D): the table's
    dpooled, then a row for the G of a repeated row."""
    dim, batch = weights.shape[1], grads.shape[0] - 1
    chain_rows = chain.reshape((chain.shape[0], 1))  # a 2-D view for prefetch
    for k in range(count):
        if k + 2 * PREFETCH_AHEAD < count and last[k + 2 * PREFETCH_AHEAD] & REPEATED:
            prefetch_l2(chain_rows, last[k + 2 * PREFETCH_AHEAD] & LOW32, 0)
        if k + PREFETCH_AHEAD < count:
            ahead = rows[k + PREFETCH_AHEAD]
            for d in range(0, dim, 16):  # one prefetch per 64-byte line
                prefetch_l2(weights, ahead, d)
            for d in range(0, state.shape[1], 16):
                prefetch_l2(state, ahead, d)
            if last[k + PREFETCH_AHEAD] & REPEATED:  # its chain entry arrived by now
                link = chain[last[k + PREFETCH_AHEAD] & LOW32]
                for d in range(0, dim, 16):
                    prefetch_l2(grads, (link >> 32) & BAG_MASK, d)
                prefetch_l2(chain_rows, link & LOW32, 0)
        r, link = rows[k], last[k]
        gi = (link >> 32) & BAG_MASK  # G = grads[gi]: its bag's gradient if looked up once,
        if link & REPEATED:  # else the sum over its lookups, gathered into grads[B]
            for d in range(dim):
                grads[batch, d] = grads[gi, d]
            while link & REPEATED:
                link = chain[link & LOW32]
                for d in range(dim):
                    grads[batch, d] += grads[(link >> 32) & BAG_MASK, d]
            gi = batch
        if rowwise:
            total = 0.0
            for d in range(dim):
                total += grads[gi, d] * grads[gi, d]
            state[r, 0] += total / dim
            step = lr / (np.sqrt(state[r, 0]) + eps)
            for d in range(dim):
                weights[r, d] -= step * grads[gi, d]
        else:
            for d in range(dim):
                s = state[r, d] + grads[gi, d] * grads[gi, d]
                state[r, d] = s
                weights[r, d] -= lr * grads[gi, d] / (np.sqrt(s) + eps)


@jit_serial
def _update_owned_rows(
    weights, state, marks, lists, grads, row_start, offsets, indices, dpooled, lr, eps,
    rowwise, owner, num_owners,
):  # fmt: skip
    """The three passes over every table, for one owner: lists (4, L), grads (B+1, D) its own."""
    rows, last, chain, owned = lists[0], lists[1], lists[2], lists[3]
    batch, dim = dpooled.shape[1], dpooled.shape[2]
    for t in range(dpooled.shape[0]):
        base, lo = row_start[t], offsets[t, 0]
        n = _select_lookups(owned, offsets, indices, base, t, owner, num_owners)
        count = _link_lookups(marks, rows, last, chain, owned, n, base, lo, indices)
        for b in range(batch):  # the owner's copy: G of a repeated row goes in row B
            for d in range(dim):
                grads[b, d] = dpooled[t, b, d]
        _apply_rows(weights, state, rows, last, chain, count, grads, lr, eps, rowwise)


@jit_parallel
def embedding_bags_adagrad_update(
    weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps, num_owners
):
    """weights, state (R, D) updated in place: one Adagrad step per looked-up row.

    marks (R,) int32 and lists (num_owners, 4, L) int64 are scratch of any contents, L at
    least the most lookups of one table (offsets[t, B] - offsets[t, 0]).
    """
    # Each owner's copy of a table's dpooled (B, D) and a row for a repeated row's G.
    grads = np.empty((num_owners, dpooled.shape[1] + 1, weights.shape[1]), weights.dtype)
    # Owner c reads and writes only the rows r whose block hashes to c (weights[r],
    # state[r], marks[r]) and its own lists[c], grads[c]; the rest is read-only: race-free.
    for c in prange(num_owners):
        _update_owned_rows(
            weights, state, marks, lists[c], grads[c], row_start, offsets, indices, dpooled,
            lr, eps, False, c, num_owners,
        )  # fmt: skip


@jit_serial
def embedding_bags_adagrad_update_serial(
    weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps
):
    """As embedding_bags_adagrad_update with one owner (lists[0]), on the calling thread."""
    grads = np.empty((dpooled.shape[1] + 1, weights.shape[1]), weights.dtype)
    _update_owned_rows(
        weights, state, marks, lists[0], grads, row_start, offsets, indices, dpooled, lr, eps,
        False, 0, 1,
    )  # fmt: skip


@jit_parallel
def embedding_bags_rowwise_adagrad_update(
    weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps, num_owners
):
    """weights (R, D), state (R,) updated in place: one row-wise Adagrad step per looked-up row.

    marks (R,) int32 and lists (num_owners, 4, L) int64 are scratch of any contents, L at
    least the most lookups of one table (offsets[t, B] - offsets[t, 0]).
    """
    state_rows = state.reshape((state.shape[0], 1))  # (R, 1): the per-element code's shape
    grads = np.empty((num_owners, dpooled.shape[1] + 1, weights.shape[1]), weights.dtype)
    # Race-free by row ownership, as embedding_bags_adagrad_update.
    for c in prange(num_owners):
        _update_owned_rows(
            weights, state_rows, marks, lists[c], grads[c], row_start, offsets, indices,
            dpooled, lr, eps, True, c, num_owners,
        )  # fmt: skip


@jit_serial
def embedding_bags_rowwise_adagrad_update_serial(
    weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps
):
    """As embedding_bags_rowwise_adagrad_update with one owner, on the calling thread."""
    grads = np.empty((dpooled.shape[1] + 1, weights.shape[1]), weights.dtype)
    _update_owned_rows(
        weights, state.reshape((state.shape[0], 1)), marks, lists[0], grads, row_start, offsets,
        indices, dpooled, lr, eps, True, 0, 1,
    )  # fmt: skip


# ------------------------------------------------------- row-wise from a dense gradient


@jit_serial
def _rowwise_dense_rows(weights, state, grads, lr, eps, lo, hi):
    """Rows lo..hi-1: the same per-row arithmetic as _apply_rows' row-wise branch."""
    dim = weights.shape[1]
    for r in range(lo, hi):
        total = 0.0
        for d in range(dim):
            total += grads[r, d] * grads[r, d]
        state[r] += total / dim
        step = lr / (np.sqrt(state[r]) + eps)
        for d in range(dim):
            weights[r, d] -= step * grads[r, d]


@jit_parallel
def rowwise_adagrad_dense_update(weights, state, grads, lr, eps):
    """weights (R, D), state (R,) updated in place from a dense gradient grads (R, D).

    For the MPI model's replicated tables, whose gradient is dense (allreduced): a row
    nobody looked up has G = 0 and keeps its weights and state, as in the sparse update.
    """
    n = weights.shape[0]
    chunks = min(n, 256)
    # Chunk c reads and writes only rows [c n / chunks, (c + 1) n / chunks): race-free.
    for c in prange(chunks):
        _rowwise_dense_rows(weights, state, grads, lr, eps, c * n // chunks, (c + 1) * n // chunks)


@jit_serial
def rowwise_adagrad_dense_update_serial(weights, state, grads, lr, eps):
    """rowwise_adagrad_dense_update on the calling thread."""
    _rowwise_dense_rows(weights, state, grads, lr, eps, 0, weights.shape[0])


# ----------------------------------------------------------------- registry
# The ops' calling conventions (numbadlrm.kernels.registry). The table ops take their
# owner count from the scratch: lists (owners, 4, L), one owner per thread (the layer
# allocates it so), read outside the kernels so that they cache.


def _sparse_adagrad(weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps):
    embedding_bags_adagrad_update(
        weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps, lists.shape[0]
    )


def _sparse_rowwise(weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps):
    embedding_bags_rowwise_adagrad_update(
        weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps, lists.shape[0]
    )


def _naive_sparse(reference):
    def run(weights, state, marks, lists, row_start, offsets, indices, dpooled, lr, eps):
        reference(weights, state, row_start, offsets, indices, dpooled, lr, eps)

    return run


def _naive_dense(params, state, grads, lr, eps, weight_decay):
    reference_optim.adagrad(params, state, grads, lr, eps, weight_decay)


def _naive_rowwise_dense(weights, state, grads, lr, eps):
    reference_optim.rowwise_adagrad(weights, state, grads, lr, eps)


_NAIVE = "numbadlrm.reference_optim in NumPy (the specification)"
register("dense_update_adagrad", "naive", _naive_dense, description=_NAIVE)
register(
    "dense_update_adagrad",
    "v1",
    adagrad_update,
    adagrad_update_serial,
    "256 chunks of the buffer, one pass each",
    default=True,
)
register("embedding_update_adagrad", "naive", _naive_sparse(reference_optim.embedding_adagrad),
         description=_NAIVE)  # fmt: skip
register(
    "embedding_update_adagrad",
    "v1",
    _sparse_adagrad,
    embedding_bags_adagrad_update_serial,
    "row ownership by hash; select, link, apply passes per table (no gradient copy)",
    default=True,
)
register(
    "embedding_update_rowwise_adagrad",
    "naive",
    _naive_sparse(reference_optim.embedding_rowwise_adagrad),
    description=_NAIVE,
)
register(
    "embedding_update_rowwise_adagrad",
    "v1",
    _sparse_rowwise,
    embedding_bags_rowwise_adagrad_update_serial,
    "row ownership by hash; select, link, apply passes per table (no gradient copy)",
    default=True,
)
register("dense_update_rowwise_adagrad", "naive", _naive_rowwise_dense, description=_NAIVE)
register(
    "dense_update_rowwise_adagrad",
    "v1",
    rowwise_adagrad_dense_update,
    rowwise_adagrad_dense_update_serial,
    "256 chunks of rows, one pass each",
    default=True,
)
