"""GEMM v4 and v5: the linear layer's passes on the register-blocked LLVM IR tile (tile.py).

Each pass is one GEMM C = A Bm (shapes and operands in fp32.py's docstring), cut into
MR x NR tiles of C. A tile holds its MR x NR sums in registers across a block of k, reads
A through a row and a k stride and Bm row by row, and writes C once per block; bias and
ReLU run on each finished tile while it is in cache.

    v4   operands as they lie: A is x, dz or dz^T read in place (the weight pass reads
         dz^T with a k stride of O floats), Bm is W^T (transposed once), W or x with its
         row stride. Nothing is copied: best where everything sits in L2 (B = 128).
    v5   GotoBLAS's packing: Bm copied once per pass into panels of NR columns, each
         (K, NR) contiguous, and the weight pass's A = dz^T into k-major slivers of MR
         rows (db summed on the way); x and dz, contiguous along k, are read in place.
         A tile then reads sequential streams that the hardware prefetches, at no stride
         a cache set or a 4 KiB page boundary can punish (1024-1024 on an Intel Xeon with
         AVX-512: v4 36-48% of OpenBLAS, v5 about 90%). C is swept in row blocks whose A
         stays in L2 (A_BLOCK), by k blocks whose B micro-panel (kc x NR) sits in L1
         (L1_PANEL), and each tile prefetches its rows of C.

Both use the tile of the ISA Numba compiles for, and each ISA's tile that runs here is a
registered version of its own:

    v4, v5                    the target ISA's tile (runtime/cpu.py, tile.SHAPE)
    v4_avx512, v5_avx512      8 x 48 (where the CPU has AVX-512)
    v4_avx2, v5_avx2          the AVX2 tile (where it has AVX2 and FMA)
    v4_vec128, v5_vec128      4 x 8, the portable tile (everywhere)

``bench/bench_gemm.py --tiles 6x16,4x24`` registers candidate shapes the same way
(:func:`register_tile`). The shape reaches the kernels as their first arguments (mr, nv,
lanes, packed), compile-time integers: Numba compiles, and caches, one specialisation per
shape; the entry points (:func:`entries`) are closures over those integers only, so they
cache as well.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import prange

from ...runtime import cpu
from ..elementwise import sgd_update_serial
from ..jit import jit_parallel, jit_serial
from ..registry import register
from .epilogue import bias_relu, column_sums_blocks, logit_rows, outer_rows
from .helpers import MIN_TASKS, cdiv, data_pass, pack_cols, pack_rows, transpose
from .tile import SHAPE, TARGET, TileShape, shape_for, tile_of

# v4's k block: an MR-row sliver of A and an NR-column panel of B (each kc rows) stay in
# L1 / L2 while every tile of the block's rows uses them.
KC4 = 512
TASKS4 = 16  # row blocks per call (a constant, so kernels cache; split statically)
L1_PANEL = 24 << 10  # v5: bytes of B micro-panel (kc x NR) kept in L1: kc = L1_PANEL / 4 NR
A_BLOCK = 512 << 10  # v5: bytes of A's block (rows x K), kept in L2 across all panels


# ------------------------------------------------------------------ v4: in place


@jit_serial
def _block(
    mr, nv, lanes, C, A, sa_r, sa_k, Bm, K, i0, i1, j0, j1, b, relu, with_bias, alpha, update
):
    """C[i0:i1, j0:j1] = A[i0:i1, :K] Bm[:K, j0:j1] in mr x (nv lanes) tiles; bias/ReLU
    per tile. With ``update``: C += alpha A Bm instead (the weight pass fused with SGD)."""
    nr = nv * lanes
    N = C.shape[1]
    ldb = Bm.shape[1]
    for jj in range(j0, j1, nr):
        n = min(nr, j1 - jj)
        for k0 in range(0, K, KC4):
            kc = min(KC4, K - k0)
            last = k0 + kc >= K
            for ii in range(i0, i1, mr):
                m = min(mr, i1 - ii)
                a_off = ii * sa_r + k0 * sa_k
                b_off = k0 * ldb + jj
                acc = update or k0 > 0
                tile_of(
                    mr, nv, lanes, kc, A, a_off, sa_r, sa_k, Bm, b_off, ldb, C, ii * N + jj, N,
                    m, n, acc, alpha,
                )  # fmt: skip
                if with_bias and last:
                    bias_relu(C, b, ii, ii + m, jj, jj + n, relu)


@jit_parallel
def _gemm(mr, nv, lanes, C, A, sa_r, sa_k, Bm, K, b, relu, with_bias, alpha, update, max_tasks):
    """C (M, N) = A Bm (+ b, ReLU), A's element (i, k) at A.flat[i sa_r + k sa_k].

    Rows of C are cut into up to ``max_tasks`` blocks of whole tiles (up to TASKS4 blocks
    of columns, when there are too few rows to share); each task writes only its block.
    """
    nr = nv * lanes
    M, N = C.shape
    row_tiles = cdiv(M, mr)
    if row_tiles >= 2 * MIN_TASKS or cdiv(N, nr) < 2:
        tasks = max(1, min(max_tasks, row_tiles))
        for t in prange(tasks):
            i0 = (t * row_tiles // tasks) * mr
            i1 = min(M, ((t + 1) * row_tiles // tasks) * mr)
            _block(
                mr, nv, lanes, C, A, sa_r, sa_k, Bm, K, i0, i1, 0, N, b, relu, with_bias, alpha,
                update,
            )  # fmt: skip
    else:
        col_tiles = cdiv(N, nr)
        tasks = min(TASKS4, col_tiles)
        for t in prange(tasks):
            j0 = (t * col_tiles // tasks) * nr
            j1 = min(N, ((t + 1) * col_tiles // tasks) * nr)
            _block(
                mr, nv, lanes, C, A, sa_r, sa_k, Bm, K, 0, M, j0, j1, b, relu, with_bias, alpha,
                update,
            )  # fmt: skip


# -------------------------------------------------------------- v5: packed panels


@jit_serial
def _packed_block(mr, nv, lanes, C, A, ts, sa_r, sa_k, P, K, r0, r1, p0, p1, b, relu, with_bias,
                  alpha, update):  # fmt: skip
    """Row tiles r0..r1-1 by panels p0..p1-1 of C = A Bm, Bm in panels P (pack_cols or
    pack_rows, width nv lanes); A's row tile t at A.flat[t ts + r sa_r + k sa_k]."""
    nr = nv * lanes
    M, N = C.shape
    kc_max = max(16, L1_PANEL // (4 * nr))
    blocks = max(1, A_BLOCK // (4 * K * mr))  # row tiles per block
    for q0 in range(r0, r1, blocks):
        q1 = min(r1, q0 + blocks)
        for p in range(p0, p1):
            jj = p * nr
            n = min(nr, N - jj)
            for k0 in range(0, K, kc_max):
                kc = min(kc_max, K - k0)
                last = k0 + kc >= K
                acc = update or k0 > 0
                b_off = (p * K + k0) * nr
                for t in range(q0, q1):
                    ii = t * mr
                    m = min(mr, M - ii)
                    tile_of(
                        mr, nv, lanes, kc, A, t * ts + k0 * sa_k, sa_r, sa_k, P, b_off, nr, C,
                        ii * N + jj, N, m, n, acc, alpha,
                    )  # fmt: skip
                    if with_bias and last:
                        bias_relu(C, b, ii, ii + m, jj, jj + n, relu)


@jit_parallel
def _packed_gemm(mr, nv, lanes, C, A, ts, sa_r, sa_k, P, K, b, relu, with_bias, alpha, update,
                 max_tasks):  # fmt: skip
    """C (M, N) = A Bm (+ b, ReLU) with Bm in panels P; rows of C cut into up to
    ``max_tasks`` blocks of whole tiles, or panels when there are too few rows to share;
    each task writes only its block."""
    M = C.shape[0]
    row_tiles, panels = cdiv(M, mr), P.shape[0]
    if row_tiles >= 2 * MIN_TASKS or panels < 2:
        tasks = max(1, min(max_tasks, row_tiles))
        for t in prange(tasks):
            r0, r1 = t * row_tiles // tasks, (t + 1) * row_tiles // tasks
            _packed_block(
                mr, nv, lanes, C, A, ts, sa_r, sa_k, P, K, r0, r1, 0, panels, b, relu,
                with_bias, alpha, update,
            )  # fmt: skip
    else:
        tasks = min(TASKS4, panels)
        for t in prange(tasks):
            p0, p1 = t * panels // tasks, (t + 1) * panels // tasks
            _packed_block(
                mr, nv, lanes, C, A, ts, sa_r, sa_k, P, K, 0, row_tiles, p0, p1, b, relu,
                with_bias, alpha, update,
            )  # fmt: skip


@jit_serial
def _panels(X, w, by_rows):
    """X's panels of width w: of X^T (pack_rows) when by_rows, else of X (pack_cols)."""
    rows, cols = X.shape
    if by_rows:
        P = np.empty((cdiv(rows, w), cols, w), np.float32)
        pack_rows(P, X, w)
    else:
        P = np.empty((cdiv(cols, w), rows, w), np.float32)
        pack_cols(P, X, w, np.empty((0, 0), np.float32))
    return P


@jit_serial
def _gemm_any(mr, nv, lanes, packed, C, A, a_rows, Bm, bm_t, b, relu, with_bias, alpha, update,
              tasks, sums):  # fmt: skip
    """C = A Bm (+ b, ReLU) by v4 (packed 0) or v5 (packed 1). A is a_rows (M, K) if
    ``a_rows`` else A^T (K, M) is given; Bm is Bm (K, N), or Bm^T (N, K) if ``bm_t``.
    Returns True if it also put the column sums of A^T into ``sums`` (v5 packing A^T,
    when sums has M entries), else False."""
    K = A.shape[1] if a_rows else A.shape[0]
    if not packed:
        if bm_t:
            Bt = np.empty((Bm.shape[1], Bm.shape[0]), np.float32)
            transpose(Bt, Bm)
            Bm = Bt
        sa_r, sa_k = (K, 1) if a_rows else (1, A.shape[1])
        _gemm(mr, nv, lanes, C, A, sa_r, sa_k, Bm, K, b, relu, with_bias, alpha, update, tasks)
        return False
    P = _panels(Bm, nv * lanes, bm_t)
    if a_rows:  # rows of A contiguous along k: read in place (packing measured no faster)
        _packed_gemm(mr, nv, lanes, C, A, K * mr, K, 1, P, K, b, relu, with_bias, alpha, update,
                     tasks)  # fmt: skip
        return False
    M = A.shape[1]
    PA = np.empty((cdiv(M, mr), K, mr), np.float32)
    with_sums = sums.shape[0] == M
    partial = np.empty((cdiv(K, 16) if with_sums else 0, M), np.float32)
    pack_cols(PA, A, mr, partial)
    _packed_gemm(
        mr, nv, lanes, C, PA, K * mr, 1, mr, P, K, b, relu, with_bias, alpha, update, tasks
    )
    if with_sums:  # the blocks' sums in order: the same result at any thread count
        for j in range(M):
            sums[j] = 0.0
        for t in range(partial.shape[0]):
            for j in range(M):
                sums[j] += partial[t, j]
    return with_sums


# ------------------------------------------------------------------------- passes


@jit_parallel
def _logit_forward(y, x, W, b, relu):
    """O = 1: y = x W^T + b (ReLU), rows in TASKS4 blocks."""
    B = x.shape[0]
    tasks = min(TASKS4, B)
    for t in prange(tasks):  # task t writes only its rows of y
        r0, r1 = t * B // tasks, (t + 1) * B // tasks
        logit_rows(y, x, W[0], r0, r1)
        bias_relu(y, b, r0, r1, 0, 1, relu)


@jit_parallel
def _logit_backward_data(dx, dz, W):
    """O = 1 (K = 1): dx = dz W is an outer product."""
    B = dx.shape[0]
    tasks = min(TASKS4, B)
    for t in prange(tasks):  # task t writes only its rows of dx
        outer_rows(dx, dz, W[0], t * B // tasks, (t + 1) * B // tasks)


@jit_parallel
def _logit_weight(dW, db, g, dz, x, alpha, update, parts):
    """O = 1: dW[0] (+)= alpha g, g = sum_r dz[r, 0] x[r] (a vector-matrix product, which a
    tile would compute 1 row in MR of), and db[0] = sum_r dz[r, 0]; g: (I,) scratch.
    Columns in ``parts`` blocks, so that each reads whole runs of x's rows (each column's
    sum runs over the rows in order, the same at any thread count)."""
    B, I = x.shape
    for t in prange(parts):  # task t writes only its columns of g and dW; task 0 db
        i0, i1 = t * I // parts, (t + 1) * I // parts
        part = g[i0:i1]
        for i in range(i1 - i0):
            part[i] = 0.0
        for r in range(B):
            d = dz[r, 0]
            row = x[r, i0:i1]
            for i in range(i1 - i0):
                part[i] += d * row[i]
        out = dW[0, i0:i1]
        for i in range(i1 - i0):
            out[i] = out[i] + alpha * part[i] if update else alpha * part[i]
        if t == 0:
            s = np.float32(0.0)
            for r in range(B):
                s += dz[r, 0]
            db[0] = s


@jit_serial
def forward(mr, nv, lanes, packed, y, x, W, b, relu):
    """y = x W^T + b, then ReLU if relu."""
    if W.shape[0] == 1:
        _logit_forward(y, x, W, b, relu)
        return
    _gemm_any(mr, nv, lanes, packed, y, x, True, W, True, b, relu, True, 1.0, False, TASKS4, b)


@jit_serial
def backward_data(mr, nv, lanes, packed, dx, dz, W):
    """dx = dz W."""
    if W.shape[0] == 1:
        _logit_backward_data(dx, dz, W)
        return
    no_b = dx[0]
    _gemm_any(mr, nv, lanes, packed, dx, dz, True, W, False, no_b, False, False, 1.0, False,
              TASKS4, no_b)  # fmt: skip


@jit_serial
def _weight(mr, nv, lanes, packed, dW, db, dz, x, alpha, update, threads):
    """dW (O, I) (+)= alpha dz^T x, and db = sum_b dz. ``threads``:
    numba.get_num_threads() of the caller (read outside, so kernels cache): one block of
    dW's rows per thread, not TASKS4, as every block streams all of x (1024-1024, v4: 158
    -> 169 GFLOP/s, RESULTS.md). v5 sums db while it packs dz.

    When I is narrow and O wide (the bottom MLP's first layer, 13 -> 512: dW's rows would
    fill I of a tile's NR columns) or, in v5, I <= O / 4 (100 -> 1024: 8.0 -> 5.0 ms; v4 at
    52 -> 512, B = 128: 0.085 -> 0.106 ms, so not there), the
    transposed product dW^T = x^T dz is formed in a small (I, O) scratch and transposed
    into place. When O = 1 (the logit layer) dW is a vector-matrix product.
    """
    O, I = dW.shape
    nr = nv * lanes
    summed = False
    if O == 1:
        parts = max(1, min(threads, I // 16))
        _logit_weight(dW, db, np.empty(I, np.float32), dz, x, alpha, update, parts)
        summed = True
    elif (I < nr // 2 or (packed and 4 * I <= O)) and O >= nr:
        prod = np.empty((I, O), np.float32)
        _gemm_any(mr, nv, lanes, packed, prod, x, False, dz, False, prod[0], False, False, 1.0,
                  False, TASKS4, db[:0])  # fmt: skip
        for o in range(O):
            row = dW[o]
            for i in range(I):
                row[i] = row[i] + alpha * prod[i, o] if update else alpha * prod[i, o]
    else:
        summed = _gemm_any(mr, nv, lanes, packed, dW, dz, False, x, False, db, False, False,
                           alpha, update, threads, db)  # fmt: skip
    if not summed:
        column_sums_blocks(db, dz)


@jit_serial
def weight_grad(mr, nv, lanes, packed, dW, db, dz, x, threads):
    """dW = dz^T x and db = sum_b dz."""
    _weight(mr, nv, lanes, packed, dW, db, dz, x, 1.0, False, threads)


@jit_serial
def weight_sgd(mr, nv, lanes, packed, W, b, dz, x, lr, threads):
    """W -= lr dz^T x and b -= lr sum_b dz in place: each tile adds -lr times its product
    to W; no dW is stored."""
    db = np.empty(b.shape[0], np.float32)
    _weight(mr, nv, lanes, packed, W, db, dz, x, -lr, True, threads)
    sgd_update_serial(b, db, lr)


# ----------------------------------------------------------------- registry


@functools.cache
def entries(shape: TileShape, packed: bool):
    """(forward, backward_data, backward_weight, backward_weight_sgd) of v4 (packed False)
    or v5 with the tile ``shape``, in the ops' calling conventions (kernels/registry.py)."""
    mr, nv, lanes, pk = shape.mr, shape.nv, shape.lanes, int(packed)

    @jit_serial
    def tiled_forward(y, x, W, b, relu):
        forward(mr, nv, lanes, pk, y, x, W, b, relu)

    @jit_serial
    def tiled_backward_data(dx, dz, W):
        backward_data(mr, nv, lanes, pk, dx, dz, W)

    @jit_serial
    def tiled_weight_grad(dW, db, dz, x, threads):
        weight_grad(mr, nv, lanes, pk, dW, db, dz, x, threads)

    @jit_serial
    def tiled_weight_sgd(W, b, dz, x, lr, threads):
        weight_sgd(mr, nv, lanes, pk, W, b, dz, x, lr, threads)

    def tiled_backward_weight(dW, db, dz, x):
        """dW = dz^T x and db = sum_b dz."""
        tiled_weight_grad(dW, db, dz, x, numba.get_num_threads())

    def tiled_backward_weight_sgd(W, b, dz, x, lr):
        """W -= lr dz^T x and b -= lr sum_b dz in place: the weight pass fused with SGD."""
        tiled_weight_sgd(W, b, dz, x, np.float32(lr), numba.get_num_threads())

    return tiled_forward, tiled_backward_data, tiled_backward_weight, tiled_backward_weight_sgd


def register_tile(name: str, shape: TileShape, packed: bool, description: str = "") -> None:
    """Register v4 (v5 if ``packed``) with the tile ``shape`` as version ``name`` of the
    three linear ops."""
    fwd, data, weight, sgd = entries(shape, packed)
    how = "packed panels" if packed else "operands in place"
    what = description or f"{shape} tile ({shape.lanes}-float vectors), {how}"
    register("linear_forward", name, fwd, description=what)
    register("linear_backward_data", name, data_pass(data), description=what)
    register("linear_backward_weight", name, weight, description=what, extras={"sgd": sgd})


def isa_versions() -> dict[str, tuple[str, TileShape]]:
    """{version suffix: (ISA name, tile)}: "" for the target's ISA, then "_<isa>" for
    every ISA whose code runs on this CPU."""
    found = {"": (TARGET.isa.name, SHAPE)}
    for isa in cpu.ISAS.values():
        if cpu.runs_here(isa, TARGET):
            found[f"_{isa.name}"] = (isa.name, shape_for(isa))
    return found


_HOW = {
    "v4": "register-blocked LLVM IR tile on the operands in place, fused epilogues",
    "v5": "v4's tile on packed panels of A and Bm (GotoBLAS), fused epilogues",
}
for _suffix, (_isa, _shape) in isa_versions().items():
    for _family, _packed in (("v4", False), ("v5", True)):
        _mine = " (this CPU's ISA)" if not _suffix else ""
        _what = f"{_shape} {_HOW[_family]} ({_isa}{_mine})"
        register_tile(_family + _suffix, _shape, _packed, _what)
