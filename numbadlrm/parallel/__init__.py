"""Hybrid-parallel DLRM on MPI: sharded embedding tables, data-parallel MLPs.

    partition.py    where every embedding row lives (pure functions, no MPI import)
    exchange.py     the alltoallv of pooled embeddings and the gradient allreduce
    distributed.py  DistributedDLRM: the DLRM API over a communicator, any precision
    state.py        its state dicts, gathered to or scattered from rank 0
    memory.py       what a rank holds; the per-machine memory check
    train_mpi.py    run_distributed_training(cfg, comm), checkpoints, abort on error

Importing this package does not import mpi4py (only the modules above that talk
to MPI do), so single-process runs never initialise MPI. The command line decides
(numbadlrm.cli.main.launched_by_mpi) and passes MPI.COMM_WORLD in.
"""

from __future__ import annotations
