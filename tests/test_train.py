"""The training loop and the command line: metrics, checkpoints, exact resume, data paths."""

import argparse
import json
import time

import numba
import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.io.checkpoint import CheckpointError, load_checkpoint
from numbadlrm.kernels.jit import announce_compilation
from numbadlrm.model.dlrm import DLRM
from numbadlrm.train import loop as train
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import TrainLoop, run_training
from numbadlrm.train.sources import open_data

from ._criteo_files import quirky_lines, write_raw
from ._helpers import run_interrupted

TINY = {
    "arch_sparse_feature_size": 4,
    "arch_embedding_size": "50-40-30",
    "arch_mlp_bot": "13-16-4",
    "arch_mlp_top": "8-1",
    "mini_batch_size": 32,
    "test_mini_batch_size": 256,
    "test_num_batches": 2,
    "progress": False,
    "learning_rate": 0.2,
}


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_synthetic_run_learns_and_logs(tmp_path):
    metrics = tmp_path / "m.jsonl"
    cfg = TrainConfig(
        **TINY, num_batches=400, print_freq=100, test_freq=200, metrics_file=str(metrics)
    )
    lines = []
    result = run_training(cfg, log=lines.append)
    records = _records(metrics)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [100, 200, 300, 400]
    # no bar (progress=False): one line per --print-freq steps with the same numbers
    printed = [x for x in lines if x.startswith("step ")]
    assert printed == [
        f"step {r['step']} epoch 0: loss {r['loss']:.6f}, {r['samples_per_s']:,.0f} samples/s"
        for r in steps
    ]
    assert all(r["samples_per_s"] > 0 for r in steps)
    evals = [r for r in records if "auc" in r]
    assert [(r["step"], r["split"]) for r in evals] == [
        (200, "validation"),
        (400, "validation"),
        (400, "test"),
    ]
    assert result["auc"] > 0.6  # the teacher's signal is learnable; random data gives 0.5
    assert result["steps"] == 400


def test_compilation_is_announced_and_the_bar_starts_after_it(monkeypatch):
    """A first step that compiles (a fresh njit function, plus 0.5 s standing in for the
    first run's ~23 s): announced before, timed after; the bar starts after it at batch 1,
    and the first loss line's samples/s leaves it out."""
    events, lines = [], []

    class Bar:  # records when the bar starts, and from which batch
        def __init__(self, **kwargs):
            events.append(("bar", kwargs["initial"]))

        def update(self, n):
            pass

        def close(self):
            pass

    fresh = numba.njit(lambda x: x + 1)  # never compiled: its first call compiles

    class FirstStepCompiles(DLRM):
        def train_step(self, batch, lr):
            events.append("step")
            if len(events) == 1:
                fresh(1)
                time.sleep(0.5)
            return super().train_step(batch, lr)

    monkeypatch.setattr(train, "tqdm", Bar)
    cfg = TrainConfig(**TINY, num_batches=4, print_freq=2)
    source, mcfg = open_data(cfg)
    loop = TrainLoop(cfg, FirstStepCompiles(mcfg, seed=0), source, mcfg, log=lines.append)
    loop.run(0, 0, 0)
    assert events == ["step", ("bar", 1), "step", "step", "step"]
    assert lines[0] == "compiling kernels (once: they are cached on disk for later runs) ..."
    assert lines[1].startswith("compiled kernels in ") and lines[1].endswith(" s")
    assert float(lines[1].split()[3]) >= 0.5
    first_loss_line = next(x for x in lines if x.startswith("step 2 "))
    rate = float(first_loss_line.split(", ")[-1].split()[0].replace(",", ""))
    assert rate > 2 * 32 / 0.5  # the 0.5 s first step would hold it below 128 samples/s


def test_announce_compilation_is_silent_without_compiling():
    lines = []
    fresh = numba.njit(lambda x: 2 * x)
    fresh(1)
    with announce_compilation(lines.append):
        fresh(3)  # compiled already
    assert lines == []
    with announce_compilation(lines.append):
        fresh(3.5)  # a new signature compiles
    assert lines[0].startswith("compiling kernels") and lines[1].startswith("compiled kernels")


def test_resume_continues_exactly(tmp_path, monkeypatch):
    """Interrupt after a mid-epoch checkpoint, resume: the same losses as one whole run."""
    base = {**TINY, "num_batches": 20, "nepochs": 2, "print_freq": 1}
    full = tmp_path / "full.jsonl"
    whole = run_training(TrainConfig(**base, metrics_file=str(full)), log=lambda *_: None)

    ckpt = tmp_path / "m.npz"
    run_interrupted(monkeypatch, TrainConfig(**base, save_model=str(ckpt), save_freq=25), 27)
    saved = load_checkpoint(ckpt)
    assert (saved.step, saved.epoch, saved.batch_in_epoch) == (25, 1, 5)

    resumed = tmp_path / "resumed.jsonl"
    again = run_training(
        TrainConfig(**base, load_model=str(ckpt), metrics_file=str(resumed)), log=lambda *_: None
    )
    expect = {r["step"]: r["loss"] for r in _records(full) if "loss" in r}
    got = {r["step"]: r["loss"] for r in _records(resumed) if "loss" in r}
    assert sorted(got) == list(range(26, 41))
    for step, loss in got.items():
        assert loss == expect[step], step  # bit-for-bit: same data, same weights, same order
    assert again["auc"] == whole["auc"]
    for name, value in again["model"].state_dict().items():
        np.testing.assert_array_equal(value, whole["model"].state_dict()[name])


def test_checkpoint_errors(tmp_path):
    ckpt = tmp_path / "m.npz"
    run_training(TrainConfig(**TINY, num_batches=3, save_model=str(ckpt)), log=lambda *_: None)
    other = {**TINY, "arch_embedding_size": "50-40-31"}
    with pytest.raises(CheckpointError, match=r"saved for another model.*embedding_sizes"):
        run_training(TrainConfig(**other, num_batches=3, load_model=str(ckpt)), log=lambda *_: None)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(broken)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "text.npz")
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_inference_only_evaluates_a_checkpoint(tmp_path):
    ckpt = tmp_path / "m.npz"
    trained = run_training(
        TrainConfig(**TINY, num_batches=50, save_model=str(ckpt)), log=lambda *_: None
    )
    again = run_training(
        TrainConfig(**TINY, load_model=str(ckpt), inference_only=True), log=lambda *_: None
    )
    assert again["auc"] == trained["auc"] and again["steps"] == 50


def test_dataset_training_predict_and_plot(tmp_path, capsys):
    """Raw file -> preprocess -> train -> predict -> plot, through the command line."""
    rng = np.random.default_rng(0)
    raw = write_raw(tmp_path / "train.txt", quirky_lines(rng, 1400))
    out = tmp_path / "proc"
    ckpt = tmp_path / "m.npz"
    metrics = tmp_path / "m.jsonl"
    args = [
        "train",
        "--data-set",
        "kaggle",
        "--raw-data-file",
        str(raw),
        "--processed-data-file",
        str(out),
        "--max-ind-range",
        "97",
        "--arch-sparse-feature-size",
        "4",
        "--arch-mlp-bot",
        "13-8-4",
        "--arch-mlp-top",
        "8-1",
        "--mini-batch-size",
        "64",
        "--test-mini-batch-size",
        "64",
        "--print-freq",
        "5",
        "--no-progress",
        "--save-model",
        str(ckpt),
        "--metrics-file",
        str(metrics),
        "--test-freq",
        "10",
    ]
    assert main(args) == 0, capsys.readouterr().err
    header = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("numbadlrm:"))
    assert "; data dataset, batch 64" in header  # --data-set trains on the dataset
    saved = load_checkpoint(ckpt)
    assert saved.config.embedding_sizes == (97,) * 26  # table sizes come from the data
    assert saved.extra["data_generation"] == "dataset"
    assert saved.step == 1200 // 64  # days 0-5 of 1400 rows, full batches
    preds = tmp_path / "p.txt"
    assert (
        main(
            [
                "predict",
                "--load-model",
                str(ckpt),
                "--processed-data-file",
                str(out),
                "--output",
                str(preds),
            ]
        )
        == 0
    )
    values = np.loadtxt(preds)
    assert values.shape == (100,) and ((values > 0) & (values < 1)).all()  # half of day 6
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    assert main(["plot", str(metrics), "--output", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_convert_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    ckpt = tmp_path / "m.npz"
    run_training(TrainConfig(**TINY, num_batches=3, save_model=str(ckpt)), log=lambda *_: None)
    pt = tmp_path / "m.pt"
    assert main(["convert", str(ckpt), "--to-torch", str(pt)]) == 0
    saved = torch.load(pt)  # trained: the reference's layout, with the position
    assert (saved["numbadlrm_step"], saved["epoch"], saved["iter"]) == (3, 1, 0)
    sd = saved["state_dict"]
    assert sd["bot_l.2.weight"].shape == (4, 16) and "emb_l.2.weight" in sd
    back = tmp_path / "back.npz"
    assert main(["convert", str(pt), "--from-torch", str(back)]) == 0
    a, b = load_checkpoint(ckpt), load_checkpoint(back)
    assert a.config == b.config
    assert (a.step, a.epoch, a.batch_in_epoch) == (b.step, b.epoch, b.batch_in_epoch)
    for name, value in a.state.items():
        np.testing.assert_array_equal(value, b.state[name])


def test_cli_prints_loss_lines_when_its_output_is_no_terminal(capsys):
    """`numbadlrm train > log.txt` (stderr no terminal either): no bar, loss lines."""
    argv = ["train", "--arch-embedding-size", "50-40", "--arch-mlp-bot", "13-8-16"]
    argv += ["--num-batches", "6", "--print-freq", "3", "--test-num-batches", "1"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    printed = [x for x in out.splitlines() if x.startswith("step ")]
    assert [x.split(":")[0] for x in printed] == ["step 3 epoch 0", "step 6 epoch 0"]
    assert all("samples/s" in x for x in printed)
    assert "epoch 0:" not in err  # no bar


def test_cli_train_and_errors(tmp_path, capsys):
    assert main(["train", "--arch-mlp-bot", "13-512-8", "--arch-sparse-feature-size", "16"]) == 2
    assert "must equal sparse_feature_size" in capsys.readouterr().err
    assert main(["train", "--data-generation", "dataset"]) == 2
    assert "--processed-data-file" in capsys.readouterr().err
    for lr in ("nan", "inf", "-1"):
        assert main(["train", "--learning-rate", lr]) == 2
        assert f"learning_rate: must be a finite positive number, got {float(lr)}" in (
            capsys.readouterr().err
        )
    assert main(["train", "--load-model", str(tmp_path / "none.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_version_and_every_option_has_help(capsys):
    from numbadlrm import __version__
    from numbadlrm.cli.main import build_parser

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"numbadlrm {__version__}"
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {"train", "preprocess", "predict", "plot", "kernels", "convert"}
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"numbadlrm {name} {action.dest}: no help text"
