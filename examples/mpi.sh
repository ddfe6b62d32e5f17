#!/usr/bin/env bash
# Hybrid-parallel training: tables model-parallel, MLPs data-parallel, 2 or 4 MPI ranks.
# mpiexec comes with the package (the mpich wheel), next to numbadlrm in the venv's bin/.
# Any global batch: with 3 ranks and --mini-batch-size 256 the ranks take 86, 85 and 85.
# Usage: bash examples/mpi.sh [more train flags]    (BIN: where mpiexec is; default .venv/bin)
set -euo pipefail
BIN=${BIN:-.venv/bin}
"$BIN/mpiexec" -n 2 "$BIN/numbadlrm" train --mini-batch-size 256 --num-batches 2000 "$@"
"$BIN/mpiexec" -n 4 "$BIN/numbadlrm" train --mini-batch-size 256 --num-batches 2000 \
    --threads 1 "$@"
