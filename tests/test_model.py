"""Whole training steps: the Numba model against the NumPy reference and against PyTorch.

Tolerance: one step changes parameters by lr * grad with grads O(1e-1); the float32 model
and the float64 reference differ by float32 rounding of sums over at most a few hundred
terms (~1e-6 relative). Over 10 steps those differences compound slightly, so parameters
are compared with rtol=1e-4 plus atol=1e-5 (entries near zero) and losses with rtol=1e-5.
A wrong index, missing ReLU or wrong scaling gives errors of order 1e-2 or more.
"""

import numpy as np
import pytest

from numbadlrm import DLRM, Batch
from numbadlrm.reference import ReferenceDLRM

from ._helpers import random_batch, small_config

VARIANTS = [("dot", False), ("dot", True), ("cat", False)]


def _args(b: Batch):
    return b.dense, b.offsets, b.indices, b.labels


def _assert_params_close(sd, ref_params, rtol=1e-4, atol=1e-5):
    for name, value in sd.items():
        np.testing.assert_allclose(value, ref_params[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("gemm", ["numba", "blas"])
@pytest.mark.parametrize("op,itself", VARIANTS)
def test_ten_step_trajectory_matches_reference(threads, op, itself, gemm):
    cfg = small_config(op, itself, tables="7-11-5-30")
    rng = np.random.default_rng(0)
    model = DLRM(cfg, seed=1, gemm=gemm)
    reference = ReferenceDLRM(cfg, model.state_dict(), dtype=np.float64)
    for step in range(10):
        batch = random_batch(rng, cfg, 17 + step)
        expected_p = reference.forward(*_args(batch))[1]
        np.testing.assert_allclose(model.predict(batch), expected_p, rtol=1e-5, atol=1e-6)
        loss = model.train_step(batch, lr=0.2)
        ref_loss = reference.train_step(*_args(batch), lr=0.2)
        assert np.isclose(loss, ref_loss, rtol=1e-5), (step, loss, ref_loss)
    _assert_params_close(model.state_dict(), reference.params)


@pytest.mark.parametrize("op,itself", VARIANTS)
def test_ten_step_trajectory_matches_pytorch(op, itself):
    torch = pytest.importorskip("torch")
    from numbadlrm.interop.torch_dlrm import TorchDLRM, torch_train_step

    cfg = small_config(op, itself, tables="7-11-5-30")
    rng = np.random.default_rng(1)
    model = DLRM(cfg, seed=2)
    oracle = TorchDLRM.from_numbadlrm(cfg, model.state_dict())
    opt = torch.optim.SGD(oracle.parameters(), lr=0.2)
    for step in range(10):
        batch = random_batch(rng, cfg, 23)
        loss = model.train_step(batch, lr=0.2)
        torch_loss = torch_train_step(oracle, opt, batch)
        assert np.isclose(loss, torch_loss, rtol=1e-5), (step, loss, torch_loss)
    _assert_params_close(model.state_dict(), oracle.to_numbadlrm())


def test_training_reduces_loss_on_a_fixed_batch():
    cfg = small_config()
    batch = random_batch(np.random.default_rng(2), cfg, 32)
    model = DLRM(cfg, seed=0)
    first = model.train_step(batch, lr=0.5)
    for _ in range(50):
        last = model.train_step(batch, lr=0.5)
    assert last < 0.7 * first


def test_initialisation_follows_the_reference():
    cfg = small_config(tables="1000-200", dim=16)
    cfg = type(cfg).from_arch(16, "1000-200", "13-512-16", "256-1")
    sd = DLRM(cfg, seed=0).state_dict()
    w = sd["bottom_mlp.0.weight"]  # (512, 13): std sqrt(2 / 525)
    assert abs(w.std() - np.sqrt(2 / 525)) < 0.05 * np.sqrt(2 / 525)
    b = sd["bottom_mlp.0.bias"]  # std sqrt(1 / 512)
    assert abs(b.std() - np.sqrt(1 / 512)) < 0.15 * np.sqrt(1 / 512)
    table = sd["embeddings.0.weight"]
    assert np.abs(table).max() <= np.sqrt(1 / 1000)
    assert abs(table.std() - np.sqrt(1 / 1000) / np.sqrt(3)) < 0.05 * np.sqrt(1 / 1000)


def test_table_values_do_not_depend_on_other_tables():
    a = DLRM(small_config(tables="7-11-5"), seed=4).state_dict()
    b = DLRM(small_config(tables="7-3-9"), seed=4).state_dict()
    np.testing.assert_array_equal(a["embeddings.0.weight"], b["embeddings.0.weight"])
    assert not np.array_equal(a["embeddings.1.weight"][:3], b["embeddings.1.weight"])
    c = DLRM(small_config(tables="7-11-5"), seed=5).state_dict()
    assert not np.array_equal(a["embeddings.0.weight"], c["embeddings.0.weight"])


def test_state_dict_round_trip_and_errors():
    cfg = small_config()
    model, other = DLRM(cfg, seed=0), DLRM(cfg, seed=1)
    sd = model.state_dict()
    assert sorted(sd) == sorted(
        [f"bottom_mlp.{i}.{k}" for i in range(2) for k in ("weight", "bias")]
        + [f"top_mlp.{i}.{k}" for i in range(2) for k in ("weight", "bias")]
        + [f"embeddings.{t}.weight" for t in range(3)]
    )
    assert sd["bottom_mlp.0.weight"].shape == (8, 5)
    other.load_state_dict(sd)
    for name, value in other.state_dict().items():
        np.testing.assert_array_equal(value, sd[name])
    before = other.state_dict()
    with pytest.raises(ValueError, match="missing"):
        other.load_state_dict({k: v for k, v in sd.items() if k != "top_mlp.0.bias"})
    with pytest.raises(ValueError, match=r"embeddings.1.weight has shape \(3, 4\)"):
        other.load_state_dict({**sd, "embeddings.1.weight": np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match="dtype float64"):
        other.load_state_dict({**sd, "top_mlp.0.bias": sd["top_mlp.0.bias"].astype(np.float64)})
    for name, value in other.state_dict().items():  # nothing changed on error
        np.testing.assert_array_equal(value, before[name])


def test_model_rejects_bad_batches_and_backend():
    cfg = small_config()
    model = DLRM(cfg)
    batch = random_batch(np.random.default_rng(3), cfg, 4)
    bad = Batch(
        dense=batch.dense, offsets=batch.offsets, indices=batch.indices + 100, labels=batch.labels
    )
    with pytest.raises(ValueError, match="table 0 has 7 rows but is looked up at index"):
        model.train_step(bad, lr=0.1)
    with pytest.raises(ValueError, match="gemm"):
        DLRM(cfg, gemm="mkl")


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -float("inf"), -0.1, "fast"])
def test_train_step_refuses_a_bad_learning_rate_before_any_change(lr):
    cfg = small_config()
    model = DLRM(cfg, seed=0, gemm="numba")
    batch = random_batch(np.random.default_rng(5), cfg, 4)
    before = model.state_dict()
    with pytest.raises(ValueError, match=f"^learning rate: must be .*, got '?{lr}'?$"):
        model.train_step(batch, lr)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    assert np.isfinite(model.train_step(batch, 0.0))  # lr 0 stays allowed
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_dense_parameters_share_one_flat_buffer():
    model = DLRM(small_config())
    layer = model.bottom[0]
    w, dw = layer.w, layer.dW
    assert np.shares_memory(w, model.params) and np.shares_memory(dw, model.grads)
    n = sum(v.size for k, v in model.state_dict().items() if not k.startswith("emb"))
    assert model.params.size == n


def test_train_step_stores_no_dense_gradient():
    """SGD is fused into each layer's weight GEMM: the gradient buffer is never written,
    yet every MLP parameter moves."""
    cfg = small_config()
    batch = random_batch(np.random.default_rng(4), cfg, 32)
    for gemm in ("blas", "numba"):
        model = DLRM(cfg, seed=1, gemm=gemm)
        before = model.params.copy()
        model.train_step(batch, lr=0.1)
        assert (model.grads == 0).all()
        for slot in model.bottom_slots + model.top_slots:
            w = slice(slot.w_offset, slot.w_offset + slot.in_features * slot.out_features)
            b = slice(slot.b_offset, slot.b_offset + slot.out_features)
            assert not np.array_equal(before[w], model.params[w]), slot.name
            assert not np.array_equal(before[b], model.params[b]), slot.name
