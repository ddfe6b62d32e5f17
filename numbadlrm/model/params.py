"""Parameter storage and initialisation.

Dense parameters (every MLP weight and bias) live in one flat float32 buffer, and their
gradients in another of the same layout, so an optimiser step or an MPI allreduce is one
call over one array. Each layer's W (O, I) and b (O,) are views into it.

Embedding tables live in one (total_rows, D) buffer; table t is rows
``row_start[t]:row_start[t+1]``. A table may hold only a row range of a larger logical
table (the MPI layer splits big tables by rows), so initialisation is defined per row
chunk: rows are generated in chunks of ``INIT_CHUNK_ROWS``, each from its own seed
derived from (model seed, table id, chunk id). A table's values therefore never depend
on how tables or rows are later placed on ranks.

Initialisation as the reference DLRM:
    Linear W ~ N(0, sqrt(2 / (in + out))),  b ~ N(0, sqrt(1 / out))
    table with n rows ~ U(-sqrt(1/n), sqrt(1/n))  (an MD table's narrow rows too)
    QR tables of a table with n rows ~ U(sqrt(1/n), 1): the reference's
        nn.init.uniform_(w, sqrt(1/n)), whose second argument is the *lower* bound
        (upper 1), kept as written for fidelity (likely meant +-sqrt(1/n))
    MD projection (D, d) ~ xavier_uniform: U(-sqrt(6/(d+D)), sqrt(6/(d+D)))
"""

from __future__ import annotations

import itertools
import mmap
from dataclasses import dataclass

import numpy as np

INIT_CHUNK_ROWS = 1 << 16
_TABLE_STREAM = 0
_MLP_STREAM = 1
_QR_STREAM = 2  # + (table, 0 quotient / 1 remainder, chunk)
_PROJECTION_STREAM = 3  # + (table,)


@dataclass(frozen=True)
class LinearSlot:
    """Where one linear layer's W (O, I) and b (O,) sit in the flat buffer."""

    name: str  # e.g. "bottom_mlp.0"
    in_features: int
    out_features: int
    w_offset: int
    b_offset: int


def mlp_slots(prefix: str, sizes: tuple[int, ...], start: int) -> tuple[list[LinearSlot], int]:
    slots = []
    offset = start
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        slots.append(LinearSlot(f"{prefix}.{i}", n_in, n_out, offset, offset + n_in * n_out))
        offset += n_in * n_out + n_out
    return slots, offset


def slot_views(flat: np.ndarray, slot: LinearSlot) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) views of a flat buffer for one layer."""
    w = flat[slot.w_offset : slot.b_offset].reshape(slot.out_features, slot.in_features)
    b = flat[slot.b_offset : slot.b_offset + slot.out_features]
    return w, b


def init_mlp(flat: np.ndarray, slots: list[LinearSlot], seed: int) -> None:
    """Fill every layer's W and b in the flat buffer, in layer order, from one stream."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_MLP_STREAM,)))
    for slot in slots:
        w, b = slot_views(flat, slot)
        n_in, n_out = slot.in_features, slot.out_features
        w[:] = rng.normal(0.0, np.sqrt(2.0 / (n_in + n_out)), size=w.shape)
        b[:] = rng.normal(0.0, np.sqrt(1.0 / n_out), size=b.shape)


def table_buffer(rows: int, dim: int) -> np.ndarray:
    """A zero-filled (rows, D) float32 buffer, backed by transparent huge pages if possible.

    Embedding lookups hit random rows of tables far larger than the TLB covers with 4 KiB
    pages; 2 MiB pages remove most of those TLB misses (measured: ~15% faster gathers).
    """
    nbytes = rows * dim * 4
    if nbytes < (8 << 20) or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros((rows, dim), np.float32)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype=np.float32).reshape(rows, dim)


def init_table_rows(out: np.ndarray, seed: int, table: int, num_rows: int, first_row: int) -> None:
    """Fill ``out`` (n, D) with rows first_row .. first_row+n of table ``table`` (num_rows rows)."""
    bound = np.sqrt(1.0 / num_rows)
    init_uniform_rows(out, (seed, (_TABLE_STREAM, table)), -bound, bound, num_rows, first_row)


def init_qr_table(out: np.ndarray, seed: int, table: int, part: int, logical_rows: int) -> None:
    """A QR table (part 0 quotient, 1 remainder) of a table of logical_rows rows."""
    low = np.sqrt(1.0 / logical_rows)
    init_uniform_rows(out, (seed, (_QR_STREAM, table, part)), low, 1.0, out.shape[0], 0)


def init_projection(out: np.ndarray, seed: int, table: int) -> None:
    """An MD projection (D, d), xavier_uniform."""
    bound = np.sqrt(6.0 / (out.shape[0] + out.shape[1]))
    seq = np.random.SeedSequence(seed, spawn_key=(_PROJECTION_STREAM, table))
    out[...] = np.random.default_rng(seq).uniform(-bound, bound, size=out.shape)


def init_uniform_rows(out, key, low, high, num_rows: int, first_row: int) -> None:
    """Rows first_row .. of a U(low, high) table, chunk by chunk: chunk k from the seed
    sequence (key[0], spawn_key=key[1] + (k,))."""
    seed, stream = key
    dim = out.shape[1]
    stop = first_row + out.shape[0]
    chunk = first_row // INIT_CHUNK_ROWS
    while chunk * INIT_CHUNK_ROWS < stop:
        c0 = chunk * INIT_CHUNK_ROWS
        c1 = min(c0 + INIT_CHUNK_ROWS, num_rows)
        seq = np.random.SeedSequence(seed, spawn_key=(*stream, chunk))
        values = np.random.default_rng(seq).uniform(low, high, size=(c1 - c0, dim))
        lo, hi = max(c0, first_row), min(c1, stop)
        out[lo - first_row : hi - first_row] = values[lo - c0 : hi - c0]
        chunk += 1
