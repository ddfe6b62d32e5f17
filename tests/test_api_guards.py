"""The Python API's last raw paths (issue 20): optimizer settings float32 cannot hold, bad
step counts, a None model config or batch, and Batch offsets in the reference's
per-table layout (every table read table 0's lookups: silently wrong), refused in one
line; Batch.from_reference converts that layout."""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm import Batch
from numbadlrm.batch import batch_from_lists
from numbadlrm.cli.main import main
from numbadlrm.model.dlrm import DLRM
from numbadlrm.optim.optimizers import OptimizerConfig
from tests._helpers import random_batch, small_config


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--adagrad-eps", "1e-50", "--adagrad-eps: 1e-50 underflows to 0 in float32"),
        ("--adagrad-initial-accumulator-value", "1e300",
         "--adagrad-initial-accumulator-value: 1e+300 overflows float32"),
        ("--weight-decay", "1e-46", "--weight-decay: 1e-46 underflows to 0 in float32"),
    ],
)  # fmt: skip
def test_settings_float32_cannot_hold_are_refused(capsys, flag, value, message):
    assert main(["train", "--optimizer", "adagrad", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"numbadlrm train: error: {message}") and err.count("\n") == 1, err
    OptimizerConfig("adagrad", eps=1e-40)  # subnormal, not zero: kept


@pytest.mark.parametrize("steps", ["3", -1, 2.0, True])
def test_bad_step_counts_are_refused_before_anything_changes(steps):
    model = DLRM(small_config(), optimizer="adagrad")
    sd = {k: v + 1 for k, v in model.optimizer_state_dict().items()}
    before = model.optimizer_state_dict()
    with pytest.raises(ValueError, match=r"steps: the optimizer's step count must be an integer"):
        model.load_optimizer_state_dict(sd, steps)
    for name, value in model.optimizer_state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    assert model.optimizer.steps == 0


def test_none_model_config_and_batch():
    with pytest.raises(TypeError, match=r"^DLRM: config must be a DLRMConfig .*got NoneType$"):
        DLRM(None)
    model = DLRM(small_config())
    for call in (lambda: model.train_step(None, 0.1), lambda: model.predict(None)):
        with pytest.raises(TypeError, match=r"^DLRM: batch must be a numbadlrm Batch .*NoneType$"):
            call()


def _reference_layout(batch: Batch) -> tuple[list, list]:
    """lS_o, lS_i as dlrm_s_pytorch.py feeds them: per table, bag starts from 0."""
    lS_o = [batch.offsets[t, :-1] - batch.offsets[t, 0] for t in range(batch.num_tables)]
    lS_i = [batch.table_indices(t).copy() for t in range(batch.num_tables)]
    return lS_o, lS_i


def test_offsets_that_do_not_chain_are_refused_with_the_hint():
    batch = random_batch(np.random.default_rng(0), small_config(), 6)
    lS_o, lS_i = _reference_layout(batch)
    per_table = np.stack([np.append(o, len(i)) for o, i in zip(lS_o, lS_i, strict=True)])
    with pytest.raises(ValueError) as err:
        Batch(batch.dense, per_table, np.concatenate(lS_i), batch.labels)
    message = str(err.value)
    assert message.startswith(f"Batch: offsets of table 1 start at 0, not {len(lS_i[0])}, ")
    assert "Batch.from_reference(dense, lS_o, lS_i, labels)" in message
    with pytest.raises(ValueError, match=r"last table end at 3, not at nnz=4"):
        Batch(np.zeros((2, 5), np.float32), np.array([[0, 1, 2], [2, 3, 3]]),
              np.arange(4), np.zeros(2, np.float32))  # fmt: skip
    batch.offsets[1] -= batch.offsets[1, 0]  # changed after construction (table 0's ids
    # fit table 1's rows, so only the chain is wrong): refused on the next step
    with pytest.raises(ValueError, match="offsets must chain"):
        DLRM(small_config()).train_step(batch, 0.1)


def test_from_reference_builds_the_chained_layout():
    cfg = small_config()
    batch = random_batch(np.random.default_rng(1), cfg, 7)
    lS_o, lS_i = _reference_layout(batch)
    again = Batch.from_reference(batch.dense, lS_o, lS_i, batch.labels[:, None])
    for name in ("dense", "offsets", "indices", "labels"):
        np.testing.assert_array_equal(getattr(again, name), getattr(batch, name), err_msg=name)
    a, b = DLRM(cfg, seed=3), DLRM(cfg, seed=3)
    assert a.train_step(again, 0.1) == b.train_step(batch, 0.1)
    lists = batch_from_lists(np.zeros((2, 5)), [[[1, 2], []], [[0], [0, 0]]], np.array([1, 0]))
    ref = Batch.from_reference(np.zeros((2, 5)), [[0, 2], [0, 1]], [[1, 2], [0, 0, 0]], [1, 0])
    np.testing.assert_array_equal(ref.offsets, lists.offsets)
    with pytest.raises(ValueError, match=r"lS_o\[1\] must hold the B=2 bag starts"):
        Batch.from_reference(np.zeros((2, 5)), [[0, 2], [1, 1]], [[1, 2], [0, 0]], [1, 0])


def test_the_mpi_model_refuses_none_and_bad_step_counts_as_dlrm_does():
    """DistributedDLRM (one rank of COMM_SELF): the same one-line refusals as DLRM."""
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    from numbadlrm.parallel.distributed import DistributedDLRM

    with pytest.raises(TypeError, match=r"^DistributedDLRM: config must be a DLRMConfig"):
        DistributedDLRM(None, MPI.COMM_SELF)
    model = DistributedDLRM(small_config(), MPI.COMM_SELF, optimizer="adagrad")
    for call in (lambda: model.train_step(None, 0.1), lambda: model.predict(None)):
        with pytest.raises(TypeError, match=r"^DistributedDLRM: batch must be a numbadlrm Batch"):
            call()
    sd = model.optimizer_state_dict()
    with pytest.raises(ValueError, match=r"steps: the optimizer's step count must be an integer"):
        model.load_optimizer_state_dict(sd, -1)
    assert model.optimizer.steps == 0
