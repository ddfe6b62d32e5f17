"""The memory-mapped loader: batches equal their rows, shuffling, resume, prefetch thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from numbadlrm.data.background import prefetch
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.data.dataset import ProcessedData

N_ROWS = (700, 500, 301)  # three parts; split "fractions" spans part boundaries


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> ProcessedData:
    """Row r (over all files) has C1 = r, so a batch's rows can be identified."""
    tmp: Path = tmp_path_factory.mktemp("criteo")
    rng = np.random.default_rng(1)
    paths, r = [], 0
    for f, n in enumerate(N_ROWS):
        lines = []
        for _ in range(n):
            ints = [str(int(x)) for x in rng.integers(0, 100, 13)]
            cats = [f"{r:08x}"] + [f"{int(x):08x}" for x in rng.integers(0, 2**32, 25)]
            lines.append("\t".join([str(r % 2), *ints, *cats]))
            r += 1
        paths.append(tmp / f"f{f}.txt")
        paths[-1].write_text("\n".join(lines) + "\n")
    opts = PreprocessOptions(max_ind_range=2**31 - 1, split_fractions=(0.8, 0.1, 0.1))
    preprocess(paths, tmp / "out", opts, progress=False)
    return ProcessedData(tmp / "out")


def row_ids(batches) -> list[int]:
    ids = []
    for b in batches:
        ids.extend(b.table_indices(0).tolist())
    return ids


def test_splits_and_rows_slice(data):
    total = sum(N_ROWS)
    lengths = {s: len(data.split(s)) for s in ("train", "validation", "test")}
    assert sum(lengths.values()) == total and lengths["train"] == round(0.8 * total)
    train = data.split("train")
    got = train.rows_slice(650, 760)  # crosses the part-000/part-001 boundary
    assert got.categorical[:, 0].tolist() == list(range(650, 760))
    assert got.dense.dtype == np.float32 and got.labels.dtype == np.float32
    assert got.labels.tolist() == [r % 2 for r in range(650, 760)]
    assert len(train.rows_slice(5, 5)) == 0
    with pytest.raises(ValueError, match="rows_slice"):
        train.rows_slice(0, len(train) + 1)
    test = data.split("test")
    assert test.rows_slice(0, 3).categorical[:, 0].tolist() == [
        len(train) + lengths["validation"] + k for k in range(3)
    ]


def test_batches_equal_their_rows(data):
    train = data.split("train")
    batches = list(train.batches(64, shuffle=False, block_rows=100, buffer_blocks=3))
    assert len(batches) == train.num_batches(64) == -(-len(train) // 64)
    assert row_ids(batches) == list(range(len(train)))
    all_rows = train.rows_slice(0, len(train))
    b = batches[3]
    sl = slice(3 * 64, 4 * 64)
    np.testing.assert_array_equal(b.dense, all_rows.dense[sl])
    np.testing.assert_array_equal(b.labels, all_rows.labels[sl])
    assert b.offsets.shape == (26, 65)
    np.testing.assert_array_equal(b.offsets[5], 5 * 64 + np.arange(65))
    for t in range(26):
        np.testing.assert_array_equal(b.table_indices(t), all_rows.categorical[sl, t])
    b.check_against(13, data.table_sizes)


def test_drop_last(data):
    train = data.split("train")
    batches = list(train.batches(64, shuffle=True, seed=3, drop_last=True))
    assert len(batches) == len(train) // 64 and all(b.batch_size == 64 for b in batches)


def test_shuffle_is_a_deterministic_permutation(data):
    train = data.split("train")
    kw = dict(block_rows=50, buffer_blocks=4)
    a = row_ids(train.batches(32, shuffle=True, seed=7, epoch=1, **kw))
    b = row_ids(train.batches(32, shuffle=True, seed=7, epoch=1, **kw))
    c = row_ids(train.batches(32, shuffle=True, seed=7, epoch=2, **kw))
    d = row_ids(train.batches(32, shuffle=True, seed=8, epoch=1, **kw))
    assert a == b
    assert sorted(a) == list(range(len(train))) == sorted(c)
    assert a != c and a != d and a != list(range(len(train)))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("start_batch", [0, 1, 6, 13, 30])
def test_start_batch_resumes_at_the_exact_position(data, shuffle, start_batch):
    train = data.split("train")
    kw = dict(shuffle=shuffle, seed=11, epoch=4, block_rows=40, buffer_blocks=3)
    full = list(train.batches(37, **kw))
    resumed = list(train.batches(37, start_batch=start_batch, **kw))
    assert len(resumed) == len(full) - start_batch
    for x, y in zip(full[start_batch:], resumed, strict=True):
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.dense, y.dense)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "numbadlrm-prefetch"]


def test_prefetch_thread_stops_when_consumer_stops_early(data):
    it = data.split("train").batches(8, shuffle=True, prefetch_depth=2)
    next(it)
    assert len(_prefetch_threads()) == 1
    it.close()
    assert _prefetch_threads() == []
    for _ in data.split("train").batches(8, shuffle=False):
        break  # the generator is collected here
    assert _prefetch_threads() == []


def test_prefetch_forwards_producer_errors():
    def items():
        yield 1
        raise RuntimeError("disk on fire")

    got = []
    with pytest.raises(RuntimeError, match="disk on fire"):
        for x in prefetch(items(), depth=1):
            got.append(x)
    assert got == [1] and _prefetch_threads() == []


def test_argument_validation(data, tmp_path):
    train = data.split("train")
    with pytest.raises(ValueError, match="start_batch"):
        train.batches(10, shuffle=False, start_batch=10**6)
    with pytest.raises(ValueError, match="batch_size"):
        train.batches(0, shuffle=False)
    with pytest.raises(ValueError, match="split"):
        data.split("dev")
    with pytest.raises(FileNotFoundError, match=r"metadata\.json"):
        ProcessedData(tmp_path)


def test_dense_rows_reads_one_ranks_slice(data):
    """dense_rows=(lo, hi): same ids for every sample, dense/labels only for lo..hi-1."""
    train = data.split("train")
    args = {"batch_size": 48, "shuffle": True, "seed": 3, "epoch": 1, "drop_last": True,
            "block_rows": 64, "buffer_blocks": 3}  # fmt: skip
    full = list(train.batches(**args))
    part = list(train.batches(**args, dense_rows=(16, 32)))
    assert len(part) == len(full) > 3
    for f, p in zip(full, part, strict=True):
        np.testing.assert_array_equal(p.indices, f.indices)
        np.testing.assert_array_equal(p.dense[16:32], f.dense[16:32])
        np.testing.assert_array_equal(p.labels[16:32], f.labels[16:32])
        assert not p.dense[:16].any() and not p.dense[32:].any()
        assert p.local_rows == (16, 32) and f.local_rows is None
    resumed = list(train.batches(**args, start_batch=2, dense_rows=(16, 32)))
    np.testing.assert_array_equal(resumed[0].dense, part[2].dense)
    with pytest.raises(ValueError, match="drop_last"):
        train.batches(48, shuffle=False, dense_rows=(0, 8))
    with pytest.raises(ValueError, match="dense_rows"):
        train.batches(48, shuffle=False, drop_last=True, dense_rows=(40, 50))


def test_a_slice_batch_is_refused_where_all_rows_are_needed():
    from numbadlrm import DLRM, Batch

    from ._helpers import random_batch, small_config

    cfg = small_config()
    full = random_batch(np.random.default_rng(0), cfg, 8)
    part = Batch(full.dense, full.offsets, full.indices, full.labels, local_rows=(0, 4))
    part.require_rows(1, 3)
    with pytest.raises(ValueError, match=r"samples \[0, 4\) only"):
        part.require_rows(0, 8)
    with pytest.raises(ValueError, match=r"samples \[0, 4\) only"):
        DLRM(cfg).predict(part)  # a single process needs every sample's features
    with pytest.raises(ValueError, match="local_rows"):
        Batch(full.dense, full.offsets, full.indices, full.labels, local_rows=(4, 9))
