"""The reference's table tricks (issue 22), forward and backward side by side. The math
and its derivation: numbadlrm/reference.py; the kernels: kernels/embedding/tricks.py.

    quotient-remainder:  e = q * r (mult), q + r (add), [q, r] (concat)      (B, D)
        mult: dq = de * r, dr = de * q;  add: dq = dr = de;  concat: the halves of de
    mixed dimensions:    e = u P^T, u (B, d) a narrow table's bags, P (D, d)
        du = de P;  dP = de^T u
    weighted pooling:    e[t, b] = sum_{j in bag (t, b)} w[row_j] E[row_j]
        dE[row_j] += w[row_j] de[t, b];  dw[r] = sum_{j: row_j = r} <de[t, b(j)], E[r]>
        (the dot: d/dw of w E is E, contracted with the bag's gradient)

The weighted backward returns one gradient row per lookup with the lookups' rows: any
optimizer's plain table update takes them as one-lookup bags (:func:`one_lookup_bags`).
"""

from __future__ import annotations

import numpy as np

from ..kernels.embedding.tricks import QR_CODES
from ..kernels.jit import run_serial
from ..kernels.registry import DEFAULT, KernelChoice
from ._checks import array_shape, check_array
from .embedding_bag import check_embedding_args


def qr_combine_forward(out, q, r, operation: str, kernels: KernelChoice = DEFAULT) -> None:
    """out (B, D) <- q, r (B, d) combined by ``operation`` (mult, add, concat: D = 2d)."""
    batch, dim = array_shape("q", q, 2)
    check_array("q", q, (batch, dim))
    check_array("r", r, (batch, dim))
    check_array("out", out, (batch, 2 * dim if operation == "concat" else dim))
    kernel = kernels.get("qr_combine_forward").entry(run_serial(3 * q.nbytes))
    kernel(out, q, r, QR_CODES[operation])


def qr_combine_backward(dq, dr, dout, q, r, operation: str, kernels: KernelChoice = DEFAULT):
    """dq, dr (B, d) <- dout (B, D) through the combine of q, r."""
    batch, dim = array_shape("q", q, 2)
    for name, a in (("q", q), ("r", r), ("dq", dq), ("dr", dr)):
        check_array(name, a, (batch, dim))
    check_array("dout", dout, (batch, 2 * dim if operation == "concat" else dim))
    kernel = kernels.get("qr_combine_backward").entry(run_serial(5 * q.nbytes))
    kernel(dq, dr, dout, q, r, QR_CODES[operation])


def projection_forward(out: np.ndarray, u: np.ndarray, P: np.ndarray) -> None:
    """out (B, D) <- u (B, d) P^T, P (D, d): MD's bias-free projection (BLAS)."""
    check_array("P", P, array_shape("P", P, 2))
    check_array("u", u, (array_shape("u", u, 2)[0], P.shape[1]))
    check_array("out", out, (u.shape[0], P.shape[0]))
    np.matmul(u, P.T, out=out)


def projection_backward(du, dP, dout, u, P) -> None:
    """du (B, d) <- dout P;  dP (D, d) <- dout^T u."""
    check_array("dout", dout, (u.shape[0], P.shape[0]))
    check_array("du", du, u.shape)
    check_array("dP", dP, P.shape)
    np.matmul(dout, P, out=du)
    np.matmul(dout.T, u, out=dP)


def weighted_embedding_forward(pooled, weights, row_weights, row_start, offsets, indices,
                               kernels: KernelChoice = DEFAULT) -> None:  # fmt: skip
    """pooled (T, B, D) <- bag sums of w[row] weights[row]; row_weights (R,)."""
    check_embedding_args("pooled", pooled, weights, row_start, offsets, indices)
    check_array("row_weights", row_weights, (weights.shape[0],))
    small = run_serial(indices.shape[0] * weights.shape[1] * 4 + pooled.nbytes)
    kernel = kernels.get("weighted_embedding_forward").entry(small)
    kernel(pooled, weights, row_weights, row_start, offsets, indices)


def weighted_embedding_backward(weights, row_weights, row_start, offsets, indices, dpooled,
                                kernels: KernelChoice = DEFAULT):  # fmt: skip
    """(grads (L, D), rows (L,), dots (L,)): per lookup its row, w[row] dpooled[t, b] and
    <dpooled[t, b], weights[row]> (weights as they are now, before any update)."""
    check_embedding_args("dpooled", dpooled, weights, row_start, offsets, indices)
    check_array("row_weights", row_weights, (weights.shape[0],))
    n = int(offsets[-1, -1] - offsets[0, 0]) if offsets.size else 0
    grads = np.empty((n, weights.shape[1]), np.float32)
    rows, dots = np.empty(n, np.int64), np.empty(n, np.float32)
    small = run_serial(2 * grads.nbytes + dpooled.nbytes)
    kernel = kernels.get("weighted_embedding_backward").entry(small)
    kernel(grads, rows, dots, weights, row_weights, row_start, offsets, indices, dpooled)
    return grads, rows, dots


def one_lookup_bags(rows: np.ndarray, total_rows: int):
    """(row_start (2,), offsets (1, L+1), indices = rows): L bags of one lookup each in
    one table of ``total_rows`` rows, for the plain table updates."""
    offsets = np.arange(rows.shape[0] + 1, dtype=np.int64)[None, :]
    return np.array([0, total_rows], np.int64), offsets, rows


def row_sums(rows: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique rows, float32 sums of ``values`` per unique row)."""
    unique, inverse = np.unique(rows, return_inverse=True)
    return unique, np.bincount(inverse, weights=values, minlength=unique.shape[0]).astype(
        np.float32
    )
