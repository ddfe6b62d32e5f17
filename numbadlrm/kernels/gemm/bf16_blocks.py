"""What the bf16 linear passes share: how C is cut into blocks for the tasks, and the
epilogues that store a tile's fp32 sums (bias, ReLU, bf16 rounding) or apply split-SGD."""

from __future__ import annotations

import numpy as np

from ..bf16 import hi_half, lo_half, merge_value, round_bf16, sgd_fma
from ..jit import jit_serial
from .tile_bf16 import MR, NR

NONE_F32 = np.empty((0, 0), np.float32)
NONE_U16 = np.empty((0, 0), np.uint16)
NONE_F32_1D = np.empty(0, np.float32)  # no bias
TASKS = 16  # blocks of C per call (a constant, so results and caching ignore threads)
MIN_ROW_TILES = 2 * TASKS  # fewer row tiles than this: share columns instead


@jit_serial
def _cdiv(a, b):
    return (a + b - 1) // b


@jit_serial
def _part(t, tasks, parts):
    """The part task t computes, or -1: part p goes to task p tasks // parts, so that when
    there are fewer parts than tasks, the parts spread over the whole task range (prange
    gives each thread a contiguous run of tasks: parts 0..3 of 16 tasks on tasks 0-3 put
    all the work on the first thread)."""
    p = (t * parts + tasks - 1) // tasks
    return p if p < parts and (p * tasks) // parts == t else -1


@jit_serial
def _block(t, tasks, M, N):
    """(i0, i1, j0, j1): task t's block of C, whole tiles of rows or of columns."""
    row_tiles, col_tiles = _cdiv(M, MR), _cdiv(N, NR)
    if row_tiles >= MIN_ROW_TILES or col_tiles < 2:
        parts = max(1, min(tasks, row_tiles))
        p = _part(t, tasks, parts)
        if p < 0:
            return 0, 0, 0, 0
        return (p * row_tiles // parts) * MR, min(M, ((p + 1) * row_tiles // parts) * MR), 0, N
    parts = max(1, min(tasks, col_tiles))
    p = _part(t, tasks, parts)
    if p < 0:
        return 0, 0, 0, 0
    return 0, M, (p * col_tiles // parts) * NR, min(N, ((p + 1) * col_tiles // parts) * NR)


# ------------------------------------------------------------------ epilogues


@jit_serial
def _store_tile(y, y16, s, i, m, j, n):
    """y[i:i+m, j:j+n] = s[:m, :n] (if y is wanted) and y16 = its bf16 (if wanted)."""
    for r in range(m):
        row = s[r]
        if y.shape[0] > 0:
            out = y[i + r, j : j + n]
            for c in range(n):
                out[c] = row[c]
        if y16.shape[0] > 0:
            out16 = y16[i + r, j : j + n]
            for c in range(n):
                out16[c] = round_bf16(row[c])


@jit_serial
def _split_sgd_rows(w_hi, w_lo, s, lr, i, m, j, n):
    """Split-SGD of W[i:i+m, j:j+n] with the gradient tile s (kernels/bf16.py)."""
    for r in range(m):
        g = s[r]
        hi, lo = w_hi[i + r, j : j + n], w_lo[i + r, j : j + n]
        for c in range(n):
            w = sgd_fma(merge_value(hi[c], lo[c]), g[c], lr)
            hi[c] = hi_half(w)
            lo[c] = lo_half(w)
