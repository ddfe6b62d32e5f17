"""The bf16 linear layer's weight pass: dW = dz16^T x16, db = sum_b dz16 (fp32), on the
vdpbf16ps tile (or its emulation), and its fused split-SGD form, which updates the split
master weights and repacks W16 in the same tiles (kernels/gemm/bf16.py has the layout)."""

from __future__ import annotations

import numpy as np
from numba import prange

from ..bf16 import bf16_value
from ..jit import jit_parallel, jit_serial
from .bf16_blocks import (
    _block,
    _cdiv,
    _split_sgd_rows,
)
from .pack_bf16 import (
    PACK_BLOCK,
    ROW_PAIRS,
    _column_sums_range,
    _pack_cols_range,
    _pair_rows_range,
    _pairs_width,
    _reduce_parts,
    pack_cols,
    pack_cols_serial,
    pack_rows,
    pack_rows_serial,
)
from .tile_bf16 import MR, NR, tile, tile_sgd

# ----------------------------------------------------------------- weight pass


@jit_serial
def _weight_task(C, A, K, P, t, tasks, dot):
    """Task t's block of C (M, N) = A Bm: A = pair_rows(S) (A's row i = S's column i),
    Bm packed by pack_cols; tiles written into C."""
    M, N = C.shape
    i0, i1, j0, j1 = _block(t, tasks, M, N)
    panel = P.shape[1] * NR
    for jj in range(j0, j1, NR):
        n = min(NR, j1 - jj)
        for ii in range(i0, i1, MR):
            m = min(MR, i1 - ii)
            p_off = (jj // NR) * panel
            tile(K, A, 4 * ii, 4, 4 * A.shape[1], P, p_off, C, ii * N + jj, N, m, n, False, dot)


@jit_serial
def _weight_sgd_task(w_hi, w_lo, Wf, Wd, A, K, P, lr, t, tasks, dot):
    """Task t's block of W (hi, lo) -= lr A Bm: each gradient tile applied from registers,
    its new bf16 weights written into the packings Wf, Wd (if not empty)."""
    i0, i1, j0, j1 = _block(t, tasks, w_hi.shape[0], w_hi.shape[1])
    panel = P.shape[1] * NR
    for jj in range(j0, j1, NR):
        n = min(NR, j1 - jj)
        for ii in range(i0, i1, MR):
            m = min(MR, i1 - ii)
            p_off = (jj // NR) * panel
            a_row = 4 * A.shape[1]
            tile_sgd(K, A, 4 * ii, 4, a_row, P, p_off, w_hi, w_lo, ii, jj, lr, m, n, Wd, Wf, dot)


@jit_parallel
def _weight_tiles(C, A, K, P, tasks, dot):
    for t in prange(tasks):  # task t writes only its block of C
        _weight_task(C, A, K, P, t, tasks, dot)


@jit_serial
def _weight_tiles_serial(C, A, K, P, tasks, dot):
    for t in range(tasks):
        _weight_task(C, A, K, P, t, tasks, dot)


@jit_parallel
def _weight_sgd_tiles(w_hi, w_lo, Wf, Wd, A, K, P, lr, tasks, dot):
    # task t reads and writes only its block of W and that block's entries in Wf and Wd
    # (a data-packing uint32 pairs rows 2s, 2s + 1 of one tile: blocks are whole tiles)
    for t in prange(tasks):
        _weight_sgd_task(w_hi, w_lo, Wf, Wd, A, K, P, lr, t, tasks, dot)


@jit_serial
def _weight_sgd_tiles_serial(w_hi, w_lo, Wf, Wd, A, K, P, lr, tasks, dot):
    for t in range(tasks):
        _weight_sgd_task(w_hi, w_lo, Wf, Wd, A, K, P, lr, t, tasks, dot)


@jit_serial
def _prepare_range(A, P, parts, a_src, b_src, dz16, pairs, t):
    """Task t's rows of the weight pass's operands: pairs [t RP, (t + 1) RP) of A =
    pair_rows(a_src) and of P = pack_cols(b_src), and parts[t] = column sums of dz16's
    rows 2 t RP ... (the same rows: one parallel region for all three)."""
    k0 = t * ROW_PAIRS
    k1 = min(A.shape[0], k0 + ROW_PAIRS)
    _pair_rows_range(A, a_src, k0, k1)
    _pack_cols_range(P, b_src, k0, k1, pairs)
    _column_sums_range(parts[t], dz16, 2 * k0, min(dz16.shape[0], 2 * k1))


@jit_parallel
def _prepare(A, P, parts, a_src, b_src, dz16):
    scratch = np.empty((parts.shape[0], PACK_BLOCK, b_src.shape[1]), np.uint32)
    for t in prange(parts.shape[0]):  # task t writes only its rows of A, P and parts[t]
        _prepare_range(A, P, parts, a_src, b_src, dz16, scratch[t], t)


@jit_serial
def _operands(db, dz16, x16, serial):
    """(A, P, transposed) of the weight pass, and db: A = pair_rows(dz) (dz^T) and P =
    pack_cols(x), or, when I is narrow and O wide, A = pair_rows(x) and P = pack_cols(dz)
    (the product is then dW^T)."""
    B, O = dz16.shape
    I = x16.shape[1]
    transposed = I < NR // 2 and O >= NR
    a_src, b_src = (x16, dz16) if transposed else (dz16, x16)
    A = np.empty((_cdiv(B, 2), _pairs_width(a_src.shape[1])), np.uint32)
    P = np.empty((_cdiv(b_src.shape[1], NR), _cdiv(B, 2), NR), np.uint32)
    parts = np.empty((max(1, _cdiv(A.shape[0], ROW_PAIRS)), O), np.float32)
    if serial:
        pairs = np.empty((PACK_BLOCK, b_src.shape[1]), np.uint32)
        for t in range(parts.shape[0]):
            _prepare_range(A, P, parts, a_src, b_src, dz16, pairs, t)
    else:
        _prepare(A, P, parts, a_src, b_src, dz16)
    _reduce_parts(db, parts)
    return A, P, transposed


@jit_serial
def _logit_weight_range(g, dz16, x16, i0, i1):
    """g[i0:i1] = sum_b dz16[b, 0] x16[b, i0:i1] in fp32: an O = 1 layer's dW, rows of x
    added in order (a tile would pack all of x to fill one row of C)."""
    for i in range(i0, i1):
        g[i] = 0.0
    out = g[i0:i1]
    for r in range(x16.shape[0]):
        d = bf16_value(dz16[r, 0])
        xr = x16[r, i0:i1]
        for i in range(i1 - i0):
            out[i] += d * bf16_value(xr[i])


@jit_parallel
def _logit_weight(g, dz16, x16, tasks):
    I = x16.shape[1]
    for t in prange(tasks):  # task t writes only g[t I / tasks : (t + 1) I / tasks]
        _logit_weight_range(g, dz16, x16, t * I // tasks, (t + 1) * I // tasks)


@jit_serial
def _logit_grads(dW, db, dz16, x16, tasks, serial):
    """dW (1, I) and db (1,) of an O = 1 layer."""
    if serial:
        _logit_weight_range(dW[0], dz16, x16, 0, x16.shape[1])
    else:
        _logit_weight(dW[0], dz16, x16, tasks)
    parts = np.empty((1, 1), np.float32)
    _column_sums_range(parts[0], dz16, 0, dz16.shape[0])
    db[0] = parts[0, 0]


@jit_serial
def _weight_grad(dW, db, dz16, x16, tasks, serial, dot):
    if dW.shape[0] == 1:
        _logit_grads(dW, db, dz16, x16, tasks, serial)
        return
    A, P, transposed = _operands(db, dz16, x16, serial)
    C = np.empty((dW.shape[1], dW.shape[0]), np.float32) if transposed else dW
    K = dz16.shape[0]
    if serial:
        _weight_tiles_serial(C, A, K, P, tasks, dot)
    else:
        _weight_tiles(C, A, K, P, tasks, dot)
    if transposed:  # dW (O, I) = C^T, I < NR / 2: small
        for o in range(dW.shape[0]):
            for i in range(dW.shape[1]):
                dW[o, i] = C[i, o]


@jit_serial
def linear_backward_weight(dW, db, dz16, x16, tasks, dot):
    """dW (O, I) fp32 = dz16^T x16 and db (O,) fp32 = sum_b dz16, from bf16 dz16 (B, O)
    and x16 (B, I): pairs dz's rows, packs x and sums dz (one parallel region), then the
    tiles (another). O = 1 (the logit layer) is a plain loop over x's rows."""
    _weight_grad(dW, db, dz16, x16, tasks, False, dot)


@jit_serial
def linear_backward_weight_serial(dW, db, dz16, x16, tasks, dot):
    _weight_grad(dW, db, dz16, x16, tasks, True, dot)


@jit_serial
def _repack(Wf, Wd, w16, serial):
    """Wf = pack_rows(w16), Wd = pack_cols(w16), unless they are empty."""
    if Wf.size == 0:
        return
    if serial:
        pack_rows_serial(Wf, w16)
        pack_cols_serial(Wd, w16)
    else:
        pack_rows(Wf, w16)
        pack_cols(Wd, w16)


@jit_serial
def _weight_split_sgd(w_hi, w_lo, b_hi, b_lo, Wf, Wd, dz16, x16, lr, tasks, serial, dot):
    db = np.empty((1, b_hi.shape[0]), np.float32)
    if w_hi.shape[0] == 1:
        g = np.empty((1, w_hi.shape[1]), np.float32)
        _logit_grads(g, db[0], dz16, x16, tasks, serial)
        _split_sgd_rows(w_hi, w_lo, g, lr, 0, 1, 0, g.shape[1])
        _split_sgd_rows(b_hi.reshape((1, 1)), b_lo.reshape((1, 1)), db, lr, 0, 1, 0, 1)
        _repack(Wf, Wd, w_hi, serial)
        return
    A, P, transposed = _operands(db[0], dz16, x16, serial)
    K = dz16.shape[0]
    if transposed:  # the small dW^T first, then the update from it
        C = np.empty((w_hi.shape[1], w_hi.shape[0]), np.float32)
        if serial:
            _weight_tiles_serial(C, A, K, P, tasks, dot)
        else:
            _weight_tiles(C, A, K, P, tasks, dot)
        _split_sgd_rows(w_hi, w_lo, C.T, lr, 0, w_hi.shape[0], 0, w_hi.shape[1])
        _repack(Wf, Wd, w_hi, serial)
    elif serial:  # the tiles also refresh the packings
        _weight_sgd_tiles_serial(w_hi, w_lo, Wf, Wd, A, K, P, lr, tasks, dot)
    else:
        _weight_sgd_tiles(w_hi, w_lo, Wf, Wd, A, K, P, lr, tasks, dot)
    _split_sgd_rows(b_hi.reshape((1, -1)), b_lo.reshape((1, -1)), db, lr, 0, 1, 0, db.shape[1])


@jit_serial
def linear_backward_weight_split_sgd(w_hi, w_lo, b_hi, b_lo, dz16, x16, lr, tasks, dot):
    """Split-SGD of the layer's master weights, fused with the weight pass: W (w_hi, w_lo
    (O, I) uint16) -= lr dz16^T x16 and b (b_hi, b_lo (O,)) -= lr sum_b dz16, each fp32
    value exactly as split_sgd_update would give from linear_backward_weight's dW, db (lr
    float32). No dW is stored: each gradient tile is applied from registers."""
    none = np.empty((0, 0, NR), np.uint32)  # no packings to refresh
    _weight_split_sgd(w_hi, w_lo, b_hi, b_lo, none, none, dz16, x16, lr, tasks, False, dot)


@jit_serial
def linear_backward_weight_split_sgd_serial(w_hi, w_lo, b_hi, b_lo, dz16, x16, lr, tasks, dot):
    none = np.empty((0, 0, NR), np.uint32)
    _weight_split_sgd(w_hi, w_lo, b_hi, b_lo, none, none, dz16, x16, lr, tasks, True, dot)


@jit_serial
def linear_backward_weight_split_sgd_packed(
    w_hi, w_lo, b_hi, b_lo, Wf, Wd, dz16, x16, lr, tasks, dot
):
    """linear_backward_weight_split_sgd, and W's packings Wf = pack_rows(w_hi), Wd =
    pack_cols(w_hi) refreshed with it: the tiles write their new bf16 weights into them
    (microkernel_bf16.tile_sgd), so no repacking pass reads W again."""
    _weight_split_sgd(w_hi, w_lo, b_hi, b_lo, Wf, Wd, dz16, x16, lr, tasks, False, dot)


@jit_serial
def linear_backward_weight_split_sgd_packed_serial(
    w_hi, w_lo, b_hi, b_lo, Wf, Wd, dz16, x16, lr, tasks, dot
):
    _weight_split_sgd(w_hi, w_lo, b_hi, b_lo, Wf, Wd, dz16, x16, lr, tasks, True, dot)
