"""Hybrid-parallel DLRM on MPI: sharded embedding tables, data-parallel MLPs.

    partition.py    where every embedding row lives (pure functions, no MPI import)
    exchange.py     the alltoallv of pooled embeddings and the gradient allreduce
    distributed.py  DistributedDLRM: the DLRM API over a communicator
    train_mpi.py    run_distributed_training(cfg, comm), checkpoints, abort on error

Importing this package does not import mpi4py (only the three modules above that talk
to MPI do), so single-process runs never initialise MPI.
"""

from __future__ import annotations

import os

_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def launched_by_mpiexec() -> bool:
    """True when a process manager (MPICH/Hydra, Open MPI, PMIx) started this process
    as one of several ranks; lets the command line decide whether to import mpi4py."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False
