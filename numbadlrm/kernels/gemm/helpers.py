"""Helpers the fp32 GEMM versions share (fp32.py, fp32_tiled.py): blocks of C per thread,
transposes and packed panels of an operand (v3's, and v5's of NR columns or MR rows), and
the data pass's ReLU masks around a plain dx = dz W kernel.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import jit_parallel, jit_serial
from .epilogue import relu_mask

PANEL = 256  # v3: width (floats) of a packed Bm panel
# Blocks of C per call, at least: balances 2-4 threads. A constant, not the thread count,
# so that kernels cache and results do not depend on the number of threads.
MIN_TASKS = 8


@jit_serial
def cdiv(a, b):
    return (a + b - 1) // b


@jit_serial
def block_sizes(M, N):
    """Blocks of C handed to threads: 64 x 64, split until there are MIN_TASKS of them."""
    mb, nb = 64, 64
    while cdiv(M, mb) * cdiv(N, nb) < MIN_TASKS:
        if mb > 4 and cdiv(M, mb // 2) > cdiv(M, mb):
            mb //= 2
        elif nb > 4 and cdiv(N, nb // 2) > cdiv(N, nb):
            nb //= 2
        else:
            break
    return mb, nb


@jit_parallel
def transpose(out, a):
    """out (N, M) = a (M, N)^T, 8 rows of a at a time.

    Each input line is read once and each output write is 8 contiguous floats: with rows a
    power of two apart, a taller block (16) thrashes its L1 set and runs 3x slower.
    """
    M, N = a.shape
    for t in prange(cdiv(M, 8)):  # task t writes only columns 8t..8t+7 of out
        i0 = t * 8
        if i0 + 8 > M:
            for j in range(N):
                for i in range(i0, M):
                    out[j, i] = a[i, j]
            continue
        r0, r1, r2, r3 = a[i0], a[i0 + 1], a[i0 + 2], a[i0 + 3]
        r4, r5, r6, r7 = a[i0 + 4], a[i0 + 5], a[i0 + 6], a[i0 + 7]
        for j in range(N):
            o = out[j, i0 : i0 + 8]
            o[0], o[1], o[2], o[3] = r0[j], r1[j], r2[j], r3[j]
            o[4], o[5], o[6], o[7] = r4[j], r5[j], r6[j], r7[j]


@jit_parallel
def pack_panels(panels, Bm):
    """panels (P, K, PANEL)[p, k, j] = Bm (K, N)[k, p * PANEL + j] (tail panel part-filled)."""
    K, N = Bm.shape
    for p in prange(panels.shape[0]):  # task p writes only panel p
        j0 = p * PANEL
        nj = min(PANEL, N - j0)
        for k in range(K):
            src = Bm[k, j0 : j0 + nj]
            dst = panels[p, k]
            for j in range(nj):
                dst[j] = src[j]


@jit_serial
def zero(C, i0, i1, j0, j1):
    for i in range(i0, i1):
        c = C[i, j0:j1]
        for j in range(j1 - j0):
            c[j] = 0.0


@jit_serial
def row_sums(db, A, i0, i1):
    """db[i] = sum_k A[i, k] for i0 <= i < i1 (A is dz^T, so this is db = sum_b dz)."""
    K = A.shape[1]
    for i in range(i0, i1):
        s = np.float32(0.0)
        for k in range(K):
            s += A[i, k]
        db[i] = s


@jit_parallel
def pack_rows(P, X, w):
    """P (cdiv(R, w), K, w)[p, k, j] = X (R, K)[p w + j, k], zero past R: X^T in panels
    of w columns (the forward's Bm = W^T; A's slivers of MR rows, k major). Blocks of 32
    k: the block's w x 32 floats of P stay in L1 while the w rows fill them."""
    R, K = X.shape
    for p in prange(P.shape[0]):  # task p writes only panel p
        panel = P[p]
        n = min(w, R - p * w)
        for k0 in range(0, K, 32):
            k1 = min(K, k0 + 32)
            for j in range(n):
                row = X[p * w + j, k0:k1]
                for k in range(k1 - k0):
                    panel[k0 + k, j] = row[k]
            for j in range(n, w):
                for k in range(k0, k1):
                    panel[k, j] = 0.0


@jit_parallel
def pack_cols(P, X, w, partial):
    """P (cdiv(C, w), K, w)[p, k, j] = X (K, C)[k, p w + j], zero past C: X in panels of
    w columns (Bm = W or x; the weight pass's A = dz^T in slivers of MR rows). Blocks of
    16 rows of X, read once, each written to every panel as one contiguous run. With
    ``partial`` (cdiv(K, 16), C) (else (0, 0)): partial[t] = the column sums of block t."""
    K, C = X.shape
    sums = partial.shape[0] > 0
    for t in prange(cdiv(K, 16)):  # task t writes only P[:, 16 t : 16 t + 16], partial[t]
        k0, k1 = t * 16, min(K, t * 16 + 16)
        for p in range(P.shape[0]):
            j0 = p * w
            n = min(w, C - j0)
            for k in range(k0, k1):
                src = X[k, j0 : j0 + n]
                dst = P[p, k]
                for j in range(n):
                    dst[j] = src[j]
                for j in range(n, w):
                    dst[j] = 0.0
        if sums:
            out = partial[t]
            for j in range(C):
                out[j] = 0.0
            for k in range(k0, k1):
                row = X[k]
                for j in range(C):
                    out[j] += row[j]


def data_pass(backward_data):
    """The linear layer's data pass (op ``linear_backward_data``) from a plain dx = dz W
    kernel: this layer's ReLU mask on dy first, the mask of the layer below on dx after."""

    def run(dx, dy, y, W, x, relu, mask_dx):
        if relu:
            relu_mask(dy, y)
        if dx is not None:
            backward_data(dx, dy, W)
            if mask_dx:
                relu_mask(dx, x)

    run.__name__ = f"data_pass({backward_data.__name__})"
    return run
