"""Plain SGD over the flat dense-parameter buffer: params -= lr * grads.

The tables are not here: their update is fused into the embedding backward
(numbadlrm/layers/embedding_bag.py), so no dense table gradient ever exists. The
single-process train_step fuses SGD into the layers' weight GEMMs; this flat update
serves the MPI model, after the gradient allreduce.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels.registry import DEFAULT, KernelChoice

# Buffers this small are updated on the calling thread: the update is memory-bound and
# one core nearly saturates it (bench/RESULTS.md, "dense update").
SERIAL_BELOW_PARAMS = 100_000


def sgd_step(
    params: np.ndarray, grads: np.ndarray, lr: float, kernels: KernelChoice = DEFAULT
) -> None:
    """In place over the whole flat buffer, one kernel call (op ``dense_update``)."""
    small = params.shape[0] < SERIAL_BELOW_PARAMS
    kernels.get("dense_update").entry(small)(params, grads, np.float32(lr))


def check_learning_rate(lr: float) -> float:
    """lr as a float; ValueError naming it unless it is a finite number >= 0.

    A NaN, infinite or negative rate would ruin every parameter it touches in one step
    (0 is allowed: a step that only reports the loss).
    """
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ValueError(f"learning rate: must be a number, got {lr!r}") from None
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"learning rate: must be a finite number >= 0, got {value}")
    return value
