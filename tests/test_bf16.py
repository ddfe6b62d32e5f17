"""bf16 conversions, split storage and split-SGD (kernels/bf16.py, kernels/embedding/bags_bf16.py)
against numbadlrm.reference, and split-SGD against the fp32 kernels bit for bit."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from numbadlrm import reference
from numbadlrm.kernels import bf16
from numbadlrm.kernels.elementwise import sgd_update, sgd_update_serial
from numbadlrm.kernels.embedding import bags as embedding
from numbadlrm.kernels.embedding import bags_bf16 as embedding_bf16

SPECIAL = np.array(
    [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-40, -1e-45, 1.0, -2.5],
    np.float32,
)


def bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.uint32 if x.dtype == np.float32 else np.uint16)


def values(rng, n: int) -> np.ndarray:
    """Normal values over many binades, the special values, and exact bf16 ties."""
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))).astype(np.float32)
    ties = rng.integers(0, 1 << 16, 64).astype(np.uint32) << 16 | 0x8000  # halfway
    return np.concatenate([x, SPECIAL, ties.view(np.float32)])


def test_bf16_round_reference_on_known_values():
    """The reference itself: ties go to even, NaN stays NaN, overflow rounds to inf."""
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, 3.4e38, np.nan], np.float32)
    got = reference.bf16_to_f32(reference.bf16_round(x))
    want = [1.0, 1.0, 1 + 4 * 2**-8, 1 + 2**-7, np.inf, np.nan]
    np.testing.assert_array_equal(got, np.array(want, np.float32))


@pytest.mark.parametrize("n", [0, 1, 17, 40_000])
def test_conversions(threads, n):
    """to_bf16 / from_bf16 / split / merge, parallel and serial, bit for bit."""
    rng = np.random.default_rng(n)
    x = values(rng, n)
    for to, frm, spl, mrg in (
        (bf16.to_bf16, bf16.from_bf16, bf16.split, bf16.merge),
        (bf16.to_bf16_serial, bf16.from_bf16_serial, bf16.split_serial, bf16.merge_serial),
    ):
        h = np.empty(x.size, np.uint16)
        to(h, x)
        np.testing.assert_array_equal(h, reference.bf16_round(x))
        back = np.empty(x.size, np.float32)
        frm(back, h)
        np.testing.assert_array_equal(bits(back), bits(reference.bf16_to_f32(h)))
        hi, lo = np.empty(x.size, np.uint16), np.empty(x.size, np.uint16)
        spl(hi, lo, x)
        want_hi, want_lo = reference.split_f32(x)
        np.testing.assert_array_equal(hi, want_hi)
        np.testing.assert_array_equal(lo, want_lo)
        merged = np.empty(x.size, np.float32)
        mrg(merged, hi, lo)
        np.testing.assert_array_equal(bits(merged), bits(x))


def test_bf16_round_is_nearest():
    """Every rounded finite value is a nearest bf16 neighbour (within half a bf16 ulp)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(10_000) * np.exp2(rng.integers(-60, 60, 10_000))).astype(np.float32)
    h = np.empty(x.size, np.uint16)
    bf16.to_bf16(h, x)
    y = reference.bf16_to_f32(h).astype(np.float64)
    ulp = np.exp2(np.floor(np.log2(np.abs(x.astype(np.float64)))) - 7)
    assert (np.abs(y - x) <= ulp / 2).all()


def test_sgd_fma_reference_is_exactly_rounded():
    """reference.sgd_fma_f32 against exact rational arithmetic, halfway cases included."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal(300).astype(np.float32)
    g = rng.standard_normal(300).astype(np.float32)
    lr = np.full(300, 2**-10, np.float32)
    w[:3], g[:3] = 1.0, [-(2**-14), -(2**-14) - 2**-37, -(2**-14) + 2**-37]  # at/near a tie
    # 1 + 2^-23 - 2^-24 (1 - 2^-30): just above the tie 1 + 2^-24, but float64 rounds it
    # onto the tie, and float32 then rounds that to even (1.0): the double-rounding case
    w[3], lr[3], g[3] = 1 + 2**-23, 2**-10 * (1 + 2**-15), 2**-14 * (1 - 2**-15)
    naive = (w.astype(np.float64) - lr.astype(np.float64) * g).astype(np.float32)
    got = reference.sgd_fma_f32(w, g, lr)
    assert got[3] == np.float32(1 + 2**-23) and naive[3] == np.float32(1.0)
    for wi, gi, li, out in zip(w, g, lr, got, strict=True):
        exact = Fraction(float(wi)) - Fraction(float(li)) * Fraction(float(gi))
        below = np.float32(float(exact))  # nearest double, then float32: check neighbours
        cands = [np.nextafter(below, np.float32(-np.inf)), below]
        cands.append(np.nextafter(below, np.float32(np.inf)))
        errs = [abs(Fraction(float(c)) - exact) for c in cands]
        best = min(errs)
        ties = [c for c, e in zip(cands, errs, strict=True) if e == best]
        want = ties[0] if len(ties) == 1 else next(c for c in ties if not bits(np.array(c)) & 1)
        assert bits(np.array(out)) == bits(np.array(want)), (wi, gi, out, want)


@pytest.mark.parametrize("n", [1, 33, 50_001])
def test_split_sgd_equals_fp32_sgd_bit_for_bit(threads, n):
    """merge(hi, lo) after split-SGD == fp32 SGD (the project's kernel and the correctly
    rounded FMA reference) on the merged value, over many steps."""
    rng = np.random.default_rng(n)
    w = values(rng, n)[:n]
    w = np.where(np.isfinite(w), w, 1.0).astype(np.float32)
    hi, lo = reference.split_f32(w)
    lr = np.float32(0.037)
    for step in range(5):
        g = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 3, n)).astype(np.float32)
        kernel = bf16.split_sgd_update if step % 2 else bf16.split_sgd_update_serial
        kernel(hi, lo, g, lr)
        want = reference.sgd_fma_f32(w, g, lr)
        (sgd_update if step % 2 else sgd_update_serial)(w, g, lr)
        np.testing.assert_array_equal(bits(w), bits(want))
        np.testing.assert_array_equal(bits(reference.merge_f32(hi, lo)), bits(w))


# ----------------------------------------------------------------- embedding bags


def make_tables(rng, rows_per_table, dim, batch, max_bag):
    """fp32 weights, split tables, row_start, offsets (empty bags), repeated indices."""
    total = sum(rows_per_table)
    weights = rng.standard_normal((total, dim)).astype(np.float32)
    tables = np.empty((total, 2, dim), np.uint16)
    embedding_bf16.split_rows(tables, weights)
    row_start = np.concatenate([[0], np.cumsum(rows_per_table)]).astype(np.int64)
    T = len(rows_per_table)
    counts = rng.integers(0, max_bag + 1, (T, batch))
    flat = np.concatenate([[0], np.cumsum(counts.ravel())])
    offsets = np.stack([flat[t * batch : (t + 1) * batch + 1] for t in range(T)])
    indices = np.empty(flat[-1], np.int64)
    for t, rows in enumerate(rows_per_table):
        lo, hi = offsets[t, 0], offsets[t, -1]
        indices[lo:hi] = rng.integers(0, rows, hi - lo)
    return weights, tables, row_start, offsets.astype(np.int64), indices


PROBLEMS = [((7, 11, 5), 4, 3, 4), ((50, 3), 16, 9, 40), ((200,), 64, 33, 30), ((9, 9), 24, 1, 0)]


@pytest.mark.parametrize("rows, dim, batch, max_bag", PROBLEMS)
def test_split_embedding_forward(threads, rows, dim, batch, max_bag):
    """pooled = sum of the bf16 (hi) rows, against the float64 reference on bf16 tables.

    Tolerance: the kernel adds up to L bf16 values in fp32, each sum rounded once, so its
    error is at most L eps32 sum |row values| (gamma_L); L <= 40 here."""
    rng = np.random.default_rng(dim)
    _, tables, row_start, offsets, indices = make_tables(rng, rows, dim, batch, max_bag)
    hi = reference.bf16_to_f32(tables[:, 0]).astype(np.float64)
    for kernel in (
        embedding_bf16.embedding_bags_forward_split,
        embedding_bf16.embedding_bags_forward_split_serial,
    ):
        pooled = np.full((len(rows), batch, dim), np.nan, np.float32)
        kernel(pooled, tables, row_start, offsets, indices)
        for t in range(len(rows)):
            table = hi[row_start[t] : row_start[t + 1]]
            want = reference.embedding_bag_forward(table, offsets[t], indices)
            bound = reference.embedding_bag_forward(np.abs(table), offsets[t], indices)
            bound *= (max_bag + 1) * np.finfo(np.float32).eps
            assert (np.abs(pooled[t] - want) <= bound).all()


@pytest.mark.parametrize("rows, dim, batch, max_bag", PROBLEMS)
@pytest.mark.parametrize("owners", [1, 2, 3])
def test_split_embedding_update_equals_fp32_bit_for_bit(rows, dim, batch, max_bag, owners):
    """merge(tables) after the split update == the fp32 kernel's table, bit for bit, and ==
    the correctly rounded FMA reference applied lookup by lookup (repeated rows in order)."""
    rng = np.random.default_rng(dim + owners)
    weights, tables, row_start, offsets, indices = make_tables(rng, rows, dim, batch, max_bag)
    dpooled = rng.standard_normal((len(rows), batch, dim)).astype(np.float32)
    lr = np.float32(0.21)
    want = weights.copy()
    for t in range(len(rows)):
        for b in range(batch):
            for j in range(offsets[t, b], offsets[t, b + 1]):
                r = row_start[t] + indices[j]
                want[r] = reference.sgd_fma_f32(want[r], dpooled[t, b], lr)
    fp32 = weights.copy()
    embedding.embedding_bags_sgd_update(fp32, row_start, offsets, indices, dpooled, lr, owners)
    if owners == 1:
        embedding_bf16.embedding_bags_sgd_update_split_serial(
            tables, row_start, offsets, indices, dpooled, lr
        )
    else:
        embedding_bf16.embedding_bags_sgd_update_split(
            tables, row_start, offsets, indices, dpooled, lr, owners
        )
    merged = np.empty_like(weights)
    embedding_bf16.merge_rows(merged, tables)
    np.testing.assert_array_equal(bits(fp32), bits(want))
    np.testing.assert_array_equal(bits(merged), bits(fp32))


def test_split_rows_in_place_and_back():
    """split_rows / merge_rows on a table's own buffer (no second copy) round-trip exactly."""
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((10_000, 24)).astype(np.float32)
    buf = weights.copy()
    view = buf.view(np.uint16).reshape(10_000, 2, 24)
    embedding_bf16.split_rows(view, buf)
    hi, lo = reference.split_f32(weights)
    np.testing.assert_array_equal(view[:, 0], hi)
    np.testing.assert_array_equal(view[:, 1], lo)
    embedding_bf16.merge_rows(buf, view)
    np.testing.assert_array_equal(bits(buf), bits(weights))


def test_split_sgd_rounds_once_like_an_fma():
    """The case where rounding w - lr g first to float64 then to float32 goes wrong: the
    kernels (split and fp32) round once, to 1 + 2^-23, as the reference does."""
    w = np.full(20, 1 + 2**-23, np.float32)
    g = np.full(20, 2**-14 * (1 - 2**-15), np.float32)
    lr = np.float32(2**-10 * (1 + 2**-15))
    hi, lo = reference.split_f32(w)
    bf16.split_sgd_update_serial(hi, lo, g, lr)
    sgd_update_serial(w, g, lr)
    assert (w == np.float32(1 + 2**-23)).all()
    np.testing.assert_array_equal(bits(reference.merge_f32(hi, lo)), bits(w))


# ------------------------------------------------------------ validating wrappers


def test_wrappers_match_the_kernels(threads):
    """numbadlrm.layers.bf16's wrappers: any shape, serial and parallel paths (sizes on both
    sides of SERIAL_BELOW_BYTES), same bits as the reference."""
    from numbadlrm.layers import bf16 as wrap

    rng = np.random.default_rng(6)
    for shape in ((3, 5), (700, 800)):
        x = rng.standard_normal(shape).astype(np.float32)
        h = wrap.to_bf16(x)
        assert h.shape == shape
        np.testing.assert_array_equal(h, reference.bf16_round(x))
        np.testing.assert_array_equal(wrap.from_bf16(h), reference.bf16_to_f32(h))
        hi, lo = wrap.split(x)
        np.testing.assert_array_equal(bits(wrap.merge(hi, lo)), bits(x))
        g = rng.standard_normal(shape).astype(np.float32)
        wrap.split_sgd_update(hi, lo, g, 0.1)
        want = reference.sgd_fma_f32(x, g, 0.1)
        np.testing.assert_array_equal(bits(wrap.merge(hi, lo)), bits(want))


@pytest.mark.parametrize("batch", [3, 3000])
def test_embedding_wrappers(threads, batch):
    """split_tables / merge_tables and the split forward and update through the wrappers
    (batch 3: the serial kernels; 3000: the parallel ones)."""
    from numbadlrm.layers import bf16 as wrap

    rng = np.random.default_rng(batch)
    weights, _, row_start, offsets, indices = make_tables(rng, (40, 9), 64, batch, 3)
    tables = wrap.split_tables(weights.copy(), in_place=True)
    np.testing.assert_array_equal(bits(wrap.merge_tables(tables)), bits(weights))
    pooled = wrap.embedding_forward_split(tables, row_start, offsets, indices)
    want = np.empty_like(pooled)
    embedding_bf16.embedding_bags_forward_split_serial(want, tables, row_start, offsets, indices)
    np.testing.assert_array_equal(pooled, want)
    wrap.embedding_update_split(tables, row_start, offsets, indices, pooled, 0.5)
    embedding.embedding_bags_sgd_update_serial(
        weights, row_start, offsets, indices, pooled, np.float32(0.5)
    )
    np.testing.assert_array_equal(bits(wrap.merge_tables(tables)), bits(weights))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w: w.to_bf16(np.zeros(3)), "x: dtype must be float32, got float64"),
        (lambda w: w.merge(np.zeros(3, np.uint16), np.zeros(4, np.uint16)), r"lo: shape"),
        (lambda w: w.split(np.zeros((4, 4), np.float32)[:, ::2]), "x: must be C-contiguous"),
        (
            lambda w: w.split_sgd_update(
                np.zeros(2, np.uint16), np.zeros(2, np.uint16), np.zeros(2, np.float32), np.inf
            ),
            "lr: must be finite",
        ),
        (lambda w: w.merge_tables(np.zeros((4, 3, 2), np.uint16)), r"tables: shape must be"),
        (
            lambda w: w.embedding_forward_split(
                np.zeros((4, 2, 8), np.uint16),
                np.array([0, 4]),
                np.zeros((2, 3), np.int64),
                np.zeros(0, np.int64),
            ),
            r"offsets: shape must be \(1, None\)",
        ),
    ],
)
def test_wrappers_reject_bad_arguments(call, match):
    from numbadlrm.layers import bf16 as wrap

    with pytest.raises(ValueError, match=match):
        call(wrap)
