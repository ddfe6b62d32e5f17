"""Whole DLRM training with Adagrad, row-wise Adagrad and the other losses against PyTorch.

The oracle is TorchDLRM (autograd) with torch.optim.Adagrad, or the transcription of the
reference's RWSAdagrad (numbadlrm/interop/torch_optim.py), over 10 steps of multi-hot batches
with empty bags and repeated rows, the lr changing every step as the LR policy changes
it. Tolerances are those of the SGD oracle (tests/test_model.py): losses rtol 1e-5,
parameters rtol 1e-4 plus atol 1e-5; optimizer state (sums of squared gradients) rtol
1e-4 plus atol 1e-9. Measured: parameters within 2.1e-7, states within 4.5e-6 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm import DLRM
from numbadlrm.optim.lr_policy import LRPolicy
from numbadlrm.optim.optimizers import OptimizerConfig

from ._helpers import random_batch, small_config

torch = pytest.importorskip("torch")

from numbadlrm.interop.torch_dlrm import TorchDLRM, torch_train_step  # noqa: E402
from numbadlrm.interop.torch_optim import RowWiseSparseAdagrad  # noqa: E402

torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default, without its warning

SETTINGS = {
    "adagrad": OptimizerConfig("adagrad"),
    "adagrad_settings": OptimizerConfig(
        "adagrad", eps=1e-8, initial_accumulator_value=0.1, weight_decay=0.01, lr_decay=0.05
    ),
    "rwsadagrad": OptimizerConfig("rwsadagrad"),
    "rwsadagrad_settings": OptimizerConfig(
        "rwsadagrad", eps=1e-6, initial_accumulator_value=0.05, weight_decay=0.02, lr_decay=0.1
    ),
}
POLICY = LRPolicy(0.05, num_warmup_steps=3, decay_start_step=5, num_decay_steps=4)


def torch_optimizer(oracle: TorchDLRM, cfg: OptimizerConfig, lr: float):
    """The reference's optimizer over TorchDLRM; weight decay on the MLPs only (torch
    refuses it with the tables' sparse gradients)."""
    tables = list(oracle.emb_l.parameters())
    dense = [p for name, p in oracle.named_parameters() if not name.startswith("emb_l.")]
    groups = [{"params": dense, "weight_decay": cfg.weight_decay}, {"params": tables}]
    kwargs = dict(lr=lr, eps=cfg.eps, initial_accumulator_value=cfg.initial_accumulator_value,
                  lr_decay=cfg.lr_decay)  # fmt: skip
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, **kwargs)
    return RowWiseSparseAdagrad(groups, **kwargs)


def torch_state(oracle: TorchDLRM, optimizer) -> dict[str, np.ndarray]:
    """The torch optimizer's state under numbadlrm's names."""
    from numbadlrm.interop.torch_dlrm import reference_names

    by_ref = {ref: name for name, ref in reference_names(oracle.config).items()}
    out = {}
    for ref_name, p in oracle.named_parameters():
        state = optimizer.state[p]
        key = "momentum" if "momentum" in state else "sum"
        out[by_ref[ref_name]] = state[key].detach().numpy().copy()
    return out


def assert_close(ours: dict, theirs: dict, rtol: float, atol: float) -> None:
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        np.testing.assert_allclose(value, theirs[name], rtol=rtol, atol=atol, err_msg=name)


def train_both(cfg, setting: OptimizerConfig, steps=10, gemm="auto", loss="bce", weights=(1, 1)):
    rng = np.random.default_rng(3)
    model = DLRM(cfg, seed=4, gemm=gemm, optimizer=setting, loss=loss)
    if loss == "wbce":
        model = DLRM(cfg, seed=4, gemm=gemm, optimizer=setting, loss=_wbce(weights))
    oracle = TorchDLRM.from_numbadlrm(cfg, model.state_dict(), loss=loss, loss_weights=weights)
    if setting.stateful:
        optimizer = torch_optimizer(oracle, setting, POLICY.lr_at(0))
    else:
        optimizer = torch.optim.SGD(oracle.parameters(), lr=POLICY.lr_at(0))
    batches = [random_batch(rng, cfg, 23) for _ in range(3)]  # revisited: repeated rows
    for step in range(steps):
        lr = POLICY.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = batches[step % 3]
        loss_ours = model.train_step(batch, lr)
        loss_torch = torch_train_step(oracle, optimizer, batch)
        assert np.isclose(loss_ours, loss_torch, rtol=1e-5), (step, loss_ours, loss_torch)
    return model, oracle, optimizer


def _wbce(weights):
    from numbadlrm.layers.loss import LossConfig

    return LossConfig("wbce", weights)


@pytest.mark.parametrize("op,itself", [("dot", False), ("dot", True), ("cat", False)])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_ten_steps_match_pytorch(setting, op, itself):
    cfg = small_config(op, itself, tables="7-11-5-30")
    model, oracle, optimizer = train_both(cfg, SETTINGS[setting])
    assert_close(model.state_dict(), oracle.to_numbadlrm(), rtol=1e-4, atol=1e-5)
    assert_close(model.optimizer_state_dict(), torch_state(oracle, optimizer), 1e-4, 1e-9)
    assert model.optimizer.steps == 10
    if SETTINGS[setting].rowwise_tables:
        assert model.optimizer_state_dict()["embeddings.3.weight"].shape == (30,)


@pytest.mark.parametrize("gemm", ["numba", "blas"])
def test_adagrad_on_each_gemm_backend(gemm):
    cfg = small_config(tables="7-11-5-30")
    model, oracle, _ = train_both(cfg, SETTINGS["adagrad_settings"], gemm=gemm)
    assert_close(model.state_dict(), oracle.to_numbadlrm(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss,weights", [("mse", (1.0, 1.0)), ("wbce", (0.3, 2.5))])
@pytest.mark.parametrize("setting", ["sgd", "adagrad"])
def test_losses_match_pytorch(loss, weights, setting):
    cfg = small_config(tables="7-11-5-30")
    opt = SETTINGS[setting] if setting != "sgd" else OptimizerConfig()
    model, oracle, _ = train_both(cfg, opt, loss=loss, weights=weights)
    assert_close(model.state_dict(), oracle.to_numbadlrm(), rtol=1e-4, atol=1e-5)


def test_sgd_stays_bit_identical_to_the_fused_path():
    """optimizer="sgd" is today's fused SGD: the same floats as a model built without it."""
    cfg = small_config(tables="7-11-5-30")
    rng = np.random.default_rng(5)
    a, b = DLRM(cfg, seed=1), DLRM(cfg, seed=1, optimizer="sgd", loss="bce")
    for _ in range(4):
        batch = random_batch(rng, cfg, 19)
        assert a.train_step(batch, 0.2) == b.train_step(batch, 0.2)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[name])
    assert b.optimizer_state_dict() == {} and b.optimizer.steps == 4


def test_adagrad_untouched_rows_and_empty_batch_tables_keep_their_values():
    """Rows no bag looks up keep their weights and state (the update is sparse)."""
    cfg = small_config(tables="7-11-5-30")
    model = DLRM(cfg, seed=2, optimizer=OptimizerConfig("adagrad", initial_accumulator_value=0.3))
    batch = random_batch(np.random.default_rng(6), cfg, 5, max_bag=1)
    before = model.state_dict()["embeddings.3.weight"]
    model.train_step(batch, 0.1)
    looked_up = set(batch.table_indices(3).tolist())
    after = model.state_dict()["embeddings.3.weight"]
    state = model.optimizer_state_dict()["embeddings.3.weight"]
    for r in range(30):
        if r in looked_up:
            assert not np.array_equal(after[r], before[r])
        else:
            np.testing.assert_array_equal(after[r], before[r])
            assert (state[r] == np.float32(0.3)).all()


def test_optimizer_settings_are_checked():
    with pytest.raises(ValueError, match="--optimizer: must be one of sgd, adagrad, rwsadagrad"):
        OptimizerConfig("adam")
    with pytest.raises(ValueError, match="--weight-decay: applies to --optimizer adagrad"):
        OptimizerConfig("sgd", weight_decay=0.1)
    with pytest.raises(ValueError, match=r"--adagrad-eps: must be a finite number >= 0, got -1"):
        OptimizerConfig("adagrad", eps=-1.0)
    with pytest.raises(ValueError, match="--adagrad-lr-decay: must be a finite number"):
        OptimizerConfig("adagrad", lr_decay=float("nan"))
    with pytest.raises(ValueError, match="divides 0 by 0"):
        OptimizerConfig("adagrad", eps=0.0)
    OptimizerConfig("adagrad", eps=0.0, initial_accumulator_value=0.1)  # well defined
    cfg = small_config()
    with pytest.raises(ValueError, match="--loss-function: must be one of bce, wbce, mse"):
        DLRM(cfg, loss="hinge")


def test_load_optimizer_state_dict_checks_before_changing_anything():
    cfg = small_config()
    model = DLRM(cfg, seed=0, optimizer="rwsadagrad")
    sd = model.optimizer_state_dict()
    assert sd["embeddings.1.weight"].shape == (11,) and sd["bottom_mlp.0.weight"].shape == (8, 5)
    bad = {**sd, "embeddings.1.weight": np.zeros((11, 4), np.float32)}
    with pytest.raises(ValueError, match=r"optimizer state: embeddings.1.weight has shape"):
        model.load_optimizer_state_dict(bad, 3)
    assert model.optimizer.steps == 0
    model.load_optimizer_state_dict({k: v + 1 for k, v in sd.items()}, 3)
    assert model.optimizer.steps == 3
    np.testing.assert_array_equal(
        model.optimizer_state_dict()["top_mlp.1.bias"], sd["top_mlp.1.bias"] + 1
    )


def test_a_batch_the_table_kernels_cannot_index_is_refused_before_any_update(monkeypatch):
    """The fused table kernels pack a bag in 30 bits: a batch beyond that is refused after
    the forward, before any parameter or state changes (here with the limit lowered to 8
    samples, as no test machine holds 2^30)."""
    from numbadlrm.optim import optimizers

    monkeypatch.setattr(optimizers, "MAX_BATCH", 8)
    cfg = small_config()
    model = DLRM(cfg, seed=0, optimizer="adagrad")
    batch = random_batch(np.random.default_rng(8), cfg, 9)
    params, state = model.state_dict(), model.optimizer_state_dict()
    with pytest.raises(ValueError, match=r"adagrad: a batch must have fewer than 2\^30 samples"):
        model.train_step(batch, 0.1)
    assert model.optimizer.steps == 0
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, params[name])
    for name, value in model.optimizer_state_dict().items():
        np.testing.assert_array_equal(value, state[name])
    assert DLRM(cfg, seed=0).train_step(batch, 0.1) > 0  # SGD has no such limit


@pytest.mark.parametrize("optimizer", ["adagrad", "rwsadagrad"])
def test_tables_the_table_kernels_cannot_index_are_refused_at_construction(monkeypatch, optimizer):
    """The table kernels' keys hold rows below 2^33 (limit lowered here to the test's rows)."""
    from numbadlrm.optim import optimizers

    cfg = small_config()
    monkeypatch.setattr(optimizers, "MAX_TABLE_ROWS", sum(cfg.embedding_sizes) - 1)
    with pytest.raises(ValueError, match=rf"{optimizer}: tables must have fewer than 2\^33 rows"):
        DLRM(cfg, seed=0, optimizer=optimizer)
    monkeypatch.setattr(optimizers, "MAX_TABLE_ROWS", sum(cfg.embedding_sizes))
    assert DLRM(cfg, seed=0, optimizer=optimizer).optimizer.steps == 0
