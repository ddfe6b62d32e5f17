"""The reference's command lines and flags under `numbadlrm train`.

Every command of tests/reference_commands.py runs with its flags unchanged (sizes
appended, data made at the paths it names) and must train, evaluate and exit 0; the
flags' meanings, the notes, the refusals and the usage line are checked one by one.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from numbadlrm.cli.main import build_parser, dataclass_from_args, main, parse_args
from numbadlrm.cli.reference_flags import NOTES, UNSUPPORTED, parse_bool_word
from numbadlrm.train.config import TrainConfig

from ._criteo_files import quirky_lines, write_raw
from .reference_commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def _data(kind: str) -> None:
    """The files a command reads, made in the current directory."""
    Path("input").mkdir()
    rng = np.random.default_rng(7)
    if kind.startswith("kaggle"):
        write_raw(Path("input/train.txt"), quirky_lines(rng, 7 * 40, vocab=30))
    if kind == "kaggle-processed":
        argv = ["preprocess", "--data-set", "kaggle", "--raw-data-file", "input/train.txt",
                "--out-dir", "input/kaggle_processed.npz", "--no-progress"]  # fmt: skip
        assert main(argv) == 0
    if kind == "terabyte":
        for day in range(24):
            write_raw(Path(f"input/day_{day}"), quirky_lines(rng, 24, vocab=30))


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_reference_command_runs_unchanged(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if command.data:
        _data(command.data)
        capsys.readouterr()
    argv = ["train", *shlex.split(command.flags), *shlex.split(command.sizes), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "test at step" in out and "auc" in out
    if "--mlperf-logging" in command.flags:
        records = [json.loads(x[9:]) for x in out.splitlines() if x.startswith(":::MLLOG ")]
        assert records[-1]["key"] == "run_stop" and "eval_accuracy" in [r["key"] for r in records]
    steps = [x for x in out.splitlines() if x.startswith("step ")]
    if "--print-time" in command.flags:
        assert all(x.endswith(" ms/step") for x in steps)
    if "--enable-profiling" in command.flags:
        assert "per-op times (--enable-profiling):" in out
    if "--debug-mode" in command.flags:
        assert "note: --debug-mode changes nothing here" in out


def test_the_readme_lists_every_reference_command():
    readme = (ROOT / "README.md").read_text()
    for command in COMMANDS:
        assert command.flags in readme, command.name


def _config(*argv: str) -> TrainConfig:
    return dataclass_from_args(TrainConfig, parse_args(build_parser(), ["train", *argv]))


def test_reference_flags_keep_their_meanings():
    assert _config("--round-targets", "True").round_targets is True
    assert _config("--round-targets=False").round_targets is False
    assert _config("--num-indices-per-lookup-fixed", "True").num_indices_per_lookup_fixed
    assert _config("--num-indices-per-lookup-fixed=1").num_indices_per_lookup_fixed
    assert _config("--num-indices-per-lookup-fixed").num_indices_per_lookup_fixed  # a switch
    assert not _config("--no-num-indices-per-lookup-fixed").num_indices_per_lookup_fixed
    assert not _config("--no-progress").progress and not _config("--progress=off").progress
    assert _config("--test-freq", "-1").test_freq == 0  # the reference's "never"
    assert _config("--max-ind-range=-1").max_ind_range == 0
    assert _config("--mini-batch-size=32", "--test-mini-batch-size=-1").test_mini_batch_size == 32
    assert _config("--numpy-rand-seed", "727").seed == 727
    assert _config("--seed", "5").seed == 5
    cfg = _config("--optimizer=rwsadagrad", "--adagrad-eps=1e-8", "--weight-decay=0.01",
                  "--adagrad-lr-decay=0.5", "--adagrad-initial-accumulator-value=0.1")  # fmt: skip
    opt = cfg.optimizer_config()
    assert (opt.name, opt.eps, opt.weight_decay, opt.lr_decay) == ("rwsadagrad", 1e-8, 0.01, 0.5)
    assert opt.initial_accumulator_value == 0.1
    cfg = _config("--lr-num-warmup-steps=3", "--lr-decay-start-step=5", "--lr-num-decay-steps=2")
    lrs = [cfg.lr_policy().lr_at(k) for k in range(6)]  # the reference's off-by-one included
    assert lrs == pytest.approx([1 / 30, 2 / 30, 2 / 30, 2 / 30, 0.1, 0.025])
    loss = _config("--loss-function=wbce", "--loss-weights=0.5-4.0").loss_config()
    assert (loss.name, loss.weights) == ("wbce", (0.5, 4.0))
    assert parse_bool_word("TRUE") and not parse_bool_word("off")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--round-targets", "maybe"], "argument --round-targets: expected True or False"),
        (["--no-data-shuffle=1"], "--no-data-shuffle: takes no value"),
        (["--optimizer", "adam"], "argument --optimizer: invalid choice: 'adam'"),
        (["--bogus-flag", "3"], "unrecognized arguments: --bogus-flag 3"),
    ],
)
def test_parse_errors_print_train_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: numbadlrm train ") and message in err, err[-500:]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--qr-flag", "--qr-operation=concat"], "must be 2 x --arch-sparse-feature-size (32)"),
        (["--md-flag", "--weighted-pooling=learned"], "not combined with QR or MD tables"),
        (["--qr-flag", "--precision=bf16"], "train in fp32 only"),
        (["--loss-threshold=1e-7"], "--loss-threshold 1e-07: clamping the probabilities"),
        (["--activation-function=sigmoid"], "only 'relu' is accepted"),
        (["--weight-decay=0.1"], "--weight-decay: applies to --optimizer adagrad or rwsadagrad"),
        (["--optimizer=adagrad", "--adagrad-eps=0"], "divides 0 by 0"),
        (["--loss-function=wbce", "--loss-weights=1-x"], "--loss-weights: expected two numbers"),
        (["--lr-num-warmup-steps=5", "--lr-decay-start-step=2"], "warmup must finish before"),
        (["--data-sub-sample-rate=1"], "data_sub_sample_rate: must be in [0, 1), got 1.0"),
        (["--mlperf-auc-threshold=2"], "mlperf_auc_threshold: must be in [0, 1], got 2.0"),
    ],
)
def test_values_that_cannot_work_here_are_refused_in_one_line(argv, message, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numbadlrm train: error: ") and message in err and err.count("\n") == 1


def test_flags_without_effect_print_one_note_each(capsys):
    argv = ["train", "--use-gpu", "--test-num-workers=16", "--memory-map", "--sync-dense-params",
            "--num-batches=1", "--arch-embedding-size=5-5", "--arch-mlp-bot=13-8-16",
            "--test-num-batches=1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    notes = [x for x in capsys.readouterr().out.splitlines() if x.startswith("note: ")]
    assert notes == [
        "note: --use-gpu changes nothing here: numbadlrm trains on CPUs",
        "note: --memory-map changes nothing here: processed data is always memory-mapped",
        "note: --test-num-workers changes nothing here: evaluation batches are made by a "
        "background thread",
    ]  # --sync-dense-params True is its default: no note


def test_every_reference_flag_is_known():
    """Each of the reference's flags (dlrm_s_pytorch.py's argparse) is accepted by train."""
    reference = (
        "arch-sparse-feature-size arch-embedding-size arch-mlp-bot arch-mlp-top "
        "arch-interaction-op arch-interaction-itself weighted-pooling md-flag md-threshold "
        "md-temperature md-round-dims qr-flag qr-threshold qr-operation qr-collisions "
        "activation-function loss-function loss-weights loss-threshold round-targets data-size "
        "num-batches data-generation rand-data-dist rand-data-min rand-data-max rand-data-mu "
        "rand-data-sigma data-trace-file data-set raw-data-file processed-data-file "
        "data-randomize data-trace-enable-padding max-ind-range data-sub-sample-rate "
        "num-indices-per-lookup num-indices-per-lookup-fixed num-workers memory-map "
        "mini-batch-size nepochs learning-rate print-precision numpy-rand-seed "
        "sync-dense-params optimizer dataset-multiprocessing inference-only "
        "quantize-mlp-with-bit quantize-emb-with-bit save-onnx use-gpu local_rank dist-backend "
        "print-freq test-freq test-mini-batch-size test-num-workers print-time print-wall-time "
        "debug-mode enable-profiling plot-compute-graph tensor-board-filename save-model "
        "load-model mlperf-logging mlperf-acc-threshold mlperf-auc-threshold mlperf-bin-loader "
        "mlperf-bin-shuffle mlperf-grad-accum-iter lr-num-warmup-steps lr-decay-start-step "
        "lr-num-decay-steps"
    ).split()
    train = build_parser().commands["train"]
    known = {s for action in train._actions for s in action.option_strings}
    assert [f for f in reference if "--" + f not in known] == []
    assert set(NOTES) | set(UNSUPPORTED) <= known
