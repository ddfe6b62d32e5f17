"""Packing for the bf16 GEMMs (kernels/gemm/bf16.py): bf16 matrices into pairs of k.

vdpbf16ps multiplies pairs of bf16 values held in 32-bit lanes, so both GEMM operands
need two consecutive k values in each uint32 (low half k, high half k + 1):

    pack_rows(panels, S)  S (N, K), k along S's rows      -> Bm = S^T in panels
    pack_cols(panels, S)  S (K, N), k along S's columns   -> Bm = S in panels
    pair_rows(out, S)     S (K, M)                        -> A = S^T, rows of pairs

Panels are (ceil(N/NR), ceil(K/2), NR) uint32: a tile's NR = 64 columns for every k
pair, contiguous, zero past N and past an odd K, so the tile loads whole vectors.
pair_rows' output (ceil(K/2), pairs_width(M)) keeps S's layout with rows 2kk and
2kk + 1 interleaved: row o of A = S^T is read through byte strides (4, 4 width).

Also here: fp32 column sums of a bf16 matrix in parts of 2 ROW_PAIRS rows (db of the
weight pass), reduced in a fixed order.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..bf16 import bf16_value
from ..jit import jit_parallel, jit_serial
from .tile_bf16 import NR

ROW_PAIRS = 64  # packing and column sums: pairs of rows per parallel task
PACK_BLOCK = 8  # pack_cols: pairs of rows paired at once (8 x N uint32 scratch, in L1)


@jit_serial
def _cdiv(a, b):
    return (a + b - 1) // b


@jit_serial
def _pack_rows_panel(panels, S, p):
    """panels[p, kk, j] = (S[p NR + j, 2 kk], S[p NR + j, 2 kk + 1]) as a uint32, zeros past
    S's rows and past an odd K."""
    N, K = S.shape
    out = panels[p]
    pairs = out.shape[0]
    n = min(NR, N - p * NR)
    for j in range(n):
        row = S[p * NR + j]
        for kk in range(K // 2):
            out[kk, j] = np.uint32(row[2 * kk]) | (np.uint32(row[2 * kk + 1]) << np.uint32(16))
        if K % 2:
            out[pairs - 1, j] = np.uint32(row[K - 1])
    for kk in range(pairs):
        for j in range(n, NR):
            out[kk, j] = 0


@jit_serial
def _pairs(dst, S, kk, j0, n):
    """dst[:n] = (S[2 kk, j0 + j], S[2 kk + 1, j0 + j]) as uint32s (upper half 0 past an
    odd K), dst[n:] = 0."""
    even = S[2 * kk, j0 : j0 + n]
    if 2 * kk + 1 < S.shape[0]:
        odd = S[2 * kk + 1, j0 : j0 + n]
        for j in range(n):
            dst[j] = np.uint32(even[j]) | (np.uint32(odd[j]) << np.uint32(16))
    else:
        for j in range(n):
            dst[j] = np.uint32(even[j])
    dst[n:] = 0  # a slice: a loop from n would keep negative-index wraparound (scatters)


@jit_serial
def _pack_cols_range(panels, S, k0, k1, pairs):
    """panels[p, kk, j] = (S[2 kk, p NR + j], S[2 kk + 1, p NR + j]) for k0 <= kk < k1,
    zeros past S's columns and past an odd K; ``pairs`` (PACK_BLOCK, N) uint32 scratch.

    Blocks of PACK_BLOCK pairs of rows are paired whole into the scratch (two sequential
    reads, one write, in L1), then cut into the panels. Measured at 2048 x 1024 on one
    thread, against 0.86 ms this way: 1.2-1.5 ms pairing straight into the panels, kk
    outer (16 write streams K/2 x 256 bytes apart share L1's sets), 0.9-1.4 panels outer.
    """
    N = S.shape[1]
    for kb in range(k0, k1, PACK_BLOCK):
        ke = min(kb + PACK_BLOCK, k1)
        for kk in range(kb, ke):
            _pairs(pairs[kk - kb], S, kk, 0, N)
        for p in range(panels.shape[0]):
            j0 = p * NR
            n = min(NR, N - j0)
            for kk in range(kb, ke):
                src = pairs[kk - kb, j0 : j0 + n]
                dst = panels[p, kk]
                for j in range(n):
                    dst[j] = src[j]
                dst[n:] = 0


@jit_parallel
def pack_rows(panels, S):
    """panels (ceil(N/NR), ceil(K/2), NR) uint32 = S (N, K) bf16 as a packed Bm = S^T."""
    for p in prange(panels.shape[0]):  # task p writes only panel p
        _pack_rows_panel(panels, S, p)


@jit_serial
def pack_rows_serial(panels, S):
    for p in range(panels.shape[0]):
        _pack_rows_panel(panels, S, p)


@jit_parallel
def pack_cols(panels, S):
    """panels (ceil(N/NR), ceil(K/2), NR) uint32 = S (K, N) bf16 as a packed Bm = S."""
    pairs = panels.shape[1]
    tasks = _cdiv(pairs, ROW_PAIRS)
    scratch = np.empty((tasks, PACK_BLOCK, S.shape[1]), np.uint32)
    for t in prange(tasks):  # task t writes only pairs [t RP, (t + 1) RP) and scratch[t]
        k0 = t * ROW_PAIRS
        _pack_cols_range(panels, S, k0, min(pairs, k0 + ROW_PAIRS), scratch[t])


@jit_serial
def pack_cols_serial(panels, S):
    scratch = np.empty((PACK_BLOCK, S.shape[1]), np.uint32)
    _pack_cols_range(panels, S, 0, panels.shape[1], scratch)


def panels_shape(N: int, K: int) -> tuple[int, int, int]:
    """Shape of the packed Bm (K, N): (panels, k pairs, NR)."""
    return (N + NR - 1) // NR, (K + 1) // 2, NR


@jit_serial
def _pairs_width(M):
    """Row length (uint32s) of pair_rows' output for M columns: M rounded up to an odd
    number of 64-byte lines, so that the rows of pairs a tile reads one after the other
    spread over all cache sets (M = 1024 unpadded puts them 4 KiB apart, all in the
    same L1 and L2 sets: 150 against 200 GFLOP/s measured at 1 thread)."""
    lines = (M + 15) // 16
    return 16 * (lines + 1 - lines % 2)


def pairs_width(M: int) -> int:
    return int(_pairs_width(M))


@jit_serial
def _pair_rows_range(out, S, k0, k1):
    """out[kk, :N] = (S[2 kk], S[2 kk + 1]) as uint32s, k0 <= kk < k1 (zero past odd K)."""
    for kk in range(k0, k1):
        _pairs(out[kk], S, kk, 0, S.shape[1])


@jit_parallel
def pair_rows(out, S):
    """out (ceil(K/2), pairs_width(N)) uint32 = S (K, N) bf16 with rows 2kk and 2kk + 1
    interleaved in pairs: the weight pass's A operand S^T, read by the tile through byte
    strides (4, 4 pairs_width(N)) without a transpose."""
    pairs = out.shape[0]
    for t in prange(_cdiv(pairs, ROW_PAIRS)):  # task t writes only its rows of out
        _pair_rows_range(out, S, t * ROW_PAIRS, min(pairs, (t + 1) * ROW_PAIRS))


@jit_serial
def pair_rows_serial(out, S):
    _pair_rows_range(out, S, 0, out.shape[0])


@jit_serial
def _column_sums_range(out, S, r0, r1):
    """out[j] = sum_{r0 <= r < r1} S[r, j] in fp32 (rows added in order)."""
    for j in range(S.shape[1]):
        out[j] = 0.0
    for r in range(r0, r1):
        row = S[r]
        for j in range(S.shape[1]):
            out[j] += bf16_value(row[j])


@jit_serial
def _reduce_parts(db, parts):
    """db = sum_t parts[t], in the order of t (so the result ignores the thread count)."""
    for j in range(db.shape[0]):
        db[j] = 0.0
    for t in range(parts.shape[0]):
        for j in range(db.shape[0]):
            db[j] += parts[t, j]
