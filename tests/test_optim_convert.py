"""`numbadlrm convert` with optimizer state: a numbadlrm Adagrad checkpoint becomes the
reference's {"state_dict", "opt_state_dict"}, which torch.optim.Adagrad (or RWSAdagrad)
loads and trains on exactly as numbadlrm does; and back. Tolerances as the oracle's
(tests/test_optim_model.py)."""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.io.checkpoint import load_checkpoint, save_model_checkpoint
from numbadlrm.model.dlrm import DLRM
from numbadlrm.optim.optimizers import OptimizerConfig
from numbadlrm.train.loop import load_into

from ._helpers import random_batch, small_config

torch = pytest.importorskip("torch")

from numbadlrm.interop.torch_dlrm import TorchDLRM, torch_train_step  # noqa: E402
from numbadlrm.interop.torch_optim import RowWiseSparseAdagrad  # noqa: E402

torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default, without its warning
LR = 0.05
SETTINGS = {
    "adagrad": OptimizerConfig("adagrad", eps=1e-8, initial_accumulator_value=0.1, lr_decay=0.1),
    "rwsadagrad": OptimizerConfig("rwsadagrad", weight_decay=0.01, lr_decay=0.05),
}


def reference_optimizer(oracle: TorchDLRM, setting: OptimizerConfig):
    """The reference's optimizer over its dlrm.parameters() order (tables first); with
    weight decay the tables in a group of their own (torch refuses it for them)."""
    emb, bot, top = (list(m.parameters()) for m in (oracle.emb_l, oracle.bot_l, oracle.top_l))
    params = emb + bot + top  # DLRM_Net creates emb_l, then bot_l, then top_l
    tables = len(emb)
    kwargs = dict(lr=LR, eps=setting.eps, lr_decay=setting.lr_decay,
                  initial_accumulator_value=setting.initial_accumulator_value)  # fmt: skip
    groups = [{"params": params}]
    if setting.weight_decay:
        groups = [{"params": params[:tables]},
                  {"params": params[tables:], "weight_decay": setting.weight_decay}]  # fmt: skip
    cls = torch.optim.Adagrad if setting.name == "adagrad" else RowWiseSparseAdagrad
    return cls(groups, **kwargs)


def assert_trains_alike(model: DLRM, oracle: TorchDLRM, optimizer, batches) -> None:
    for batch in batches:
        ours, theirs = model.train_step(batch, LR), torch_train_step(oracle, optimizer, batch)
        assert np.isclose(ours, theirs, rtol=1e-5), (ours, theirs)
    expected = oracle.to_numbadlrm()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_to_torch_carries_the_state_the_reference_loads(tmp_path, name):
    cfg = small_config(tables="7-11-5-30")
    rng = np.random.default_rng(1)
    batches = [random_batch(rng, cfg, 19) for _ in range(6)]
    model = DLRM(cfg, seed=2, optimizer=SETTINGS[name])
    for batch in batches[:3]:
        model.train_step(batch, LR)
    save_model_checkpoint(tmp_path / "m.npz", model, 3, 0, 3, {"learning_rate": LR})
    assert main(["convert", str(tmp_path / "m.npz"), "--to-torch", str(tmp_path / "m.pt")]) == 0
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert sorted(saved) == ["epoch", "iter", "numbadlrm_step", "opt_state_dict", "state_dict"]
    assert (saved["numbadlrm_step"], saved["epoch"], saved["iter"]) == (3, 0, 3)
    osd = saved["opt_state_dict"]
    assert len(osd["param_groups"]) == (2 if SETTINGS[name].weight_decay else 1)
    assert int(osd["state"][0]["step"]) == 3
    key = "momentum" if name == "rwsadagrad" else "sum"
    assert tuple(osd["state"][0][key].shape) == ((7,) if name == "rwsadagrad" else (7, 4))

    oracle = TorchDLRM(cfg, rng=np.random.default_rng(0))
    oracle.load_state_dict(saved["state_dict"])
    optimizer = reference_optimizer(oracle, SETTINGS[name])
    optimizer.load_state_dict(osd)
    assert_trains_alike(model, oracle, optimizer, batches[3:])


@pytest.mark.parametrize("name", list(SETTINGS))
def test_from_torch_resumes_the_reference_optimizer(tmp_path, name):
    cfg = small_config(tables="7-11-5-30")
    rng = np.random.default_rng(3)
    batches = [random_batch(rng, cfg, 19) for _ in range(6)]
    oracle = TorchDLRM(cfg, rng=np.random.default_rng(4))
    optimizer = reference_optimizer(oracle, SETTINGS[name])
    for batch in batches[:3]:
        torch_train_step(oracle, optimizer, batch)
    pt = tmp_path / "ref.pt"
    torch.save({"state_dict": oracle.state_dict(), "opt_state_dict": optimizer.state_dict()}, pt)
    assert main(["convert", str(pt), "--from-torch", str(tmp_path / "m.npz")]) == 0
    ckpt = load_checkpoint(tmp_path / "m.npz")
    assert ckpt.optimizer == SETTINGS[name] and ckpt.optimizer_steps == 3
    model = DLRM(cfg, seed=9, optimizer=SETTINGS[name])
    notes = []
    load_into(model, str(tmp_path / "m.npz"), cfg, notes.append)
    assert notes == [] and model.optimizer.steps == 3
    assert_trains_alike(model, oracle, optimizer, batches[3:])


def test_sgd_converts_to_the_bare_state_dict_as_before(tmp_path):
    cfg = small_config()
    model = DLRM(cfg, seed=1)
    save_model_checkpoint(tmp_path / "m.npz", model)
    assert main(["convert", str(tmp_path / "m.npz"), "--to-torch", str(tmp_path / "m.pt")]) == 0
    assert "bot_l.0.weight" in torch.load(tmp_path / "m.pt", weights_only=True)
    sgd = torch.optim.SGD(TorchDLRM(cfg).parameters(), lr=0.1)
    pt = tmp_path / "sgd.pt"
    state = TorchDLRM(cfg).state_dict()
    torch.save({"state_dict": state, "opt_state_dict": sgd.state_dict()}, pt)
    assert main(["convert", str(pt), "--from-torch", str(tmp_path / "back.npz")]) == 0
    back = load_checkpoint(tmp_path / "back.npz")
    assert back.optimizer == OptimizerConfig("sgd") and back.optimizer_state == {}
