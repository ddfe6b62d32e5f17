"""Feature-interaction kernels, parallel over the batch.

Feature f of sample b is ``x[b]`` for f = 0 and ``emb[f - 1, b]`` otherwise (F = T + 1
vectors of length D); the pair list (li, lj) is the row-major lower triangle.

dot forward:   out[b] = [x[b], <feat_i, feat_j> for (i, j) in pairs]          (B, D + P)
dot backward:  dfeat_i += dout_p * feat_j;  dfeat_j += dout_p * feat_i;  dx += dout[:, :D]
    (for a diagonal pair i == j both lines apply, giving the 2 * dout_p * feat_i of d<f,f>)

Per sample this is the small GEMM Z = A A^T (A is F x D, 14 KB at F=27, D=128: it fits
in L1) and, in the backward, dA = G A with G the symmetric (F, F) matrix holding dout_p
at (i, j) and (j, i). Versions (registered at the bottom of this module;
bench/bench_interaction.py times them side by side):

    v1  per pair: pick each feature's row from x or emb, one dot (forward) or two axpys
        (backward) per pair
    v2  per sample: copy A into a contiguous per-chunk scratch (F, D); forward: four
        pairs sharing row i at a time (A[i] loaded once per four FMAs); backward: build
        G, then dA = G A four rows of A per pass over dA[i]. 2-D indexing, no per-pair
        row views (each view costs a reference count): 1.7x v1 at config c. Its loop bodies
        are serial functions over a range of samples: the parallel kernel runs them
        over chunks, the ``*_serial`` entry points (for small batches, where a parallel
        launch costs more than the work) on the calling thread.
    v3  forward: the lower triangle of Z in 4 x 4 blocks of dots, read straight from x
        and emb (no copy of A), written in LLVM IR (kernels/gemm/tile.dots_4x4: 16
        vector accumulators, 8 loads per 16 FMAs, then one transpose-and-add tree for
        the 16 horizontal sums). Backward: G from the pair gradients row by row (each
        row of the triangle is one contiguous run of dout: 1.1 -> 0.4 ms at config c),
        then dA = G A on GEMM v4's register-blocked tile: 1.3x v2 at config c. What is
        left of the backward is mostly moving A in and dA out (bench/RESULTS.md,
        "Interaction versions").
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..gemm.tile import MR, NR, tile
from ..jit import jit_parallel, jit_serial
from ..registry import register
from .dots import dots_4x4

# Samples are split into up to this many chunks, each with its own scratch (a fixed count,
# not a multiple of the thread count, so that the compiled kernels can be cached).
CHUNKS = 64


@jit_serial
def _gather_features(feats, x, emb, b):
    """feats (F, D) <- [x[b], emb[0, b], ..., emb[T-1, b]]."""
    dim = x.shape[1]
    for d in range(dim):
        feats[0, d] = x[b, d]
    for t in range(emb.shape[0]):
        for d in range(dim):
            feats[t + 1, d] = emb[t, b, d]


@jit_serial
def _scatter_gradients(dx, demb, dout, dA, b):
    """dx[b] = dout[b, :D] + dA[0], demb[t, b] = dA[t + 1]: the inverse of _gather_features."""
    dim = dx.shape[1]
    for d in range(dim):
        dx[b, d] = dout[b, d] + dA[0, d]
    for t in range(demb.shape[0]):
        for d in range(dim):
            demb[t, b, d] = dA[t + 1, d]


@jit_serial
def _backward_scratch(chunks, nf, dim):
    """Scratch of the dot backward, one slab per chunk: A and dA (chunks, F, D), G (chunks,
    F, F); allocated once per call."""
    A = np.empty((chunks, nf, dim), np.float32)
    dA = np.empty((chunks, nf, dim), np.float32)
    G = np.empty((chunks, nf, nf), np.float32)
    return A, dA, G


@jit_serial
def _pair_dots(out, b, A, li, lj, offset):
    """out[b, offset + p] = <A[li[p]], A[lj[p]]>, four pairs sharing a row i at a time.

    The four dots read A[i] once for four FMAs (one load per FMA instead of two).
    """
    num_pairs = li.shape[0]
    dim = A.shape[1]
    p = 0
    while p < num_pairs:
        i = li[p]
        if p + 3 < num_pairs and li[p + 3] == i:  # pairs are row-major: p..p+3 share i
            j0, j1, j2, j3 = lj[p], lj[p + 1], lj[p + 2], lj[p + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for d in range(dim):
                v = A[i, d]
                a0 += v * A[j0, d]
                a1 += v * A[j1, d]
                a2 += v * A[j2, d]
                a3 += v * A[j3, d]
            out[b, offset + p] = a0
            out[b, offset + p + 1] = a1
            out[b, offset + p + 2] = a2
            out[b, offset + p + 3] = a3
            p += 4
        else:
            j = lj[p]
            a0 = np.float32(0.0)
            for d in range(dim):
                a0 += A[i, d] * A[j, d]
            out[b, offset + p] = a0
            p += 1


@jit_serial
def _forward_samples(out, x, emb, li, lj, A, lo, hi):
    """Samples b in [lo, hi), with A (F, D) as scratch."""
    dim = x.shape[1]
    for b in range(lo, hi):
        _gather_features(A, x, emb, b)
        for d in range(dim):
            out[b, d] = A[0, d]
        _pair_dots(out, b, A, li, lj, dim)


@jit_parallel
def dot_interaction_forward_v2(out, x, emb, li, lj):
    """As dot_interaction_forward: four dots sharing a row at a time (v2)."""
    batch, dim = x.shape
    chunks = min(batch, CHUNKS)
    scratch = np.empty((chunks, emb.shape[0] + 1, dim), np.float32)  # A, once per call
    # Chunk c writes only out[b] of its own samples and its own scratch[c]: race-free.
    for c in prange(chunks):
        lo, hi = c * batch // chunks, (c + 1) * batch // chunks
        _forward_samples(out, x, emb, li, lj, scratch[c], lo, hi)


@jit_serial
def _symmetric_product(dA, G, A):
    """dA (F, D) = G (F, F) A (F, D), four rows of A per pass over dA[i]."""
    nf, dim = A.shape
    for i in range(nf):
        for d in range(dim):
            dA[i, d] = 0.0
        j = 0
        while j + 4 <= nf:
            g0, g1, g2, g3 = G[i, j], G[i, j + 1], G[i, j + 2], G[i, j + 3]
            for d in range(dim):
                dA[i, d] += g0 * A[j, d] + g1 * A[j + 1, d] + g2 * A[j + 2, d] + g3 * A[j + 3, d]
            j += 4
        for jj in range(j, nf):
            g0 = G[i, jj]
            for d in range(dim):
                dA[i, d] += g0 * A[jj, d]


@jit_serial
def _backward_samples(dx, demb, dout, x, emb, li, lj, A, dA, G, lo, hi):
    """Samples b in [lo, hi), with A, dA (F, D) and G (F, F) as scratch."""
    dim = x.shape[1]
    for b in range(lo, hi):
        _gather_features(A, x, emb, b)
        G[:] = 0.0
        for p in range(li.shape[0]):  # a diagonal pair adds twice: d<f,f> = 2 f
            G[li[p], lj[p]] += dout[b, dim + p]
            G[lj[p], li[p]] += dout[b, dim + p]
        _symmetric_product(dA, G, A)
        _scatter_gradients(dx, demb, dout, dA, b)


@jit_parallel
def dot_interaction_backward_v2(dx, demb, dout, x, emb, li, lj):
    """As dot_interaction_backward: dA = G A by four rows of A per pass (v2)."""
    batch, dim = x.shape
    nf = emb.shape[0] + 1
    chunks = min(batch, CHUNKS)
    scratch, dscratch, gscratch = _backward_scratch(chunks, nf, dim)
    # Chunk c writes only dx[b], demb[:, b] of its own samples and its scratch: race-free.
    for c in prange(chunks):
        lo, hi = c * batch // chunks, (c + 1) * batch // chunks
        _backward_samples(
            dx, demb, dout, x, emb, li, lj, scratch[c], dscratch[c], gscratch[c], lo, hi
        )


@jit_parallel
def dot_interaction_forward_v1(out, x, emb, li, lj):
    """As dot_interaction_forward, one dot per pair straight from x and emb."""
    batch, dim = x.shape
    num_pairs = li.shape[0]
    # Sample b writes only out[b]: race-free.
    for b in prange(batch):
        row = out[b]
        row[:dim] = x[b]
        for p in range(num_pairs):
            i = li[p]
            j = lj[p]
            vi = x[b] if i == 0 else emb[i - 1, b]
            vj = x[b] if j == 0 else emb[j - 1, b]
            acc = 0.0
            for d in range(dim):
                acc += vi[d] * vj[d]
            row[dim + p] = acc


@jit_parallel
def dot_interaction_backward_v1(dx, demb, dout, x, emb, li, lj):
    """As dot_interaction_backward, two axpys per pair straight from x and emb."""
    batch, dim = x.shape
    num_tables = emb.shape[0]
    num_pairs = li.shape[0]
    # Sample b writes only dx[b] and demb[:, b]: race-free.
    for b in prange(batch):
        dx[b] = dout[b, :dim]
        for t in range(num_tables):
            demb[t, b] = 0.0
        for p in range(num_pairs):
            g = dout[b, dim + p]
            i = li[p]
            j = lj[p]
            vi = x[b] if i == 0 else emb[i - 1, b]
            vj = x[b] if j == 0 else emb[j - 1, b]
            gi = dx[b] if i == 0 else demb[i - 1, b]
            gj = dx[b] if j == 0 else demb[j - 1, b]
            for d in range(dim):
                gi[d] += g * vj[d]
            for d in range(dim):
                gj[d] += g * vi[d]


# ------------------------------------------------------------------------- v3


@jit_serial
def _pair_table(nf, li, lj):
    """(nf + 3, nf + 3) int64: pair number of (i, j), -1 where (i, j) is not a pair (the 3
    extra rows and columns absorb the padded lanes of the last 4 x 4 block)."""
    table = np.full((nf + 3, nf + 3), -1, np.int64)
    for p in range(li.shape[0]):
        table[li[p], lj[p]] = p
    return table


@jit_serial
def _feature_addresses(rows, x, emb, b):
    """rows[f] <- the address of feature f of sample b (x[b], then emb[f - 1, b]); the
    entries past the last feature repeat it, so a 4 x 4 block at the edge reads valid rows
    (their dots are dropped)."""
    batch, dim = x.shape
    nf = emb.shape[0] + 1
    rows[0] = x.ctypes.data + 4 * b * dim
    for f in range(1, rows.shape[0]):
        rows[f] = emb.ctypes.data + 4 * ((min(f, nf - 1) - 1) * batch + b) * dim


@jit_serial
def _forward_samples_v3(out, x, emb, pairs, s, rows, lo, hi):
    """Samples b in [lo, hi): the lower triangle of Z = A A^T in 4 x 4 blocks of dots read
    straight from x and emb (no gather), with s (16,) and rows (F + 3,) as scratch."""
    dim = x.shape[1]
    nf = emb.shape[0] + 1
    for b in range(lo, hi):
        for d in range(dim):
            out[b, d] = x[b, d]
        _feature_addresses(rows, x, emb, b)
        for i0 in range(0, nf, 4):
            a0, a1, a2, a3 = rows[i0], rows[i0 + 1], rows[i0 + 2], rows[i0 + 3]
            for j0 in range(0, i0 + 1, 4):  # blocks on or below the diagonal
                b0, b1, b2, b3 = rows[j0], rows[j0 + 1], rows[j0 + 2], rows[j0 + 3]
                dots_4x4(dim, a0, a1, a2, a3, b0, b1, b2, b3, s)
                for r in range(4):
                    for c in range(4):
                        p = pairs[i0 + r, j0 + c]
                        if p >= 0:
                            out[b, dim + p] = s[4 * r + c]


@jit_parallel
def dot_interaction_forward(out, x, emb, li, lj):
    """out (B, D+P); x (B, D); emb (T, B, D); li, lj (P,) pair feature ids."""
    batch = x.shape[0]
    pairs = _pair_table(emb.shape[0] + 1, li, lj)
    chunks = min(batch, CHUNKS)
    scratch = np.empty((chunks, 16), np.float32)
    rows = np.empty((chunks, emb.shape[0] + 4), np.intp)
    # Chunk c writes only out[b] of its own samples and its own scratch: race-free.
    for c in prange(chunks):
        lo, hi = c * batch // chunks, (c + 1) * batch // chunks
        _forward_samples_v3(out, x, emb, pairs, scratch[c], rows[c], lo, hi)


@jit_serial
def dot_interaction_forward_serial(out, x, emb, li, lj):
    """As dot_interaction_forward on the calling thread alone (small batches)."""
    pairs = _pair_table(emb.shape[0] + 1, li, lj)
    s, rows = np.empty(16, np.float32), np.empty(emb.shape[0] + 4, np.intp)
    _forward_samples_v3(out, x, emb, pairs, s, rows, 0, x.shape[0])


@jit_serial
def _check_triangle(nf, li, lj):
    """True if (li, lj) is the row-major lower triangle with its diagonal, False without
    it (numbadlrm.config.pair_indices); anything else raises ValueError."""
    itself = li.shape[0] == nf * (nf + 1) // 2
    if li.shape[0] != (nf * (nf + 1) // 2 if itself else nf * (nf - 1) // 2):
        raise ValueError("dot interaction: the pair list is not a lower triangle")
    p = 0
    for i in range(nf):
        for j in range(i + 1 if itself else i):
            if li[p] != i or lj[p] != j:
                raise ValueError("dot interaction: the pairs are not in row-major order")
            p += 1
    return itself


@jit_serial
def _symmetric_from_pairs(G, dout, b, dim, itself):
    """G (F, F) <- the symmetric matrix of sample b's pair gradients, from their row-major
    lower triangle in dout[b, dim:]: row i is one contiguous run (a copy, then the
    transposed column), 3x faster than scattering pair by pair. Entries never written
    (the diagonal without ``itself``) must be zero beforehand."""
    nf = G.shape[0]
    start = dim
    for i in range(nf):
        n = i + 1 if itself else i
        row = G[i]
        seg = dout[b, start : start + n]
        for j in range(n):
            row[j] = seg[j]
        start += n
    for i in range(nf):
        for j in range(i):
            G[j, i] = G[i, j]
        if itself:
            G[i, i] *= 2.0  # d<f, f>/df = 2 f


@jit_serial
def _backward_samples_v3(dx, demb, dout, x, emb, itself, A, dA, G, lo, hi):
    """Samples b in [lo, hi): dA = G A by the register-blocked GEMM tile of GEMM v4."""
    nf, dim = A.shape
    G[:] = 0.0  # the diagonal stays zero without itself
    for b in range(lo, hi):
        _gather_features(A, x, emb, b)
        _symmetric_from_pairs(G, dout, b, dim, itself)
        for r0 in range(0, nf, MR):
            for c0 in range(0, dim, NR):
                m, n = min(MR, nf - r0), min(NR, dim - c0)
                tile(nf, G, r0 * nf, nf, 1, A, c0, dim, dA, r0 * dim + c0, dim, m, n, False, 1.0)
        _scatter_gradients(dx, demb, dout, dA, b)


@jit_parallel
def dot_interaction_backward(dx, demb, dout, x, emb, li, lj):
    """dx (B, D), demb (T, B, D) out; dout (B, D+P); x, emb, li, lj as in the forward."""
    batch, dim = x.shape
    nf = emb.shape[0] + 1
    itself = _check_triangle(nf, li, lj)
    chunks = min(batch, CHUNKS)
    scratch, dscratch, gscratch = _backward_scratch(chunks, nf, dim)
    # Chunk c writes only dx[b], demb[:, b] of its own samples and its scratch: race-free.
    for c in prange(chunks):
        lo, hi = c * batch // chunks, (c + 1) * batch // chunks
        _backward_samples_v3(
            dx, demb, dout, x, emb, itself, scratch[c], dscratch[c], gscratch[c], lo, hi
        )


@jit_serial
def dot_interaction_backward_serial(dx, demb, dout, x, emb, li, lj):
    """As dot_interaction_backward on the calling thread alone (small batches)."""
    nf, dim = emb.shape[0] + 1, x.shape[1]
    itself = _check_triangle(nf, li, lj)
    A, dA, G = _backward_scratch(1, nf, dim)
    _backward_samples_v3(dx, demb, dout, x, emb, itself, A[0], dA[0], G[0], 0, x.shape[0])


@jit_parallel
def cat_interaction_forward(out, x, emb):
    """out (B, F*D) = [x[b], emb[0, b], ..., emb[T-1, b]]."""
    batch, dim = x.shape
    num_tables = emb.shape[0]
    # Sample b writes only out[b]: race-free.
    for b in prange(batch):
        out[b, :dim] = x[b]
        for t in range(num_tables):
            out[b, (t + 1) * dim : (t + 2) * dim] = emb[t, b]


@jit_parallel
def cat_interaction_backward(dx, demb, dout):
    """Split dout (B, F*D) back into dx (B, D) and demb (T, B, D)."""
    batch, dim = dx.shape
    num_tables = demb.shape[0]
    # Sample b writes only dx[b] and demb[:, b]: race-free.
    for b in prange(batch):
        dx[b] = dout[b, :dim]
        for t in range(num_tables):
            demb[t, b] = dout[b, (t + 1) * dim : (t + 2) * dim]


# ----------------------------------------------------------------- registry

register(
    "dot_interaction_forward",
    "v1",
    dot_interaction_forward_v1,
    description="one dot per pair, straight from x and emb",
)
register(
    "dot_interaction_forward",
    "v2",
    dot_interaction_forward_v2,
    description="A copied to scratch per sample, four pairs sharing a row at a time",
)
register(
    "dot_interaction_forward",
    "v3",
    dot_interaction_forward,
    dot_interaction_forward_serial,
    "4x4 blocks of dots in LLVM IR, one transpose-and-add tree per block",
    default=True,
)
register(
    "dot_interaction_backward",
    "v1",
    dot_interaction_backward_v1,
    description="two axpys per pair, straight from x and emb",
)
register(
    "dot_interaction_backward",
    "v2",
    dot_interaction_backward_v2,
    description="dA = G A, four rows of A per pass over dA[i]",
)
register(
    "dot_interaction_backward",
    "v3",
    dot_interaction_backward,
    dot_interaction_backward_serial,
    "G from contiguous runs of the pair gradients, dA = G A on GEMM v4's tile",
    default=True,
)
register(
    "cat_interaction_forward", "v1", cat_interaction_forward, description="copies", default=True
)
register(
    "cat_interaction_backward", "v1", cat_interaction_backward, description="copies", default=True
)
