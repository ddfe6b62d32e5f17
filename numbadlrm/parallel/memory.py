"""What one rank of the MPI model holds, and the check that the ranks sharing a machine
fit its memory together (before anything is allocated)."""

from __future__ import annotations

from mpi4py import MPI

from ..config import DLRMConfig
from ..model.memory import MemoryNeed, OutOfMemoryError, available_memory, check_memory, estimate
from .partition import Placement


def rank_memory(
    config: DLRMConfig,
    placement: Placement,
    rank: int,
    batch_sizes: tuple[int, ...] = (),
    data: tuple[str, int] | None = None,
    optimizer: str = "sgd",
    precision: str = "fp32",
) -> MemoryNeed:
    """What ``rank`` holds: its shards, the replicated tables (with their gradients), the
    dense tower, each with its optimizer state; with batch_sizes (local) and data, the
    rest of a training run too."""
    shards = [(s.table, s.num_rows) for s in placement.shards_on(rank)]
    return estimate(
        config, batch_sizes, data, tables=shards, replicated=placement.replicated,
        optimizer=optimizer, precision=precision,
    )  # fmt: skip


def check_node_memory(comm: MPI.Comm, need: MemoryNeed) -> None:
    """Collective: the ranks sharing a machine must fit its memory together. Every rank
    raises the same OutOfMemoryError (the first failing rank's message) or none does."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        node_total = node.allreduce(need.total)
        available = node.bcast(available_memory() if node.rank == 0 else None, root=0)
        single = node.size == 1
    finally:
        node.Free()
    message = None
    try:
        where = f"rank {comm.rank} of {comm.size}: " if comm.size > 1 else ""
        check_memory(need, available, None if single else node_total, where)
    except OutOfMemoryError as exc:
        message = str(exc)
    message = next((m for m in comm.allgather(message) if m), None)
    if message is not None:
        raise OutOfMemoryError(message)
