"""Small elementwise kernels: the fused sigmoid + loss passes, and the dense SGD update.

Each loss pass takes the logits s and labels y (B,) and writes p = sigmoid(s) and
ds = dloss/ds in one pass, numerically stable for any s (with e = exp(-|s|), p is
1 / (1 + e) or e / (1 + e), and p (1 - p) = e / (1 + e)^2), in float64 scalars:

    bce:   loss = mean_b [max(s, 0) - y s + log1p(e)]           ds = (p - y) / B
    wbce:  w = w1 if y else w0 (the reference's --loss-weights w0-w1)
           loss = mean_b w [max(s, 0) - y s + log1p(e)]         ds = w (p - y) / B
    mse:   loss = mean_b (p - y)^2                              ds = 2 (p - y) p (1 - p) / B
"""

from __future__ import annotations

import math

from numba import prange

from .jit import jit_parallel, jit_serial
from .registry import register


@jit_serial
def _sigmoid(z):
    """(sigmoid(z), e = exp(-|z|)) in float64, without overflow for any z."""
    e = math.exp(-abs(z))
    return (1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)), e


@jit_serial
def sigmoid_bce_forward_backward(p, ds, s, labels):
    """p (B,), ds (B,) out; s (B,) logits; labels (B,). Returns the mean loss (float64)."""
    batch = s.shape[0]
    total = 0.0
    for b in range(batch):
        z = float(s[b])
        y = float(labels[b])
        prob, e = _sigmoid(z)
        total += max(z, 0.0) - y * z + math.log1p(e)
        p[b] = prob
        ds[b] = (prob - y) / batch
    return total / batch


@jit_serial
def sigmoid_wbce_forward_backward(p, ds, s, labels, w0, w1):
    """As sigmoid_bce_forward_backward, each sample's loss and ds weighted by w0 or w1."""
    batch = s.shape[0]
    total = 0.0
    for b in range(batch):
        z = float(s[b])
        y = float(labels[b])
        w = w1 if y > 0.5 else w0
        prob, e = _sigmoid(z)
        total += w * (max(z, 0.0) - y * z + math.log1p(e))
        p[b] = prob
        ds[b] = w * (prob - y) / batch
    return total / batch


@jit_serial
def sigmoid_mse_forward_backward(p, ds, s, labels):
    """p (B,), ds (B,) out; returns the mean squared error of p against the labels."""
    batch = s.shape[0]
    total = 0.0
    for b in range(batch):
        z = float(s[b])
        y = float(labels[b])
        prob, e = _sigmoid(z)
        slope = e / ((1.0 + e) * (1.0 + e))  # p (1 - p), exact for any z
        total += (prob - y) * (prob - y)
        p[b] = prob
        ds[b] = 2.0 * (prob - y) * slope / batch
    return total / batch


@jit_serial
def sigmoid(p, s):
    for b in range(s.shape[0]):
        p[b] = _sigmoid(float(s[b]))[0]


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
    "sigmoid_wbce",
    "v1",
    sigmoid_wbce_forward_backward,
    description="one pass: weighted loss, p and ds per sample",
    default=True,
)
register(
    "sigmoid_mse",
    "v1",
    sigmoid_mse_forward_backward,
    description="one pass: squared error, p and ds per sample",
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
