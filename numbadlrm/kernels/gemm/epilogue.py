"""Epilogues of the linear layer's GEMMs, shared by the Numba GEMMs (gemm.py) and the
BLAS backend (blas.py): bias + ReLU on finished rows, the ReLU mask of the backward,
the bias gradient as column sums, and the O = 1 (logit) layer's matrix-vector forms.

They are serial helpers over a block of rows or columns: each caller runs them on the
block it has just written, while it is in cache. ``bias_act`` and ``relu_mask`` are
parallel forms over whole arrays.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import jit_parallel, jit_serial


@jit_serial
def bias_relu(C, b, i0, i1, j0, j1, relu):
    """C[i0:i1, j0:j1] += b[j0:j1], then ReLU: the forward's epilogue on a finished tile."""
    bb = b[j0:j1]
    for i in range(i0, i1):
        c = C[i, j0:j1]
        for j in range(j1 - j0):
            v = c[j] + bb[j]
            c[j] = max(v, np.float32(0.0)) if relu else v


@jit_parallel
def bias_act(y, b, relu):
    """y += b, then ReLU if relu, in place over a whole (B, O) array."""
    O = y.shape[1]
    for r in prange(y.shape[0]):  # task r writes only row r of y
        bias_relu(y, b, r, r + 1, 0, O, relu)


@jit_serial
def relu_mask_row(d, v):
    """d *= [v > 0] over one row."""
    for o in range(d.shape[0]):
        d[o] = d[o] if v[o] > 0 else 0.0  # a select, not a branch: vectorises


@jit_parallel
def relu_mask(dy, y):
    """dy *= [y > 0] in place: the ReLU backward (dy becomes dz)."""
    for r in prange(dy.shape[0]):  # task r writes only row r of dy
        relu_mask_row(dy[r], y[r])


@jit_serial
def relu_mask_serial(dy, y):
    """relu_mask on the calling thread (small work)."""
    for r in range(dy.shape[0]):
        relu_mask_row(dy[r], y[r])


@jit_serial
def column_sums(out, dz, j0, j1):
    """out[:j1 - j0] = sum_b dz[b, j0:j1]: db of a block of columns (rows summed in order)."""
    for j in range(j1 - j0):
        out[j] = 0.0
    for i in range(dz.shape[0]):
        row = dz[i, j0:j1]
        for j in range(j1 - j0):
            out[j] += row[j]


@jit_parallel
def column_sums_blocks(db, dz):
    """db[j] = sum_b dz[b, j], columns in blocks of 64 per task."""
    N = dz.shape[1]
    for t in prange((N + 63) // 64):  # task t writes only db[64 t : 64 t + 64]
        j0 = t * 64
        j1 = min(N, j0 + 64)
        column_sums(db[j0:j1], dz, j0, j1)


@jit_serial
def logit_rows(y, x, w, r0, r1):
    """y[i, 0] = x[i] . w for r0 <= i < r1: an O = 1 layer's forward, a matrix-vector
    product (a GEMM tile or an N = 1 sgemm would be mostly idle)."""
    for i in range(r0, r1):
        xi = x[i]
        acc = np.float32(0.0)
        for k in range(x.shape[1]):
            acc += xi[k] * w[k]
        y[i, 0] = acc


@jit_serial
def outer_rows(dx, dz, w, r0, r1):
    """dx[i] = dz[i, 0] w for r0 <= i < r1: an O = 1 layer's dx = dz W, an outer product."""
    for i in range(r0, r1):
        g = dz[i, 0]
        row = dx[i]
        for j in range(dx.shape[1]):
            row[j] = g * w[j]
