"""Feature-interaction kernels, parallel over the batch.

Feature f of sample b is ``x[b]`` for f = 0 and ``emb[f - 1, b]`` otherwise (F = T + 1
vectors of length D); the pair list (li, lj) is the row-major lower triangle.

dot forward:   out[b] = [x[b], <feat_i, feat_j> for (i, j) in pairs]          (B, D + P)
dot backward:  dfeat_i += dout_p * feat_j;  dfeat_j += dout_p * feat_i;  dx += dout[:, :D]
    (for a diagonal pair i == j both lines apply, giving the 2 * dout_p * feat_i of d<f,f>)

Per sample this is the small GEMM Z = A A^T (A is F x D) and its transpose-product in
the backward, done as independent dot products and axpys so each sample touches only
its own F x D block, which stays in L1.
"""

from __future__ import annotations

from numba import prange

from ._jit import jit_parallel


@jit_parallel
def dot_interaction_forward(out, x, emb, li, lj):
    """out (B, D+P); x (B, D); emb (T, B, D); li, lj (P,) pair feature ids."""
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
def dot_interaction_backward(dx, demb, dout, x, emb, li, lj):
    """dx (B, D), demb (T, B, D) out; dout (B, D+P); x, emb, li, lj as in the forward."""
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
