"""--precision bf16 through the training loop, checkpoints, conversion and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.io.checkpoint import load_checkpoint
from numbadlrm.kernels import registry
from numbadlrm.kernels.checks import bf16 as checks_bf16
from numbadlrm.kernels.gemm import dpbf16 as microkernel_bf16
from numbadlrm.model import precision as model_bf16
from numbadlrm.model.dlrm import DLRM
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import run_training

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
    "precision": "bf16",
}


def _losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if "loss" in r}


def test_bf16_resume_continues_bit_for_bit(tmp_path, monkeypatch):
    """A bf16 run interrupted after a mid-epoch checkpoint and resumed gives the same
    losses, metrics and master weights as one whole run: the checkpoint's fp32 values
    split back into exactly the halves the run had."""
    base = {**TINY, "num_batches": 20, "nepochs": 2, "print_freq": 1}
    whole = run_training(
        TrainConfig(**base, metrics_file=str(tmp_path / "full.jsonl")), log=lambda *_: None
    )
    assert whole["model"].precision == "bf16"
    ckpt = tmp_path / "m.npz"
    run_interrupted(monkeypatch, TrainConfig(**base, save_model=str(ckpt), save_freq=25), 27)
    saved = load_checkpoint(ckpt)
    assert (saved.step, saved.extra["precision"]) == (25, "bf16")
    assert all(v.dtype == np.float32 for v in saved.state.values())
    again = run_training(
        TrainConfig(**base, load_model=str(ckpt), metrics_file=str(tmp_path / "resumed.jsonl")),
        log=lambda *_: None,
    )
    expect, got = _losses(tmp_path / "full.jsonl"), _losses(tmp_path / "resumed.jsonl")
    assert sorted(got) == list(range(26, 41))
    assert all(got[step] == expect[step] for step in got)
    assert again["auc"] == whole["auc"]
    for name, value in again["model"].state_dict().items():
        np.testing.assert_array_equal(value, whole["model"].state_dict()[name])


def test_bf16_checkpoint_loads_into_fp32_and_converts_to_torch(tmp_path):
    """The checkpoint holds the fp32 master weights: an fp32 model loads them as they are
    (and predicts what the bf16 model predicts, up to bf16 compute), and the PyTorch
    converter writes the reference's state_dict from them."""
    ckpt = tmp_path / "m.npz"
    result = run_training(TrainConfig(**TINY, num_batches=5, save_model=str(ckpt)), lambda *_: None)
    saved = load_checkpoint(ckpt)
    bf16_state = result["model"].state_dict()
    assert all(np.array_equal(saved.state[k], v) for k, v in bf16_state.items())
    fp32 = DLRM(saved.config)
    fp32.load_state_dict(saved.state)
    cfg = TrainConfig(**{**TINY, "precision": "fp32"})
    from numbadlrm.train.sources import SyntheticSource

    batch = next(SyntheticSource(cfg, saved.config).eval_batches("test"))
    np.testing.assert_allclose(fp32.predict(batch), result["model"].predict(batch), atol=0.02)
    torch = pytest.importorskip("torch")
    pt = tmp_path / "m.pt"
    assert main(["convert", str(ckpt), "--to-torch", str(pt)]) == 0
    sd = torch.load(pt)["state_dict"]  # after 5 steps: with the position
    np.testing.assert_array_equal(sd["bot_l.0.weight"].numpy(), bf16_state["bottom_mlp.0.weight"])
    np.testing.assert_array_equal(sd["emb_l.2.weight"].numpy(), bf16_state["embeddings.2.weight"])


def test_fp32_checkpoint_resumes_in_bf16(tmp_path):
    """An fp32 checkpoint loads into a bf16 run (split exactly) and trains on."""
    ckpt = tmp_path / "m.npz"
    fp32 = {**TINY, "precision": "fp32"}
    run_training(TrainConfig(**fp32, num_batches=3, save_model=str(ckpt)), log=lambda *_: None)
    saved = load_checkpoint(ckpt)
    model = DLRM(saved.config, precision="bf16")
    model.load_state_dict(saved.state)
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in saved.state.items())
    result = run_training(
        TrainConfig(**TINY, num_batches=3, nepochs=2, load_model=str(ckpt)), log=lambda *_: None
    )
    assert result["steps"] == 6 and np.isfinite(result["logloss"])


def test_cli_precision_bf16(capsys, monkeypatch):
    argv = ["train", "--precision", "bf16", "--arch-embedding-size", "50-40"]
    argv += ["--arch-mlp-bot", "13-8-16", "--num-batches", "4", "--test-num-batches", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if not line.startswith("note:"))
    assert "precision bf16" in header and "test at step 4: auc" in out
    with pytest.raises(SystemExit):  # argparse's choices
        main([*argv[:2], "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    # a CPU without AVX512-BF16: the run goes on, emulated, after one note line
    monkeypatch.setattr(microkernel_bf16, "has_avx512_bf16", lambda: False)
    monkeypatch.setattr(model_bf16, "_noted", False)
    for op, _ in checks_bf16.NEEDS_AVX512_BF16:  # the defaults registration picks there
        monkeypatch.setattr(registry._op(op), "default", microkernel_bf16.EMULATED.version)
    assert main(argv) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.out.splitlines() if "emulated" in line]
    assert len(notes) == 1 and notes[0].startswith("note: precision bf16 is emulated"), notes
    assert "slower than --precision fp32" in notes[0] and "test at step 4: auc" in captured.out
    assert "emulated" not in captured.err  # no second note as a warning


def test_precision_is_validated():
    with pytest.raises(ValueError, match="precision: must be one of"):
        TrainConfig(precision="fp16")


def test_bf16_refuses_stateful_optimizers_and_trains_every_loss(capsys):
    """Split-SGD is an SGD method: Adagrad and row-wise Adagrad are refused in one line
    (model, MPI model and CLI, before anything is allocated); the losses are fp32 ops on
    the fp32 logits and work in bf16 as in fp32."""
    cfg = TrainConfig(**TINY).model_config()
    for name in ("adagrad", "rwsadagrad"):
        with pytest.raises(ValueError, match=f"--optimizer {name}: --precision bf16 trains"):
            DLRM(cfg, precision="bf16", optimizer=name)
        with pytest.raises(ValueError, match="split-SGD only"):
            TrainConfig(**TINY, optimizer=name)
    argv = ["train", "--precision", "bf16", "--optimizer", "rwsadagrad", "--num-batches", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--optimizer rwsadagrad: --precision bf16" in err[0], err
    for loss in ("mse", "wbce"):
        extra = {"loss_weights": "0.3-0.7"} if loss == "wbce" else {}
        result = run_training(
            TrainConfig(**TINY, loss_function=loss, num_batches=6, **extra), log=lambda m: None
        )
        assert result["steps"] == 6 and np.isfinite(result["logloss"])
