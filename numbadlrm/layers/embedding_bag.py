"""Embedding bags with sum pooling, forward and fused backward + SGD update side by side.

    forward:   pooled[t, b] = sum_{j in bag (t, b)} E_t[indices[j]]          (T, B, D)
    backward:  dE_t[indices[j]] += dpooled[t, b] for each lookup j of bag (t, b)
    update:    E_t -= lr * dE_t, applied row by row as the gradient is formed, so the
               dense gradient dE_t (rows, D) never exists (see kernels/embedding.py)

The tables are one buffer ``weights`` (total_rows, D) with ``row_start`` (T+1,).
Inputs here are already validated (numbadlrm.batch.Batch.check_against).
"""

from __future__ import annotations

import numba
import numpy as np

from ..kernels import embedding as k
from ..kernels._jit import run_serial


def embedding_forward(
    pooled: np.ndarray,
    weights: np.ndarray,
    row_start: np.ndarray,
    offsets: np.ndarray,
    indices: np.ndarray,
) -> None:
    """pooled (T, B, D) <- sum-pooled rows."""
    if run_serial(indices.shape[0] * weights.shape[1] * 4 + pooled.nbytes):
        k.embedding_bags_forward_serial(pooled, weights, row_start, offsets, indices)
    else:
        k.embedding_bags_forward(pooled, weights, row_start, offsets, indices)


def embedding_backward_sgd(
    weights: np.ndarray,
    row_start: np.ndarray,
    offsets: np.ndarray,
    indices: np.ndarray,
    dpooled: np.ndarray,
    lr: float,
) -> None:
    """weights -= lr * dL/dweights, in place, from dpooled (T, B, D) and the lookups."""
    lr = np.float32(lr)
    if run_serial(2 * indices.shape[0] * weights.shape[1] * 4 + dpooled.nbytes):
        k.embedding_bags_sgd_update_serial(weights, row_start, offsets, indices, dpooled, lr)
    else:
        owners = numba.get_num_threads()  # one owner per thread (see the kernel)
        k.embedding_bags_sgd_update(weights, row_start, offsets, indices, dpooled, lr, owners)
