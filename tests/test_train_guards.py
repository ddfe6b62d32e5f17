"""Problems a run can see coming: an empty split it will evaluate is refused before
training; a model whose predictions collapse to a constant is reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.model.dlrm import DLRM
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.evaluation import evaluate
from numbadlrm.train.loop import run_training
from tests._criteo_files import quirky_lines, write_raw

SMALL = {
    "arch_sparse_feature_size": 4,
    "arch_mlp_bot": "13-8-4",
    "arch_mlp_top": "8-1",
    "mini_batch_size": 16,
    "test_mini_batch_size": 64,
    "progress": False,
}


def _processed(tmp_path: Path, fractions: tuple[float, float, float]) -> Path:
    raw = write_raw(tmp_path / "day_0", quirky_lines(np.random.default_rng(3), 200))
    out = tmp_path / "proc"
    options = PreprocessOptions(max_ind_range=20, split_fractions=fractions)
    preprocess([raw], out, options, progress=False)
    return out


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(DLRM, "train_step", lambda *a: pytest.fail("trained before refusing"))


def test_an_empty_test_split_is_refused_before_training(tmp_path, no_training, capsys):
    out = _processed(tmp_path, (0.9, 0.1, 0.0))
    argv = ["train", "--data-generation", "dataset", "--processed-data-file", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"the test split of {out} has no rows, and the run evaluates it at the end" in err


def test_an_empty_validation_split_matters_only_with_test_freq(tmp_path, monkeypatch):
    out = _processed(tmp_path, (0.9, 0.0, 0.1))
    cfg = {**SMALL, "data_generation": "dataset", "processed_data_file": str(out)}
    real_step = DLRM.train_step
    monkeypatch.setattr(DLRM, "train_step", lambda *a: pytest.fail("trained before refusing"))
    with pytest.raises(ValueError, match=r"validation split .* or use --test-freq 0"):
        run_training(TrainConfig(**cfg, test_freq=5), log=lambda *_: None)
    monkeypatch.setattr(DLRM, "train_step", real_step)
    result = run_training(TrainConfig(**cfg, num_batches=3), log=lambda *_: None)
    assert result["steps"] == 3 and result["samples"] == 20


def test_evaluate_an_empty_stream():
    with pytest.raises(ValueError, match="test split: no samples to evaluate"):
        evaluate(None, iter([]), "test split")


def _run_default_model(tmp_path: Path, lr: float) -> tuple[list[str], list[dict]]:
    """The default model and data, 300 steps, validation at step 150 and test at the end."""
    metrics = tmp_path / f"m{lr}.jsonl"
    lines: list[str] = []
    cfg = TrainConfig(
        learning_rate=lr, num_batches=300, test_freq=150, test_num_batches=2,
        progress=False, metrics_file=str(metrics),
    )  # fmt: skip
    run_training(cfg, log=lines.append)
    return lines, [json.loads(x) for x in metrics.read_text().splitlines()]


def test_a_collapsed_model_is_reported(tmp_path):
    lines, records = _run_default_model(tmp_path, 3.0)
    warnings = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warnings) == 3, lines  # validation at 150 and 300, test at 300
    assert "at step 300 every test prediction is nearly the same" in warnings[2]
    assert "try a smaller --learning-rate (this run: 3)" in warnings[2]
    assert [(r["step"], r["split"]) for r in records if "warning" in r] == [
        (150, "validation"), (300, "validation"), (300, "test"),
    ]  # fmt: skip


def test_a_healthy_model_is_not(tmp_path):
    lines, records = _run_default_model(tmp_path, 0.1)
    assert not [ln for ln in lines if "warning" in ln]
    assert not [r for r in records if "warning" in r]
    assert all(r["prediction_std"] > 0.03 for r in records if "auc" in r)
