"""Kernels of the reference's table tricks (issue 22): the quotient-remainder combine and
weighted pooling. The math, with its derivation, is in numbadlrm/reference.py.

    qr_combine_forward:  out[b] = q[b] * r[b] (mult), q[b] + r[b] (add), [q[b], r[b]] (concat)
    qr_combine_backward: dq, dr from dout (mult: dq = dout * r, dr = dout * q)
    weighted_embedding_forward:  pooled[t, b] = sum_{j in bag (t, b)} w[row_j] E[row_j]
    weighted_embedding_backward: per lookup j of bag (t, b), row_j = row_start[t] + indices[j]:
        rows[j] = row_j;  grads[j] = w[row_j] dpooled[t, b];  dots[j] = <dpooled[t, b], E[row_j]>

The weighted backward writes one gradient row per lookup (``grads`` (L, D), L the
lookups): the layer hands them, as one-lookup bags, to the plain table update of any
optimizer, and sums ``dots`` per row into the learned weights' gradient,
dw[r] = sum_{j: row_j = r} dots[j] (layers/embedding_tricks.py). QR's two tables and
MD's narrow table use the plain embedding kernels (kernels/embedding/bags.py).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import jit_parallel, jit_serial
from ..registry import register

QR_CODES = {"mult": 0, "add": 1, "concat": 2}


@jit_serial
def _combine_row(out, q, r, b, operation):
    dim = q.shape[1]
    for d in range(dim):
        if operation == 0:
            out[b, d] = q[b, d] * r[b, d]
        elif operation == 1:
            out[b, d] = q[b, d] + r[b, d]
        else:
            out[b, d] = q[b, d]
            out[b, dim + d] = r[b, d]


@jit_parallel
def qr_combine_forward(out, q, r, operation):
    """out (B, D) <- q, r (B, d) combined; operation 0 mult, 1 add, 2 concat (D = 2d)."""
    for b in prange(q.shape[0]):  # sample b writes only out[b]: race-free
        _combine_row(out, q, r, b, operation)


@jit_serial
def qr_combine_forward_serial(out, q, r, operation):
    for b in range(q.shape[0]):
        _combine_row(out, q, r, b, operation)


@jit_serial
def _uncombine_row(dq, dr, dout, q, r, b, operation):
    dim = q.shape[1]
    for d in range(dim):
        if operation == 0:
            dq[b, d] = dout[b, d] * r[b, d]
            dr[b, d] = dout[b, d] * q[b, d]
        elif operation == 1:
            dq[b, d] = dout[b, d]
            dr[b, d] = dout[b, d]
        else:
            dq[b, d] = dout[b, d]
            dr[b, d] = dout[b, dim + d]


@jit_parallel
def qr_combine_backward(dq, dr, dout, q, r, operation):
    """dq, dr (B, d) <- dout (B, D) through the combine."""
    for b in prange(q.shape[0]):  # sample b writes only dq[b], dr[b]: race-free
        _uncombine_row(dq, dr, dout, q, r, b, operation)


@jit_serial
def qr_combine_backward_serial(dq, dr, dout, q, r, operation):
    for b in range(q.shape[0]):
        _uncombine_row(dq, dr, dout, q, r, b, operation)


@jit_serial
def _weighted_bag(pooled, weights, row_weights, row_start, offsets, indices, t, b):
    for d in range(pooled.shape[2]):
        pooled[t, b, d] = 0.0
    for j in range(offsets[t, b], offsets[t, b + 1]):
        row = row_start[t] + indices[j]
        w = row_weights[row]
        for d in range(pooled.shape[2]):
            pooled[t, b, d] += w * weights[row, d]


@jit_parallel
def weighted_embedding_forward(pooled, weights, row_weights, row_start, offsets, indices):
    """pooled (T, B, D) <- weighted bag sums; weights (R, D), row_weights (R,)."""
    batch = pooled.shape[1]
    for tb in prange(pooled.shape[0] * batch):  # bag (t, b) writes only pooled[t, b]
        _weighted_bag(pooled, weights, row_weights, row_start, offsets, indices,
                      tb // batch, tb % batch)  # fmt: skip


@jit_serial
def weighted_embedding_forward_serial(pooled, weights, row_weights, row_start, offsets, indices):
    batch = pooled.shape[1]
    for tb in range(pooled.shape[0] * batch):
        _weighted_bag(pooled, weights, row_weights, row_start, offsets, indices,
                      tb // batch, tb % batch)  # fmt: skip


@jit_serial
def _weighted_grads(grads, rows, dots, weights, row_weights, row_start, offsets, indices,
                    dpooled, t, b):  # fmt: skip
    first = offsets[0, 0]
    for j in range(offsets[t, b], offsets[t, b + 1]):
        row = row_start[t] + indices[j]
        k = j - first
        rows[k] = row
        w = row_weights[row]
        dot = np.float32(0.0)
        for d in range(dpooled.shape[2]):
            g = dpooled[t, b, d]
            grads[k, d] = w * g
            dot += g * weights[row, d]
        dots[k] = dot


@jit_parallel
def weighted_embedding_backward(grads, rows, dots, weights, row_weights, row_start, offsets,
                                indices, dpooled):  # fmt: skip
    """grads (L, D), rows (L,), dots (L,) <- one entry per lookup, L = offsets[-1, -1] -
    offsets[0, 0] (the lookups' positions relative to the first)."""
    batch = dpooled.shape[1]
    for tb in prange(dpooled.shape[0] * batch):  # bag (t, b) writes only its own lookups
        _weighted_grads(grads, rows, dots, weights, row_weights, row_start, offsets, indices,
                        dpooled, tb // batch, tb % batch)  # fmt: skip


@jit_serial
def weighted_embedding_backward_serial(grads, rows, dots, weights, row_weights, row_start,
                                       offsets, indices, dpooled):  # fmt: skip
    batch = dpooled.shape[1]
    for tb in range(dpooled.shape[0] * batch):
        _weighted_grads(grads, rows, dots, weights, row_weights, row_start, offsets, indices,
                        dpooled, tb // batch, tb % batch)  # fmt: skip


register("qr_combine_forward", "v1", qr_combine_forward, qr_combine_forward_serial,
         description="one sample per iteration", default=True)  # fmt: skip
register("qr_combine_backward", "v1", qr_combine_backward, qr_combine_backward_serial,
         description="one sample per iteration", default=True)  # fmt: skip
register("weighted_embedding_forward", "v1", weighted_embedding_forward,
         weighted_embedding_forward_serial, description="one bag per iteration",
         default=True)  # fmt: skip
register("weighted_embedding_backward", "v1", weighted_embedding_backward,
         weighted_embedding_backward_serial, description="one bag per iteration",
         default=True)  # fmt: skip
