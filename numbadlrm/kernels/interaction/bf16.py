"""Feature-interaction kernels in bf16 with fp32 accumulation (--precision bf16).

Shapes and pairs as kernels/interaction/fp32.py; x16 (B, D), emb16 (T, B, D), out16 and dout16
(B, D + P) or (B, F * D) are bf16 bits (uint16). Every sum is formed in fp32 and rounded
to bf16 once, when it is stored (round to nearest even):

dot forward:   out16[b] = [x16[b], bf16(<f_i, f_j>) for (i, j) in pairs]
dot backward:  dA = G A in fp32 (G the symmetric matrix of sample b's pair gradients,
               A its F x D features); dx16[b] = bf16((dout[b, :D] + dA[0]) m),
               demb16[t, b] = bf16(dA[t + 1]), m = [x16[b] > 0] with mask_dx (the ReLU
               backward of the bottom MLP's last layer, whose output x is), else 1
cat:           copies, and the same mask on dx16

A product of two bf16 values is exact in fp32 (8 + 8 significant bits), so the dots'
only roundings are those of the fp32 sums and the final one to bf16.

Versions (registered at the bottom):
    forward v1   interaction.py's v3 on vdpbf16ps: 4 x 4 blocks of dots read straight
                 from x16 and emb16 (microkernel_bf16.dots_4x4_bf16; pairs of adjacent
                 k are what vdpbf16ps multiplies, so rows need no packing)
    forward v1-emu  the same kernel on the instruction's emulation (two fp32 FMAs,
                 microkernel_bf16.EMULATED): the default on a CPU without AVX512-BF16
    backward v1  A gathered into fp32 scratch per sample (a shift per value), G from
                 dout16, dA = G A on GEMM v4's fp32 tile, as interaction.py's v3 (no
                 vdpbf16ps: it runs on any CPU, so it has no emulated twin)
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..bf16 import bf16_value, round_bf16
from ..gemm.dpbf16 import DOTS
from ..gemm.tile import MR, NR, tile
from ..jit import jit_parallel, jit_serial
from ..registry import register
from .dots_bf16 import dots_4x4_bf16
from .fp32 import CHUNKS, _backward_scratch, _check_triangle, _pair_table

# ---------------------------------------------------------------------- dot forward


@jit_serial
def _feature_addresses(rows, x16, emb16, b):
    """rows[f] <- the address of feature f of sample b (2-byte elements); entries past the
    last feature repeat it (a 4 x 4 block at the edge reads valid rows, drops the dots)."""
    batch, dim = x16.shape
    nf = emb16.shape[0] + 1
    rows[0] = x16.ctypes.data + 2 * b * dim
    for f in range(1, rows.shape[0]):
        rows[f] = emb16.ctypes.data + 2 * ((min(f, nf - 1) - 1) * batch + b) * dim


@jit_serial
def _forward_samples(out16, x16, emb16, pairs, s, rows, lo, hi, dot):
    """Samples b in [lo, hi), with s (16,) and rows (F + 3,) as scratch."""
    dim = x16.shape[1]
    nf = emb16.shape[0] + 1
    for b in range(lo, hi):
        for d in range(dim):
            out16[b, d] = x16[b, d]
        _feature_addresses(rows, x16, emb16, b)
        for i0 in range(0, nf, 4):
            a0, a1, a2, a3 = rows[i0], rows[i0 + 1], rows[i0 + 2], rows[i0 + 3]
            for j0 in range(0, i0 + 1, 4):  # blocks on or below the diagonal
                b0, b1, b2, b3 = rows[j0], rows[j0 + 1], rows[j0 + 2], rows[j0 + 3]
                dots_4x4_bf16(dim, a0, a1, a2, a3, b0, b1, b2, b3, s, dot)
                for r in range(4):
                    for c in range(4):
                        p = pairs[i0 + r, j0 + c]
                        if p >= 0:
                            out16[b, dim + p] = round_bf16(s[4 * r + c])


@jit_parallel
def dot_interaction_forward(out16, x16, emb16, li, lj, dot):
    """out16 (B, D+P); x16 (B, D); emb16 (T, B, D); li, lj (P,) pair feature ids; dot:
    microkernel_bf16.VDPBF16PS or EMULATED."""
    batch = x16.shape[0]
    pairs = _pair_table(emb16.shape[0] + 1, li, lj)
    chunks = min(batch, CHUNKS)
    scratch = np.empty((chunks, 16), np.float32)
    rows = np.empty((chunks, emb16.shape[0] + 4), np.intp)
    for c in prange(chunks):  # chunk c writes only out16[b] of its samples and its scratch
        lo, hi = c * batch // chunks, (c + 1) * batch // chunks
        _forward_samples(out16, x16, emb16, pairs, scratch[c], rows[c], lo, hi, dot)


@jit_serial
def dot_interaction_forward_serial(out16, x16, emb16, li, lj, dot):
    """As dot_interaction_forward on the calling thread alone (small batches)."""
    pairs = _pair_table(emb16.shape[0] + 1, li, lj)
    s, rows = np.empty(16, np.float32), np.empty(emb16.shape[0] + 4, np.intp)
    _forward_samples(out16, x16, emb16, pairs, s, rows, 0, x16.shape[0], dot)


# --------------------------------------------------------------------- dot backward


@jit_serial
def _gather(A, x16, emb16, b):
    """A (F, D) fp32 <- [x16[b], emb16[0, b], ..., emb16[T-1, b]] (exact)."""
    dim = x16.shape[1]
    for d in range(dim):
        A[0, d] = bf16_value(x16[b, d])
    for t in range(emb16.shape[0]):
        for d in range(dim):
            A[t + 1, d] = bf16_value(emb16[t, b, d])


@jit_serial
def _symmetric(G, dout16, b, dim, itself):
    """G (F, F) <- sample b's pair gradients, symmetric (interaction._symmetric_from_pairs
    from bf16); entries never written (the diagonal without ``itself``) stay zero."""
    nf = G.shape[0]
    start = dim
    for i in range(nf):
        n = i + 1 if itself else i
        for j in range(n):
            G[i, j] = bf16_value(dout16[b, start + j])
        start += n
    for i in range(nf):
        for j in range(i):
            G[j, i] = G[i, j]
        if itself:
            G[i, i] *= 2.0  # d<f, f>/df = 2 f


@jit_serial
def _scatter(dx16, demb16, dout16, x16, dA, b, mask_dx):
    dim = dx16.shape[1]
    for d in range(dim):
        v = bf16_value(dout16[b, d]) + dA[0, d]
        if mask_dx and not bf16_value(x16[b, d]) > 0:
            v = np.float32(0.0)
        dx16[b, d] = round_bf16(v)
    for t in range(demb16.shape[0]):
        for d in range(dim):
            demb16[t, b, d] = round_bf16(dA[t + 1, d])


@jit_serial
def _backward_samples(dx16, demb16, dout16, x16, emb16, itself, mask_dx, A, dA, G, lo, hi):
    nf, dim = A.shape
    G[:] = 0.0
    for b in range(lo, hi):
        _gather(A, x16, emb16, b)
        _symmetric(G, dout16, b, dim, itself)
        for r0 in range(0, nf, MR):
            for c0 in range(0, dim, NR):
                m, n = min(MR, nf - r0), min(NR, dim - c0)
                tile(nf, G, r0 * nf, nf, 1, A, c0, dim, dA, r0 * dim + c0, dim, m, n, False, 1.0)
        _scatter(dx16, demb16, dout16, x16, dA, b, mask_dx)


@jit_parallel
def dot_interaction_backward(dx16, demb16, dout16, x16, emb16, li, lj, mask_dx):
    """dx16 (B, D), demb16 (T, B, D) out; dout16 (B, D+P); the rest as the forward."""
    batch, dim = x16.shape
    nf = emb16.shape[0] + 1
    itself = _check_triangle(nf, li, lj)
    chunks = min(batch, CHUNKS)
    A, dA, G = _backward_scratch(chunks, nf, dim)
    for c in prange(chunks):  # chunk c writes only its samples' dx16, demb16 and scratch
        lo, hi = c * batch // chunks, (c + 1) * batch // chunks
        _backward_samples(
            dx16, demb16, dout16, x16, emb16, itself, mask_dx, A[c], dA[c], G[c], lo, hi
        )


@jit_serial
def dot_interaction_backward_serial(dx16, demb16, dout16, x16, emb16, li, lj, mask_dx):
    """As dot_interaction_backward on the calling thread alone (small batches)."""
    nf, dim = emb16.shape[0] + 1, x16.shape[1]
    itself = _check_triangle(nf, li, lj)
    A, dA, G = _backward_scratch(1, nf, dim)
    _backward_samples(
        dx16, demb16, dout16, x16, emb16, itself, mask_dx, A[0], dA[0], G[0], 0, x16.shape[0]
    )


# ----------------------------------------------------------------------------- cat


@jit_parallel
def cat_interaction_forward(out16, x16, emb16):
    """out16 (B, F*D) = [x16[b], emb16[0, b], ..., emb16[T-1, b]]."""
    batch, dim = x16.shape
    for b in prange(batch):  # sample b writes only out16[b]
        out16[b, :dim] = x16[b]
        for t in range(emb16.shape[0]):
            out16[b, (t + 1) * dim : (t + 2) * dim] = emb16[t, b]


@jit_parallel
def cat_interaction_backward(dx16, demb16, dout16, x16, mask_dx):
    """dx16 (B, D) = dout16[:, :D] (times [x16 > 0] if mask_dx), demb16 the rest."""
    batch, dim = dx16.shape
    zero = np.uint16(0)
    for b in prange(batch):  # sample b writes only dx16[b] and demb16[:, b]
        for d in range(dim):
            keep = not mask_dx or bf16_value(x16[b, d]) > 0
            dx16[b, d] = dout16[b, d] if keep else zero
        for t in range(demb16.shape[0]):
            demb16[t, b] = dout16[b, (t + 1) * dim : (t + 2) * dim]


# ----------------------------------------------------------------------- registry

for _dot in DOTS:  # v1 (vdpbf16ps) and v1-emu; the default: v1 where the CPU has it
    register(
        "bf16_dot_interaction_forward",
        _dot.version,
        _dot.bind(dot_interaction_forward),
        _dot.bind(dot_interaction_forward_serial),
        f"4x4 blocks of {_dot.what} dots straight from x16 and emb16, one tree per block",
        default=_dot.is_default,
    )
register(
    "bf16_dot_interaction_backward",
    "v1",
    dot_interaction_backward,
    dot_interaction_backward_serial,
    "A to fp32 scratch per sample, dA = G A on GEMM v4's fp32 tile, rounded once",
    default=True,
)
register(
    "bf16_cat_interaction_forward",
    "v1",
    cat_interaction_forward,
    description="copies",
    default=True,
)
register(
    "bf16_cat_interaction_backward",
    "v1",
    cat_interaction_backward,
    description="copies, ReLU mask on dx16",
    default=True,
)
