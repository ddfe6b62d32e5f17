"""GEMM kernels of the linear layer, bias and ReLU fused (shape letters: numbadlrm.config).

W is stored (O, I) like PyTorch, x is (B, I), y is (B, O):

    forward           y  = x W^T + b, then max(y, 0) if relu        (B, O)
    mask              dz = dy * [y > 0] if relu else dy, in place    (B, O)
    backward_data     dx = dz W                                      (B, I)
    backward_weight   dW = dz^T x,   db = sum_b dz                   (O, I), (O,)

Each pass is one GEMM  C (M, N) = A (M, K) @ Bm (K, N):

    forward           M = B, N = O, K = I     A = x,     Bm = W^T
    backward_data     M = B, N = I, K = O     A = dz,    Bm = W
    backward_weight   M = O, N = I, K = B     A = dz^T,  Bm = x

Two micro-kernels compute it. Which one is fast depends on K and on which operand is
contiguous along k:

- dot form: A (M, K) and Bt = Bm^T (N, K), both contiguous along k. A 4x4 tile of C is
  16 scalar accumulators with the k loop innermost, which LLVM vectorises over k: 16 zmm
  accumulators, 8 loads per 16 FMAs, C written once per tile. Every tile ends in 16
  horizontal sums, so it wants K >= ~256.
- axpy form: Bm (K, N) contiguous along n. c[i, :] += a[i, k] Bm[k, :] for 4 rows i and
  4 values of k at once, the j loop innermost and vectorised: C is loaded and stored once
  per 4 FMAs. No horizontal sums, so it wins when K is small.

Versions, side by side (as karpathy/llm.c dev/cuda keeps them):

    naive   one dot product per output element: the obviously correct baseline
    v1      axpy form on the operands as they lie (W^T transposed once for forward)
    v2      dot form everywhere; W^T, dz^T and x^T transposed into scratch as needed
    v3      v2 for K >= SMALL_K, else the axpy form over packed panels of Bm
    v4      a register-blocked micro-kernel written in LLVM IR, its tile shaped for the
            CPU's ISA (tile.py; the drivers in fp32_tiled.py): MR x NR sums in registers
            across the k loop, C touched once per tile; A read through a row and a k
            stride, so no pass transposes anything big; bias/ReLU on each finished tile
    v5      v4's tile on packed panels of Bm (and of dz^T): GotoBLAS's packing, for big
            operands whose rows lie a page apart (fp32_tiled.py)

The versions are registered (numbadlrm.kernels.registry) as the ops linear_forward,
linear_backward_data and linear_backward_weight: naive to v3 at the bottom of this
module, v4, v5 and their per-ISA variants in fp32_tiled.py (imported here). What each step
bought, and the lessons behind them (why inner loops start at 0, why v3 packs panels), are
in bench/RESULTS.md, "GEMM versions".
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import jit_parallel, jit_serial
from ..registry import register
from . import fp32_tiled  # noqa: F401  (registers v4, v5 and their per-ISA variants)
from .epilogue import bias_relu
from .helpers import (
    PANEL,
    block_sizes,
    cdiv,
    data_pass,
    pack_panels,
    row_sums,
    transpose,
    zero,
)

KC = 1024  # dot form: k block; 4 rows of A (16 KiB) stay in L1 across a block of Bt rows
SMALL_K = 256  # v3: below this K the axpy form beats the dot form's horizontal sums


# ------------------------------------------------------------------------ naive


@jit_parallel
def gemm_forward_naive(y, x, W, b, relu):
    B, I = x.shape
    O = W.shape[0]
    for r in prange(B):  # task r writes only row r of y
        for o in range(O):
            acc = b[o]
            for i in range(I):
                acc += x[r, i] * W[o, i]
            y[r, o] = max(acc, np.float32(0.0)) if relu else acc


@jit_parallel
def gemm_backward_data_naive(dx, dz, W):
    B, O = dz.shape
    I = W.shape[1]
    for r in prange(B):  # task r writes only row r of dx
        for i in range(I):
            acc = np.float32(0.0)
            for o in range(O):
                acc += dz[r, o] * W[o, i]
            dx[r, i] = acc


@jit_parallel
def gemm_backward_weight_naive(dW, db, dz, x):
    B, O = dz.shape
    I = x.shape[1]
    for o in prange(O):  # task o writes only row o of dW and db[o]
        s = np.float32(0.0)
        for r in range(B):
            s += dz[r, o]
        db[o] = s
        for i in range(I):
            acc = np.float32(0.0)
            for r in range(B):
                acc += dz[r, o] * x[r, i]
            dW[o, i] = acc


# ------------------------------------------------------------------ axpy form (v1)


@jit_serial
def _axpy_rows4(C, A, Bm, i, j0, j1, bj0):
    """C[i:i+4, j0:j1] += A[i:i+4, :] @ Bm[:, bj0:bj0+nj], 4 rows x 4 k per pass over j."""
    K = A.shape[1]
    nj = j1 - j0
    c0, c1, c2, c3 = C[i, j0:j1], C[i + 1, j0:j1], C[i + 2, j0:j1], C[i + 3, j0:j1]
    k = 0
    while k + 4 <= K:
        b0, b1 = Bm[k, bj0 : bj0 + nj], Bm[k + 1, bj0 : bj0 + nj]
        b2, b3 = Bm[k + 2, bj0 : bj0 + nj], Bm[k + 3, bj0 : bj0 + nj]
        a00, a01, a02, a03 = A[i, k], A[i, k + 1], A[i, k + 2], A[i, k + 3]
        a10, a11, a12, a13 = A[i + 1, k], A[i + 1, k + 1], A[i + 1, k + 2], A[i + 1, k + 3]
        a20, a21, a22, a23 = A[i + 2, k], A[i + 2, k + 1], A[i + 2, k + 2], A[i + 2, k + 3]
        a30, a31, a32, a33 = A[i + 3, k], A[i + 3, k + 1], A[i + 3, k + 2], A[i + 3, k + 3]
        for j in range(nj):
            v0, v1, v2, v3 = b0[j], b1[j], b2[j], b3[j]
            c0[j] += a00 * v0 + a01 * v1 + a02 * v2 + a03 * v3
            c1[j] += a10 * v0 + a11 * v1 + a12 * v2 + a13 * v3
            c2[j] += a20 * v0 + a21 * v1 + a22 * v2 + a23 * v3
            c3[j] += a30 * v0 + a31 * v1 + a32 * v2 + a33 * v3
        k += 4
    while k < K:
        bk = Bm[k, bj0 : bj0 + nj]
        a0, a1, a2, a3 = A[i, k], A[i + 1, k], A[i + 2, k], A[i + 3, k]
        for j in range(nj):
            v = bk[j]
            c0[j] += a0 * v
            c1[j] += a1 * v
            c2[j] += a2 * v
            c3[j] += a3 * v
        k += 1


@jit_serial
def _axpy_row1(C, A, Bm, i, j0, j1, bj0):
    """C[i, j0:j1] += A[i, :] @ Bm[:, bj0:bj0+nj], 4 k per pass: the row tail (and O < 4)."""
    K = A.shape[1]
    nj = j1 - j0
    c = C[i, j0:j1]
    k = 0
    while k + 4 <= K:
        b0, b1 = Bm[k, bj0 : bj0 + nj], Bm[k + 1, bj0 : bj0 + nj]
        b2, b3 = Bm[k + 2, bj0 : bj0 + nj], Bm[k + 3, bj0 : bj0 + nj]
        a0, a1, a2, a3 = A[i, k], A[i, k + 1], A[i, k + 2], A[i, k + 3]
        for j in range(nj):
            c[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
        k += 4
    while k < K:
        a = A[i, k]
        bk = Bm[k, bj0 : bj0 + nj]
        for j in range(nj):
            c[j] += a * bk[j]
        k += 1


@jit_serial
def _axpy_block(C, A, Bm, i0, i1, j0, j1, bj0):
    """C[i0:i1, j0:j1] = A[i0:i1, :] @ Bm[:, bj0:bj0 + (j1 - j0)]."""
    zero(C, i0, i1, j0, j1)
    i = i0
    while i + 4 <= i1:
        _axpy_rows4(C, A, Bm, i, j0, j1, bj0)
        i += 4
    while i < i1:
        _axpy_row1(C, A, Bm, i, j0, j1, bj0)
        i += 1


@jit_parallel
def _axpy_gemm(C, A, Bm, db, with_db):
    """C = A @ Bm on the operands as they lie; db = row sums of A when with_db."""
    M, N = C.shape
    mb, nb = block_sizes(M, N)
    nnb = cdiv(N, nb)
    for t in prange(cdiv(M, mb) * nnb):  # task t writes only its C block; db[i0:i1] only by j0 == 0
        i0, j0 = (t // nnb) * mb, (t % nnb) * nb
        i1, j1 = min(i0 + mb, M), min(j0 + nb, N)
        _axpy_block(C, A, Bm, i0, i1, j0, j1, j0)
        if with_db and j0 == 0:
            row_sums(db, A, i0, i1)


@jit_parallel
def _axpy_forward_epilogue(y, b, relu):
    B, O = y.shape
    for r in prange(B):  # task r writes only row r of y
        bias_relu(y, b, r, r + 1, 0, O, relu)


@jit_serial
def gemm_forward_v1(y, x, W, b, relu):
    Wt = np.empty((W.shape[1], W.shape[0]), np.float32)  # (I, O)
    transpose(Wt, W)
    _axpy_gemm(y, x, Wt, b, False)
    _axpy_forward_epilogue(y, b, relu)


@jit_serial
def gemm_backward_data_v1(dx, dz, W):
    _axpy_gemm(dx, dz, W, dx[0], False)


@jit_serial
def gemm_backward_weight_v1(dW, db, dz, x):
    _axpy_gemm(dW, dz.T, x, db, True)


# ------------------------------------------------------------------- dot form (v2)


@jit_serial
def _dot_4x4(C, A, Bt, i, j, nrows, k0, k1):
    """C[i:i+nrows, j:j+4] (+)= A[i:i+4, k0:k1] @ Bt[j:j+4, k0:k1]^T (stores when k0 == 0).

    16 scalar accumulators; LLVM vectorises the k loop (16 zmm accumulators, 8 loads per
    16 FMAs). Rows past nrows repeat a valid row of A: computed, never stored.
    """
    last = A.shape[0] - 1
    a0, a1 = A[i, k0:k1], A[min(i + 1, last), k0:k1]
    a2, a3 = A[min(i + 2, last), k0:k1], A[min(i + 3, last), k0:k1]
    b0, b1, b2, b3 = Bt[j, k0:k1], Bt[j + 1, k0:k1], Bt[j + 2, k0:k1], Bt[j + 3, k0:k1]
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
    for k in range(k1 - k0):
        x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
        w0, w1, w2, w3 = b0[k], b1[k], b2[k], b3[k]
        s00 += x0 * w0
        s01 += x0 * w1
        s02 += x0 * w2
        s03 += x0 * w3
        s10 += x1 * w0
        s11 += x1 * w1
        s12 += x1 * w2
        s13 += x1 * w3
        s20 += x2 * w0
        s21 += x2 * w1
        s22 += x2 * w2
        s23 += x2 * w3
        s30 += x3 * w0
        s31 += x3 * w1
        s32 += x3 * w2
        s33 += x3 * w3
    first = k0 == 0
    _store4(C[i, j : j + 4], first, s00, s01, s02, s03)
    if nrows > 1:
        _store4(C[i + 1, j : j + 4], first, s10, s11, s12, s13)
    if nrows > 2:
        _store4(C[i + 2, j : j + 4], first, s20, s21, s22, s23)
    if nrows > 3:
        _store4(C[i + 3, j : j + 4], first, s30, s31, s32, s33)


@jit_serial
def _store4(c, first, s0, s1, s2, s3):
    if first:
        c[0], c[1], c[2], c[3] = s0, s1, s2, s3
    else:
        c[0] += s0
        c[1] += s1
        c[2] += s2
        c[3] += s3


@jit_serial
def _dot_4x1(C, A, Bt, i, j, nrows, k0, k1):
    """The column tail of _dot_4x4: C[i:i+nrows, j] (+)= A[i:i+4, k0:k1] @ Bt[j, k0:k1]."""
    last = A.shape[0] - 1
    a0, a1 = A[i, k0:k1], A[min(i + 1, last), k0:k1]
    a2, a3 = A[min(i + 2, last), k0:k1], A[min(i + 3, last), k0:k1]
    b0 = Bt[j, k0:k1]
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for k in range(k1 - k0):
        w = b0[k]
        s0 += a0[k] * w
        s1 += a1[k] * w
        s2 += a2[k] * w
        s3 += a3[k] * w
    c = C[i : i + nrows, j]
    for r, s in enumerate((s0, s1, s2, s3)):
        if r < nrows:
            c[r] = s if k0 == 0 else c[r] + s


@jit_serial
def _dot_block(C, A, Bt, i0, i1, j0, j1, k0, k1):
    """C[i0:i1, j0:j1] (+)= A[i0:i1, k0:k1] @ Bt[j0:j1, k0:k1]^T (stores when k0 == 0)."""
    for i in range(i0, i1, 4):
        nrows = min(4, i1 - i)
        j = j0
        while j + 4 <= j1:
            _dot_4x4(C, A, Bt, i, j, nrows, k0, k1)
            j += 4
        while j < j1:
            _dot_4x1(C, A, Bt, i, j, nrows, k0, k1)
            j += 1


@jit_parallel
def _dot_gemm(C, A, Bt, b, relu, with_bias, db, with_db):
    """C = A @ Bt^T (+ b, ReLU when with_bias); db = row sums of A when with_db."""
    M, N = C.shape
    K = A.shape[1]
    mb, nb = block_sizes(M, N)
    nnb = cdiv(N, nb)
    for t in prange(cdiv(M, mb) * nnb):  # task t writes only its C block; db[i0:i1] only by j0 == 0
        i0, j0 = (t // nnb) * mb, (t % nnb) * nb
        i1, j1 = min(i0 + mb, M), min(j0 + nb, N)
        if K == 0:
            zero(C, i0, i1, j0, j1)
        for k0 in range(0, K, KC):
            _dot_block(C, A, Bt, i0, i1, j0, j1, k0, min(k0 + KC, K))
        if with_bias:
            bias_relu(C, b, i0, i1, j0, j1, relu)
        if with_db and j0 == 0:
            row_sums(db, A, i0, i1)


@jit_serial
def gemm_forward_v2(y, x, W, b, relu):
    _dot_gemm(y, x, W, b, relu, True, b, False)


@jit_serial
def gemm_backward_data_v2(dx, dz, W):
    Wt = np.empty((W.shape[1], W.shape[0]), np.float32)  # (I, O)
    transpose(Wt, W)
    _dot_gemm(dx, dz, Wt, dx[0], False, False, dx[0], False)


@jit_serial
def gemm_backward_weight_v2(dW, db, dz, x):
    dzt = np.empty((dz.shape[1], dz.shape[0]), np.float32)  # (O, B)
    xt = np.empty((x.shape[1], x.shape[0]), np.float32)  # (I, B)
    transpose(dzt, dz)
    transpose(xt, x)
    _dot_gemm(dW, dzt, xt, db, False, False, db, True)


# ------------------------------------------------- v3: dot form, packed axpy for small K


@jit_parallel
def _panel_gemm(C, A, panels, b, relu, with_bias, db, with_db):
    """C = A @ Bm with Bm packed by pack_panels; epilogues as in _dot_gemm."""
    M, N = C.shape
    mb = block_sizes(M, N)[0]
    npan = panels.shape[0]
    for t in prange(cdiv(M, mb) * npan):  # task t writes only its C block; db[i0:i1] only by p == 0
        i0, p = (t // npan) * mb, t % npan
        j0 = p * PANEL
        i1, j1 = min(i0 + mb, M), min(j0 + PANEL, N)
        _axpy_block(C, A, panels[p], i0, i1, j0, j1, 0)
        if with_bias:
            bias_relu(C, b, i0, i1, j0, j1, relu)
        if with_db and p == 0:
            row_sums(db, A, i0, i1)


@jit_serial
def _packed(Bm):
    panels = np.empty((cdiv(Bm.shape[1], PANEL), Bm.shape[0], PANEL), np.float32)
    pack_panels(panels, Bm)
    return panels


@jit_serial
def gemm_forward_v3(y, x, W, b, relu):
    if x.shape[1] >= SMALL_K:
        _dot_gemm(y, x, W, b, relu, True, b, False)
        return
    Wt = np.empty((W.shape[1], W.shape[0]), np.float32)  # (I, O)
    transpose(Wt, W)
    _panel_gemm(y, x, _packed(Wt), b, relu, True, b, False)


@jit_serial
def gemm_backward_data_v3(dx, dz, W):
    if dz.shape[1] >= SMALL_K:
        gemm_backward_data_v2(dx, dz, W)
        return
    _panel_gemm(dx, dz, _packed(W), dx[0], False, False, dx[0], False)


@jit_serial
def gemm_backward_weight_v3(dW, db, dz, x):
    if dz.shape[1] < 4:  # O < 4: a dot tile would be mostly padding; stream x as it lies
        _axpy_gemm(dW, dz.T, x, db, True)
        return
    if dz.shape[0] >= SMALL_K:
        gemm_backward_weight_v2(dW, db, dz, x)
        return
    dzt = np.empty((dz.shape[1], dz.shape[0]), np.float32)  # (O, B)
    transpose(dzt, dz)
    _panel_gemm(dW, dzt, _packed(x), db, False, False, db, True)


# ----------------------------------------------------------------- registry

_STEPS = {  # name: (forward, backward_data, backward_weight, description), teaching order
    "naive": (
        gemm_forward_naive,
        gemm_backward_data_naive,
        gemm_backward_weight_naive,
        "one dot product per output element: the obviously correct baseline",
    ),
    "v1": (
        gemm_forward_v1,
        gemm_backward_data_v1,
        gemm_backward_weight_v1,
        "axpy form on the operands as they lie",
    ),
    "v2": (
        gemm_forward_v2,
        gemm_backward_data_v2,
        gemm_backward_weight_v2,
        "dot form (4x4 tiles of dots over k), operands transposed into scratch",
    ),
    "v3": (
        gemm_forward_v3,
        gemm_backward_data_v3,
        gemm_backward_weight_v3,
        "v2 for K >= 256, else the axpy form over packed panels",
    ),
}
for _name, (_fwd, _data, _weight, _what) in _STEPS.items():
    register("linear_forward", _name, _fwd, description=_what)
    register("linear_backward_data", _name, data_pass(_data), description=_what)
    register("linear_backward_weight", _name, _weight, description=_what)
