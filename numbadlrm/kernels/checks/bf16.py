"""What every version of every bf16 op must compute (--precision bf16): checks against
numbadlrm.reference, run by numbadlrm.kernels.checks.ops.validate (this module's cases are
part of its table).

Inputs are bf16 values (uint16 bits); the reference computes on their exact values in
float64. Tolerances:

- fp32 outputs of sums (GEMMs, pooled rows, dots): a product of two bf16 values is exact
  in fp32 (8 + 8 significant bits), so the only errors are the fp32 additions, at most
  about K eps32 sum_k |a_k b_k| for K terms in any order: checked against (K + 2) eps32
  (|A| @ |B|) as checks.assert_gemm_close (+2: the bias add, the output rounding).
- bf16 outputs: that, plus the one rounding to bf16 (nearest even: at most 2^-8 of the
  value), or, where the version also gives the fp32 value, exactly its rounding.
- the split-SGD updates: bit for bit reference.sgd_fma_f32 (one fp32 FMA per update),
  applied in the kernel's documented order; copies: bit for bit.

A wrong index, a lost term or a misplaced pair is off by ~|a_k b_k| or more, far above.
"""

from __future__ import annotations

import numpy as np

from ... import reference as ref
from ...config import pair_indices
from ..gemm.bf16 import NONE_F32
from ..gemm.dpbf16 import VDPBF16PS
from .cases import EMBEDDING_CASES, EPS, INTERACTION_CASES, LINEAR_SHAPES, assert_gemm_close, bags

U_BF16 = 2.0**-8  # largest relative error of one rounding to bf16 (nearest even)
# (op, version) of the versions that run the vdpbf16ps instruction: a CPU without
# AVX512-BF16 cannot check them (it checks their emulated twins, version "v1-emu")
NEEDS_AVX512_BF16 = frozenset(
    (op, VDPBF16PS.version)
    for op in (
        "bf16_linear_forward",
        "bf16_linear_backward_data",
        "bf16_linear_backward_weight",
        "bf16_dot_interaction_forward",
    )
)


def bf16(rng, shape, relu: bool = False) -> np.ndarray:
    """Random bf16 bits (standard normal values, or their ReLU: exact zeros)."""
    values = rng.standard_normal(shape).astype(np.float32)
    return ref.bf16_round(np.maximum(values, 0) if relu else values)


def value(h: np.ndarray) -> np.ndarray:
    """The float64 values of bf16 bits."""
    return ref.bf16_to_f32(h).astype(np.float64)


def assert_bf16_close(got16, want, bound, what):
    """|got16 - want| <= bound + one bf16 rounding of the value, entrywise."""
    got = value(got16)
    limit = bound * (1 + U_BF16) + U_BF16 * np.abs(got) + 1e-30
    err = np.abs(got - want)
    worst = np.unravel_index(np.argmax(err / limit), err.shape) if err.size else ()
    assert (err <= limit).all(), f"{what}: error {err[worst]:.3e} > bound {limit[worst]:.3e}"


def _both_outputs(kernel, shape, *args):
    """Run with both outputs, then with the bf16 one alone; (y, y16), checked to agree."""
    y = np.full(shape, np.nan, np.float32)
    y16 = np.full(shape, 0xFFFF, np.uint16)
    kernel(y, y16, *args)
    np.testing.assert_array_equal(y16, ref.bf16_round(y), err_msg="y16 = bf16(y)")
    alone = np.full(shape, 0xFFFF, np.uint16)
    kernel(NONE_F32, alone, *args)
    np.testing.assert_array_equal(alone, y16, err_msg="y16 alone")
    return y, y16


# --------------------------------------------------------------------------- linear


def _packed(w16):
    from ...layers.bf16 import pack_weight  # the wrapper module imports the kernels: import late

    return pack_weight(w16)


def _linear_forward_cases(rng, version, kernel):
    for B, I, O in LINEAR_SHAPES:
        x16, w16 = bf16(rng, (B, I), relu=True), bf16(rng, (O, I))
        b = rng.standard_normal(O).astype(np.float32)
        for relu in (False, True):

            def check(x16=x16, w16=w16, b=b, relu=relu):
                y, _ = _both_outputs(kernel, (x16.shape[0], b.shape[0]), x16, _packed(w16), b, relu)
                x, W = value(x16), value(w16)
                want = x @ W.T + b
                want = np.maximum(want, 0) if relu else want
                abs_a = np.hstack([np.abs(x), np.ones((len(x), 1))])
                abs_b = np.vstack([np.abs(W.T), np.abs(b)[None]])
                assert_gemm_close(y, want, abs_a, abs_b, x.shape[1], "y")

            yield (B, I, O, "relu" if relu else "linear"), check


def _linear_data_cases(rng, version, kernel):
    for B, I, O in LINEAR_SHAPES:
        x16, w16, dz16 = bf16(rng, (B, I), relu=True), bf16(rng, (O, I)), bf16(rng, (B, O))
        for mask_dx in (False, True):

            def check(x16=x16, w16=w16, dz16=dz16, mask_dx=mask_dx):
                shape = x16.shape
                dx, dx16 = _both_outputs(kernel, shape, dz16, _packed(w16), x16, mask_dx)
                keep = value(x16) > 0 if mask_dx else np.ones(shape, bool)
                want = (value(dz16) @ value(w16)) * keep
                K = w16.shape[0]
                assert_gemm_close(dx, want, np.abs(value(dz16)), np.abs(value(w16)), K, "dx")
                assert (dx[~keep] == 0).all() and (dx16[~keep] == 0).all(), "dx not masked"

            yield (B, I, O, f"mask_dx={mask_dx}"), check


def _linear_weight_cases(rng, version, kernel):
    for B, I, O in LINEAR_SHAPES:
        x16, dz16 = bf16(rng, (B, I), relu=True), bf16(rng, (B, O))

        def check(x16=x16, dz16=dz16, B=B, I=I, O=O):
            dW, db = np.full((O, I), np.nan, np.float32), np.full(O, np.nan, np.float32)
            kernel(dW, db, dz16, x16)
            x, dz = value(x16), value(dz16)
            assert_gemm_close(dW, dz.T @ x, np.abs(dz.T), np.abs(x), B, "dW")
            assert_gemm_close(db, dz.sum(0), np.abs(dz.T), np.ones(B), B, "db")

        yield (B, I, O), check
        sgd = version.extras.get("split_sgd_serial" if kernel is version.serial else "split_sgd")
        if sgd is None:
            continue

        def check_sgd(x16=x16, dz16=dz16, O=O, I=I, sgd=sgd):
            w = rng.standard_normal((O, I)).astype(np.float32)
            b = rng.standard_normal(O).astype(np.float32)
            dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
            kernel(dW, db, dz16, x16)
            (w_hi, w_lo), (b_hi, b_lo) = ref.split_f32(w), ref.split_f32(b)
            W = _packed(w_hi)  # its packings of the old weights, to be refreshed
            lr = np.float32(0.05)
            sgd(W, w_lo, b_hi, b_lo, dz16, x16, lr)
            want_w, want_b = ref.sgd_fma_f32(w, dW, lr), ref.sgd_fma_f32(b, db, lr)
            np.testing.assert_array_equal(ref.merge_f32(w_hi, w_lo), want_w, "split-SGD of W")
            np.testing.assert_array_equal(ref.merge_f32(b_hi, b_lo), want_b, "split-SGD of b")
            fresh = _packed(w_hi.copy())
            np.testing.assert_array_equal(W.forward, fresh.forward, "forward packing refreshed")
            np.testing.assert_array_equal(W.data, fresh.data, "data packing refreshed")

        yield (B, I, O, "split_sgd"), check_sgd


# ------------------------------------------------------------------------ embedding


def _split_inputs(rng):
    for sizes, dim, batches, max_bag in EMBEDDING_CASES:
        row_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        for batch in batches:
            offsets, indices = bags(rng, sizes, batch, max_bag)
            weights = rng.normal(size=(int(row_start[-1]), dim)).astype(np.float32)
            tables = np.stack(ref.split_f32(weights), axis=1)  # (R, 2, D)
            yield (sizes, dim, batch), tables, row_start, offsets, indices


def _bf16_embedding_forward_cases(rng, version, kernel):
    for case, tables, row_start, offsets, indices in _split_inputs(rng):
        T, B, D = len(row_start) - 1, offsets.shape[1] - 1, tables.shape[2]

        def check(tables=tables, rs=row_start, o=offsets, i=indices, shape=(T, B, D)):
            pooled16 = np.full(shape, 0xFFFF, np.uint16)
            kernel(pooled16, tables, rs, o, i)
            hi = value(tables[:, 0])
            for t in range(shape[0]):
                table = hi[rs[t] : rs[t + 1]]
                want = ref.embedding_bag_forward(table, o[t], i)
                bound = (np.diff(o[t])[:, None] + 2) * EPS
                bound = bound * ref.embedding_bag_forward(np.abs(table), o[t], i)
                assert_bf16_close(pooled16[t], want, bound, f"table {t}")

        yield case, check


def _sequential_update(tables, row_start, offsets, indices, dpooled, lr) -> np.ndarray:
    """The fp32 tables after every lookup's sgd_fma_f32 in lookup order (the kernels'
    order for each row)."""
    w = ref.merge_f32(tables[:, 0], tables[:, 1]).copy()
    for t in range(offsets.shape[0]):
        for b in range(offsets.shape[1] - 1):
            for j in range(offsets[t, b], offsets[t, b + 1]):
                r = row_start[t] + indices[j]
                w[r] = ref.sgd_fma_f32(w[r], dpooled[t, b], lr)
    return w


def _bf16_embedding_update_cases(rng, version, kernel):
    for case, tables, row_start, offsets, indices in _split_inputs(rng):
        T, B, D = len(row_start) - 1, offsets.shape[1] - 1, tables.shape[2]
        dpooled16 = bf16(rng, (T, B, D))

        def check(tables=tables, rs=row_start, o=offsets, i=indices, dp16=dpooled16):
            lr = np.float32(0.25)
            want = _sequential_update(tables, rs, o, i, ref.bf16_to_f32(dp16), lr)
            got = tables.copy()
            kernel(got, rs, o, i, dp16, lr)
            np.testing.assert_array_equal(ref.merge_f32(got[:, 0], got[:, 1]), want)

        yield case, check


def _bf16_table_update_cases(rng, version, kernel):
    for rows, dim in ((1, 1), (37, 5), (5000, 16)):  # 5000 rows: more than one chunk
        weights = rng.standard_normal((rows, dim)).astype(np.float32)
        grads = rng.standard_normal((rows, dim)).astype(np.float32)

        def check(weights=weights, grads=grads):
            tables = np.stack(ref.split_f32(weights), axis=1)
            kernel(tables, grads, np.float32(0.25))
            want = ref.sgd_fma_f32(weights, grads, np.float32(0.25))
            np.testing.assert_array_equal(ref.merge_f32(tables[:, 0], tables[:, 1]), want)

        yield (rows, dim), check


def _bf16_dense_update_cases(rng, version, kernel):
    for n in (1, 1001, 40000):  # 40000: more than one chunk
        params = rng.standard_normal(n).astype(np.float32)
        grads = rng.standard_normal(n).astype(np.float32)

        def check(params=params, grads=grads):
            hi, lo = ref.split_f32(params)
            kernel(hi, lo, grads, np.float32(0.25))
            want = ref.sgd_fma_f32(params, grads, np.float32(0.25))
            np.testing.assert_array_equal(ref.merge_f32(hi, lo), want)

        yield (n,), check


# ---------------------------------------------------------------------- interaction


def _interaction_inputs(rng):
    for B, T, D in INTERACTION_CASES:
        x16, emb16 = bf16(rng, (B, D), relu=True), bf16(rng, (T, B, D))
        feats = np.concatenate([value(x16)[:, None], value(emb16).transpose(1, 0, 2)], axis=1)
        yield (B, T, D), x16, emb16, feats


def _bf16_dot_forward_cases(rng, version, kernel):
    for case, x16, emb16, feats in _interaction_inputs(rng):
        for itself in (False, True):

            def check(x16=x16, emb16=emb16, feats=feats, itself=itself):
                li, lj = pair_indices(emb16.shape[0] + 1, itself)
                D = x16.shape[1]
                out16 = np.full((x16.shape[0], D + li.shape[0]), 0xFFFF, np.uint16)
                kernel(out16, x16, emb16, li, lj)
                np.testing.assert_array_equal(out16[:, :D], x16, err_msg="x copied")
                want = ref.interaction_forward(feats, "dot", itself)[:, D:]
                bound = (D + 2) * EPS * ref.interaction_forward(np.abs(feats), "dot", itself)
                assert_bf16_close(out16[:, D:], want, bound[:, D:], "pair dots")

            yield (*case, "itself" if itself else "pairs"), check


def _bf16_dot_backward_cases(rng, version, kernel):
    for case, x16, emb16, feats in _interaction_inputs(rng):
        for itself, mask_dx in ((False, True), (True, False)):

            def check(x16=x16, emb16=emb16, feats=feats, itself=itself, mask_dx=mask_dx):
                li, lj = pair_indices(emb16.shape[0] + 1, itself)
                B, D = x16.shape
                dout16 = bf16(rng, (B, D + li.shape[0]))
                dx16 = np.full_like(x16, 0xFFFF)
                demb16 = np.full_like(emb16, 0xFFFF)
                kernel(dx16, demb16, dout16, x16, emb16, li, lj, mask_dx)
                dout = value(dout16)
                want = ref.interaction_backward(dout, feats, "dot", itself)
                bound = ref.interaction_backward(np.abs(dout), np.abs(feats), "dot", itself)
                bound *= (feats.shape[1] + 3) * EPS
                keep = value(x16) > 0 if mask_dx else np.ones(x16.shape, bool)
                assert_bf16_close(dx16, want[:, 0] * keep, bound[:, 0], "dx16")
                assert (dx16[~keep] == 0).all(), "dx16 not masked by [x > 0]"
                want_emb = want[:, 1:].transpose(1, 0, 2)
                assert_bf16_close(demb16, want_emb, bound[:, 1:].transpose(1, 0, 2), "demb16")

            yield (*case, f"itself={itself} mask_dx={mask_dx}"), check


def _bf16_cat_forward_cases(rng, version, kernel):
    for case, x16, emb16, _ in _interaction_inputs(rng):

        def check(x16=x16, emb16=emb16):
            T, B, D = emb16.shape
            out16 = np.full((B, (T + 1) * D), 0xFFFF, np.uint16)
            kernel(out16, x16, emb16)
            want = np.concatenate([x16[:, None], emb16.transpose(1, 0, 2)], axis=1)
            np.testing.assert_array_equal(out16, want.reshape(B, -1))

        yield case, check


def _bf16_cat_backward_cases(rng, version, kernel):
    for case, x16, emb16, _ in _interaction_inputs(rng):
        for mask_dx in (False, True):

            def check(x16=x16, emb16=emb16, mask_dx=mask_dx):
                T, B, D = emb16.shape
                dout16 = bf16(rng, (B, (T + 1) * D))
                dx16, demb16 = np.full_like(x16, 0xFFFF), np.full_like(emb16, 0xFFFF)
                kernel(dx16, demb16, dout16, x16, mask_dx)
                keep = value(x16) > 0 if mask_dx else np.ones(x16.shape, bool)
                np.testing.assert_array_equal(dx16, np.where(keep, dout16[:, :D], 0))
                want = dout16.reshape(B, T + 1, D)[:, 1:].transpose(1, 0, 2)
                np.testing.assert_array_equal(demb16, want)

            yield (*case, f"mask_dx={mask_dx}"), check


CHECKS = {
    "bf16_linear_forward": _linear_forward_cases,
    "bf16_linear_backward_data": _linear_data_cases,
    "bf16_linear_backward_weight": _linear_weight_cases,
    "bf16_embedding_forward": _bf16_embedding_forward_cases,
    "bf16_embedding_update": _bf16_embedding_update_cases,
    "bf16_table_update": _bf16_table_update_cases,
    "bf16_dot_interaction_forward": _bf16_dot_forward_cases,
    "bf16_dot_interaction_backward": _bf16_dot_backward_cases,
    "bf16_cat_interaction_forward": _bf16_cat_forward_cases,
    "bf16_cat_interaction_backward": _bf16_cat_backward_cases,
    "bf16_dense_update": _bf16_dense_update_cases,
}
