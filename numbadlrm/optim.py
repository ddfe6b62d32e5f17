"""Plain SGD over the flat dense-parameter buffer: params -= lr * grads.

The tables are not here: their update is fused into the embedding backward
(numbadlrm/layers/embedding_bag.py), so no dense table gradient ever exists. The
single-process train_step fuses SGD into the layers' weight GEMMs; this flat update
serves the MPI model, after the gradient allreduce.
"""

from __future__ import annotations

import numpy as np

from .kernels.registry import DEFAULT, KernelChoice

# Buffers this small are updated on the calling thread: the update is memory-bound and
# one core nearly saturates it (bench/RESULTS.md, "dense update").
SERIAL_BELOW_PARAMS = 100_000


def sgd_step(
    params: np.ndarray, grads: np.ndarray, lr: float, kernels: KernelChoice = DEFAULT
) -> None:
    """In place over the whole flat buffer, one kernel call (op ``dense_update``)."""
    small = params.shape[0] < SERIAL_BELOW_PARAMS
    kernels.get("dense_update").entry(small)(params, grads, np.float32(lr))
