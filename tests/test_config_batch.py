"""Configuration parsing/validation and Batch validation: every bad input names itself."""

import numpy as np
import pytest

from numbadlrm import Batch, DLRMConfig
from numbadlrm.batch import batch_from_lists
from numbadlrm.config import parse_arch

from ._helpers import random_batch, small_config


def test_from_arch_computes_top_input():
    cfg = DLRMConfig.from_arch(16, "1000-1000-1000", "13-512-256-64-16", "512-256-1")
    assert cfg.top_sizes == (16 + 6, 512, 256, 1)  # F=4 -> P=6
    assert cfg.num_tables == 3 and cfg.num_dense == 13
    itself = DLRMConfig.from_arch(16, "5-5-5", "13-16", "1", interaction_itself=True)
    assert itself.top_sizes[0] == 16 + 10
    cat = DLRMConfig.from_arch(16, "5-5-5", "13-16", "1", interaction_op="cat")
    assert cat.top_sizes[0] == 4 * 16
    assert DLRMConfig.from_arch(**{"sparse_feature_size": 16, **cfg.arch_strings()}) == cfg
    assert DLRMConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mlp_bot": "13-512-8"}, "must equal sparse_feature_size"),
        ({"mlp_top": "512-256-2"}, "last width must be 1"),
        ({"mlp_bot": "13-x-16"}, "'x'"),
        ({"embedding_size": "10--10"}, "is not an integer"),
        ({"embedding_size": "10-0"}, "positive"),
        ({"interaction_op": "sum"}, "interaction_op"),
    ],
)
def test_bad_arch_strings(kwargs, message):
    args = {
        "sparse_feature_size": 16,
        "embedding_size": "10-10",
        "mlp_bot": "13-16",
        "mlp_top": "4-1",
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        DLRMConfig.from_arch(**args)


def test_direct_construction_checks_dim_and_top_width():
    with pytest.raises(ValueError, match="sparse_feature_size: must be a positive integer"):
        DLRMConfig((10,), 0, (13, 1), (2, 1))
    with pytest.raises(ValueError, match="top MLP's input width"):
        DLRMConfig((10, 10), 16, (13, 16), (99, 1))


def test_parse_arch_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        parse_arch("", "mlp_top")


def _good():
    return {
        "dense": np.zeros((2, 5), np.float32),
        "offsets": np.array([[0, 1, 2], [2, 3, 4]], np.int64),
        "indices": np.array([0, 1, 2, 3], np.int64),
        "labels": np.array([0, 1], np.float32),
    }


@pytest.mark.parametrize(
    "change,message",
    [
        ({"dense": np.zeros((2, 5), np.float64)}, "dense must be float32"),
        ({"indices": np.array([0, 1, 2, 3], np.int32)}, "indices must be int64"),
        ({"labels": np.array([0, 2], np.float32)}, r"labels\[1\] = 2"),
        ({"labels": np.array([0], np.float32)}, "labels has 1 rows"),
        ({"offsets": np.array([[0, 1], [2, 3]], np.int64)}, r"shape \(T, B\+1\)"),
        ({"offsets": np.array([[0, 2, 1], [2, 3, 4]], np.int64)}, "decrease at bag 1"),
        ({"offsets": np.array([[0, 1, 2], [2, 3, 9]], np.int64)}, "nnz=4"),
        ({"dense": np.full((2, 5), np.nan, np.float32)}, "non-finite"),
        ({"dense": [[0.0] * 5] * 2}, "numpy array"),
        ({"dense": np.zeros((5, 2), np.float32).T}, "C-contiguous"),
    ],
)
def test_batch_validation(change, message):
    with pytest.raises(ValueError, match=message):
        Batch(**{**_good(), **change})


def test_batch_checked_against_model():
    batch = Batch(**_good())
    with pytest.raises(ValueError, match="table 1 has 3 rows but is looked up at index 3"):
        batch.check_against(5, (4, 3))
    with pytest.raises(ValueError, match="dense has 5 features, the model expects 13"):
        batch.check_against(13, (4, 4))
    with pytest.raises(ValueError, match="describe 2 tables, the model has 3"):
        batch.check_against(5, (4, 4, 4))
    batch.check_against(5, (4, 4))


def test_batch_from_lists_and_random_helper():
    b = batch_from_lists(np.zeros((2, 3)), [[[1, 2], []], [[0], [0, 0]]], np.array([1, 0]))
    assert b.offsets.tolist() == [[0, 2, 2], [2, 3, 5]]
    assert b.table_indices(1).tolist() == [0, 0, 0]
    cfg = small_config()
    random_batch(np.random.default_rng(0), cfg, 5).check_against(cfg.num_dense, cfg.embedding_sizes)
