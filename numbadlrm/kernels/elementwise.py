"""Small elementwise kernels: fused sigmoid + BCE, and the dense SGD update.

sigmoid + BCE over logits s and labels y (numerically stable for any s):
    loss = mean_b [max(s, 0) - y s + log1p(exp(-|s|))],   p = sigmoid(s),   ds = (p - y) / B
"""

from __future__ import annotations

import math

from numba import prange

from .jit import jit_parallel, jit_serial
from .registry import register


@jit_serial
def sigmoid_bce_forward_backward(p, ds, s, labels):
    """p (B,), ds (B,) out; s (B,) logits; labels (B,). Returns the mean loss (float64)."""
    batch = s.shape[0]
    total = 0.0
    for b in range(batch):
        z = float(s[b])
        y = float(labels[b])
        e = math.exp(-abs(z))
        total += max(z, 0.0) - y * z + math.log1p(e)
        prob = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
        p[b] = prob
        ds[b] = (prob - y) / batch
    return total / batch


@jit_serial
def sigmoid(p, s):
    for b in range(s.shape[0]):
        e = math.exp(-abs(float(s[b])))
        p[b] = 1.0 / (1.0 + e) if s[b] >= 0 else e / (1.0 + e)


@jit_parallel
def sgd_update(params, grads, lr):
    """params -= lr * grads over the flat dense buffers."""
    n = params.shape[0]
    # Element k is written by one iteration only: race-free.
    for k in prange(n):
        params[k] -= lr * grads[k]


@jit_serial
def sgd_update_serial(params, grads, lr):
    """sgd_update on the calling thread, for buffers small enough to stay in cache."""
    for k in range(params.shape[0]):
        params[k] -= lr * grads[k]


register(
    "sigmoid_bce",
    "v1",
    sigmoid_bce_forward_backward,
    description="one pass: loss, p and ds per sample (stable for any logit)",
    default=True,
)
register(
    "dense_update",
    "v1",
    sgd_update,
    sgd_update_serial,
    "params -= lr grads, elementwise",
    default=True,
)
