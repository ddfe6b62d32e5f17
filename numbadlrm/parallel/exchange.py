"""Plans for the collectives of one training step: the embedding alltoall, the allreduce.

R ranks, global batch B split as numbadlrm.parallel.partition.sample_ranges does (rank q
owns samples [start_q, stop_q), Bl_q = stop_q - start_q, counts differing by at most
one), W = max_q Bl_q = ceil(B / R). Rank r holds S_r table shards
(numbadlrm.parallel.partition) and pools them for the whole global batch, straight into
its send buffer laid out by destination:

    forward   pooled_out (R, S_r, W, D)   block q = rank r's shards for q's samples
              pooled_in  (sum_r S_r, W, D)  slot j = (source rank, its shard), by rank
    backward  dpooled_out (sum_r S_r, W, D) -> dpooled_in (R, S_r, W, D), the reverse

Every block holds W bags; a destination with Bl_q = W - 1 gets one empty bag per shard
at the end (partition.shard_lookups routes no lookup there), which the receiver
ignores. Padding, rather than blocks of Bl_q bags, keeps the pooled output one (R S_r,
W, D) array, so one embedding kernel call writes the whole send buffer; it costs at
most one row per shard and destination (1 / W of the bytes), and none when R divides B.
The counts differ by source (S_r), so it is an alltoallv; it is started non-blocking and
the caller overlaps it with the bottom MLP (forward) or the bottom MLP's backward.
``assemble`` turns pooled_in into the tower's emb (T, Bl, D), adding the partial sums
of a row-split table's shards; ``scatter`` is its adjoint (a row-split table's gradient
is copied to each of its shards, since d(sum)/d(part) = 1).

MPICH progresses non-blocking collectives only inside MPI calls, so the caller ``poke``s
the open requests between layers (a cheap MPI_Test).

In a --precision bf16 run the buffers are bf16 (uint16, ``dtype``): the pooled vectors
and their gradients travel in half the bytes. ``assemble`` then adds a row-split
table's partial sums in fp32 and rounds once; a whole table's block is copied as it came.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from ..layers.bf16 import from_bf16, to_bf16
from .partition import Placement, sample_ranges

_MPI_TYPES = {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.uint16): MPI.UINT16_T}


class EmbeddingExchange:
    """The forward and backward alltoallv of pooled embeddings for one global batch size."""

    def __init__(self, comm: MPI.Comm, placement: Placement, batch: int, dtype=np.float32):
        ranks, rank, dim = comm.size, comm.rank, placement.dim
        if np.dtype(dtype) not in _MPI_TYPES:
            raise ValueError(f"dtype: float32 or uint16 (bf16), got {np.dtype(dtype)}")
        self.mpi_type = _MPI_TYPES[np.dtype(dtype)]
        if placement.num_ranks != ranks:
            raise ValueError(
                f"placement is for {placement.num_ranks} ranks, the communicator has {ranks}"
            )
        self.comm = comm
        start, stop = sample_ranges(batch, ranks)[rank]
        self.local_batch = stop - start  # Bl, this rank's samples
        self.width = -(-batch // ranks)  # W = ceil(B / R), bags per block
        held = [len(placement.shards_on(r)) for r in range(ranks)]  # S_r
        block = self.width * dim  # floats per (shard, destination)
        self.num_own = held[rank]
        self.pooled_out = np.zeros((ranks, held[rank], self.width, dim), dtype)
        self.dpooled_in = np.zeros_like(self.pooled_out)
        self.pooled_in = np.zeros((sum(held), self.width, dim), dtype)
        self.dpooled_out = np.zeros_like(self.pooled_in)  # rows past Bl stay zero
        send_counts = np.full(ranks, held[rank] * block, dtype=np.int64)
        recv_counts = np.asarray(held, dtype=np.int64) * block
        self._send = (send_counts, _displacements(send_counts))
        self._recv = (recv_counts, _displacements(recv_counts))
        # slot j of pooled_in holds a shard of table_of_slot[j]
        self.table_of_slot = [s.table for r in range(ranks) for s in placement.shards_on(r)]
        self.slots_of_table: dict[int, list[int]] = {}
        for j, t in enumerate(self.table_of_slot):
            self.slots_of_table.setdefault(t, []).append(j)

    def start_forward(self) -> MPI.Request:
        """Send pooled_out to the samples' owners, receive pooled_in (non-blocking)."""
        kind = self.mpi_type
        return self.comm.Ialltoallv(
            [self.pooled_out, self._send, kind], [self.pooled_in, self._recv, kind]
        )

    def start_backward(self) -> MPI.Request:
        """Send dpooled_out back to the shard owners, receive dpooled_in (non-blocking)."""
        kind = self.mpi_type
        return self.comm.Ialltoallv(
            [self.dpooled_out, self._recv, kind], [self.dpooled_in, self._send, kind]
        )

    def assemble(self, emb: np.ndarray) -> None:
        """emb[t] (Bl, D) <- sum of table t's slots of pooled_in (replicated tables untouched)."""
        mine = self.local_batch
        for t, slots in self.slots_of_table.items():
            if len(slots) > 1 and emb.dtype == np.uint16:  # bf16 partial sums: fp32, once
                total = from_bf16(np.ascontiguousarray(self.pooled_in[slots, :mine])).sum(0)
                np.copyto(emb[t], to_bf16(total))
                continue
            np.copyto(emb[t], self.pooled_in[slots[0], :mine])
            for j in slots[1:]:
                emb[t] += self.pooled_in[j, :mine]

    def scatter(self, demb: np.ndarray) -> None:
        """dpooled_out[j] <- demb[table of slot j]: the adjoint of :meth:`assemble`."""
        mine = self.local_batch
        for j, t in enumerate(self.table_of_slot):
            np.copyto(self.dpooled_out[j, :mine], demb[t])


class GradientAllreduce:
    """Sum a flat gradient buffer over ranks, in contiguous segments started separately.

    ``segments`` are (start, stop) slices of ``flat`` that together cover it; segment i
    can be started as soon as its gradients are final, so its reduction overlaps the
    rest of the backward. ``wait()`` completes all of them.
    """

    def __init__(self, comm: MPI.Comm, flat: np.ndarray, segments: list[tuple[int, int]]):
        edges = [edge for segment in sorted(segments) for edge in segment]
        if edges[0] != 0 or edges[-1] != flat.size or edges[1:-1:2] != edges[2:-1:2]:
            raise ValueError(f"segments {segments} do not tile a buffer of {flat.size}")
        self.comm = comm
        self.views = [flat[a:b] for a, b in segments]
        self.requests: list[MPI.Request] = []

    def start(self, segment: int) -> None:
        self.requests.append(self.comm.Iallreduce(MPI.IN_PLACE, self.views[segment], MPI.SUM))

    def wait(self) -> None:
        MPI.Request.Waitall(self.requests)
        self.requests.clear()


def poke(requests: list[MPI.Request]) -> None:
    """Let MPI progress the open requests (MPI_Test does not complete them early)."""
    for request in requests:
        request.Test()


def _displacements(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
