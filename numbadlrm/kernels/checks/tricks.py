"""Checks of the table tricks' ops (issue 22) against numbadlrm.reference: the QR
combine and weighted pooling, on the embedding cases (empty bags, repeated rows)."""

from __future__ import annotations

import numpy as np

from ... import reference as ref
from ..embedding.tricks import QR_CODES
from .cases import EMBEDDING_CASES, TOL, bags


def _qr_forward_cases(rng, version, kernel):
    for op, code in QR_CODES.items():
        for B, d in ((1, 3), (17, 8)):
            q, r = rng.standard_normal((2, B, d), dtype=np.float32)

            def check(q=q, r=r, op=op, code=code):
                want = ref.qr_forward(q.astype(np.float64), r.astype(np.float64), op)
                out = np.full(want.shape, np.nan, np.float32)
                kernel(out, q, r, code)
                np.testing.assert_allclose(out, want, **TOL)

            yield (op, B, d), check


def _qr_backward_cases(rng, version, kernel):
    for op, code in QR_CODES.items():
        for B, d in ((1, 3), (17, 8)):
            q, r = rng.standard_normal((2, B, d), dtype=np.float32)
            dout = rng.standard_normal((B, 2 * d if op == "concat" else d), dtype=np.float32)

            def check(q=q, r=r, dout=dout, op=op, code=code):
                dq, dr = np.full((2, *q.shape), np.nan, np.float32)
                kernel(dq, dr, dout, q, r, code)
                q64, r64 = q.astype(np.float64), r.astype(np.float64)
                want_q, want_r = ref.qr_backward(dout.astype(np.float64), q64, r64, op)
                np.testing.assert_allclose(dq, want_q, **TOL, err_msg="dq")
                np.testing.assert_allclose(dr, want_r, **TOL, err_msg="dr")

            yield (op, B, d), check


def _weighted_inputs(rng):
    for sizes, dim, batches, max_bag in EMBEDDING_CASES:
        row_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        weights = rng.standard_normal((row_start[-1], dim), dtype=np.float32)
        row_weights = rng.uniform(0.5, 1.5, row_start[-1]).astype(np.float32)
        for batch in batches:
            offsets, indices = bags(rng, sizes, batch, max_bag)
            yield sizes, dim, batch, row_start, weights, row_weights, offsets, indices


def _weighted_forward_cases(rng, version, kernel):
    for sizes, dim, batch, rs, weights, w, offsets, indices in _weighted_inputs(rng):

        def check(sizes=sizes, rs=rs, weights=weights, w=w, o=offsets, i=indices):
            pooled = np.full((len(sizes), o.shape[1] - 1, weights.shape[1]), np.nan, np.float32)
            kernel(pooled, weights, w, rs, o, i)
            for t in range(len(sizes)):
                table = weights[rs[t] : rs[t + 1]].astype(np.float64)
                want = ref.weighted_bag_forward(table, w[rs[t] : rs[t + 1]], o[t], i)
                np.testing.assert_allclose(pooled[t], want, **TOL, err_msg=f"table {t}")

        yield (sizes, dim, batch), check


def _weighted_backward_cases(rng, version, kernel):
    for sizes, dim, batch, rs, weights, w, offsets, indices in _weighted_inputs(rng):
        dpooled = rng.standard_normal((len(sizes), batch, dim), dtype=np.float32)

        def check(sizes=sizes, rs=rs, weights=weights, w=w, o=offsets, i=indices, dp=dpooled):
            n = int(o[-1, -1] - o[0, 0])
            grads = np.full((n, weights.shape[1]), np.nan, np.float32)
            rows, dots = np.full(n, -1, np.int64), np.full(n, np.nan, np.float32)
            kernel(grads, rows, dots, weights, w, rs, o, i, dp)
            dE = np.zeros(weights.shape)
            np.add.at(dE, rows, grads)
            dw = np.bincount(rows, weights=dots, minlength=weights.shape[0])
            for t in range(len(sizes)):
                lo, hi = rs[t], rs[t + 1]
                want_E, want_w = ref.weighted_bag_backward(
                    dp[t].astype(np.float64), weights[lo:hi].astype(np.float64), w[lo:hi],
                    o[t], i,
                )  # fmt: skip
                np.testing.assert_allclose(dE[lo:hi], want_E, **TOL, err_msg=f"dE {t}")
                np.testing.assert_allclose(dw[lo:hi], want_w, **TOL, err_msg=f"dw {t}")

        yield (sizes, dim, batch), check


CHECKS = {
    "qr_combine_forward": _qr_forward_cases,
    "qr_combine_backward": _qr_backward_cases,
    "weighted_embedding_forward": _weighted_forward_cases,
    "weighted_embedding_backward": _weighted_backward_cases,
}
