"""The linear layer's three GEMMs in bf16 with fp32 accumulation, on the vdpbf16ps tile.

Shapes as kernels/gemm/fp32.py (W (O, I), x (B, I), y and dz (B, O)); bf16 arrays are uint16
(kernels/bf16.py), everything accumulated in fp32 by ``microkernel_bf16.tile``:

    forward           y  = x W^T + b, then max(y, 0) if relu     fp32 (B, O) and/or bf16
    backward_data     dx = dz W, then dx [x > 0] if mask_dx      fp32 (B, I) and/or bf16
    backward_weight   dW = dz^T x (fp32 (O, I)),  db = sum_b dz (fp32)
    weight + SGD      W (hi, lo) -= lr dW,  b -= lr db: split-SGD on the master weights

Each pass is C (M, N) = A (M, K) Bm (K, N) with A bf16 row-major (a k pair is one 32-bit
broadcast) and Bm packed in pairs of k (microkernel_bf16.py, packing in pack_bf16.py):

    pass       M  N  K    A                          Bm packed by
    forward    B  O  I    x as it lies               pack_rows(W): W's rows hold k = i
    data       B  I  O    dz as it lies              pack_cols(W): W's columns hold k = o
    weight     O  I  B    pair_rows(dz): dz^T        pack_cols(x): x's columns hold k = b

W's two packings depend only on W, so they are made once per weight update (their cost
is the caller's, once per step). The weight pass's A = dz^T needs pairs of b in 32 bits:
``pair_rows`` interleaves dz's rows 2kk and 2kk + 1 ((B/2, O + pad) uint32, one
streaming pass) and the tile reads dz^T's row o through byte strides (4, 4 (O + pad)),
no transpose (a 16-bit transpose of dz took 1.8 ms at 2048 x 1024, this pass 0.4, at
one thread; MR-row micro-panels, GotoBLAS's A packing, 1.1-1.4 ms for the same tile
speed). The pad keeps those rows off a 4 KiB stride (see pairs_width). The pass packs x
too, every call (both costs are inside it). With I narrow (< NR / 2) and O wide, it
forms dW^T = x^T dz instead (A = pair_rows(x), Bm = pack_cols(dz)), so a tile's 64
columns are O's, as gemm.py v4.

There is no k blocking: one tile runs the whole K, so a B panel (K x 128 bytes, 128 KiB
at K = 1024) stays in L2 and an A sliver (MR x K x 2 bytes) in L1 while a task's row
tiles sweep it; fine for K up to a few thousand (DLRM's widths). C is cut into ``tasks``
blocks of rows (or of columns when there are few rows); each task writes only its block.
A tile lands in the task's own MR x NR fp32 scratch, and the epilogue (bias, ReLU, mask,
rounding to bf16, the SGD update) runs on it while it is in L1 (the plain weight pass
stores its tiles into dW directly). Every element is one tile's sum over the whole K, so
results do not depend on the task or thread count. O = 1 (the logit layer) has plain
loops for all three passes (``logit_forward``, ``logit_backward_data``, and inside the
weight pass): a tile would compute 64 columns to keep one.

Measured (bench/bench_gemm_bf16.py, 2 threads, all passes of configs b and c summed,
packing included): 2.06x and 2.01x the fp32 blas backend, 0.98x and 0.97x torch's bf16
matmul; the 1024-wide passes at 87-92% of vdpbf16ps's measured peak (bench/RESULTS.md).

Every tile kernel takes the form of vdpbf16ps last (``dot``: microkernel_bf16.VDPBF16PS
or EMULATED, two fp32 FMAs for a CPU without AVX512-BF16); the registry has both as
versions v1 and v1-emu of each op, v1 the default where the CPU has the instruction.

Every kernel has a parallel entry (tasks on Numba's threads) and a ``*_serial`` entry
(the same tasks on the calling thread). Outputs first; an output not wanted is passed
as an empty (0, 0) array (``NONE_F32``, ``NONE_U16``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..bf16 import bf16_value, hi_half, lo_half, merge_value, round_bf16, sgd_fma
from ..jit import jit_parallel, jit_serial
from ..registry import register
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
from .tile_bf16 import DOTS, MR, NR, tile, tile_out, tile_sgd

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


# ------------------------------------------------------------- forward, data


@jit_serial
def _forward_task(y, y16, x16, Wf, b, relu, t, tasks, dot):
    """Task t's block of y = x W^T + b (ReLU), Wf = pack_rows(W); each tile's epilogue
    runs on its accumulators (microkernel_bf16.tile_out)."""
    B, K = x16.shape
    i0, i1, j0, j1 = _block(t, tasks, B, b.shape[0])
    panel = Wf.shape[1] * NR
    for jj in range(j0, j1, NR):  # one B panel (L2) swept by all the task's row tiles
        n = min(NR, j1 - jj)
        for ii in range(i0, i1, MR):
            m = min(MR, i1 - ii)
            p_off = (jj // NR) * panel
            tile_out(
                K,
                x16,
                2 * ii * K,
                2 * K,
                4,
                Wf,
                p_off,
                y,
                y16,
                ii,
                jj,
                b,
                relu,
                NONE_U16,
                False,
                m,
                n,
                dot,
            )


@jit_parallel
def linear_forward(y, y16, x16, Wf, b, relu, tasks, dot):
    """y (B, O) fp32 and/or y16 (B, O) bf16 = x16 (B, I) W^T + b, ReLU if relu; Wf =
    pack_rows(W16) (panels_shape(O, I)); b (O,) fp32; dot: microkernel_bf16.VDPBF16PS or
    EMULATED (as every tile kernel here)."""
    for t in prange(tasks):  # task t writes only its block of y and y16
        _forward_task(y, y16, x16, Wf, b, relu, t, tasks, dot)


@jit_serial
def linear_forward_serial(y, y16, x16, Wf, b, relu, tasks, dot):
    for t in range(tasks):
        _forward_task(y, y16, x16, Wf, b, relu, t, tasks, dot)


@jit_serial
def _logit_rows(y, y16, x16, w16, b, relu, r0, r1):
    """y[r] = x16[r] . w16[0] + b[0] (ReLU) for r0 <= r < r1: an O = 1 layer's forward, a
    matrix-vector product (a tile would compute 64 columns to keep one)."""
    w = w16[0]
    for r in range(r0, r1):
        xr = x16[r]
        acc = np.float32(0.0)
        for k in range(x16.shape[1]):
            acc += bf16_value(xr[k]) * bf16_value(w[k])
        v = acc + b[0]
        v = max(v, np.float32(0.0)) if relu else v
        if y.shape[0] > 0:
            y[r, 0] = v
        if y16.shape[0] > 0:
            y16[r, 0] = round_bf16(v)


@jit_parallel
def logit_forward(y, y16, x16, w16, b, relu, tasks):
    """linear_forward for O = 1, from W16 (1, I) itself (no packing)."""
    B = x16.shape[0]
    for t in prange(tasks):  # task t writes only rows [t B / tasks, (t + 1) B / tasks)
        _logit_rows(y, y16, x16, w16, b, relu, t * B // tasks, (t + 1) * B // tasks)


@jit_serial
def logit_forward_serial(y, y16, x16, w16, b, relu, tasks):
    _logit_rows(y, y16, x16, w16, b, relu, 0, x16.shape[0])


@jit_serial
def _outer_rows(dx, dx16, dz16, w16, x16, mask_dx, scratch, r0, r1):
    """dx[r] = dz16[r, 0] w16[0] (times [x16[r] > 0]) for r0 <= r < r1: an O = 1 layer's
    dx = dz W, an outer product (a K = 1 tile per 6 x 64 block is all epilogue);
    scratch (2, I) float32."""
    I = w16.shape[1]
    w, row = scratch[0], scratch[1]
    for i in range(I):
        w[i] = bf16_value(w16[0, i])
    for r in range(r0, r1):
        d = bf16_value(dz16[r, 0])
        for i in range(I):
            row[i] = d * w[i]
        if mask_dx:
            xr = x16[r]
            for i in range(I):
                row[i] = row[i] if bf16_value(xr[i]) > 0 else np.float32(0.0)
        _store_tile(dx, dx16, row.reshape((1, I)), r, 1, 0, I)


@jit_parallel
def logit_backward_data(dx, dx16, dz16, w16, x16, mask_dx, tasks):
    """linear_backward_data for O = 1, from W16 (1, I) itself (no packing)."""
    B = dz16.shape[0]
    scratch = np.empty((tasks, 2, w16.shape[1]), np.float32)
    for t in prange(tasks):  # task t writes only rows [t B / tasks, (t + 1) B / tasks)
        r0, r1 = t * B // tasks, (t + 1) * B // tasks
        _outer_rows(dx, dx16, dz16, w16, x16, mask_dx, scratch[t], r0, r1)


@jit_serial
def logit_backward_data_serial(dx, dx16, dz16, w16, x16, mask_dx, tasks):
    scratch = np.empty((2, w16.shape[1]), np.float32)
    _outer_rows(dx, dx16, dz16, w16, x16, mask_dx, scratch, 0, dz16.shape[0])


@jit_serial
def _data_task(dx, dx16, dz16, Wd, x16, mask_dx, t, tasks, dot):
    """Task t's block of dx = dz W (masked by [x > 0]), Wd = pack_cols(W)."""
    B, K = dz16.shape
    i0, i1, j0, j1 = _block(t, tasks, B, max(dx.shape[1], dx16.shape[1]))
    panel = Wd.shape[1] * NR
    for jj in range(j0, j1, NR):
        n = min(NR, j1 - jj)
        for ii in range(i0, i1, MR):
            m = min(MR, i1 - ii)
            p_off = (jj // NR) * panel
            tile_out(
                K,
                dz16,
                2 * ii * K,
                2 * K,
                4,
                Wd,
                p_off,
                dx,
                dx16,
                ii,
                jj,
                NONE_F32_1D,
                False,
                x16,
                mask_dx,
                m,
                n,
                dot,
            )


@jit_parallel
def linear_backward_data(dx, dx16, dz16, Wd, x16, mask_dx, tasks, dot):
    """dx (B, I) fp32 and/or dx16 (B, I) bf16 = dz16 (B, O) W, times [x16 > 0] if mask_dx
    (the ReLU backward of the layer below, whose output x16 is); Wd = pack_cols(W16)
    (panels_shape(I, O))."""
    for t in prange(tasks):  # task t writes only its block of dx and dx16
        _data_task(dx, dx16, dz16, Wd, x16, mask_dx, t, tasks, dot)


@jit_serial
def linear_backward_data_serial(dx, dx16, dz16, Wd, x16, mask_dx, tasks, dot):
    for t in range(tasks):
        _data_task(dx, dx16, dz16, Wd, x16, mask_dx, t, tasks, dot)


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


# ----------------------------------------------------------------- registry
# The ops' entries take W as a numbadlrm.layers.bf16.PackedWeight (w16 (O, I), forward =
# pack_rows(w16), data = pack_cols(w16)); an O = 1 layer runs the logit loops on w16.


def _forward_entry(serial: bool, dot):
    def forward(y, y16, x16, W, b, relu):
        dot.require()
        if W.w16.shape[0] == 1:
            (logit_forward_serial if serial else logit_forward)(y, y16, x16, W.w16, b, relu, TASKS)
        else:
            fn = linear_forward_serial if serial else linear_forward
            fn(y, y16, x16, W.forward, b, relu, TASKS, dot)

    return forward


def _data_entry(serial: bool, dot):
    def backward_data(dx, dx16, dz16, W, x16, mask_dx):
        dot.require()
        if W.w16.shape[0] == 1:
            fn = logit_backward_data_serial if serial else logit_backward_data
            fn(dx, dx16, dz16, W.w16, x16, mask_dx, TASKS)
        else:
            fn = linear_backward_data_serial if serial else linear_backward_data
            fn(dx, dx16, dz16, W.data, x16, mask_dx, TASKS, dot)

    return backward_data


def _weight_entries(dot):
    def weight(dW, db, dz16, x16):
        dot.require()
        linear_backward_weight(dW, db, dz16, x16, numba.get_num_threads(), dot)

    def weight_serial(dW, db, dz16, x16):
        dot.require()
        linear_backward_weight_serial(dW, db, dz16, x16, 1, dot)

    def split_sgd(W, w_lo, b_hi, b_lo, dz16, x16, lr):
        dot.require()
        threads = numba.get_num_threads()
        linear_backward_weight_split_sgd_packed(
            W.w16, w_lo, b_hi, b_lo, W.forward, W.data, dz16, x16, lr, threads, dot
        )

    def split_sgd_serial(W, w_lo, b_hi, b_lo, dz16, x16, lr):
        dot.require()
        linear_backward_weight_split_sgd_packed_serial(
            W.w16, w_lo, b_hi, b_lo, W.forward, W.data, dz16, x16, lr, 1, dot
        )

    return weight, weight_serial, {"split_sgd": split_sgd, "split_sgd_serial": split_sgd_serial}


# v1 on vdpbf16ps, v1-emu on its emulation (microkernel_bf16.DOTS): the same kernels, each
# compiled for its form; the default is v1 where the CPU has AVX512-BF16, else v1-emu
for _dot in DOTS:
    _what = f"6x64 {_dot.what} tile, whole-K, epilogue on an L1 scratch tile; O = 1: plain loops"
    register(
        "bf16_linear_forward",
        _dot.version,
        _forward_entry(False, _dot),
        _forward_entry(True, _dot),
        _what,
        default=_dot.is_default,
    )
    register(
        "bf16_linear_backward_data",
        _dot.version,
        _data_entry(False, _dot),
        _data_entry(True, _dot),
        _what,
        default=_dot.is_default,
    )
    _weight, _weight_serial, _extras = _weight_entries(_dot)
    register(
        "bf16_linear_backward_weight",
        _dot.version,
        _weight,
        _weight_serial,
        f"pairs dz's rows and packs x (one region), then the {_dot.what} tiles; split_sgd: "
        "each tile applied from L1",
        default=_dot.is_default,
        extras=_extras,
    )
