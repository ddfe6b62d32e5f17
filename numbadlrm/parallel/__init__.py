"""Hybrid-parallel DLRM on MPI: sharded embedding tables, data-parallel MLPs.

    partition.py    where every embedding row lives (pure functions, no MPI import)
    exchange.py     the alltoallv of pooled embeddings and the gradient allreduce
    distributed.py  DistributedDLRM: the DLRM API over a communicator
    train_mpi.py    run_distributed_training(cfg, comm), checkpoints, abort on error

Importing this package does not import mpi4py (only the three modules above that talk
to MPI do), so single-process runs never initialise MPI. The command line decides
(numbadlrm.cli.main.launched_by_mpi) and passes MPI.COMM_WORLD in.
"""

from __future__ import annotations
