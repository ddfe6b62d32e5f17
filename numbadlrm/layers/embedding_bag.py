"""Embedding bags with sum pooling, forward and fused backward + SGD update side by side,
on fp32 tables or split-bf16 tables.

    forward:   pooled[t, b] = sum_{j in bag (t, b)} E_t[indices[j]]          (T, B, D)
    backward:  dE_t[indices[j]] += dpooled[t, b] for each lookup j of bag (t, b)
    update:    E_t -= lr * dE_t, applied row by row as the gradient is formed, so the
               dense gradient dE_t (rows, D) never exists (see kernels/embedding/bags.py)

The tables are one buffer ``weights`` (total_rows, D) with ``row_start`` (T+1,): float32,
or split bf16 (--precision bf16; kernels/embedding/bags_bf16.py has the layout and the
kernels): (total_rows, 2, D) uint16, row r's bf16 weights at [r, 0] and the bits below
at [r, 1]. On split tables the pooled vectors and their gradients are bf16 (uint16):

    forward:  pooled16[t, b] = bf16(sum_{j in bag (t, b)} tables[row_start[t] + indices[j], 0])
    update:   each looked-up row's fp32 value -= lr dpooled16[t, b], exactly (split-SGD)

Each function runs the version of its op that ``kernels`` selects
(numbadlrm.kernels.registry), its serial entry for small work, after checking every
array's dtype, shape and layout and that ``row_start`` lies within the tables; the
lookups themselves (offsets in range, ids below each table's rows) are checked on every
step by the caller (numbadlrm.batch.Batch.check_against; the MPI model's shard lookups
are derived from a batch checked that way).
"""

from __future__ import annotations

import numpy as np

from ..kernels.jit import run_serial
from ..kernels.registry import DEFAULT, KernelChoice
from ._checks import array_shape, check_array


def embedding_forward(
    pooled: np.ndarray,
    weights: np.ndarray,
    row_start: np.ndarray,
    offsets: np.ndarray,
    indices: np.ndarray,
    kernels: KernelChoice = DEFAULT,
) -> None:
    """pooled (T, B, D) <- sum-pooled rows (bf16 from split tables)."""
    if weights.ndim == 3:
        _check_split("pooled16", pooled, weights, row_start, offsets, indices)
        small = run_serial(indices.shape[0] * weights.shape[2] * 2 + pooled.nbytes)
        kernel = kernels.get("bf16_embedding_forward").entry(small)
        kernel(pooled, weights, row_start, offsets, indices)
        return
    check_embedding_args("pooled", pooled, weights, row_start, offsets, indices)
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
    """weights -= lr * dL/dweights, in place, from dpooled (T, B, D) and the lookups
    (split tables: exactly in fp32, from bf16 dpooled)."""
    if weights.ndim == 3:
        _check_split("dpooled16", dpooled, weights, row_start, offsets, indices)
        small = run_serial(2 * indices.shape[0] * weights.shape[2] * 4 + dpooled.nbytes)
        kernel = kernels.get("bf16_embedding_update").entry(small)
        kernel(weights, row_start, offsets, indices, dpooled, np.float32(lr))
        return
    check_embedding_args("dpooled", dpooled, weights, row_start, offsets, indices)
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
    check_embedding_args("dpooled", dpooled, dweights, row_start, offsets, indices, "dweights")
    dweights[...] = 0.0
    small = run_serial(2 * indices.shape[0] * dweights.shape[1] * 4 + dpooled.nbytes)
    kernel = kernels.get("embedding_gradient").entry(small)
    kernel(dweights, row_start, offsets, indices, dpooled)


def check_embedding_args(
    name, pooled, weights, row_start, offsets, indices, weights_name="weights"
) -> None:
    """pooled or dpooled (T, B, D), weights (rows, D) float32, and the lookups
    (check_lookup_arrays)."""
    num_tables, batch, dim = array_shape(name, pooled, 3)
    check_array(name, pooled, (num_tables, batch, dim))
    check_array(weights_name, weights, (array_shape(weights_name, weights, 2)[0], dim))
    rows = weights.shape[0]
    check_lookup_arrays(num_tables, batch, rows, weights_name, row_start, offsets, indices)


def check_lookup_arrays(num_tables, batch, rows, rows_name, row_start, offsets, indices):
    """row_start (T+1,), offsets (T, B+1), indices (nnz,) int64, C-contiguous; row_start
    within the ``rows`` rows of ``rows_name`` (it need not rise: the MPI model's shard
    lookups repeat each shard's start once per rank). Any precision's tables use it."""
    check_array("row_start", row_start, (num_tables + 1,), np.int64)
    check_array("offsets", offsets, (num_tables, batch + 1), np.int64)
    check_array("indices", indices, array_shape("indices", indices, 1), np.int64)
    if row_start.min() < 0 or row_start.max() > rows:
        raise ValueError(
            f"row_start: every table must start in [0, {rows}] (the rows of "
            f"{rows_name}), got {row_start.tolist()}"
        )


def _check_split(name, pooled16, tables, row_start, offsets, indices) -> None:
    """pooled16 (T, B, D) and tables (R, 2, D) uint16, and the lookups."""
    num_tables, batch, dim = array_shape(name, pooled16, 3)
    check_array(name, pooled16, (num_tables, batch, dim), np.uint16)
    check_array("tables", tables, (array_shape("tables", tables, 3)[0], 2, dim), np.uint16)
    check_lookup_arrays(num_tables, batch, tables.shape[0], "tables", row_start, offsets, indices)
