"""Swap in your own kernel: write it, register it, check it, time it, train with it.

Here a (deliberately simple) dot-interaction forward is registered as version "mine" of
the op dot_interaction_forward, checked against the NumPy reference by the same checks
the test suite runs on every version, timed beside the default, and then selected by name
in a model of `numbadlrm train`'s default size; a call counter proves it ran in every
training step. (To keep a kernel, put its module in numbadlrm/kernels/lab/: see
examples/lab_embedding_update.py.)

    python examples/swap_kernel.py
"""

# isort: off
import numbadlrm.runtime.pools  # noqa: F401  before numpy: thread pools sleep between calls
# isort: on

import time

import numpy as np
from numba import njit, prange

from numbadlrm import DLRM
from numbadlrm.config import pair_indices
from numbadlrm.data.synthetic import batch_stream
from numbadlrm.kernels import registry
from numbadlrm.kernels.checks import ops as checks
from numbadlrm.train.config import TrainConfig


@njit(parallel=True, cache=True)
def my_dot_forward(out, x, emb, li, lj):
    """out[b] = [x[b], <f_i, f_j> for each pair]: one dot product per pair."""
    batch, dim = x.shape
    for b in prange(batch):  # sample b writes only out[b]: race-free
        out[b, :dim] = x[b]
        for p in range(li.shape[0]):
            fi = x[b] if li[p] == 0 else emb[li[p] - 1, b]
            fj = x[b] if lj[p] == 0 else emb[lj[p] - 1, b]
            acc = np.float32(0.0)
            for d in range(dim):
                acc += fi[d] * fj[d]
            out[b, dim + p] = acc


calls = 0


def counted_dot_forward(out, x, emb, li, lj):
    global calls
    calls += 1
    my_dot_forward(out, x, emb, li, lj)


registry.register(
    "dot_interaction_forward",
    "mine",
    counted_dot_forward,
    description="one dot per pair, rows picked per pair (examples/swap_kernel.py)",
)

# 1. check it against the reference (tails, batch of 1, itself or not, both entries)
checks.validate("dot_interaction_forward", "mine")
print("checked: 'mine' matches numbadlrm.reference")

# 2. time it beside the default version, at config c's shape
rng = np.random.default_rng(0)
B, T, D = 2048, 26, 128
x = rng.normal(size=(B, D)).astype(np.float32)
emb = rng.normal(size=(T, B, D)).astype(np.float32)
li, lj = pair_indices(T + 1, False)
out = np.empty((B, D + li.size), np.float32)
default = registry.default("dot_interaction_forward")
for name in (default, "mine"):
    kernel = registry.get("dot_interaction_forward", name).parallel
    kernel(out, x, emb, li, lj)  # compiles on first use
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        kernel(out, x, emb, li, lj)
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    gflops = 2 * B * li.size * D / seconds / 1e9
    print(f"{name:8s} median {seconds * 1e3:7.2f} ms  {gflops:6.1f} GFLOP/s")

# 3. train with it: a model of `numbadlrm train`'s default size selects it by name
train = TrainConfig()
cfg = train.model_config()
model = DLRM(cfg, seed=0, kernels={"dot_interaction_forward": "mine"})
calls = 0
steps = 200
stream = batch_stream(cfg, "synthetic", steps, train.mini_batch_size, seed=1)
losses = [model.train_step(batch, train.learning_rate) for batch in stream]
print(
    f"'mine' ran {calls} times in {steps} training steps; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
)
