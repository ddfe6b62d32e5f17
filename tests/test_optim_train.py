"""The optimizers, the LR policy and the reference's run flags in the training loop:
exact resume with optimizer state, checkpoint schema checks, MLPerf lines and thresholds,
--print-time, --enable-profiling, --data-size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from numbadlrm.io.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    optimizer_to_resume,
    save_checkpoint,
)
from numbadlrm.optim.lr_policy import LRPolicy
from numbadlrm.optim.optimizers import OptimizerConfig
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import run_training

from ._helpers import run_interrupted
from .test_train import TINY, _records

POLICY = {"lr_num_warmup_steps": 4, "lr_decay_start_step": 9, "lr_num_decay_steps": 8}
SETTINGS = {
    "sgd": {},
    "adagrad": {"adagrad_lr_decay": 0.02, "weight_decay": 0.001, "adagrad_eps": 1e-8},
    "rwsadagrad": {"adagrad_initial_accumulator_value": 0.01, "weight_decay": 0.001},
}


def quiet(*_):
    pass


@pytest.mark.parametrize("optimizer", list(SETTINGS))
def test_resume_is_bit_identical_with_each_optimizer(tmp_path, monkeypatch, optimizer):
    """Interrupted after a mid-epoch checkpoint and resumed: the same losses, weights and
    optimizer state as one whole run, the LR policy continuing from the saved step."""
    base = {**TINY, "num_batches": 10, "nepochs": 2, "print_freq": 1, "optimizer": optimizer,
            "learning_rate": 0.05, **POLICY, **SETTINGS[optimizer]}  # fmt: skip
    full = tmp_path / "full.jsonl"
    whole = run_training(TrainConfig(**base, metrics_file=str(full)), log=quiet)
    ckpt = tmp_path / "m.npz"
    lrs = run_interrupted(monkeypatch, TrainConfig(**base, save_model=str(ckpt), save_freq=12), 14)
    policy = LRPolicy(0.05, 4, 9, 8)
    assert lrs == [policy.lr_at(k) for k in range(14)]  # warmup, flat, decay
    saved = load_checkpoint(ckpt)
    assert (saved.step, saved.optimizer_steps) == (12, 12)
    assert saved.optimizer == TrainConfig(**base).optimizer_config()

    resumed = tmp_path / "resumed.jsonl"
    again = run_training(
        TrainConfig(**base, load_model=str(ckpt), metrics_file=str(resumed)), log=quiet
    )
    expect = {r["step"]: r["loss"] for r in _records(full) if "loss" in r}
    got = {r["step"]: r["loss"] for r in _records(resumed) if "loss" in r}
    assert sorted(got) == list(range(13, 21))
    for step, loss in got.items():
        assert loss == expect[step], step
    a, b = again["model"], whole["model"]
    assert a.optimizer.steps == b.optimizer.steps == 20
    for name, value in b.state_dict().items():
        np.testing.assert_array_equal(a.state_dict()[name], value, err_msg=name)
    for name, value in b.optimizer_state_dict().items():
        np.testing.assert_array_equal(a.optimizer_state_dict()[name], value, err_msg=name)


def _saved(tmp_path, optimizer="adagrad") -> tuple:
    path = tmp_path / "a.npz"
    cfg = TrainConfig(**TINY, num_batches=3, optimizer=optimizer, save_model=str(path))
    run_training(cfg, log=quiet)
    return path, load_checkpoint(path)


def test_checkpoint_holds_the_optimizer_and_its_state(tmp_path):
    _, ckpt = _saved(tmp_path, "rwsadagrad")
    assert ckpt.optimizer == OptimizerConfig("rwsadagrad") and ckpt.optimizer_steps == 3
    assert ckpt.optimizer_state["embeddings.1.weight"].shape == (40,)
    assert ckpt.optimizer_state["bottom_mlp.0.weight"].shape == (16, 13)
    assert (ckpt.optimizer_state["embeddings.1.weight"] >= 0).all()
    (tmp_path / "sgd").mkdir()
    _, sgd = _saved(tmp_path / "sgd", "sgd")
    assert sgd.optimizer == OptimizerConfig("sgd") and sgd.optimizer_state == {}


def _rewrite(path, ckpt: Checkpoint, **changes) -> Checkpoint:
    for key, value in changes.items():
        setattr(ckpt, key, value)
    save_checkpoint(path, ckpt)
    return ckpt


def _meta_rewrite(path, edit) -> None:
    """Replace __meta__'s "optimizer" by edit(it), keeping every array."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    meta["optimizer"] = edit(meta["optimizer"])
    np.savez(path, __meta__=np.array(json.dumps(meta)), **arrays)


def test_checkpoint_optimizer_schema_errors(tmp_path):
    path, ckpt = _saved(tmp_path)
    good = dict(ckpt.optimizer_state)
    bad = {**good, "embeddings.0.weight": np.zeros((50, 3), np.float32)}
    _rewrite(path, ckpt, optimizer_state=bad)
    with pytest.raises(CheckpointError, match=r"'__optim__.embeddings.0.weight' is \(50, 3\)"):
        load_checkpoint(path)
    missing = {k: v for k, v in good.items() if k != "top_mlp.0.bias"}
    _rewrite(path, ckpt, optimizer_state=missing)
    with pytest.raises(CheckpointError, match=r"array '__optim__\.top_mlp\.0\.bias' is missing"):
        load_checkpoint(path)
    _rewrite(path, ckpt, optimizer_state=good)
    load_checkpoint(path)  # fixed again
    _meta_rewrite(path, lambda o: {**o, "name": "adam"})
    with pytest.raises(CheckpointError, match="'optimizer': --optimizer: must be one of"):
        load_checkpoint(path)
    _meta_rewrite(path, lambda o: {**o, "name": "adagrad", "steps": -2})
    with pytest.raises(CheckpointError, match="steps must be an integer >= 0, got -2"):
        load_checkpoint(path)
    _meta_rewrite(path, lambda o: {k: v for k, v in o.items() if k != "eps"} | {"steps": 1})
    with pytest.raises(CheckpointError, match="needs exactly the keys"):
        load_checkpoint(path)


def test_a_checkpoint_without_optimizer_record_loads_as_before(tmp_path):
    path, ckpt = _saved(tmp_path)
    _rewrite(path, ckpt, optimizer=None, optimizer_state={})
    old = load_checkpoint(path)
    assert old.optimizer is None and old.optimizer_state == {}
    resume, note = optimizer_to_resume(old, OptimizerConfig("adagrad"), path)
    assert not resume and "holds no optimizer state: adagrad starts fresh" in note
    assert optimizer_to_resume(old, OptimizerConfig(), path) == (False, None)


def test_resuming_with_other_settings_or_optimizer_says_so(tmp_path):
    path, _ = _saved(tmp_path)
    logged = []
    run = {**TINY, "num_batches": 3, "nepochs": 2, "load_model": str(path)}  # epoch 1 to go
    result = run_training(TrainConfig(**run, optimizer="adagrad", adagrad_eps=1e-6), logged.append)
    assert any("with this run's settings (this run vs checkpoint: eps: 1e-06 vs 1e-10)" in x
               for x in logged)  # fmt: skip
    assert result["model"].optimizer.steps == 3 + 3  # resumed after step 3
    logged.clear()
    result = run_training(TrainConfig(**run, optimizer="rwsadagrad"), logged.append)
    assert any("trained with --optimizer adagrad; this run's rwsadagrad starts fresh" in x
               for x in logged)  # fmt: skip
    assert result["model"].optimizer.steps == 3  # counted from the fresh start


def test_mlperf_lines_and_the_auc_threshold_stop_training(tmp_path):
    """--mlperf-logging writes the reference's keys; a threshold met at the first
    --test-freq evaluation ends training there (status success), the checkpoint at it."""
    logged = []
    cfg = TrainConfig(**TINY, num_batches=12, test_freq=3, mlperf_logging=True,
                      mlperf_auc_threshold=0.01, save_model=str(tmp_path / "m.npz"))  # fmt: skip
    result = run_training(cfg, logged.append)
    assert result["steps"] == 3
    assert "MLPerf testing auc threshold 0.01 reached, stop training" in logged
    records = [json.loads(x.removeprefix(":::MLLOG ")) for x in logged if x.startswith(":::MLLOG")]
    keys = [r["key"] for r in records]
    for key in ("cache_clear", "init_start", "submission_benchmark", "global_batch_size",
                "opt_base_learning_rate", "init_stop", "run_start", "block_start", "epoch_start",
                "eval_start", "eval_accuracy", "eval_stop", "epoch_stop", "run_stop"):  # fmt: skip
        assert key in keys, key
    assert keys.index("init_stop") < keys.index("run_start") < keys.index("eval_accuracy")
    assert records[-1]["key"] == "run_stop" and records[-1]["metadata"]["status"] == "success"
    assert records[keys.index("init_start")]["event_type"] == "INTERVAL_START"
    assert all(set(r) == {"namespace", "time_ms", "event_type", "key", "value", "metadata"}
               for r in records)  # fmt: skip
    saved = load_checkpoint(tmp_path / "m.npz")
    assert (saved.step, saved.epoch, saved.batch_in_epoch) == (3, 0, 3)


def test_thresholds_not_reached_train_to_the_end():
    logged = []
    cfg = TrainConfig(**TINY, num_batches=6, test_freq=3, mlperf_logging=True,
                      mlperf_acc_threshold=1.0, mlperf_auc_threshold=0.999)  # fmt: skip
    assert run_training(cfg, logged.append)["steps"] == 6
    last = json.loads(logged[[i for i, x in enumerate(logged) if "run_stop" in x][-1]][9:])
    assert last["metadata"]["status"] == "aborted"
    logged.clear()
    run_training(TrainConfig(**TINY, num_batches=2), logged.append)
    assert not any(x.startswith(":::MLLOG") for x in logged)  # off by default


def test_print_time_profiling_and_data_size():
    logged = []
    cfg = TrainConfig(**TINY, data_size=70, print_freq=1, print_time=True, enable_profiling=True)
    result = run_training(cfg, logged.append)
    assert result["steps"] == 3  # ceil(70 / 32): the reference's --data-size
    steps = [x for x in logged if x.startswith("step ")]
    assert len(steps) == 3 and all(x.endswith(" ms/step") for x in steps[1:])
    table = logged[-1]
    assert table.startswith("per-op times (--enable-profiling):")
    for op in ("bottom fwd", "embedding update", "top bwd", "sum of medians"):
        assert op in table
    assert result["model"].op_times.seconds["embedding update"]  # the model's own timer
    logged.clear()
    run_training(TrainConfig(**TINY, num_batches=2, print_freq=1), logged.append)
    assert not any("ms/step" in x or "per-op" in x for x in logged)
