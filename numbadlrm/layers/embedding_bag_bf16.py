"""Embedding bags on split-bf16 tables (--precision bf16), forward and fused update side
by side (kernels/embedding_bf16.py has the layout and the kernels).

    tables (R, 2, D) uint16: row r's bf16 weights tables[r, 0], the bits below tables[r, 1]
    forward:  pooled16[t, b] = bf16(sum_{j in bag (t, b)} tables[row_start[t] + indices[j], 0])
    update:   each looked-up row's fp32 value -= lr dpooled16[t, b], exactly (split-SGD),
              for every lookup; no dense gradient ever exists

Each runs the version of its op that ``kernels`` selects, its serial entry for small
work, after the same argument checks as layers/embedding_bag.py; the lookups' values
are checked per step by the caller (Batch.check_against).
"""

from __future__ import annotations

import numpy as np

from ..kernels.jit import run_serial
from ..kernels.registry import DEFAULT, KernelChoice
from ._checks import array_shape, check_array
from .embedding_bag import check_lookup_arrays


def embedding_forward_bf16(pooled16, tables, row_start, offsets, indices, kernels=DEFAULT):
    """pooled16 (T, B, D) <- bf16 of the sum-pooled bf16 rows."""
    _check("pooled16", pooled16, tables, row_start, offsets, indices)
    small = run_serial(indices.shape[0] * tables.shape[2] * 2 + pooled16.nbytes)
    kernel = kernels.get("bf16_embedding_forward").entry(small)
    kernel(pooled16, tables, row_start, offsets, indices)


def embedding_update_bf16(
    tables, row_start, offsets, indices, dpooled16, lr: float, kernels: KernelChoice = DEFAULT
) -> None:
    """tables' fp32 values -= lr dL/dtables, exactly, in place, from dpooled16 (T, B, D)."""
    _check("dpooled16", dpooled16, tables, row_start, offsets, indices)
    small = run_serial(2 * indices.shape[0] * tables.shape[2] * 4 + dpooled16.nbytes)
    kernel = kernels.get("bf16_embedding_update").entry(small)
    kernel(tables, row_start, offsets, indices, dpooled16, np.float32(lr))


def _check(name, pooled16, tables, row_start, offsets, indices) -> None:
    """pooled16 (T, B, D) and tables (R, 2, D) uint16; row_start (T+1,), offsets (T, B+1),
    indices (nnz,) int64; all C-contiguous; row_start within the tables."""
    num_tables, batch, dim = array_shape(name, pooled16, 3)
    check_array(name, pooled16, (num_tables, batch, dim), np.uint16)
    check_array("tables", tables, (array_shape("tables", tables, 3)[0], 2, dim), np.uint16)
    check_lookup_arrays(num_tables, batch, tables.shape[0], "tables", row_start, offsets, indices)
