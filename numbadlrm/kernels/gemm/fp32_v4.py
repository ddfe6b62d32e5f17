"""GEMM v4: the linear layer's passes on the register-blocked LLVM IR tile (tile.py).

Each pass is one GEMM C = A Bm (the shapes and operands are in fp32.py's docstring), cut
into MR x NR tiles of C. A tile holds its MR x NR sums in registers across the whole k
block, reads A through a row and a k stride (so no pass transposes anything big: the
weight pass reads dz^T as dz lies) and Bm row by row, and writes C once; bias and ReLU
run on each finished tile while it is in cache.

The tile's shape follows the ISA: one registered version per ISA's tile that runs here,

    v4           the tile of the ISA Numba compiles for (runtime/cpu.py, tile.SHAPE)
    v4_avx512    4 x 64, the AVX-512 tile (where the CPU has AVX-512)
    v4_avx2      6 x 16, the AVX2 tile (where it has AVX2 and FMA)
    v4_vec128    4 x 8, the portable tile (everywhere)

and ``bench/bench_gemm.py --tiles 6x16,4x24`` registers candidate shapes the same way
(:func:`register_tile`). The shape reaches the kernels below as their first three
arguments (mr, nv, lanes), compile-time integers: Numba compiles, and caches, one
specialisation per shape. The entry points of a shape (:func:`entries`) are closures over
those three integers only, so they cache as well.
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
from .helpers import MIN_TASKS, cdiv, data_pass, transpose
from .tile import SHAPE, TARGET, TileShape, shape_for, tile_of

# k block. An MR-row sliver of A (MR x 2 KiB) stays in L1 and an NR-column panel of B
# (NR x 2 KiB) in L2 while every tile of the block's rows uses them.
KC4 = 512
TASKS4 = 16  # row blocks per call (a constant, so kernels cache; split statically)


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


@jit_serial
def forward(mr, nv, lanes, y, x, W, b, relu):
    """y = x W^T + b, then ReLU if relu."""
    if W.shape[0] == 1:
        _logit_forward(y, x, W, b, relu)
        return
    Wt = np.empty((W.shape[1], W.shape[0]), np.float32)  # (I, O): B of the GEMM
    transpose(Wt, W)
    I = x.shape[1]
    _gemm(mr, nv, lanes, y, x, I, 1, Wt, I, b, relu, True, 1.0, False, TASKS4)


@jit_serial
def backward_data(mr, nv, lanes, dx, dz, W):
    """dx = dz W."""
    if W.shape[0] == 1:
        _logit_backward_data(dx, dz, W)
        return
    O = dz.shape[1]
    _gemm(mr, nv, lanes, dx, dz, O, 1, W, O, dx[0], False, False, 1.0, False, TASKS4)


@jit_serial
def _weight(mr, nv, lanes, dW, dz, x, alpha, update, threads):
    """dW (O, I) (+)= alpha dz^T x, reading dz^T in place: element (o, b) at dz.flat[b O + o].
    ``threads``: numba.get_num_threads() of the caller (read outside, so kernels cache).
    (Copying dz^T blocks or packing x measured no faster: RESULTS.md.)

    When I is narrow and O wide (the bottom MLP's first layer, 13 -> 512), dW's rows
    would fill I of a tile's NR columns; the transposed product dW^T = x^T dz fills them
    all, so it is formed in a small (I, O) scratch and transposed into place.
    """
    O, I = dW.shape
    B = dz.shape[0]
    nr = nv * lanes
    if I < nr // 2 and O >= nr:
        prod = np.empty((I, O), np.float32)
        _gemm(mr, nv, lanes, prod, x, 1, I, dz, B, prod[0], False, False, 1.0, False, TASKS4)
        for o in range(O):
            row = dW[o]
            for i in range(I):
                row[i] = row[i] + alpha * prod[i, o] if update else alpha * prod[i, o]
        return
    # One block of dW's rows per thread, not TASKS4: every block streams all of x through
    # the cache once per NR columns (1024-1024: 158 -> 169 GFLOP/s, RESULTS.md).
    _gemm(mr, nv, lanes, dW, dz, 1, O, x, B, dW[0], False, False, alpha, update, threads)


@jit_serial
def weight_grad(mr, nv, lanes, dW, db, dz, x, threads):
    """dW = dz^T x and db = sum_b dz."""
    _weight(mr, nv, lanes, dW, dz, x, 1.0, False, threads)
    column_sums_blocks(db, dz)


@jit_serial
def weight_sgd(mr, nv, lanes, W, b, dz, x, lr, threads):
    """W -= lr dz^T x and b -= lr sum_b dz in place: each tile adds -lr times its product
    to W; no dW is stored."""
    _weight(mr, nv, lanes, W, dz, x, -lr, True, threads)
    db = np.empty(b.shape[0], np.float32)
    column_sums_blocks(db, dz)
    sgd_update_serial(b, db, lr)


# ----------------------------------------------------------------- registry


@functools.cache
def entries(shape: TileShape):
    """(forward, backward_data, backward_weight, backward_weight_sgd) of v4 with the tile
    ``shape``, in the ops' calling conventions (numbadlrm.kernels.registry)."""
    mr, nv, lanes = shape.mr, shape.nv, shape.lanes

    @jit_serial
    def v4_forward(y, x, W, b, relu):
        forward(mr, nv, lanes, y, x, W, b, relu)

    @jit_serial
    def v4_backward_data(dx, dz, W):
        backward_data(mr, nv, lanes, dx, dz, W)

    @jit_serial
    def v4_weight_grad(dW, db, dz, x, threads):
        weight_grad(mr, nv, lanes, dW, db, dz, x, threads)

    @jit_serial
    def v4_weight_sgd(W, b, dz, x, lr, threads):
        weight_sgd(mr, nv, lanes, W, b, dz, x, lr, threads)

    def v4_backward_weight(dW, db, dz, x):
        """dW = dz^T x and db = sum_b dz (v4)."""
        v4_weight_grad(dW, db, dz, x, numba.get_num_threads())

    def v4_backward_weight_sgd(W, b, dz, x, lr):
        """W -= lr dz^T x and b -= lr sum_b dz in place: v4's weight pass fused with SGD."""
        v4_weight_sgd(W, b, dz, x, np.float32(lr), numba.get_num_threads())

    return v4_forward, v4_backward_data, v4_backward_weight, v4_backward_weight_sgd


def register_tile(name: str, shape: TileShape, description: str = "") -> None:
    """Register v4 with the tile ``shape`` as version ``name`` of the three linear ops."""
    fwd, data, weight, sgd = entries(shape)
    what = description or f"v4 with a {shape} tile ({shape.lanes}-float vectors)"
    register("linear_forward", name, fwd, description=what)
    register("linear_backward_data", name, data_pass(data), description=what)
    register("linear_backward_weight", name, weight, description=what, extras={"sgd": sgd})


def isa_versions() -> dict[str, TileShape]:
    """{version name: tile} of the ISAs whose code runs on this CPU, v4 first."""
    found = {"v4": SHAPE}
    for isa in cpu.ISAS.values():
        if cpu.runs_here(isa, TARGET):
            found[f"v4_{isa.name}"] = shape_for(isa)
    return found


for _name, _shape in isa_versions().items():
    _isa = TARGET.isa.name if _name == "v4" else _name[3:]
    _what = f"{_shape} register-blocked LLVM IR tile ({_isa}), strided A, fused epilogues"
    register_tile(_name, _shape, _what + (" (this CPU's ISA)" if _name == "v4" else ""))
