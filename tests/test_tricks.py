"""The reference's table tricks (issue 22): QR and MD tables, weighted pooling.

Depths: md_solver and the config's checks; the NumPy reference's new backwards against
float64 finite differences; the Numba model against the reference (5 SGD steps) and
against the PyTorch transcription of the reference's modules (5 steps of SGD, Adagrad
and row-wise Adagrad); checkpoints. The kernels' checks run in tests/test_registry.py.
Tolerances as tests/test_model.py and tests/test_optim_model.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from numbadlrm import DLRM, DLRMConfig
from numbadlrm.config import md_solver
from numbadlrm.io.checkpoint import load_checkpoint, save_model_checkpoint
from numbadlrm.optim.optimizers import OptimizerConfig
from numbadlrm.reference import ReferenceDLRM

from ._helpers import random_batch, small_config

TABLES = "7-11-5-300"
TRICKS = {
    "qr_mult": (dict(qr_flag=True, qr_threshold=10, qr_collisions=4), 8),
    "qr_add": (dict(qr_flag=True, qr_threshold=10, qr_collisions=3, qr_operation="add"), 8),
    "qr_concat": (dict(qr_flag=True, qr_threshold=6, qr_operation="concat"), 8),
    "md": (dict(md_flag=True, md_threshold=6, md_temperature=0.5), 8),
    "md_round": (dict(md_flag=True, md_threshold=0, md_temperature=0.3, md_round_dims=True), 8),
    "learned": (dict(weighted_pooling="learned"), 4),
    "fixed": (dict(weighted_pooling="fixed"), 4),
}


def trick_config(name: str, op: str = "dot") -> DLRMConfig:
    tricks, dim = TRICKS[name]
    return dataclasses.replace(small_config(op, tables=TABLES, dim=dim), **tricks)


def _args(b):
    return b.dense, b.offsets, b.indices, b.labels


# ---------------------------------------------------------------------- config


def test_md_solver_is_the_references():
    # smallest keeps D; round(16 (10 / n)^0.3), at least 1; input order kept
    assert md_solver((1000, 10, 100, 10**9), 0.3, 16, False) == (4, 16, 8, 1)
    assert md_solver((1000, 10, 100, 10**9), 0.3, 16, True) == (4, 16, 8, 1)
    assert md_solver((10, 30), 0.3, 16, False) == (16, 12)
    assert md_solver((10, 30), 0.3, 16, True) == (16, 16)  # 12 -> 2^round(3.58) = 16
    assert md_solver((10, 30), 0.0, 24, True) == (24, 24)  # 32 would exceed D: kept at D


def test_plans_and_the_references_crash_cases():
    cfg = trick_config("md")  # 5 rows: at the threshold 6 or below keeps D (the reference
    plans = cfg.table_plans()  # would make it narrow without a projection and crash)
    assert [p.kind for p in plans] == ["md", "md", "plain", "md"]
    assert plans[2].dim == 8 and plans[3].dim == 1
    concat = trick_config("qr_concat").table_plans()  # tables at or below: full width D
    assert [(p.kind, p.dim) for p in concat] == [("qr", 4), ("qr", 4), ("plain", 8), ("qr", 4)]
    assert concat[3].shapes_rows == (75, 4)


@pytest.mark.parametrize(
    "tricks, message",
    [
        (dict(qr_flag=True, md_flag=True), "choose one table trick"),
        (dict(qr_flag=True, weighted_pooling="learned"), "not combined with QR or MD"),
        (dict(qr_operation="div"), "qr_operation: must be one of"),
        (dict(qr_collisions=0), "qr_collisions: must be an integer >= 1"),
        (dict(md_temperature=-1.0), "md_temperature: must be a finite number >= 0"),
        (dict(weighted_pooling="yes"), "weighted_pooling: must be"),
    ],
)
def test_bad_trick_settings_are_refused_in_one_line(tricks, message):
    with pytest.raises(ValueError, match=message) as info:
        dataclasses.replace(small_config(), **tricks)
    assert "\n" not in str(info.value)


def test_concat_needs_an_even_width():
    with pytest.raises(ValueError, match="must be even"):
        dataclasses.replace(small_config(dim=5), qr_flag=True, qr_operation="concat")


def test_config_dict_round_trip_and_old_dicts():
    cfg = trick_config("qr_add")
    assert DLRMConfig.from_dict(cfg.to_dict()) == cfg
    plain = small_config()
    assert "qr_flag" not in plain.to_dict()  # old checkpoints' configs stay the same
    assert DLRMConfig.from_dict(plain.to_dict()) == plain


def test_bf16_is_refused_with_tricks():
    with pytest.raises(ValueError, match="fp32 only"):
        DLRM(trick_config("qr_mult"), precision="bf16")


# ------------------------------------------------ reference vs finite differences


@pytest.mark.parametrize("name", ["qr_mult", "qr_add", "qr_concat", "md", "learned"])
def test_reference_backward_matches_finite_differences(name):
    cfg = trick_config(name)
    rng = np.random.default_rng(5)
    params = {k: v.astype(np.float64) for k, v in DLRM(cfg, seed=3).state_dict().items()}
    if name == "learned":  # weights away from 1, so that their gradient is generic
        for t in range(cfg.num_tables):
            params[f"pooling_weights.{t}"] = rng.uniform(0.5, 1.5, cfg.embedding_sizes[t])
    batch = random_batch(rng, cfg, 9)
    ref = ReferenceDLRM(cfg, params, dtype=np.float64)
    _, _, cache = ref.forward(*_args(batch))
    grads = ref.backward(batch.offsets, batch.indices, batch.labels, cache)
    new = [n for n in grads if not n.startswith(("bottom_mlp", "top_mlp"))]
    assert new and set(new) <= set(params)
    h = 1e-6
    for n in new:
        flat = ref.params[n].reshape(-1)
        for k in np.argsort(-np.abs(grads[n].reshape(-1)))[:4]:  # touched entries
            keep = flat[k]
            flat[k] = keep + h
            up = ref.forward(*_args(batch))[0]
            flat[k] = keep - h
            down = ref.forward(*_args(batch))[0]
            flat[k] = keep
            numeric = (up - down) / (2 * h)
            np.testing.assert_allclose(grads[n].reshape(-1)[k], numeric, rtol=1e-5, atol=1e-9,
                                       err_msg=f"{n}[{k}]")  # fmt: skip


# ------------------------------------------------ the model vs the reference


@pytest.mark.parametrize("op", ["dot", "cat"])
@pytest.mark.parametrize("name", list(TRICKS))
def test_five_sgd_steps_match_the_reference(name, op):
    cfg = trick_config(name, op)
    model = DLRM(cfg, seed=1)
    ref = ReferenceDLRM(cfg, model.state_dict())
    rng = np.random.default_rng(0)
    for _ in range(5):
        batch = random_batch(rng, cfg, 17)
        np.testing.assert_allclose(model.predict(batch), ref.forward(*_args(batch))[1],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        loss = model.train_step(batch, 0.1)
        assert np.isclose(loss, ref.train_step(*_args(batch), 0.1), rtol=1e-5)
    for n, v in model.state_dict().items():
        np.testing.assert_allclose(v, ref.params[n], rtol=1e-4, atol=1e-5, err_msg=n)


def test_qr_and_md_store_fewer_rows():
    plain = DLRM(small_config(tables="7-11-5-3000", dim=8))
    qr = DLRM(dataclasses.replace(plain.config, qr_flag=True, qr_threshold=10))
    md = DLRM(dataclasses.replace(plain.config, md_flag=True, md_threshold=10))
    assert qr.compressed.nbytes() < plain.tables.nbytes / 3
    assert md.compressed.nbytes() < plain.tables.nbytes / 2
    assert qr.compressed.stored[3][0].min() >= np.sqrt(1 / 3000)  # the reference's U(a, 1)


# ------------------------------------------------ the model vs PyTorch


torch = pytest.importorskip("torch")
from numbadlrm.interop.torch_dlrm import TorchDLRM, torch_train_step  # noqa: E402
from numbadlrm.interop.torch_optim import RowWiseSparseAdagrad  # noqa: E402

torch.sparse.check_sparse_tensor_invariants.disable()

OPTIMIZERS = {
    "sgd": OptimizerConfig("sgd"),
    "adagrad": OptimizerConfig("adagrad", eps=1e-8, initial_accumulator_value=0.1, lr_decay=0.05),
    "rwsadagrad": OptimizerConfig("rwsadagrad"),
}


def _torch_optimizer(oracle, cfg: OptimizerConfig, lr: float):
    params = list(oracle.parameters())
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    kwargs = dict(lr=lr, eps=cfg.eps, initial_accumulator_value=cfg.initial_accumulator_value,
                  lr_decay=cfg.lr_decay)  # fmt: skip
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, **kwargs)
    return RowWiseSparseAdagrad(params, **kwargs)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("name", ["qr_mult", "qr_add", "qr_concat", "md", "md_round", "learned"])
def test_five_steps_match_pytorch(name, optimizer):
    cfg = trick_config(name)
    model = DLRM(cfg, seed=2, optimizer=OPTIMIZERS[optimizer])
    sd = model.state_dict()
    for n in sd:  # QR's U(sqrt(1/n), 1) saturates the sigmoid, where torch's BCELoss clamps
        sd[n] *= np.float32(0.2 if n.endswith(("weight_q", "weight_r")) else 1)
    model.load_state_dict(sd)
    oracle = TorchDLRM.from_numbadlrm(cfg, sd)
    opt = _torch_optimizer(oracle, OPTIMIZERS[optimizer], 0.1)
    rng = np.random.default_rng(3)
    for step in range(5):
        batch = random_batch(rng, cfg, 23)
        loss = model.train_step(batch, 0.1)
        assert np.isclose(loss, torch_train_step(oracle, opt, batch), rtol=1e-5), step
    got, want = model.state_dict(), oracle.to_numbadlrm()
    assert set(got) == set(want)
    for n in got:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-4, atol=1e-5, err_msg=n)


def test_pytorch_init_is_the_references_form():
    oracle = TorchDLRM(trick_config("qr_mult"), rng=np.random.default_rng(0))
    q = oracle.emb_l[3].weight_q.detach().numpy()
    assert q.min() >= np.sqrt(1 / 300) and q.max() <= 1.0
    md = TorchDLRM(trick_config("md"), rng=np.random.default_rng(0))
    assert tuple(md.emb_l[3].proj.weight.shape) == (8, 1)


# ------------------------------------------------ checkpoints


@pytest.mark.parametrize("name", ["qr_concat", "md", "learned"])
def test_checkpoint_round_trip_with_optimizer_state(name, tmp_path):
    cfg = trick_config(name)
    model = DLRM(cfg, seed=4, optimizer="adagrad")
    rng = np.random.default_rng(1)
    for _ in range(2):
        model.train_step(random_batch(rng, cfg, 8), 0.1)
    save_model_checkpoint(tmp_path / "m.ckpt", model, step=2)
    ckpt = load_checkpoint(tmp_path / "m.ckpt")
    assert ckpt.config == cfg
    again = DLRM(ckpt.config, seed=9, optimizer="adagrad")
    again.load_state_dict(ckpt.state)
    again.load_optimizer_state_dict(ckpt.optimizer_state, ckpt.optimizer_steps)
    batch = random_batch(rng, cfg, 8)
    assert model.train_step(batch, 0.1) == again.train_step(batch, 0.1)
    for n, v in model.state_dict().items():
        np.testing.assert_array_equal(v, again.state_dict()[n], err_msg=n)


def test_mpi_refuses_the_tricks_in_one_line():
    mpi = pytest.importorskip("mpi4py.MPI")
    from numbadlrm.parallel.distributed import DistributedDLRM

    with pytest.raises(ValueError, match="not implemented across ranks yet") as info:
        DistributedDLRM(trick_config("md"), mpi.COMM_SELF)
    assert "\n" not in str(info.value)


def test_convert_to_torch_writes_the_references_names(tmp_path, capsys):
    from numbadlrm.cli.main import main

    cfg = trick_config("md")
    save_model_checkpoint(tmp_path / "m.ckpt", DLRM(cfg, seed=1))
    main(["convert", str(tmp_path / "m.ckpt"), "--to-torch", str(tmp_path / "m.pt")])
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    sd = loaded.get("state_dict", loaded)
    assert "emb_l.3.proj.weight" in sd and "emb_l.3.embs.weight" in sd
    TorchDLRM(cfg, rng=np.random.default_rng(0)).load_state_dict(sd, strict=True)
    assert main(["convert", str(tmp_path / "m.pt"), "--from-torch", str(tmp_path / "b.npz")])
    assert "cannot rebuild the model" in capsys.readouterr().err
