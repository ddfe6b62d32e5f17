"""Nothing a run makes is lost (issue 20): outputs that cannot be written are refused
before the first step; saves to one path from two processes both complete; a resumed
run appends to its metrics file; checkpoints are created 0644 like other outputs; a
resume past the end of this run's epoch, and --seed -1, are refused naming the flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from numbadlrm.model.dlrm import DLRM
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import run_training
from tests._criteo_files import quirky_lines, write_raw
from tests._helpers import run_interrupted, small_config

ROOT = Path(__file__).resolve().parents[1]
# the issue's $A: a tiny model on the built-in data
A = ["--arch-sparse-feature-size", "4", "--arch-embedding-size", "50-60-70",
     "--arch-mlp-bot", "13-8-4", "--arch-mlp-top", "8-1", "--mini-batch-size", "16",
     "--test-num-batches", "1", "--test-mini-batch-size", "64", "--no-progress"]  # fmt: skip
TINY = {
    "arch_sparse_feature_size": 4, "arch_embedding_size": "50-60-70", "arch_mlp_bot": "13-8-4",
    "arch_mlp_top": "8-1", "mini_batch_size": 16, "test_num_batches": 1,
    "test_mini_batch_size": 64, "progress": False,
}  # fmt: skip


def quiet(*_):
    pass


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(DLRM, "train_step", lambda *a: pytest.fail("trained before refusing"))


REFUSED = [
    ("--save-model nodir/a.npz", "--save-model nodir/a.npz: directory nodir does not exist"),
    ("--save-model .", "--save-model .: is a directory; give a file name"),
    ("--save-model /proc/a.npz", "--save-model /proc/a.npz: cannot create a file in /proc"),
    ("--metrics-file .", "--metrics-file .: is a directory; give a file name"),
    ("--metrics-file /dev/full", "--metrics-file /dev/full: cannot write: the disk is full"),
    ("--seed -1", "--seed: must be >= 0, got -1"),
]


@pytest.mark.parametrize("flags,message", REFUSED)
def test_outputs_are_refused_before_the_first_step(
    tmp_path, monkeypatch, capsys, no_training, flags, message
):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *A, "--num-batches", "30", *flags.split()]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"numbadlrm train: error: {message}") and err.count("\n") == 1, err


_PAUSED_SAVE = """
import pathlib, sys, time
import numpy as np
from numbadlrm.io.checkpoint import Checkpoint, save_checkpoint
from numbadlrm.model.dlrm import DLRM
from tests._helpers import small_config

path, paused, go = sys.argv[1:4]
cfg = small_config()
real = np.savez

def savez_then_wait(f, **arrays):
    real(f, **arrays)  # the temporary file is complete, not yet renamed
    pathlib.Path(paused).touch()
    while not pathlib.Path(go).exists():
        time.sleep(0.01)

np.savez = savez_then_wait
save_checkpoint(path, Checkpoint(cfg, DLRM(cfg, seed=1).state_dict(), step=1))
print("saved")
"""


def test_two_processes_saving_one_path_both_complete(tmp_path):
    """A second writer's save no longer sweeps the first's temporary file away: both
    saves succeed and the later complete one is the file."""
    path, paused, go = tmp_path / "m.npz", tmp_path / "paused", tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_SAVE, str(path), str(paused), str(go)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(6000):
            if paused.exists() or child.poll() is not None:
                break
            time.sleep(0.01)
        assert paused.exists(), child.communicate()
        cfg = small_config()
        save_checkpoint(path, Checkpoint(cfg, DLRM(cfg, seed=2).state_dict(), step=2))
        assert load_checkpoint(path).step == 2
        go.touch()
        out, err = child.communicate(timeout=120)
    finally:
        go.touch()
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0 and out.strip() == "saved", err
    assert load_checkpoint(path).step == 1  # the later complete save wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "m.npz", "paused"]


def test_only_dead_writers_temporary_files_are_swept(tmp_path):
    live = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        mine = tmp_path / f".m.npz.{live.pid}.abcd1234.tmp"
        gone = tmp_path / f".m.npz.{dead.pid}.abcd1234.tmp"
        for p in (mine, gone):
            p.write_bytes(b"half")
        cfg = small_config()
        save_checkpoint(tmp_path / "m.npz", Checkpoint(cfg, DLRM(cfg).state_dict()))
        assert mine.exists() and not gone.exists()
    finally:
        live.kill()
        live.wait()


def test_checkpoints_are_created_like_other_outputs(tmp_path):
    old = os.umask(0o022)
    try:
        cfg = small_config()
        save_checkpoint(tmp_path / "m.npz", Checkpoint(cfg, DLRM(cfg).state_dict()))
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = (tmp_path / "m.npz").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_resumed_run_appends_to_its_metrics_file(tmp_path):
    metrics, ckpt = tmp_path / "m.jsonl", tmp_path / "m.npz"
    base = {**TINY, "num_batches": 5, "print_freq": 1, "metrics_file": str(metrics)}
    run_training(TrainConfig(**base, save_model=str(ckpt)), log=quiet)
    first = _records(metrics)
    run_training(TrainConfig(**base, nepochs=2, load_model=str(ckpt)), log=quiet)
    records = _records(metrics)
    assert records[: len(first)] == first  # the first run's records are kept
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 11))
    events = [(r["step"], r["event"]) for r in records if "event" in r]
    assert events == [(0, "start"), (5, "resume")]
    run_training(TrainConfig(**base), log=quiet)  # no --load-model: a new file
    assert [r["step"] for r in _records(metrics) if "loss" in r] == list(range(1, 6))


@pytest.mark.parametrize("data", ["synthetic", "dataset"])
def test_resuming_past_this_runs_epoch_is_refused(tmp_path, monkeypatch, data):
    base = {**TINY, "num_batches": 10}
    if data == "dataset":
        raw = write_raw(tmp_path / "day_0", quirky_lines(np.random.default_rng(3), 400))
        preprocess([raw], tmp_path / "proc", PreprocessOptions(max_ind_range=50), progress=False)
        base = {**base, "data_generation": "dataset", "processed_data_file": str(tmp_path / "proc")}
    ckpt = tmp_path / "m.npz"
    run_interrupted(monkeypatch, TrainConfig(**base, save_model=str(ckpt), save_freq=6), 7)
    assert load_checkpoint(ckpt).batch_in_epoch == 6
    monkeypatch.setattr(DLRM, "train_step", lambda *a: pytest.fail("trained before refusing"))
    cfg = TrainConfig(**{**base, "num_batches": 4}, load_model=str(ckpt))
    with pytest.raises(ValueError) as err:
        run_training(cfg, log=quiet)
    assert str(err.value) == (
        f"--num-batches 4: this run's epoch has 4 batches, but {ckpt} resumes at batch 6 of "
        "epoch 0; give --num-batches 6 or more (the run it continues had more)"
    )
