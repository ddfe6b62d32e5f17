"""Feature-interaction kernels, parallel over the batch.

Feature f of sample b is ``x[b]`` for f = 0 and ``emb[f - 1, b]`` otherwise (F = T + 1
vectors of length D); the pair list (li, lj) is the row-major lower triangle.

dot forward:   out[b] = [x[b], <feat_i, feat_j> for (i, j) in pairs]          (B, D + P)
dot backward:  dfeat_i += dout_p * feat_j;  dfeat_j += dout_p * feat_i;  dx += dout[:, :D]
    (for a diagonal pair i == j both lines apply, giving the 2 * dout_p * feat_i of d<f,f>)

Per sample this is the small GEMM Z = A A^T (A is F x D, 14 KB at F=27, D=128: it fits
in L1) and, in the backward, dA = G A with G the symmetric (F, F) matrix holding dout_p
at (i, j) and (j, i). Versions (bench/bench_interaction.py times them side by side; the
unsuffixed names are the best, called by the layer):

    v1  per pair: pick each feature's row from x or emb, one dot (forward) or two axpys
        (backward) per pair
    v2  per sample: copy A into a contiguous per-chunk scratch (F, D), then dots over its
        rows (forward) and dA[i] = sum_j G[i, j] A[j] (backward). Contiguous rows picked
        by index let LLVM vectorise the inner loops without per-pair branches
        (config c, one thread: forward 1.4x, backward 1.2x faster than v1)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._jit import jit_parallel, jit_serial

CHUNKS_PER_THREAD = 4  # samples are split into this many chunks per thread (load balance)


@jit_serial
def _gather_features(feats, x, emb, b):
    """feats (F, D) <- [x[b], emb[0, b], ..., emb[T-1, b]]."""
    feats[0] = x[b]
    for t in range(emb.shape[0]):
        feats[t + 1] = emb[t, b]


@jit_parallel
def dot_interaction_forward(out, x, emb, li, lj):
    """out (B, D+P); x (B, D); emb (T, B, D); li, lj (P,) pair feature ids."""
    batch, dim = x.shape
    num_pairs = li.shape[0]
    chunks = min(batch, CHUNKS_PER_THREAD * numba.get_num_threads())
    scratch = np.empty((chunks, emb.shape[0] + 1, dim), np.float32)  # once per call
    # Chunk c writes only out[b] of its own samples and its own scratch[c]: race-free.
    for c in prange(chunks):
        feats = scratch[c]
        for b in range(c * batch // chunks, (c + 1) * batch // chunks):
            _gather_features(feats, x, emb, b)
            row = out[b]
            row[:dim] = feats[0]
            for p in range(num_pairs):
                vi = feats[li[p]]
                vj = feats[lj[p]]
                acc = np.float32(0.0)
                for d in range(dim):
                    acc += vi[d] * vj[d]
                row[dim + p] = acc


@jit_parallel
def dot_interaction_backward(dx, demb, dout, x, emb, li, lj):
    """dx (B, D), demb (T, B, D) out; dout (B, D+P); x, emb, li, lj as in the forward."""
    batch, dim = x.shape
    num_features = emb.shape[0] + 1
    num_pairs = li.shape[0]
    chunks = min(batch, CHUNKS_PER_THREAD * numba.get_num_threads())
    scratch = np.empty((chunks, num_features, dim), np.float32)  # A, once per call
    gscratch = np.empty((chunks, num_features, num_features), np.float32)  # G
    ascratch = np.empty((chunks, dim), np.float32)  # one row of dA
    # Chunk c writes only dx[b], demb[:, b] of its own samples and its scratch: race-free.
    for c in prange(chunks):
        feats, g, acc = scratch[c], gscratch[c], ascratch[c]
        for b in range(c * batch // chunks, (c + 1) * batch // chunks):
            _gather_features(feats, x, emb, b)
            g[:] = 0.0
            for p in range(num_pairs):  # a diagonal pair adds twice: d<f,f> = 2 f
                g[li[p], lj[p]] += dout[b, dim + p]
                g[lj[p], li[p]] += dout[b, dim + p]
            for i in range(num_features):
                acc[:] = 0.0
                for j in range(num_features):
                    s = g[i, j]
                    fj = feats[j]
                    for d in range(dim):
                        acc[d] += s * fj[d]
                if i == 0:
                    for d in range(dim):
                        dx[b, d] = dout[b, d] + acc[d]
                else:
                    demb[i - 1, b] = acc


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


# name -> (forward, backward), for bench/bench_interaction.py and the tests; best first.
DOT_VERSIONS = {
    "v2": (dot_interaction_forward, dot_interaction_backward),
    "v1": (dot_interaction_forward_v1, dot_interaction_backward_v1),
}
