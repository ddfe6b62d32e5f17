"""What every version of every op must compute: checks against numbadlrm.reference.

``validate(op, name)`` runs version ``name`` of ``op`` (its serial entry with
``serial=True``) on the op's cases and raises AssertionError naming the op, the version,
the case and the worst error. tests/test_registry.py runs it for every registered
version (yours included) and the benches run it before they time anything.

The cases cover what kernels get wrong: shapes that are not multiples of any tile or
vector width, a batch of one, empty bags, repeated indices (the same row twice in a bag
and across bags), bags longer than a prefetch window, D not a multiple of 16.

Tolerances. GEMMs: the reference runs in float64 on the same float32 inputs; a float32
sum of K products in any order is off by at most about K eps32 sum_k |a_k b_k| (the
bound gamma_K), so each entry is checked against (K + 2) eps32 (|A| @ |B|) (+2 for the
bias add and the output rounding). A wrong index or a lost term is off by ~|a_k b_k|,
far above that for K <= 2000. Other ops sum at most a few dozen O(1) terms: rtol = atol
= 1e-5 passes rounding and fails any indexing or logic bug (O(1) errors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ... import reference as ref
from ...config import pair_indices
from ..registry import Version, get
from .bf16 import CHECKS as _BF16_CHECKS
from .cases import (
    EMBEDDING_CASES,
    EPS,
    INTERACTION_CASES,
    LINEAR_SHAPES,
    TOL,
    assert_gemm_close,
    bags,
    case_label,
    linear_inputs,
)
from .optimizers import optimizer_checks
from .tricks import CHECKS as _TRICK_CHECKS


def validate(op: str, name: str, serial: bool = False) -> None:
    """Check version ``name`` of ``op`` against the reference on all of the op's cases."""
    version = get(op, name)
    if serial and version.serial is None:
        raise ValueError(f"{op}/{name} has no serial entry")
    kernel = version.entry(small=serial)
    rng = np.random.default_rng(list(op.encode()))
    for case, check in _CHECKS[op](rng, version, kernel):
        try:
            check()
        except AssertionError as exc:
            entry = "serial" if serial else "parallel"
            label = case_label(op, case)
            raise AssertionError(f"{op}/{name} ({entry} entry), case {label}: {exc}") from None


def case_calls(op: str, name: str) -> list[tuple[str, tuple]]:
    """(case label, arguments) of the call each of the op's checks makes to version
    ``name``'s parallel entry: the cases' inputs, to time a version on (numbadlrm kernels
    --check ... --bench). The inputs are the same for every version of the op."""
    version = get(op, name)
    calls: list[tuple] = []

    def record(*args):
        calls.append(args)
        return version.parallel(*args)

    out = []
    for case, check in _CHECKS[op](np.random.default_rng(list(op.encode())), version, record):
        calls.clear()
        check()
        if calls:
            out.append((case_label(op, case), calls[-1]))
    return out


def entries(version: Version) -> list[bool]:
    """serial=False, and True too when the version has a serial entry."""
    return [False, True] if version.serial is not None else [False]


# --------------------------------------------------------------------------- linear


def check_linear_forward(y, x, W, b, relu):
    x64, W64, b64 = (a.astype(np.float64) for a in (x, W, b))
    want, _ = ref.linear_forward(x64, W64, b64, relu)
    abs_a = np.hstack([np.abs(x64), np.ones((len(x), 1))])
    abs_b = np.vstack([np.abs(W64.T), np.abs(b64)[None]])
    assert_gemm_close(y, want, abs_a, abs_b, x.shape[1], "y")


def _linear_forward_cases(rng, version, kernel):
    for B, I, O in LINEAR_SHAPES:
        x, W, b, _, _ = linear_inputs(rng, B, I, O)
        for relu in (False, True):
            y = np.full((B, O), np.nan, np.float32)

            def check(y=y, x=x, W=W, b=b, relu=relu):
                kernel(y, x, W, b, relu)
                check_linear_forward(y, x, W, b, relu)

            yield (B, I, O, "relu" if relu else "linear"), check


def _linear_data_cases(rng, version, kernel):
    modes = ((True, True, False), (True, False, True), (False, True, False))
    for B, I, O in LINEAR_SHAPES:
        x, W, _, y, dy = linear_inputs(rng, B, I, O)
        for with_dx, relu, mask_dx in modes:

            def check(x=x, W=W, y=y, dy=dy, with_dx=with_dx, relu=relu, mask_dx=mask_dx):
                dz = dy.copy()
                dx = np.full(x.shape, np.nan, np.float32) if with_dx else None
                kernel(dx, dz, y, W, x, relu, mask_dx)
                want_dz = dy * (y > 0) if relu else dy
                np.testing.assert_array_equal(dz, want_dz, err_msg="dz = dy [y > 0]")
                if dx is None:
                    return
                W64 = W.astype(np.float64)
                keep = x > 0 if mask_dx else np.ones(x.shape, bool)
                want = (want_dz.astype(np.float64) @ W64) * keep
                assert_gemm_close(dx, want, np.abs(want_dz), np.abs(W64), W.shape[0], "dx")
                assert (dx[~keep] == 0).all(), "dx not masked by [x > 0]"

            yield (B, I, O, f"dx={with_dx} relu={relu} mask_dx={mask_dx}"), check


def _linear_weight_cases(rng, version, kernel):
    for B, I, O in LINEAR_SHAPES:
        x, W, b, _, dz = linear_inputs(rng, B, I, O)

        def check(x=x, dz=dz, B=B, I=I, O=O):
            dW = np.full((O, I), np.nan, np.float32)
            db = np.full(O, np.nan, np.float32)
            kernel(dW, db, dz, x)
            x64, dz64 = x.astype(np.float64), dz.astype(np.float64)
            assert_gemm_close(dW, dz64.T @ x64, np.abs(dz64.T), np.abs(x64), B, "dW")
            assert_gemm_close(db, dz64.sum(0), np.abs(dz64.T), np.ones(B), B, "db")

        yield (B, I, O), check
        sgd = version.extras.get("sgd")
        if sgd is None:
            continue

        def check_sgd(x=x, W=W, b=b, dz=dz, B=B, sgd=sgd):
            lr = np.float32(0.05)
            W2, b2 = W.copy(), b.copy()
            sgd(W2, b2, dz, x, lr)
            x64, dz64 = x.astype(np.float64), dz.astype(np.float64)
            want = W - lr * (dz64.T @ x64)
            bound = lr * (B + 2) * EPS * (np.abs(dz64.T) @ np.abs(x64)) + 4 * EPS * np.abs(W)
            assert (np.abs(W2 - want) <= bound + 1e-30).all(), "sgd: W - lr dW"
            np.testing.assert_allclose(b2, b - lr * dz64.sum(0), rtol=1e-5, atol=1e-5)

        yield (B, I, O, "sgd"), check_sgd


# ------------------------------------------------------------------------ embedding


def _embedding_inputs(rng) -> Iterator[tuple]:
    for sizes, dim, batches, max_bag in EMBEDDING_CASES:
        row_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        for batch in batches:
            offsets, indices = bags(rng, sizes, batch, max_bag)
            weights = rng.normal(size=(int(row_start[-1]), dim)).astype(np.float32)
            dpooled = rng.normal(size=(len(sizes), batch, dim)).astype(np.float32)
            yield (sizes, dim, batch), sizes, weights, row_start, offsets, indices, dpooled


def _table_gradient(sizes, row_start, offsets, indices, dpooled) -> np.ndarray:
    grad = np.zeros((int(row_start[-1]), dpooled.shape[2]))
    for t, rows in enumerate(sizes):
        grad[row_start[t] : row_start[t + 1]] = ref.embedding_bag_backward(
            dpooled[t].astype(np.float64), offsets[t], indices, rows
        )
    return grad


def _embedding_forward_cases(rng, version, kernel):
    for case, sizes, weights, row_start, offsets, indices, _ in _embedding_inputs(rng):
        pooled = np.full((len(sizes), offsets.shape[1] - 1, weights.shape[1]), np.nan, np.float32)

        def check(pooled=pooled, weights=weights, row_start=row_start, o=offsets, i=indices):
            kernel(pooled, weights, row_start, o, i)
            for t in range(pooled.shape[0]):
                table = weights[row_start[t] : row_start[t + 1]].astype(np.float64)
                want = ref.embedding_bag_forward(table, o[t], i)
                np.testing.assert_allclose(pooled[t], want, **TOL, err_msg=f"table {t}")

        yield case, check


def _embedding_update_cases(rng, version, kernel):
    for case, sizes, weights, row_start, offsets, indices, dpooled in _embedding_inputs(rng):

        def check(s=sizes, w=weights, rs=row_start, o=offsets, i=indices, dp=dpooled):
            want = w.astype(np.float64) - 0.25 * _table_gradient(s, rs, o, i, dp)
            got = w.copy()
            kernel(got, rs, o, i, dp, np.float32(0.25))
            np.testing.assert_allclose(got, want, **TOL)

        yield case, check


def _embedding_gradient_cases(rng, version, kernel):
    for case, sizes, weights, row_start, offsets, indices, dpooled in _embedding_inputs(rng):

        def check(s=sizes, w=weights, rs=row_start, o=offsets, i=indices, dp=dpooled):
            got = np.zeros_like(w)
            kernel(got, rs, o, i, dp)
            np.testing.assert_allclose(got, _table_gradient(s, rs, o, i, dp), **TOL)

        yield case, check


# ---------------------------------------------------------------------- interaction


def _interaction_inputs(rng):
    for B, T, D in INTERACTION_CASES:
        x = rng.normal(size=(B, D)).astype(np.float32)
        emb = rng.normal(size=(T, B, D)).astype(np.float32)
        feats = np.concatenate([x[:, None], emb.transpose(1, 0, 2)], axis=1).astype(np.float64)
        yield (B, T, D), x, emb, feats


def _dot_forward_cases(rng, version, kernel):
    for case, x, emb, feats in _interaction_inputs(rng):
        for itself in (False, True):

            def check(x=x, emb=emb, feats=feats, itself=itself):
                li, lj = pair_indices(emb.shape[0] + 1, itself)
                out = np.full((x.shape[0], x.shape[1] + li.shape[0]), np.nan, np.float32)
                kernel(out, x, emb, li, lj)
                want = ref.interaction_forward(feats, "dot", itself)
                np.testing.assert_allclose(out, want, **TOL)

            yield (*case, "itself" if itself else "pairs"), check


def _dot_backward_cases(rng, version, kernel):
    for case, x, emb, feats in _interaction_inputs(rng):
        for itself in (False, True):

            def check(x=x, emb=emb, feats=feats, itself=itself):
                li, lj = pair_indices(emb.shape[0] + 1, itself)
                dout = rng.normal(size=(x.shape[0], x.shape[1] + li.shape[0])).astype(np.float32)
                dx, demb = np.full_like(x, np.nan), np.full_like(emb, np.nan)
                kernel(dx, demb, dout, x, emb, li, lj)
                want = ref.interaction_backward(dout.astype(np.float64), feats, "dot", itself)
                np.testing.assert_allclose(dx, want[:, 0], **TOL, err_msg="dx")
                np.testing.assert_allclose(demb, want[:, 1:].transpose(1, 0, 2), **TOL)

            yield (*case, "itself" if itself else "pairs"), check


def _cat_forward_cases(rng, version, kernel):
    for case, x, emb, feats in _interaction_inputs(rng):

        def check(x=x, emb=emb, feats=feats):
            out = np.full((x.shape[0], feats.shape[1] * x.shape[1]), np.nan, np.float32)
            kernel(out, x, emb)
            np.testing.assert_array_equal(out, ref.interaction_forward(feats, "cat", False))

        yield case, check


def _cat_backward_cases(rng, version, kernel):
    for case, x, emb, feats in _interaction_inputs(rng):

        def check(x=x, emb=emb, feats=feats):
            dout = rng.normal(size=(x.shape[0], feats.shape[1] * x.shape[1])).astype(np.float32)
            dx, demb = np.full_like(x, np.nan), np.full_like(emb, np.nan)
            kernel(dx, demb, dout)
            want = ref.interaction_backward(dout.astype(np.float64), feats, "cat", False)
            np.testing.assert_array_equal(dx, want[:, 0])
            np.testing.assert_array_equal(demb, want[:, 1:].transpose(1, 0, 2))

        yield case, check


# --------------------------------------------------------------------- elementwise


def _sigmoid_bce_cases(rng, version, kernel):
    for n in (1, 50):
        s = (rng.normal(size=n) * 10).astype(np.float32)
        s[:2] = [90.0, -90.0][:n]  # saturated logits stay finite
        y = rng.integers(0, 2, n).astype(np.float32)

        def check(s=s, y=y):
            p, ds = np.full_like(s, np.nan), np.full_like(s, np.nan)
            loss = kernel(p, ds, s, y)
            want_loss, want_p = ref.sigmoid_bce_forward(s.astype(np.float64), y.astype(np.float64))
            np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg="loss")
            np.testing.assert_allclose(p, want_p, rtol=1e-6, atol=1e-7, err_msg="p")
            want_ds = ref.sigmoid_bce_backward(want_p, y)
            np.testing.assert_allclose(ds, want_ds, rtol=1e-5, atol=1e-8, err_msg="ds")

        yield (n,), check


def _sigmoid_loss_cases(name):
    """Cases of the other losses: the same logits, each against its reference pair."""
    forward = getattr(ref, f"sigmoid_{name}_forward")
    backward = getattr(ref, f"sigmoid_{name}_backward")
    weights = (0.3, 1.7) if name == "wbce" else ()

    def cases(rng, version, kernel):
        for n in (1, 50):
            s = (rng.normal(size=n) * 10).astype(np.float32)
            s[:2] = [90.0, -90.0][:n]
            y = rng.integers(0, 2, n).astype(np.float32)

            def check(s=s, y=y):
                p, ds = np.full_like(s, np.nan), np.full_like(s, np.nan)
                loss = kernel(p, ds, s, y, *weights)
                s64, y64 = s.astype(np.float64), y.astype(np.float64)
                want_loss, want_p = forward(s64, y64, *weights)
                np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg="loss")
                np.testing.assert_allclose(p, want_p, rtol=1e-6, atol=1e-7, err_msg="p")
                want_ds = backward(want_p, y64, *weights)
                np.testing.assert_allclose(ds, want_ds, rtol=1e-5, atol=1e-8, err_msg="ds")

            yield (n,), check

    return cases


def _dense_update_cases(rng, version, kernel):
    for n in (1, 1001):
        params = rng.normal(size=n).astype(np.float32)
        grads = rng.normal(size=n).astype(np.float32)

        def check(params=params, grads=grads):
            got = params.copy()
            kernel(got, grads, np.float32(0.25))
            want = params.astype(np.float64) - 0.25 * grads.astype(np.float64)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)

        yield (n,), check


_CHECKS: dict[str, Callable] = {
    "linear_forward": _linear_forward_cases,
    "linear_backward_data": _linear_data_cases,
    "linear_backward_weight": _linear_weight_cases,
    "embedding_forward": _embedding_forward_cases,
    "embedding_update": _embedding_update_cases,
    "embedding_gradient": _embedding_gradient_cases,
    "dot_interaction_forward": _dot_forward_cases,
    "dot_interaction_backward": _dot_backward_cases,
    "cat_interaction_forward": _cat_forward_cases,
    "cat_interaction_backward": _cat_backward_cases,
    "sigmoid_bce": _sigmoid_bce_cases,
    "sigmoid_mse": _sigmoid_loss_cases("mse"),
    "sigmoid_wbce": _sigmoid_loss_cases("wbce"),
    "dense_update": _dense_update_cases,
    **optimizer_checks(EMBEDDING_CASES, bags),
}
_CHECKS.update(_TRICK_CHECKS)  # the table tricks' ops (checks/tricks.py)
_CHECKS.update(_BF16_CHECKS)  # --precision bf16's ops (checks_bf16.py)
