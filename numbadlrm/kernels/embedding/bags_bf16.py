"""Embedding bags on split-bf16 tables: bf16 forward, exact fp32 fused sparse SGD update.

Layout. All T tables live in one uint16 buffer ``tables`` (R, 2, D): row r's bf16 weights
(the hi halves) are ``tables[r, 0]`` and the bottom halves of its fp32 master values
``tables[r, 1]`` (kernels/bf16.py), so the fp32 value of element d is
``(tables[r, 0, d] << 16) | tables[r, 1, d]``. Table t is rows ``row_start[t]:row_start[t+1]``;
offsets (T, B+1) and indices as kernels/embedding/bags.py.

    forward:  pooled[t, b] = sum_{j in bag (t, b)} tables[row_start[t] + indices[j], 0]
              (the bf16 values, summed in fp32 into pooled (T, B, D) float32)
    update:   w = merge(row);  w -= lr dpooled[t, b] (fp32);  row = split(w), for every lookup j

Why (R, 2, D) and not two arrays or interleaved halves, by bytes per lookup (D = 64):

    layout                       forward reads        update reads + writes
    fp32 (R, D)                  256 B (4 lines)      256 + 256 B, 4 lines, 1 page
    (R, 2, D) hi block, lo block 128 B (2 lines)      256 + 256 B, 4 lines, 1 page
    two arrays hi (R, D), lo     128 B (2 lines)      256 + 256 B, 4 lines, 2 pages
    one uint32 array, halves     256 B (4 lines)      256 + 256 B, 4 lines, 1 page

The forward reads only the hi block: half of fp32's bytes. The update must read and write
both halves (exact fp32 SGD), as many bytes as fp32; keeping them in one 256-byte run
costs one page walk and one run of adjacent lines per lookup, where two arrays cost two.
A (R, 2, D) uint16 buffer has exactly the bytes of a (R, D) float32 one, so it can be
a view of ``params.table_buffer`` (huge pages), and ``split_rows`` converts an fp32
table into it in place (no second copy, no higher peak memory).

The update is the fp32 kernel's (kernels/embedding/bags.py embedding_bags_sgd_update) with the
merge and split around its FMA: race-free by the same row ownership, updates applied in
lookup order, so merge(tables) afterwards equals that kernel's fp32 table bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..bf16 import as_f32, bf16_value, hi_half, lo_half, merge_value, round_bf16, sgd_fma
from ..jit import jit_parallel, jit_serial
from ..prefetch import prefetch_l2
from ..registry import register
from .bags import CHUNKS, PREFETCH_AHEAD, _owner

_LINE = 32  # uint16 elements per 64-byte cache line
# Forward prefetch distance in lookups: a bf16 row is half the lines of an fp32 one, so
# more rows fit in the misses the L2 keeps in flight (config b, uniform ids, 2 threads,
# two runs on a loaded machine: 24 ran 5-8% faster than fp32's 16; 32-64 no better).
SPLIT_PREFETCH_AHEAD = 24
ROW_CHUNK = 4096  # rows per task of split_rows / merge_rows


@jit_serial
def _forward_bags(pooled, tables, row_start, offsets, indices, lo, hi):
    """pooled[t, b] for the flat bag numbers t * B + b in [lo, hi): hi rows only."""
    batch, dim = pooled.shape[1], pooled.shape[2]
    rows2d = tables.reshape((tables.shape[0], 2 * dim))  # row r: hi at [0, D), lo at [D, 2D)
    for tb in range(lo, hi):
        t = tb // batch
        b = tb - t * batch
        base = row_start[t]
        end = offsets[t, batch]
        for d in range(dim):
            pooled[t, b, d] = 0.0
        for j in range(offsets[t, b], offsets[t, b + 1]):
            if j + SPLIT_PREFETCH_AHEAD < end:
                ahead = base + indices[j + SPLIT_PREFETCH_AHEAD]
                for d in range(0, dim, _LINE):  # the hi block's lines only
                    prefetch_l2(rows2d, ahead, d)
            r = base + indices[j]
            for d in range(dim):
                pooled[t, b, d] += bf16_value(rows2d[r, d])


@jit_parallel
def embedding_bags_forward_split(pooled, tables, row_start, offsets, indices):
    """pooled (T, B, D) float32 out; tables (R, 2, D) uint16; row_start (T+1,);
    offsets (T, B+1); indices (nnz,)."""
    bags = pooled.shape[0] * pooled.shape[1]
    chunks = min(bags, CHUNKS)
    for c in prange(chunks):  # chunk c writes only its own bags pooled[t, b]: race-free
        lo, hi = c * bags // chunks, (c + 1) * bags // chunks
        _forward_bags(pooled, tables, row_start, offsets, indices, lo, hi)


@jit_serial
def embedding_bags_forward_split_serial(pooled, tables, row_start, offsets, indices):
    """As embedding_bags_forward_split on the calling thread alone (small batches)."""
    bags = pooled.shape[0] * pooled.shape[1]
    _forward_bags(pooled, tables, row_start, offsets, indices, 0, bags)


@jit_serial
def _forward_bags_bf16(pooled16, tables, row_start, offsets, indices, acc, lo, hi):
    """pooled16[t, b] = bf16 of the fp32 sum of bag (t, b)'s bf16 rows, for the flat bag
    numbers t * B + b in [lo, hi); acc (D,) float32 scratch."""
    batch, dim = pooled16.shape[1], pooled16.shape[2]
    rows2d = tables.reshape((tables.shape[0], 2 * dim))
    for tb in range(lo, hi):
        t = tb // batch
        b = tb - t * batch
        base = row_start[t]
        end = offsets[t, batch]
        for d in range(dim):
            acc[d] = 0.0
        for j in range(offsets[t, b], offsets[t, b + 1]):
            if j + SPLIT_PREFETCH_AHEAD < end:
                ahead = base + indices[j + SPLIT_PREFETCH_AHEAD]
                for d in range(0, dim, _LINE):  # the hi block's lines only
                    prefetch_l2(rows2d, ahead, d)
            r = base + indices[j]
            for d in range(dim):
                acc[d] += bf16_value(rows2d[r, d])
        out = pooled16[t, b]
        for d in range(dim):
            out[d] = round_bf16(acc[d])


@jit_parallel
def embedding_bags_forward_split_bf16(pooled16, tables, row_start, offsets, indices):
    """As embedding_bags_forward_split, the pooled sums rounded to bf16: pooled16 (T, B, D)
    uint16 (the interaction's input; under MPI, what travels)."""
    bags = pooled16.shape[0] * pooled16.shape[1]
    chunks = min(bags, CHUNKS)
    acc = np.empty((chunks, pooled16.shape[2]), np.float32)
    for c in prange(chunks):  # chunk c writes only its own bags and acc[c]: race-free
        lo, hi = c * bags // chunks, (c + 1) * bags // chunks
        _forward_bags_bf16(pooled16, tables, row_start, offsets, indices, acc[c], lo, hi)


@jit_serial
def embedding_bags_forward_split_bf16_serial(pooled16, tables, row_start, offsets, indices):
    """As embedding_bags_forward_split_bf16 on the calling thread alone (small batches)."""
    acc = np.empty(pooled16.shape[2], np.float32)
    bags = pooled16.shape[0] * pooled16.shape[1]
    _forward_bags_bf16(pooled16, tables, row_start, offsets, indices, acc, 0, bags)


@jit_serial
def _update_owned_rows(tables, row_start, offsets, indices, dpooled, lr, owner, num_owners):
    """Apply, in lookup order, every lookup's split-SGD update whose row ``owner`` owns;
    dpooled float32 or bf16 (as_f32 reads either)."""
    num_tables, batch, dim = dpooled.shape
    rows2d = tables.reshape((tables.shape[0], 2 * dim))
    window = PREFETCH_AHEAD * num_owners  # about PREFETCH_AHEAD of this owner's rows
    for t in range(num_tables):
        base = row_start[t]
        end = offsets[t, batch]
        for b in range(batch):
            for j in range(offsets[t, b], offsets[t, b + 1]):
                if j + window < end:
                    ahead = base + indices[j + window]
                    if _owner(np.uint64(ahead), num_owners) == owner:
                        for d in range(0, 2 * dim, _LINE):  # both halves
                            prefetch_l2(rows2d, ahead, d)
                r = base + indices[j]
                if _owner(np.uint64(r), num_owners) == owner:
                    for d in range(dim):
                        w = sgd_fma(
                            merge_value(rows2d[r, d], rows2d[r, dim + d]),
                            as_f32(dpooled[t, b, d]),
                            lr,
                        )
                        rows2d[r, d] = hi_half(w)
                        rows2d[r, dim + d] = lo_half(w)


@jit_parallel
def embedding_bags_sgd_update_split(tables, row_start, offsets, indices, dpooled, lr, num_owners):
    """tables (R, 2, D) updated in place: the fp32 value of each looked-up row
    -= lr (float32) * dpooled[t, b], exactly, for each lookup.

    Race-free by row ownership (kernels/embedding/bags.py): owner c applies every update whose
    row hashes to c and no other owner touches that row; one row's updates run in lookup
    order on one thread, so the result does not depend on the thread count.
    """
    for c in prange(num_owners):  # owner c writes only the rows it owns (docstring)
        _update_owned_rows(tables, row_start, offsets, indices, dpooled, lr, c, num_owners)


@jit_serial
def embedding_bags_sgd_update_split_serial(tables, row_start, offsets, indices, dpooled, lr):
    """As embedding_bags_sgd_update_split with one owner, on the calling thread."""
    _update_owned_rows(tables, row_start, offsets, indices, dpooled, lr, 0, 1)


# ------------------------------------------------------- fp32 <-> split tables


@jit_serial
def _split_row_range(tables, weights, scratch, r0, r1):
    dim = scratch.shape[0]
    for r in range(r0, r1):
        for d in range(dim):  # the whole row first: tables may be weights' own bytes
            scratch[d] = weights[r, d]
        for d in range(dim):
            tables[r, 0, d] = hi_half(scratch[d])
            tables[r, 1, d] = lo_half(scratch[d])


@jit_serial
def _merge_row_range(weights, tables, scratch, r0, r1):
    dim = scratch.shape[0]
    for r in range(r0, r1):
        for d in range(dim):
            scratch[d] = merge_value(tables[r, 0, d], tables[r, 1, d])
        for d in range(dim):
            weights[r, d] = scratch[d]


@jit_parallel
def split_rows(tables, weights):
    """tables (R, 2, D) uint16 = the split halves of weights (R, D) float32, row by row.

    tables may be a uint16 view of weights' own buffer: each row is read whole before it
    is written, and rows do not overlap.
    """
    rows, dim = weights.shape
    chunks = (rows + ROW_CHUNK - 1) // ROW_CHUNK
    scratch = np.empty((max(chunks, 1), dim), np.float32)
    for c in prange(chunks):  # chunk c reads and writes only its own rows
        r0 = c * ROW_CHUNK
        _split_row_range(tables, weights, scratch[c], r0, min(rows, r0 + ROW_CHUNK))


@jit_parallel
def merge_rows(weights, tables):
    """weights (R, D) float32 = the fp32 values of tables (R, 2, D), bit for bit; may be a
    float32 view of tables' own buffer (rows are read whole before they are written)."""
    rows, dim = weights.shape
    chunks = (rows + ROW_CHUNK - 1) // ROW_CHUNK
    scratch = np.empty((max(chunks, 1), dim), np.float32)
    for c in prange(chunks):  # chunk c reads and writes only its own rows
        r0 = c * ROW_CHUNK
        _merge_row_range(weights, tables, scratch[c], r0, min(rows, r0 + ROW_CHUNK))


@jit_serial
def _table_sgd_rows(tables, grads, lr, r0, r1):
    dim = grads.shape[1]
    for r in range(r0, r1):
        for d in range(dim):
            w = sgd_fma(merge_value(tables[r, 0, d], tables[r, 1, d]), grads[r, d], lr)
            tables[r, 0, d] = hi_half(w)
            tables[r, 1, d] = lo_half(w)


@jit_parallel
def split_table_sgd_update(tables, grads, lr):
    """tables (R, 2, D) -= lr grads (R, D) float32 in fp32, exactly (split-SGD of whole
    tables by a dense gradient: the MPI model's replicated tables)."""
    rows = tables.shape[0]
    chunks = (rows + ROW_CHUNK - 1) // ROW_CHUNK
    for c in prange(chunks):  # chunk c reads and writes only its own rows
        _table_sgd_rows(tables, grads, lr, c * ROW_CHUNK, min(rows, (c + 1) * ROW_CHUNK))


@jit_serial
def split_table_sgd_update_serial(tables, grads, lr):
    _table_sgd_rows(tables, grads, lr, 0, tables.shape[0])


# ----------------------------------------------------------------- registry


def _update(tables, row_start, offsets, indices, dpooled16, lr):
    """The update with one row owner per Numba thread."""
    owners = numba.get_num_threads()
    embedding_bags_sgd_update_split(tables, row_start, offsets, indices, dpooled16, lr, owners)


register(
    "bf16_embedding_forward",
    "v1",
    embedding_bags_forward_split_bf16,
    embedding_bags_forward_split_bf16_serial,
    "chunks of bags, the hi halves only, prefetch 24 lookups ahead into L2",
    default=True,
)
register(
    "bf16_embedding_update",
    "v1",
    _update,
    embedding_bags_sgd_update_split_serial,
    "row owners as fp32's v2; merge, fp32 FMA, split per element",
    default=True,
)
register(
    "bf16_table_update",
    "v1",
    split_table_sgd_update,
    split_table_sgd_update_serial,
    "chunks of rows; merge, fp32 FMA, split per element",
    default=True,
)
