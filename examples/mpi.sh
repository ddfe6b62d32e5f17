#!/usr/bin/env bash
# Hybrid-parallel training: tables model-parallel, MLPs data-parallel, 2 or 4 MPI ranks.
# mpiexec comes with the package (the mpich wheel). Any global batch: with 3 ranks and
# --mini-batch-size 256 the ranks take 86, 85 and 85 samples.
set -euo pipefail
mpiexec -n 2 numbadlrm train --mini-batch-size 256 --num-batches 2000
mpiexec -n 4 numbadlrm train --mini-batch-size 256 --num-batches 2000 --threads 1
