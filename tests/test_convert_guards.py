"""`numbadlrm convert` on hostile inputs (issue 20): a malformed .pt is refused in one line
naming the key, what was expected and what was found, and nothing is written; bad
optimizer state is refused before writing; --to-torch writes atomically; and the training
position survives a round trip, so a resumed run equals the uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.io.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    save_model_checkpoint,
)
from numbadlrm.model.dlrm import DLRM
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import run_training
from tests._helpers import random_batch, run_interrupted, small_config

torch = pytest.importorskip("torch")

from numbadlrm.interop.torch_dlrm import TorchDLRM  # noqa: E402


def _state_dict() -> dict:
    return TorchDLRM(small_config(), rng=np.random.default_rng(0)).state_dict()


def _adagrad_pt(tmp_path) -> dict:
    """The reference layout of a small model trained 2 steps with Adagrad."""
    cfg = small_config()
    model = DLRM(cfg, seed=1, optimizer="adagrad")
    rng = np.random.default_rng(2)
    for _ in range(2):
        model.train_step(random_batch(rng, cfg, 8), 0.1)
    save_model_checkpoint(tmp_path / "a.npz", model, 2, 0, 2)
    assert main(["convert", str(tmp_path / "a.npz"), "--to-torch", str(tmp_path / "a.pt")]) == 0
    return torch.load(tmp_path / "a.pt", weights_only=True)


def _without(sd: dict, key: str) -> dict:
    return {k: v for k, v in sd.items() if k != key}


def _malformed(tmp_path) -> dict:
    sd = _state_dict()
    good = _adagrad_pt(tmp_path)
    osd = good["opt_state_dict"]

    def with_state(i: int, **entry) -> dict:
        state = {**osd["state"], i: {**osd["state"][i], **entry}}
        return {**good, "opt_state_dict": {**osd, "state": state}}

    return {
        "a bare tensor": (torch.zeros(3), "holds a torch.float32 tensor of shape (3,), "
                          "expected a dict (a state_dict, or the reference's"),
        "a list": ([sd], "holds a list, expected a dict"),
        "opt_state_dict=5": ({"state_dict": sd, "opt_state_dict": 5},
                             "opt_state_dict: expected an optimizer's state_dict, a dict with "
                             "'state' (a dict) and 'param_groups' (a list of dicts with "
                             "'params'), found 5"),
        "a gap in emb_l": (_without(sd, "emb_l.1.weight"),
                           "no 'emb_l.1.weight' (tables are numbered 0..T-1; found [0, 2])"),
        "emb_l.0.bias": ({**sd, "emb_l.0.bias": torch.zeros(4)},
                         "unexpected key 'emb_l.0.bias' in the state_dict (expected "
                         "bot_l.{2i}.weight/.bias, top_l.{2i}.weight/.bias and emb_l.{t}.weight)"),
        "a 1-D bot_l.0.weight": ({**sd, "bot_l.0.weight": torch.zeros(8)},
                                 "'bot_l.0.weight' is of shape (8,), expected 2-D (out, in)"),
        "a bf16 tensor": ({**sd, "bot_l.0.weight": sd["bot_l.0.weight"].bfloat16()},
                          "'bot_l.0.weight' is a torch.bfloat16 tensor of shape (8, 5), "
                          "expected a float32 tensor"),
        "a state of the wrong shape": (with_state(0, sum=torch.zeros(3)),
                                       "opt_state_dict: state 0 (emb_l.0.weight): 'sum' has "
                                       "shape (3,), expected (7, 4)"),
        "step=-5": (with_state(4, step=torch.tensor(-5.0)),
                    "opt_state_dict: state 4 (bot_l.0.bias): 'step' is -5, "
                    "expected an integer >= 0"),
        "a negative Adagrad sum": (with_state(1, sum=-torch.ones(11, 4)),
                                   "opt_state_dict: state 1 (emb_l.1.weight): 'sum' holds -1.0, "
                                   "expected sums of squares (finite, >= 0)"),
        "iter=-1": ({**good, "iter": -1}, "'iter' is -1, expected an integer >= 0"),
    }  # fmt: skip


CASES = ["a bare tensor", "a list", "opt_state_dict=5", "a gap in emb_l", "emb_l.0.bias",
         "a 1-D bot_l.0.weight", "a bf16 tensor", "a state of the wrong shape", "step=-5",
         "a negative Adagrad sum", "iter=-1"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_pt_is_refused_naming_the_key(tmp_path, capsys, case):
    value, message = _malformed(tmp_path)[case]
    pt, out = tmp_path / "x.pt", tmp_path / "x.npz"
    torch.save(value, pt)
    capsys.readouterr()
    assert main(["convert", str(pt), "--from-torch", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"numbadlrm convert: error: convert: {pt}: {message}"), err
    assert err.count("\n") == 1, err
    assert not list(tmp_path.glob("*x.npz*"))  # nothing written, no temporary file


def test_a_truncated_pt_is_refused(tmp_path, capsys):
    pt = tmp_path / "x.pt"
    torch.save(_state_dict(), pt)
    pt.write_bytes(pt.read_bytes()[:1000])
    assert main(["convert", str(pt), "--from-torch", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    prefix = f"numbadlrm convert: error: convert: {pt}: not a readable torch file (truncated"
    assert err.startswith(prefix) and err.count("\n") == 1, err
    assert not (tmp_path / "x.npz").exists()


def test_a_checkpoint_with_a_negative_optimizer_state_does_not_load(tmp_path):
    cfg = small_config()
    model = DLRM(cfg, optimizer="adagrad")
    state = model.optimizer_state_dict()
    state["embeddings.0.weight"][0, 0] = -1.0
    ckpt = Checkpoint(cfg, model.state_dict(), optimizer=model.optimizer.config,
                      optimizer_state=state)  # fmt: skip
    save_checkpoint(tmp_path / "m.npz", ckpt)
    with pytest.raises(CheckpointError, match=r"'__optim__.embeddings.0.weight' holds a negative"):
        load_checkpoint(tmp_path / "m.npz")


def test_to_torch_refuses_a_missing_directory_and_writes_atomically(tmp_path, capsys, monkeypatch):
    cfg = small_config()
    save_model_checkpoint(tmp_path / "m.npz", DLRM(cfg))
    pt = tmp_path / "nodir" / "x.pt"
    assert main(["convert", str(tmp_path / "m.npz"), "--to-torch", str(pt)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"numbadlrm convert: error: --to-torch {pt}: directory {pt.parent} does not exist\n"
    )
    target = tmp_path / "x.pt"
    target.write_bytes(b"the previous file")
    real_save = torch.save

    def half_then_fail(obj, f):
        f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    assert main(["convert", str(tmp_path / "m.npz"), "--to-torch", str(target)]) == 2
    assert f"{target}: cannot write: the disk is full" in capsys.readouterr().err
    assert target.read_bytes() == b"the previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "x.pt"]
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["convert", str(target), "--from-torch", str(target)]) == 2
    assert "is the input file" in capsys.readouterr().err


TINY = {
    "arch_sparse_feature_size": 4, "arch_embedding_size": "50-60-70", "arch_mlp_bot": "13-8-4",
    "arch_mlp_top": "8-1", "mini_batch_size": 16, "test_num_batches": 1,
    "test_mini_batch_size": 64, "progress": False, "num_batches": 10, "nepochs": 2,
    "print_freq": 1, "learning_rate": 0.05, "lr_num_warmup_steps": 4,
    "lr_decay_start_step": 9, "lr_num_decay_steps": 8,
}  # fmt: skip


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_a_round_trip_through_torch_resumes_exactly(tmp_path, monkeypatch, optimizer):
    """npz -> .pt -> npz keeps (step, epoch, batch_in_epoch): resuming from the converted
    checkpoint trains the same steps, losses and weights as one uninterrupted run."""
    base = {**TINY, "optimizer": optimizer}
    whole = run_training(TrainConfig(**base), log=lambda *_: None)
    ckpt, pt, back = tmp_path / "m.npz", tmp_path / "m.pt", tmp_path / "back.npz"
    run_interrupted(monkeypatch, TrainConfig(**base, save_model=str(ckpt), save_freq=12), 14)
    assert main(["convert", str(ckpt), "--to-torch", str(pt)]) == 0
    assert main(["convert", str(pt), "--from-torch", str(back)]) == 0
    saved, converted = load_checkpoint(ckpt), load_checkpoint(back)
    position = (converted.step, converted.epoch, converted.batch_in_epoch)
    assert position == (saved.step, saved.epoch, saved.batch_in_epoch) == (12, 1, 2)
    again = run_training(TrainConfig(**base, load_model=str(back)), log=lambda *_: None)
    assert again["steps"] == whole["steps"] == 20
    for name, value in whole["model"].state_dict().items():
        np.testing.assert_array_equal(again["model"].state_dict()[name], value, err_msg=name)
    assert again["auc"] == whole["auc"]


def test_the_reference_position_counts_its_steps(tmp_path):
    """A reference checkpoint ({"epoch", "iter", "nbatches"}) gives step epoch * nbatches +
    iter, as the reference resumes it."""
    pt, out = tmp_path / "ref.pt", tmp_path / "m.npz"
    torch.save({"state_dict": _state_dict(), "epoch": 2, "iter": 3, "nbatches": 7}, pt)
    assert main(["convert", str(pt), "--from-torch", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert (ckpt.step, ckpt.epoch, ckpt.batch_in_epoch) == (17, 2, 3)
