"""Swap in your own kernel: write it, check it against the reference, time it, use it.

Here a (deliberately simple) alternative dot-interaction forward replaces the shipped one.
Every layer calls its kernel through a module attribute, so assigning a new function
there swaps it for the whole model.

    python examples/swap_kernel.py
"""

import time

import numpy as np
from numba import njit, prange

from numbadlrm import reference
from numbadlrm.kernels import interaction


@njit(parallel=True, cache=True)
def my_dot_forward(out, x, emb, li, lj):
    """Gather each sample's F x D block, then one small GEMM Z = A A^T."""
    batch, dim = x.shape
    num_tables = emb.shape[0]
    for b in prange(batch):  # sample b writes only out[b]: race-free
        feats = np.empty((num_tables + 1, dim), dtype=x.dtype)
        feats[0] = x[b]
        for t in range(num_tables):
            feats[t + 1] = emb[t, b]
        z = feats @ feats.T
        out[b, :dim] = x[b]
        for p in range(li.shape[0]):
            out[b, dim + p] = z[li[p], lj[p]]


rng = np.random.default_rng(0)
B, T, D = 2048, 26, 128
x = rng.normal(size=(B, D)).astype(np.float32)
emb = rng.normal(size=(T, B, D)).astype(np.float32)
li, lj = reference.pair_indices(T + 1, False)
out = np.empty((B, D + li.size), np.float32)

# 1. validate against the NumPy reference
feats = np.concatenate([x[:, None], emb.transpose(1, 0, 2)], axis=1).astype(np.float64)
expect = reference.interaction_forward(feats, "dot", False)
for name, kernel in [("shipped", interaction.dot_interaction_forward), ("mine", my_dot_forward)]:
    kernel(out, x, emb, li, lj)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-3)
    # 2. time it (after the first call compiled it)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        kernel(out, x, emb, li, lj)
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    gflops = 2 * B * li.size * D / seconds / 1e9
    print(f"{name:8s} median {seconds * 1e3:7.2f} ms  {gflops:6.1f} GFLOP/s")

# 3. use it: the layer looks the kernel up on the module at call time
interaction.dot_interaction_forward = my_dot_forward
