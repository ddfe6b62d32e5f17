"""Embedding bags with sum pooling, forward and fused backward + SGD update side by side.

    forward:   pooled[t, b] = sum_{j in bag (t, b)} E_t[indices[j]]          (T, B, D)
    backward:  dE_t[indices[j]] += dpooled[t, b] for each lookup j of bag (t, b)
    update:    E_t -= lr * dE_t, applied row by row as the gradient is formed, so the
               dense gradient dE_t (rows, D) never exists (see kernels/embedding.py)

The tables are one buffer ``weights`` (total_rows, D) with ``row_start`` (T+1,).
Offsets and indices are validated by the caller on every step (numbadlrm.batch); each
function runs the version of its op that ``kernels`` selects (numbadlrm.kernels.registry),
its serial entry for small work.
"""

from __future__ import annotations

import numpy as np

from ..kernels.jit import run_serial
from ..kernels.registry import DEFAULT, KernelChoice


def embedding_forward(
    pooled: np.ndarray,
    weights: np.ndarray,
    row_start: np.ndarray,
    offsets: np.ndarray,
    indices: np.ndarray,
    kernels: KernelChoice = DEFAULT,
) -> None:
    """pooled (T, B, D) <- sum-pooled rows."""
    small = run_serial(indices.shape[0] * weights.shape[1] * 4 + pooled.nbytes)
    kernel = kernels.get("embedding_forward").entry(small)
    kernel(pooled, weights, row_start, offsets, indices)


def embedding_backward_sgd(
    weights: np.ndarray,
    row_start: np.ndarray,
    offsets: np.ndarray,
    indices: np.ndarray,
    dpooled: np.ndarray,
    lr: float,
    kernels: KernelChoice = DEFAULT,
) -> None:
    """weights -= lr * dL/dweights, in place, from dpooled (T, B, D) and the lookups."""
    small = run_serial(2 * indices.shape[0] * weights.shape[1] * 4 + dpooled.nbytes)
    kernel = kernels.get("embedding_update").entry(small)
    kernel(weights, row_start, offsets, indices, dpooled, np.float32(lr))


def embedding_gradient(
    dweights: np.ndarray,
    row_start: np.ndarray,
    offsets: np.ndarray,
    indices: np.ndarray,
    dpooled: np.ndarray,
    kernels: KernelChoice = DEFAULT,
) -> None:
    """dweights <- dL/dweights (zeroed first): a dense gradient, for small tables only."""
    dweights[...] = 0.0
    small = run_serial(2 * indices.shape[0] * dweights.shape[1] * 4 + dpooled.nbytes)
    kernel = kernels.get("embedding_gradient").entry(small)
    kernel(dweights, row_start, offsets, indices, dpooled)
