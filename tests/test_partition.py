"""Embedding placement and lookup routing: pure functions, no MPI.

Properties over random configs: every row of every table is held exactly once (or the
table is replicated on every rank); loads stay within the list-scheduling bound; a
table larger than the mean share is split by rows over distinct ranks. The routing
test simulates the alltoall with NumPy: pooling each rank's shards through
shard_lookups and adding the partial sums must give the single-table pooling.
"""

import itertools

import numpy as np
import pytest

from numbadlrm.kernels.embedding.bags import embedding_bags_forward
from numbadlrm.parallel.partition import plan_placement, sample_ranges, shard_lookups, shard_major

from ._helpers import random_batch, small_config


def random_problems(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        tables = int(rng.integers(1, 30))
        sizes = tuple(int(n) for n in np.exp(rng.uniform(0, 13, tables)).astype(int) + 1)
        lookups = tuple(float(x) for x in rng.uniform(0, 100, tables))
        yield sizes, int(rng.integers(1, 9)), lookups, int(rng.integers(0, 50))


def test_every_row_is_held_exactly_once_or_replicated():
    for sizes, ranks, lookups, replicate in random_problems(300):
        p = plan_placement(sizes, 8, ranks, lookups, replicate_max_rows=replicate)
        for t, rows in enumerate(sizes):
            shards = p.shards_of(t)
            if t in p.replicated:
                assert rows <= replicate and not shards
                continue
            assert rows > replicate
            covered = sorted((s.row_begin, s.row_end) for s in shards)
            assert covered[0][0] == 0 and covered[-1][1] == rows
            assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
            assert len({s.rank for s in shards}) == len(shards)  # pieces on distinct ranks
            assert all(0 <= s.rank < ranks for s in shards)


def test_memory_balance_within_the_list_scheduling_bound():
    """Balancing memory only (w = 1): max rows <= mean + largest piece <= 2 * mean."""
    for sizes, ranks, lookups, _ in random_problems(300, seed=1):
        p = plan_placement(sizes, 8, ranks, lookups, memory_weight=1.0)
        rows = [sum(s.num_rows for s in p.shards_on(r)) for r in range(ranks)]
        mean = sum(sizes) / ranks
        largest = max(s.num_rows for s in p.shards)
        assert max(rows) <= mean + largest
        assert largest <= mean + 1  # pieces are capped at the mean share
        assert p.rank_bytes(0) == (rows[0]) * 8 * 4


def test_combined_load_within_the_list_scheduling_bound():
    """Default w = 0.5: each rank's combined normalised load <= 1/R + largest piece cost."""
    for sizes, ranks, lookups, _ in random_problems(300, seed=2):
        p = plan_placement(sizes, 8, ranks, lookups)
        total_rows = sum(sizes)
        piece_lookups = [lookups[s.table] * s.num_rows / sizes[s.table] + 1 for s in p.shards]
        total_lookups = sum(piece_lookups)
        cost = [
            0.5 * s.num_rows / total_rows + 0.5 * c / total_lookups
            for s, c in zip(p.shards, piece_lookups, strict=True)
        ]
        load = [
            sum(c for s, c in zip(p.shards, cost, strict=True) if s.rank == r) for r in range(ranks)
        ]
        assert max(load) <= 1 / ranks + max(cost) + 1e-12


def test_a_table_above_the_share_is_split_by_rows():
    p = plan_placement((1000, 10, 10, 10), 4, 4)  # mean share 257.5 rows: 4 pieces of 250
    assert [
        (s.row_begin, s.row_end) for s in sorted(p.shards_of(0), key=lambda s: s.row_begin)
    ] == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert {s.rank for s in p.shards_of(0)} == {0, 1, 2, 3}
    assert "row-split tables: 0" in p.describe()
    assert len(plan_placement((200, 10, 10, 10), 4, 4).shards_of(0)) == 4  # 200 > 57.5
    assert len(plan_placement((30, 30, 30, 30), 4, 4).shards_of(0)) == 1  # at the share


def test_lookups_balance_whole_tables():
    """Equal memory, unequal lookups: the two hot tables go to different ranks."""
    p = plan_placement((100, 100, 100, 100), 4, 2, lookups=(50, 50, 1, 1))
    assert p.shards_of(0)[0].rank != p.shards_of(1)[0].rank


def test_one_rank_holds_everything_and_describe_is_readable():
    p = plan_placement((5, 300, 7), 16, 1, replicate_max_rows=5)
    assert [(s.table, s.num_rows) for s in p.shards_on(0)] == [(1, 300), (2, 7)]
    text = p.describe()
    assert "3 tables on 1 ranks" in text and "replicated on every rank (allreduced): 0(5)" in text
    assert text.splitlines()[2].split()[:2] == ["0", "312"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_ranks"):
        plan_placement((5,), 4, 0)
    with pytest.raises(ValueError, match="one value per table"):
        plan_placement((5, 6), 4, 2, lookups=(1.0,))
    with pytest.raises(ValueError, match="memory_weight"):
        plan_placement((5,), 4, 2, memory_weight=2.0)


@pytest.mark.parametrize("ranks,batch", [(1, 6), (2, 12), (3, 18), (2, 13), (3, 17), (3, 2)])
def test_routed_lookups_pool_to_the_full_tables(ranks, batch):
    """Each rank's routed lookups pool its shards for every destination's samples; the
    padded bags of a destination with one sample fewer pool to zeros."""
    cfg = small_config(tables="7-300-5-30")
    batch = random_batch(np.random.default_rng(ranks), cfg, batch)
    weights = np.random.default_rng(0).normal(size=(342, 4)).astype(np.float32)
    row_start = np.array([0, 7, 307, 312, 342])
    expected = np.empty((4, batch.batch_size, 4), np.float32)
    embedding_bags_forward(expected, weights, row_start, batch.offsets, batch.indices)
    p = plan_placement(cfg.embedding_sizes, 4, ranks)
    ranges = sample_ranges(batch.batch_size, ranks)
    width = max(b - a for a, b in ranges)
    got = np.zeros_like(expected)
    for rank in range(ranks):
        shards = p.shards_on(rank)
        own = np.concatenate(
            [
                weights[row_start[s.table] + s.row_begin : row_start[s.table] + s.row_end]
                for s in shards
            ]
        )
        routed = shard_lookups(shards, cfg.embedding_sizes, batch.offsets, batch.indices, ranks)
        pooled = np.empty((ranks * len(shards), width, 4), np.float32)
        embedding_bags_forward(pooled, own, routed.row_start, routed.offsets, routed.indices)
        pooled = pooled.reshape(ranks, len(shards), width, 4)
        for q, (a, b) in enumerate(ranges):  # what the alltoall delivers to rank q, per table
            for s, shard in enumerate(shards):
                got[shard.table, a:b] += pooled[q, s, : b - a]
                assert not pooled[q, s, b - a :].any()  # padding
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_sample_ranges_split_like_the_reference():
    """divmod(B, R), the first B mod R ranks one more (dlrm's get_split_lengths)."""
    assert sample_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert sample_ranges(12, 3) == [(0, 4), (4, 8), (8, 12)]
    assert sample_ranges(2, 3) == [(0, 1), (1, 2), (2, 2)]
    for batch in range(0, 40):
        for ranks in range(1, 7):
            ranges = sample_ranges(batch, ranks)
            counts = [b - a for a, b in ranges]
            assert ranges[0][0] == 0 and ranges[-1][1] == batch
            assert all(ranges[q][1] == ranges[q + 1][0] for q in range(ranks - 1))
            assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)
    with pytest.raises(ValueError, match="num_ranks"):
        sample_ranges(4, 0)


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_shard_major_gives_each_shard_one_table_of_all_its_lookups(ranks):
    """A row's gradient summed over the regrouped lookups equals the sum over the R
    routes (the alltoall's layout), for whole and row-split shards and a batch the ranks
    do not divide: Adagrad then updates each row once, from every sample's gradient."""
    from numbadlrm.reference import embedding_bag_backward

    cfg = small_config(tables="7-300-5-30")
    batch = random_batch(np.random.default_rng(4), cfg, 13)
    p = plan_placement(cfg.embedding_sizes, 4, ranks)
    width = max(b - a for a, b in sample_ranges(13, ranks))
    for rank in range(ranks):
        shards = p.shards_on(rank)
        routed = shard_lookups(shards, cfg.embedding_sizes, batch.offsets, batch.indices, ranks)
        dpooled = np.random.default_rng(rank).normal(size=(ranks * len(shards), width, 4))
        row_start, offsets, grouped = shard_major(routed, dpooled, ranks)
        assert (
            offsets.shape == (len(shards), ranks * width + 1) and grouped.shape[1] == ranks * width
        )
        assert (np.diff(offsets, axis=1) >= 0).all()
        for s, shard in enumerate(shards):
            rows = shard.num_rows
            routes = [q * len(shards) + s for q in range(ranks)]
            want = sum(
                embedding_bag_backward(dpooled[r], routed.offsets[r], routed.indices, rows)
                for r in routes
            )
            got = embedding_bag_backward(grouped[s], offsets[s], routed.indices, rows)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
            assert row_start[s + 1] - row_start[s] == rows
