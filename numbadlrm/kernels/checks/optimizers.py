"""What every version of the optimizer ops must compute: checks against reference_optim.

Part of numbadlrm.kernels.checks.ops (``validate(op, name)``), kept apart to keep that
module short. Each case runs two or three steps in a row on the same state (a step's
state feeds the next) from a state that does not start at zero.

Tolerance: float32 kernels against the float64 reference from the same float32 inputs.
A tiny table (2 or 3 rows, up to 64 bags of up to 6 lookups) gathers up to ~200 bag
gradients into one row: that float32 sum carries up to ~200 x 6e-8 = 1.2e-5 relative
error, squared into the state, so rtol = 1e-4 (atol = 1e-5). An indexing, coalescing or
ownership bug moves a weight by ~lr = 0.1 and a state entry by 1e-3 relative or more.
"""

from __future__ import annotations

import numpy as np

from ...optim import reference as ref

TOL = {"rtol": 1e-4, "atol": 1e-5}
LR, EPS = 0.1, 1e-10
STEPS = 3


def _dense_adagrad_cases(rng, version, kernel):
    for n in (1, 1001):
        for weight_decay in (0.0, 0.01):
            params = rng.normal(size=n).astype(np.float32)
            grads = [rng.normal(size=n).astype(np.float32) for _ in range(STEPS)]

            def check(params=params, grads=grads, weight_decay=weight_decay):
                got_p, got_s = params.copy(), np.full_like(params, 0.1)
                want_p, want_s = params.astype(np.float64), np.full(params.shape, 0.1)
                scalars = (np.float32(LR), np.float32(EPS), np.float32(weight_decay))
                for g in grads:
                    kernel(got_p, got_s, g, *scalars)
                    ref.adagrad(want_p, want_s, g.astype(np.float64), LR, EPS, weight_decay)
                np.testing.assert_allclose(got_s, want_s, **TOL, err_msg="state")
                np.testing.assert_allclose(got_p, want_p, **TOL, err_msg="params")

            yield (n, f"weight_decay={weight_decay}"), check


def _sparse_cases(rowwise: bool, embedding_cases, bags):
    """Cases of embedding_update_(rowwise_)adagrad: checks.EMBEDDING_CASES' tables and
    bags (empty bags, repeated rows, bags longer than the prefetch windows), scratch of
    arbitrary contents with 3 owners (more than the threads), reused across the steps."""
    reference = ref.embedding_rowwise_adagrad if rowwise else ref.embedding_adagrad

    def cases(rng, version, kernel):
        for sizes, dim, batches, max_bag in embedding_cases:
            row_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            rows = int(row_start[-1])
            for batch in batches:
                steps = [bags(rng, sizes, batch, max_bag) for _ in range(STEPS)]
                dpooled = [
                    rng.normal(size=(len(sizes), batch, dim)).astype(np.float32) for _ in steps
                ]
                weights = rng.normal(size=(rows, dim)).astype(np.float32)

                def check(
                    steps=steps, dpooled=dpooled, weights=weights, row_start=row_start, rows=rows
                ):
                    shape = weights.shape[:1] if rowwise else weights.shape
                    got_w, got_s = weights.copy(), np.full(shape, 0.5, np.float32)
                    want_w, want_s = weights.astype(np.float64), np.full(shape, 0.5)
                    most = max(int((o[:, -1] - o[:, 0]).max()) for o, _ in steps)
                    lists = rng.integers(-(2**62), 2**62, (3, 2, max(most, 1)))
                    for (offsets, indices), dp in zip(steps, dpooled, strict=True):
                        kernel(got_w, got_s, lists, row_start, offsets, indices, dp,
                               np.float32(LR), np.float32(EPS))  # fmt: skip
                        dp64 = dp.astype(np.float64)
                        reference(want_w, want_s, row_start, offsets, indices, dp64, LR, EPS)
                    np.testing.assert_allclose(got_s, want_s, **TOL, err_msg="state")
                    np.testing.assert_allclose(got_w, want_w, **TOL, err_msg="weights")

                yield (sizes, dim, batch), check

    return cases


def _dense_rowwise_cases(rng, version, kernel):
    for rows, dim in ((1, 1), (37, 20)):
        weights = rng.normal(size=(rows, dim)).astype(np.float32)
        grads = [rng.normal(size=(rows, dim)).astype(np.float32) for _ in range(STEPS)]
        grads[0][rows // 2] = 0.0  # a row nobody looked up keeps its weights and state

        def check(weights=weights, grads=grads):
            got_w, got_s = weights.copy(), np.full(weights.shape[0], 0.5, np.float32)
            want_w, want_s = weights.astype(np.float64), np.full(weights.shape[0], 0.5)
            for g in grads:
                kernel(got_w, got_s, g, np.float32(LR), np.float32(EPS))
                ref.rowwise_adagrad(want_w, want_s, g.astype(np.float64), LR, EPS)
            np.testing.assert_allclose(got_s, want_s, **TOL, err_msg="state")
            np.testing.assert_allclose(got_w, want_w, **TOL, err_msg="weights")

        yield (rows, dim), check


def optimizer_checks(embedding_cases, bags) -> dict:
    """{op: its cases}, the table ops' on checks.py's embedding cases and bag maker."""
    return {
        "dense_update_adagrad": _dense_adagrad_cases,
        "embedding_update_adagrad": _sparse_cases(False, embedding_cases, bags),
        "embedding_update_rowwise_adagrad": _sparse_cases(True, embedding_cases, bags),
        "dense_update_rowwise_adagrad": _dense_rowwise_cases,
    }
