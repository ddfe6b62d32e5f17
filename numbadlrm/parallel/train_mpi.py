"""The training loop on R MPI ranks: ``run_distributed_training(cfg, comm)``.

It mirrors numbadlrm.train.loop.run_training (same TrainConfig, same data sources, the same
TrainLoop with its logging, evaluation and checkpoints, same return value plus the
placement) with a DistributedDLRM in place of the DLRM. The caller passes the
communicator; only the command line entry reaches for COMM_WORLD.

Data: every rank builds the same global batches (the synthetic generators are seeded
and deterministic; a processed dataset is memory-mapped by every rank and read in the
same shuffled order), so no sample ever crosses the network: rank q uses the dense
features and labels of its slice, and every shard owner the sparse ids of its tables
for the whole global batch. Generation is cheap next to a step; what it costs is
repeated on every rank (a file reader could read only rows_slice(start, stop) of the
dense columns, see "what's left" in the MPI notes).

Failures: an exception on any rank prints "[rank r/R] ..." with its traceback and calls
comm.Abort(1), so mpiexec ends every rank with a non-zero status instead of hanging in
the next collective.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager

import numba
from mpi4py import MPI

from ..config import DLRMConfig
from ..io.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    optimizer_to_resume,
    save_model_checkpoint,
)
from ..runtime.threads import set_num_threads
from ..train.config import TrainConfig
from ..train.loop import TrainLoop, check_cpu
from ..train.records import check_outputs, run_header
from ..train.sources import open_data
from .distributed import DistributedDLRM
from .memory import check_node_memory, rank_memory
from .partition import plan_placement, sample_ranges


def _quiet(*args, **kwargs) -> None:
    pass


@contextmanager
def abort_on_error(comm: MPI.Comm):
    """Turn an exception on one rank into comm.Abort(1) after printing it with the rank."""
    try:
        yield
    except BaseException as exc:
        if comm.size == 1:
            raise
        where = f"[rank {comm.rank}/{comm.size}]"
        if isinstance(exc, (ValueError, OSError, FloatingPointError)):  # bad input: message
            sys.stderr.write(f"numbadlrm train: error: {where} {exc}\n")
        else:  # a bug or an MPI failure: the whole traceback
            text = "".join(traceback.format_exception(exc))
            sys.stderr.write(f"{where} {type(exc).__name__}: {exc}\n{text}")
        sys.stderr.flush()
        comm.Abort(1)


def default_threads(comm: MPI.Comm) -> int:
    """Numba threads per rank: the node's cores shared by the ranks on this node."""
    local_ranks = comm.Split_type(MPI.COMM_TYPE_SHARED).size
    cores = min(os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)
    return max(1, cores // local_ranks)


def expected_lookups(cfg: TrainConfig, mcfg: DLRMConfig) -> tuple[float, ...]:
    """Mean lookups per sample of each table under the configured bag sizes."""
    lookups = cfg.num_indices_per_lookup
    sizes = mcfg.embedding_sizes
    if cfg.num_indices_per_lookup_fixed:
        return (float(lookups),) * len(sizes)
    return tuple((1 + min(lookups, n)) / 2 for n in sizes)


def run_distributed_training(cfg: TrainConfig, comm: MPI.Comm, log=print) -> dict:
    """Train as configured on every rank of ``comm``; returns the final metrics and model.

    Every rank returns the same metrics. Logging, progress and the metrics file are
    rank 0's; an exception on any rank aborts the job (see the module docstring).
    """
    with abort_on_error(comm):
        return _run(cfg, comm, log if comm.rank == 0 else _quiet)


def _run(cfg: TrainConfig, comm: MPI.Comm, log) -> dict:
    ranks = comm.size
    check_cpu(cfg, log)  # the note that --precision bf16 is emulated (rank 0's log)
    check_outputs(cfg)  # --save-model, --metrics-file: refused before any work
    threads = cfg.threads or default_threads(comm)
    set_num_threads(threads)
    if cfg.data_set and comm.rank == 0:
        open_data(cfg, log)  # preprocess once; the other ranks then reuse the directory
    comm.Barrier()
    split = sample_ranges(cfg.mini_batch_size, ranks)  # DistributedDLRM.local_slice's rows
    source, mcfg = open_data(cfg, log, dense_rows=split[comm.rank])
    lookups = expected_lookups(cfg, mcfg)
    # replicating a table costs an allreduce of its rows, sharding it an alltoall of one
    # pooled vector per local sample: replicate tables with fewer rows than B / R
    replicate = cfg.mini_batch_size // ranks if ranks > 1 else 0
    placement = plan_placement(
        mcfg.embedding_sizes, mcfg.sparse_feature_size, ranks, lookups, replicate_max_rows=replicate
    )
    local_batches = tuple(-(-b // ranks) for b in (cfg.mini_batch_size, cfg.test_mini_batch_size))
    need = rank_memory(
        mcfg, placement, comm.rank, local_batches, source.memory_need(), cfg.optimizer,
        cfg.precision,
    )  # fmt: skip
    check_node_memory(comm, need)
    model = DistributedDLRM(
        mcfg, comm, placement, seed=cfg.seed, gemm=cfg.gemm, kernels=cfg.kernels,
        optimizer=cfg.optimizer_config(), loss=cfg.loss_config(), precision=cfg.precision,
    )  # fmt: skip
    position = (0, 0, 0)
    if cfg.load_model:
        ckpt = load_distributed_checkpoint(cfg.load_model, model, log)
        position = (ckpt.step, ckpt.epoch, ckpt.batch_in_epoch)
    log(run_header(cfg, mcfg))
    if cfg.kernels:
        log(f"kernels: {model.kernels.describe()}")
    counts = sorted({stop - start for start, stop in split})
    log(
        f"MPI: {ranks} ranks x {threads} Numba threads, {'-'.join(map(str, counts))} "
        f"samples per rank per step"
    )
    log(placement.describe(lookups))
    loop = TrainLoop(cfg, model, source, mcfg, log, root=comm.rank == 0)
    return {**loop.run(*position), "placement": placement}


def save_distributed_checkpoint(
    path,
    model: DistributedDLRM,
    step: int = 0,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    extra: dict | None = None,
) -> None:
    """Collective: gather the tables to rank 0, which writes a numbadlrm.io.checkpoint file.

    The file is the single-process format, so DLRM or any number of ranks can load it.
    (numbadlrm.io.checkpoint.save_model_checkpoint, which the training loop also calls.)
    """
    save_model_checkpoint(path, model, step, epoch, batch_in_epoch, extra)


def load_distributed_checkpoint(path, model: DistributedDLRM, log=_quiet) -> Checkpoint:
    """Collective: rank 0 reads and checks the file, the tables are re-sharded to fit,
    and so is the optimizer state when the run uses the checkpoint's optimizer.

    Returns the checkpoint's position and extras on every rank (its ``state`` is empty).
    """
    ckpt, error, resume = None, None, None
    if model.comm.rank == 0:
        try:
            ckpt = load_checkpoint(path)
            check_compatible(ckpt, model.config, path)
            resume = optimizer_to_resume(ckpt, model.optimizer.config, path)
        except (OSError, ValueError) as exc:
            error = str(exc)
    error = model.comm.bcast(error, root=0)
    if error is not None:
        raise CheckpointError(error)
    model.load_state_dict(ckpt.state if ckpt is not None else None)
    load_state, note = model.comm.bcast(resume, root=0)
    if load_state:
        state = ckpt.optimizer_state if ckpt is not None else None
        steps = ckpt.optimizer_steps if ckpt is not None else 0
        model.load_optimizer_state_dict(state, steps)
    if note:
        log(note)
    position = None
    if ckpt is not None:
        position = (ckpt.step, ckpt.epoch, ckpt.batch_in_epoch, ckpt.extra)
    step, epoch, batch_in_epoch, extra = model.comm.bcast(position, root=0)
    return Checkpoint(model.config, {}, step, epoch, batch_in_epoch, extra)
