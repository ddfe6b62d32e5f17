"""Which rank holds which embedding rows: pure functions, no MPI.

Hybrid parallelism (as the reference DLRM): the MLPs are replicated and data-parallel,
the embedding tables are model-parallel. A table lives in one of three ways:

    whole       on one rank (the common case)
    row-split   a table bigger than one rank's memory share is cut into k <= R row
                ranges on k different ranks; each owner pools only the lookups that fall
                in its range and the receiver adds the k partial sums
    replicated  a small table (rows <= replicate_max_rows) is held in full by every
                rank, pooled for local samples only, and its gradient is allreduced
                with the MLP gradients; it costs no alltoall traffic

Placement heuristic (greedy longest-processing-time on two normalised loads):
    memory(piece)  = rows * D * 4 bytes
    lookups(piece) = (rows / table_rows) * lookups_per_sample + 1
                     (the +1 is the pooled vector the piece writes and sends per sample)
    cost(piece)    = w * memory / total_memory + (1 - w) * lookups / total_lookups
Pieces go, largest cost first, to the rank whose combined load is smallest (pieces of
one table to different ranks). For w = 1 this is list scheduling on memory, so the
largest rank holds at most mean + (largest piece) bytes; splitting caps every piece at
the mean share, so no rank exceeds twice the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BYTES_PER_VALUE = 4  # float32


@dataclass(frozen=True)
class Shard:
    """Rows [row_begin, row_end) of logical table ``table``, held by ``rank``."""

    table: int
    row_begin: int
    row_end: int
    rank: int

    @property
    def num_rows(self) -> int:
        return self.row_end - self.row_begin


@dataclass(frozen=True)
class Placement:
    """Where every embedding row lives. ``shards`` is ordered by (rank, table, row_begin)."""

    embedding_sizes: tuple[int, ...]
    dim: int  # D
    num_ranks: int  # R
    shards: tuple[Shard, ...]
    replicated: tuple[int, ...]  # tables held in full by every rank

    def shards_on(self, rank: int) -> tuple[Shard, ...]:
        return tuple(s for s in self.shards if s.rank == rank)

    def shards_of(self, table: int) -> tuple[Shard, ...]:
        return tuple(s for s in self.shards if s.table == table)

    def rank_rows(self, rank: int) -> int:
        """Rows held by ``rank``: its shards plus every replicated table."""
        own = sum(s.num_rows for s in self.shards_on(rank))
        return own + sum(self.embedding_sizes[t] for t in self.replicated)

    def rank_bytes(self, rank: int) -> int:
        return self.rank_rows(rank) * self.dim * BYTES_PER_VALUE

    def describe(self, lookups: tuple[float, ...] | None = None) -> str:
        """A readable table: one line per rank with its shards, rows and memory."""
        lookups = _lookups(lookups, len(self.embedding_sizes))
        lines = [
            f"embedding placement: {len(self.embedding_sizes)} tables on {self.num_ranks} "
            f"ranks (D={self.dim}, float32)",
            f"{'rank':>4}  {'rows':>12}  {'MiB':>9}  {'lookups/sample':>14}  shards: table[rows)",
        ]
        for rank in range(self.num_ranks):
            held = self.shards_on(rank)
            load = sum(_piece_lookups(s, self.embedding_sizes, lookups) for s in held)
            text = " ".join(_shard_text(s, self.embedding_sizes) for s in held) or "-"
            lines.append(
                f"{rank:>4}  {self.rank_rows(rank):>12,}  "
                f"{self.rank_bytes(rank) / 2**20:>9.2f}  {load:>14.1f}  {text}"
            )
        if self.replicated:
            rep = " ".join(f"{t}({self.embedding_sizes[t]:,})" for t in self.replicated)
            lines.append(f"replicated on every rank (allreduced): {rep}")
        split = sorted({s.table for s in self.shards if len(self.shards_of(s.table)) > 1})
        if split:
            lines.append(f"row-split tables: {' '.join(str(t) for t in split)}")
        return "\n".join(lines)


def plan_placement(
    embedding_sizes: tuple[int, ...],
    dim: int,
    num_ranks: int,
    lookups: tuple[float, ...] | None = None,
    replicate_max_rows: int = 0,
    memory_weight: float = 0.5,
) -> Placement:
    """Place T tables on R ranks (see the module docstring for the heuristic).

    lookups: mean lookups per sample of each table (default 1 each).
    replicate_max_rows: tables with at most this many rows are replicated.
    memory_weight: w in [0, 1], the weight of memory against lookup cost.
    """
    sizes = tuple(int(n) for n in embedding_sizes)
    if num_ranks < 1:
        raise ValueError(f"num_ranks: must be >= 1, got {num_ranks}")
    if not 0.0 <= memory_weight <= 1.0:
        raise ValueError(f"memory_weight: must be in [0, 1], got {memory_weight}")
    if any(n <= 0 for n in sizes):
        raise ValueError(f"embedding_sizes: every table needs rows, got {sizes}")
    lookups = _lookups(lookups, len(sizes))
    replicated = tuple(t for t, n in enumerate(sizes) if n <= replicate_max_rows)
    pieces = _split_pieces(sizes, replicated, num_ranks)
    shards = _assign(pieces, sizes, lookups, num_ranks, memory_weight)
    shards.sort(key=lambda s: (s.rank, s.table, s.row_begin))
    return Placement(sizes, dim, num_ranks, tuple(shards), replicated)


def _lookups(lookups, num_tables: int) -> tuple[float, ...]:
    if lookups is None:
        return (1.0,) * num_tables
    if len(lookups) != num_tables:
        raise ValueError(f"lookups: need one value per table ({num_tables}), got {len(lookups)}")
    return tuple(float(x) for x in lookups)


def _split_pieces(sizes, replicated, num_ranks) -> list[tuple[int, int, int]]:
    """(table, row_begin, row_end) pieces: a table above the mean share is cut in k parts."""
    sharded = [t for t in range(len(sizes)) if t not in replicated]
    share = sum(sizes[t] for t in sharded) / num_ranks  # rows per rank if perfectly even
    pieces = []
    for t in sharded:
        k = min(num_ranks, max(1, math.ceil(sizes[t] / share - 1e-9)))
        bounds = [sizes[t] * i // k for i in range(k + 1)]
        pieces += [(t, bounds[i], bounds[i + 1]) for i in range(k)]
    return pieces


def _assign(pieces, sizes, lookups, num_ranks, memory_weight) -> list[Shard]:
    total_rows = sum(p[2] - p[1] for p in pieces) or 1
    cost_lookups = [lookups[t] * (e - b) / sizes[t] + 1.0 for t, b, e in pieces]
    total_lookups = sum(cost_lookups) or 1.0
    costs = [
        memory_weight * (e - b) / total_rows + (1 - memory_weight) * c / total_lookups
        for (t, b, e), c in zip(pieces, cost_lookups, strict=True)
    ]
    order = sorted(range(len(pieces)), key=lambda i: (-costs[i], pieces[i]))
    load = [0.0] * num_ranks
    tables_on: list[set[int]] = [set() for _ in range(num_ranks)]
    shards = []
    for i in order:
        t, b, e = pieces[i]
        free = [r for r in range(num_ranks) if t not in tables_on[r]]
        rank = min(free, key=lambda r: (load[r], r))
        load[rank] += costs[i]
        tables_on[rank].add(t)
        shards.append(Shard(t, b, e, rank))
    return shards


def _piece_lookups(s: Shard, sizes, lookups) -> float:
    return lookups[s.table] * s.num_rows / sizes[s.table]


def _shard_text(s: Shard, sizes) -> str:
    if s.num_rows == sizes[s.table]:
        return f"{s.table}({s.num_rows:,})"
    return f"{s.table}[{s.row_begin:,}:{s.row_end:,})"


def sample_ranges(batch: int, num_ranks: int) -> list[tuple[int, int]]:
    """[start, stop) of each rank's samples in a global batch of ``batch``.

    As the reference's distributed code (get_split_lengths): divmod(B, R), the first
    B mod R ranks take one sample more, so the slices differ by at most one sample (a
    rank gets none when B < R).
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks: must be >= 1, got {num_ranks}")
    base, extra = divmod(batch, num_ranks)
    stops = np.cumsum([base + (q < extra) for q in range(num_ranks)]).tolist()
    return list(zip([0, *stops[:-1]], stops, strict=True))


@dataclass(frozen=True)
class ShardLookups:
    """One rank's lookups into its own shards, for the whole global batch.

    Laid out as (R * S) "tables" of W = ceil(B / R) bags, in the order of the exchange's
    send buffer (destination rank q, then shard s), so the unchanged embedding kernels
    pool straight into it and apply the returned gradients from it:

        offsets   (R*S, W+1)   bag i of (q, s) = sample start_q + i of shard s; the bags
                               past q's count (one at most, when R does not divide B)
                               are empty: they pool to zeros and take no update
        indices   (nnz',)      row ids local to each shard
        row_start (R*S+1,)     first row of shard s in the rank's (rows, D) buffer
    """

    offsets: np.ndarray
    indices: np.ndarray
    row_start: np.ndarray


def shard_lookups(
    shards: tuple[Shard, ...],
    sizes: tuple[int, ...],
    offsets: np.ndarray,
    indices: np.ndarray,
    num_ranks: int,
) -> ShardLookups:
    """Route a global batch's lookups (offsets (T, B+1), indices) to ``shards``.

    A whole-table shard reads the batch's own indices through its offsets (no copy); a
    row-split shard keeps only the lookups in its row range, shifted to local ids.
    """
    batch = offsets.shape[1] - 1
    parts, extra = [indices], indices.shape[0]
    shard_offsets = np.empty((len(shards), batch + 1), np.int64)  # (S, B+1)
    for s, shard in enumerate(shards):
        row = offsets[shard.table]
        if shard.num_rows == sizes[shard.table]:
            shard_offsets[s] = row
            continue
        ids = indices[row[0] : row[-1]]
        keep = (ids >= shard.row_begin) & (ids < shard.row_end)
        kept_before = np.zeros(ids.shape[0] + 1, np.int64)
        np.cumsum(keep, out=kept_before[1:])
        shard_offsets[s] = extra + kept_before[row - row[0]]
        parts.append(ids[keep] - shard.row_begin)
        extra += parts[-1].shape[0]
    ranges = np.asarray(sample_ranges(batch, num_ranks))  # (R, 2)
    width = int((ranges[:, 1] - ranges[:, 0]).max())  # W
    # bag i of destination q is sample start_q + i; past q's count the end repeats (empty)
    columns = ranges[:, :1] + np.minimum(np.arange(width + 1), ranges[:, 1:] - ranges[:, :1])
    routed = shard_offsets[:, columns].transpose(1, 0, 2)  # (R, S, W+1)
    starts = np.cumsum([0] + [s.num_rows for s in shards])
    return ShardLookups(
        offsets=np.ascontiguousarray(routed.reshape(num_ranks * len(shards), width + 1)),
        indices=parts[0] if len(parts) == 1 else np.concatenate(parts),
        row_start=np.append(np.tile(starts[:-1], num_ranks), starts[-1]).astype(np.int64),
    )


def shard_major(
    lookups: ShardLookups, dpooled: np.ndarray, num_ranks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The routed lookups regrouped per shard: (row_start (S+1,), offsets (S, R*W+1),
    dpooled (S, R*W, D)), bag q W + i of shard s being bag i of (q, s).

    The SGD update may apply the R routes of a shard one after the other (it is linear),
    but Adagrad must update a row once from the sum over every sample that looked it
    up, so the kernels need each shard's lookups as one table. The routes of a shard are
    consecutive in ``indices``, so its offsets are the R routes' offsets, each without
    its end (the next route's start), then the last route's end. dpooled (R*S, W, D) is
    copied shard-major (the padded bags are empty: their gradients are never read).
    """
    routes, width = lookups.offsets.shape[0], lookups.offsets.shape[1] - 1
    shards = routes // num_ranks
    routed = lookups.offsets.reshape(num_ranks, shards, width + 1)
    offsets = np.empty((shards, num_ranks * width + 1), np.int64)
    offsets[:, :-1] = routed[:, :, :width].transpose(1, 0, 2).reshape(shards, -1)
    offsets[:, -1] = routed[-1, :, width]
    dim = dpooled.shape[-1]
    grouped = dpooled.reshape(num_ranks, shards, width, dim).transpose(1, 0, 2, 3)
    row_start = np.append(lookups.row_start[:shards], lookups.row_start[-1])
    return row_start, offsets, np.ascontiguousarray(grouped).reshape(shards, -1, dim)
