"""Adagrad kernels: dense over the flat buffer; fused sparse and row-wise for the tables.

The math (derived and checked in numbadlrm/optim/reference.py; lr is the step's lr after
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
gradient nor a (lookups, D) gradient copy is built: each owner sorts its lookups by row
instead, in scratch owned by the caller, ``lists[c]`` (2, L) int64 (L at least the most
lookups of one table). Per table, three passes run:

    1. select: keys[:n] = row << bag_bits | bag of the owner's lookups, in lookup order
               (branch-free: with several owners "is it mine?" is a coin toss a branch
               would mispredict); bag_bits = bits of B - 1
    2. sort:   a stable least-significant-digit radix sort of keys[:n] by row (digits of
               at most 11 bits, ping-ponging between lists[c, 0] and lists[c, 1]; a
               digit every key shares is skipped)
    3. apply:  for each run of equal rows: G = dpooled[t, bag] summed over the run in
               lookup order; one update of the row and its state from G

Sorting makes the runs (no per-row marks over the table, no links to chase) and walks
the rows in address order, so neighbouring rows share DRAM pages and row-wise state
lines; the rows' lines are prefetched 16 keys ahead. Every pass writes the scratch before
reading it, so its contents between calls do not matter: it needs no initialisation, is
not optimizer state (not checkpointed), and may be shared by every call. Each row's G is
summed in the same order by whichever owner holds it, so results do not depend on the
thread count. Rows are numbered within their table, so keys hold rows below
2^(63 - bag_bits): 2^52 at B = 2048.

Each parallel kernel has a ``*_serial`` twin that runs the same loops on the calling
thread (one owner), for work too small to pay for a parallel launch.

    rowwise from a dense gradient (the MPI model's replicated tables, allreduced):
                       per row r of grads (R, D): the row-wise line above, G = grads[r]

Registered (bottom of this module) as the ops dense_update_adagrad,
embedding_update_adagrad, embedding_update_rowwise_adagrad and
dense_update_rowwise_adagrad, each with a "naive" version that runs
numbadlrm.optim.reference; the model calls them through numbadlrm/optim/optimizers.py.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ...optim import reference as reference_optim
from ..jit import jit_parallel_ieee as jit_parallel
from ..jit import jit_serial_ieee as jit_serial
from ..prefetch import prefetch_l2
from ..registry import register
from .bags import PREFETCH_AHEAD, _owner

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

# Rows are owned in blocks of 16 (a 64-byte line of row-wise state), so no two owners
# ever write to one cache line of state (given 64-byte aligned arrays).
ROW_BLOCK_SHIFT = 4
# The sort's digits: at most 11 bits (a 16 KiB count table per pass, in L1), so a table
# of 2^22 rows sorts in 2 passes and one of 2^33 in 3.
DIGIT_BITS = 11

# Each pass is one function whose loops call no function taking arrays: such a call costs
# atomic reference-count updates, which wait for the rows' pending misses (200 ns a row).


@jit_serial
def _row_owner(r, num_owners):
    """Which owner holds row r: its block's hash (kernels/embedding/bags.py's _owner)."""
    return _owner(np.uint64(r >> ROW_BLOCK_SHIFT), num_owners)


@jit_serial
def _bit_length(n):
    """Bits needed to write every value below n (0 for n <= 1)."""
    bits = 0
    while (1 << bits) < n:
        bits += 1
    return bits


@jit_serial
def _select_keys(keys, offsets, indices, base, t, bag_bits, owner, num_owners):
    """Pass 1 over table t: keys[:n] = row << bag_bits | bag of the owner's lookups, in
    lookup order. Returns n."""
    n = 0
    for b in range(offsets.shape[1] - 1):
        for j in range(offsets[t, b], offsets[t, b + 1]):
            keys[n] = (indices[j] << bag_bits) | b  # kept only if mine: no branch
            n += _row_owner(base + indices[j], num_owners) == owner
    return n


@jit_serial
def _sort_keys(keys, spare, n, bag_bits, row_bits):
    """Pass 2: keys[:n] sorted by row, stably (a least-significant-digit radix sort over
    the row bits), ending in keys or spare. Returns 0 if in keys, 1 if in spare."""
    passes = (row_bits + DIGIT_BITS - 1) // DIGIT_BITS
    if passes == 0 or n < 2:
        return 0
    width = (row_bits + passes - 1) // passes
    mask = (1 << width) - 1
    counts = np.zeros((passes, 1 << width), np.int64)
    for i in range(n):
        row = keys[i] >> bag_bits
        for p in range(passes):
            counts[p, (row >> (p * width)) & mask] += 1
    flipped = 0
    for p in range(passes):
        shift = bag_bits + p * width
        total = 0
        for d in range(1 << width):  # counts -> first place of each digit
            c = counts[p, d]
            counts[p, d] = total
            total += c
            if c == n:  # every key has this digit: the pass would not move one
                total = -1
                break
        if total < 0:
            continue
        src, dst = (keys, spare) if flipped == 0 else (spare, keys)
        for i in range(n):
            k = src[i]
            d = (k >> shift) & mask
            dst[counts[p, d]] = k
            counts[p, d] += 1
        flipped = 1 - flipped
    return flipped


@jit_serial
def _apply_rows(weights, state, keys, n, base, bag_bits, grads, acc, lr, eps, rowwise):
    """Pass 3 over keys[:n] (sorted by row): one update of each row from its G, the sum of
    grads[bag] over its run of keys. grads (B, D): the table's dpooled; acc (D,) scratch."""
    dim, bag_mask = weights.shape[1], (1 << bag_bits) - 1
    ahead = 0  # keys below it are prefetched
    i = 0
    while i < n:
        row = keys[i] >> bag_bits
        stop = i + 1
        while stop < n and keys[stop] >> bag_bits == row:
            stop += 1
        while ahead < min(stop + PREFETCH_AHEAD, n):  # this row's run and 16 lookups on
            r_ahead = base + (keys[ahead] >> bag_bits)
            for d in range(0, dim, 16):  # one prefetch per 64-byte line
                prefetch_l2(weights, r_ahead, d)
            for d in range(0, state.shape[1], 16):
                prefetch_l2(state, r_ahead, d)
            ahead += 1
        r, first = base + row, keys[i] & bag_mask
        if stop - i > 1:  # looked up more than once: G summed in lookup order
            for d in range(dim):
                acc[d] = grads[first, d]
            for m in range(i + 1, stop):
                for d in range(dim):
                    acc[d] += grads[keys[m] & bag_mask, d]
            g = acc
        else:  # a view, not a copy: copying each row's G costs ~10% (measured, config b)
            g = grads[first]
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
        i = stop


@jit_serial
def _update_owned_rows(
    weights, state, lists, acc, row_start, offsets, indices, dpooled, lr, eps, rowwise,
    owner, num_owners,
):  # fmt: skip
    """The three passes over every table, for one owner: lists (2, L), acc (D,) its own."""
    bag_bits = _bit_length(dpooled.shape[1])
    for t in range(dpooled.shape[0]):
        base = row_start[t]
        row_bits = _bit_length(row_start[t + 1] - base)
        n = _select_keys(lists[0], offsets, indices, base, t, bag_bits, owner, num_owners)
        keys = lists[_sort_keys(lists[0], lists[1], n, bag_bits, row_bits)]
        _apply_rows(weights, state, keys, n, base, bag_bits, dpooled[t], acc, lr, eps, rowwise)


@jit_parallel
def embedding_bags_adagrad_update(
    weights, state, lists, row_start, offsets, indices, dpooled, lr, eps, num_owners
):
    """weights, state (R, D) updated in place: one Adagrad step per looked-up row.

    lists (num_owners, 2, L) int64 is scratch of any contents, L at least the most lookups
    of one table (offsets[t, B] - offsets[t, 0]).
    """
    acc = np.empty((num_owners, weights.shape[1]), weights.dtype)
    # Owner c reads and writes only the rows r whose block hashes to c (weights[r],
    # state[r]) and its own lists[c], acc[c]; the rest is read-only: race-free.
    for c in prange(num_owners):
        _update_owned_rows(
            weights, state, lists[c], acc[c], row_start, offsets, indices, dpooled, lr, eps,
            False, c, num_owners,
        )  # fmt: skip


@jit_serial
def embedding_bags_adagrad_update_serial(
    weights, state, lists, row_start, offsets, indices, dpooled, lr, eps
):
    """As embedding_bags_adagrad_update with one owner (lists[0]), on the calling thread."""
    acc = np.empty(weights.shape[1], weights.dtype)
    _update_owned_rows(
        weights, state, lists[0], acc, row_start, offsets, indices, dpooled, lr, eps, False, 0, 1
    )


@jit_parallel
def embedding_bags_rowwise_adagrad_update(
    weights, state, lists, row_start, offsets, indices, dpooled, lr, eps, num_owners
):
    """weights (R, D), state (R,) updated in place: one row-wise Adagrad step per looked-up row.

    lists (num_owners, 2, L) int64 is scratch of any contents, L at least the most lookups
    of one table (offsets[t, B] - offsets[t, 0]).
    """
    state_rows = state.reshape((state.shape[0], 1))  # (R, 1): the per-element code's shape
    acc = np.empty((num_owners, weights.shape[1]), weights.dtype)
    # Race-free by row ownership, as embedding_bags_adagrad_update.
    for c in prange(num_owners):
        _update_owned_rows(
            weights, state_rows, lists[c], acc[c], row_start, offsets, indices, dpooled, lr,
            eps, True, c, num_owners,
        )  # fmt: skip


@jit_serial
def embedding_bags_rowwise_adagrad_update_serial(
    weights, state, lists, row_start, offsets, indices, dpooled, lr, eps
):
    """As embedding_bags_rowwise_adagrad_update with one owner, on the calling thread."""
    acc = np.empty(weights.shape[1], weights.dtype)
    _update_owned_rows(
        weights, state.reshape((state.shape[0], 1)), lists[0], acc, row_start, offsets,
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
# owner count from the scratch: lists (owners, 2, L), one owner per thread (the layer
# allocates it so), read outside the kernels so that they cache.


def _sparse_adagrad(weights, state, lists, row_start, offsets, indices, dpooled, lr, eps):
    embedding_bags_adagrad_update(
        weights, state, lists, row_start, offsets, indices, dpooled, lr, eps, lists.shape[0]
    )


def _sparse_rowwise(weights, state, lists, row_start, offsets, indices, dpooled, lr, eps):
    embedding_bags_rowwise_adagrad_update(
        weights, state, lists, row_start, offsets, indices, dpooled, lr, eps, lists.shape[0]
    )


def _naive_sparse(reference):
    def run(weights, state, lists, row_start, offsets, indices, dpooled, lr, eps):
        reference(weights, state, row_start, offsets, indices, dpooled, lr, eps)

    return run


def _naive_dense(params, state, grads, lr, eps, weight_decay):
    reference_optim.adagrad(params, state, grads, lr, eps, weight_decay)


def _naive_rowwise_dense(weights, state, grads, lr, eps):
    reference_optim.rowwise_adagrad(weights, state, grads, lr, eps)


_NAIVE = "numbadlrm.optim.reference in NumPy (the specification)"
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
    "v2",
    _sparse_adagrad,
    embedding_bags_adagrad_update_serial,
    "row ownership by hash; select, radix-sort by row, apply passes per table",
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
    "v2",
    _sparse_rowwise,
    embedding_bags_rowwise_adagrad_update_serial,
    "row ownership by hash; select, radix-sort by row, apply passes per table",
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
