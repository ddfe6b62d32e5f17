"""Plain SGD over the flat dense-parameter buffer: params -= lr * grads.

The tables are not here: their update is fused into the embedding backward
(numbadlrm/layers/embedding_bag.py), so no dense table gradient ever exists.
"""

from __future__ import annotations

import numpy as np

from .kernels.elementwise import sgd_update, sgd_update_serial

# The single-process train_step fuses SGD into the layers' weight GEMMs; this flat update
# serves the MPI model, after the gradient allreduce. Measured at 2 threads on Numba's
# OpenMP pool (a launch costs ~1.5 us): 313k params 32 us on one thread vs 24 us parallel,
# 2.5M 385 vs 334 us, 5M 1114 vs 1159 (memory-bound: one core nearly saturates it).
# On the workqueue layer a launch costs ~100 us (313k: 32 vs 133 us).
SERIAL_BELOW_PARAMS = 100_000


def sgd_step(params: np.ndarray, grads: np.ndarray, lr: float) -> None:
    """In place over the whole flat buffer, one kernel call."""
    kernel = sgd_update_serial if params.shape[0] < SERIAL_BELOW_PARAMS else sgd_update
    kernel(params, grads, np.float32(lr))
