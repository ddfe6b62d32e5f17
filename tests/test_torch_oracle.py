"""The PyTorch DLRM (autograd) against the NumPy ReferenceDLRM (hand-derived backward).

Two independent implementations of the same model: agreement of forward, one SGD step
and a 10-step trajectory checks the reference's hand-derived gradients and the torch
model's wiring at once. Each comparison runs twice:

- torch in float64 against the reference in float64: only summation order differs, so
  everything agrees to ~1e-15 (measured); we allow 1e-12 (1e-11 for parameters after
  10 steps). This pins down the semantics: column-major pairs, a missing ReLU, mean
  pooling or a dropped diagonal each fail these tests (checked by mutating the model).
- torch in float32 (as it is used as a baseline) against the reference in float64 from
  the same float32 parameters. The model is a few layers of width <= 16 with values O(1),
  so each output carries a handful of float32 roundings (eps = 1.2e-7) times a small
  condition number: measured forward errors are <= 2e-7 relative, and we allow 1e-5.
  After 10 SGD steps (lr 0.1) measured parameter errors are <= 3e-7 absolute and 1e-5
  relative at entries near 1e-3; we allow rtol 1e-4 plus atol 1e-6 (a relative bound
  means nothing at entries near zero), and rtol 1e-5 on losses (measured <= 2e-7).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from numbadlrm.batch import Batch  # noqa: E402
from numbadlrm.config import DLRMConfig  # noqa: E402
from numbadlrm.interop.torch_dlrm import (  # noqa: E402
    TorchDLRM,
    batch_to_torch,
    from_reference_state_dict,
    to_reference_state_dict,
    torch_predict,
    torch_train_step,
)
from numbadlrm.model.state import state_dict_shapes  # noqa: E402
from numbadlrm.reference import ReferenceDLRM  # noqa: E402

CONFIGS = {
    "dot": dict(interaction_op="dot", interaction_itself=False),
    "dot_itself": dict(interaction_op="dot", interaction_itself=True),
    "cat": dict(interaction_op="cat", interaction_itself=False),
}
LR = 0.1


def make_config(variant: str) -> DLRMConfig:
    return DLRMConfig.from_arch(
        sparse_feature_size=4,
        embedding_size="7-11-5",
        mlp_bot="5-8-4",
        mlp_top="6-1",
        **CONFIGS[variant],
    )


def random_params(config: DLRMConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """float32 parameters named as ReferenceDLRM expects, scaled to keep activations O(1)."""
    params = {}
    for name, shape in state_dict_shapes(config).items():
        if name.startswith("embeddings"):
            params[name] = rng.uniform(-0.6, 0.6, shape)
        elif name.endswith("weight"):
            params[name] = rng.normal(0, np.sqrt(2 / sum(shape)), shape)
        else:
            params[name] = rng.normal(0, 0.3, shape)
    return {name: value.astype(np.float32) for name, value in params.items()}


def random_batch(config: DLRMConfig, rng: np.random.Generator, batch_size: int = 9) -> Batch:
    """Bags of 0..4 lookups; bag 0 of every table is empty, bag 1 repeats one row."""
    offsets = np.zeros((config.num_tables, batch_size + 1), dtype=np.int64)
    flat = []
    for t, rows in enumerate(config.embedding_sizes):
        offsets[t, 0] = len(flat)
        for b in range(batch_size):
            if b == 0:
                bag = []
            elif b == 1:
                bag = [int(rng.integers(rows))] * 3
            else:
                bag = rng.integers(0, rows, int(rng.integers(0, 5))).tolist()
            flat.extend(bag)
            offsets[t, b + 1] = len(flat)
    return Batch(
        dense=rng.normal(0, 1, (batch_size, config.num_dense)).astype(np.float32),
        offsets=offsets,
        indices=np.asarray(flat, dtype=np.int64),
        labels=rng.integers(0, 2, batch_size).astype(np.float32),
    )


def reference_forward(ref: ReferenceDLRM, batch: Batch):
    loss, p, _ = ref.forward(batch.dense, batch.offsets, batch.indices, batch.labels)
    return float(loss), p


def torch_forward(model: TorchDLRM, batch: Batch):
    dense, offsets, indices, labels = batch_to_torch(batch)
    with torch.no_grad():
        p = model(dense, offsets, indices)
        loss = model.loss(p, labels)
    return float(loss), p[:, 0].double().numpy()


def make_pair(variant: str, seed: int, torch_dtype):
    config = make_config(variant)
    params = random_params(config, np.random.default_rng(seed))
    model = TorchDLRM.from_numbadlrm(config, params).to(torch_dtype)
    return config, model, ReferenceDLRM(config, params, dtype=np.float64)


# ---------------------------------------------------------------------------- forward

# torch dtype -> (rtol, atol) against the float64 reference; see the module docstring.
FORWARD_TOL = {torch.float64: (1e-12, 1e-14), torch.float32: (1e-5, 1e-7)}


@pytest.mark.parametrize("torch_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", list(CONFIGS))
def test_forward_matches_reference(variant, torch_dtype):
    config, model, ref = make_pair(variant, seed=1, torch_dtype=torch_dtype)
    rtol, atol = FORWARD_TOL[torch_dtype]
    for seed in range(3):
        batch = random_batch(config, np.random.default_rng(100 + seed))
        ref_loss, ref_p = reference_forward(ref, batch)
        loss, p = torch_forward(model, batch)
        assert 1e-3 < ref_p.min() and ref_p.max() < 1 - 1e-3  # not saturated: a real test
        np.testing.assert_allclose(p, ref_p, rtol=rtol, atol=atol)
        np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=atol)
        np.testing.assert_allclose(torch_predict(model, batch), ref_p, rtol=rtol, atol=atol)


def test_empty_bag_pools_to_zero():
    config, model, _ = make_pair("dot", seed=2, torch_dtype=torch.float64)
    batch = random_batch(config, np.random.default_rng(3))
    _, offsets, indices, _ = batch_to_torch(batch)
    for bag, off, idx in zip(model.emb_l, offsets, indices, strict=True):
        pooled = bag(idx, off)
        assert torch.all(pooled[0] == 0)  # bag 0 is empty
        row = idx[off[1]]
        torch.testing.assert_close(pooled[1], 3 * bag.weight[row])  # bag 1 = one row x3


# ------------------------------------------------------------------------- training

# torch dtype -> (loss rtol, param rtol, param atol) after up to 10 steps.
TRAIN_TOL = {torch.float64: (1e-12, 1e-11, 1e-13), torch.float32: (1e-5, 1e-4, 1e-6)}


def assert_params_close(model: TorchDLRM, ref: ReferenceDLRM, rtol: float, atol: float):
    ours = model.to_numbadlrm()
    assert ours.keys() == ref.params.keys()
    for name, value in ours.items():
        np.testing.assert_allclose(value, ref.params[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("torch_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", list(CONFIGS))
def test_one_sgd_step_matches_reference(variant, torch_dtype):
    config, model, ref = make_pair(variant, seed=4, torch_dtype=torch_dtype)
    loss_rtol, rtol, atol = TRAIN_TOL[torch_dtype]
    before = model.to_numbadlrm()
    batch = random_batch(config, np.random.default_rng(5))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss = torch_train_step(model, optimizer, batch)
    ref_loss = ref.train_step(batch.dense, batch.offsets, batch.indices, batch.labels, LR)
    np.testing.assert_allclose(loss, ref_loss, rtol=loss_rtol)
    assert_params_close(model, ref, rtol, atol)
    # Every dense parameter and every looked-up table moved: the step did something.
    after = model.to_numbadlrm()
    moved = [name for name in before if not np.array_equal(before[name], after[name])]
    assert sorted(moved) == sorted(before)


@pytest.mark.parametrize("torch_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", list(CONFIGS))
def test_ten_step_trajectory_matches_reference(variant, torch_dtype):
    config, model, ref = make_pair(variant, seed=6, torch_dtype=torch_dtype)
    loss_rtol, rtol, atol = TRAIN_TOL[torch_dtype]
    rng = np.random.default_rng(7)
    batches = [random_batch(config, rng) for _ in range(2)]  # revisit batches: loss falls
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses, ref_losses = [], []
    for step in range(10):
        batch = batches[step % 2]
        losses.append(torch_train_step(model, optimizer, batch))
        ref_losses.append(
            ref.train_step(batch.dense, batch.offsets, batch.indices, batch.labels, LR)
        )
    np.testing.assert_allclose(losses, ref_losses, rtol=loss_rtol)
    assert losses[-1] < losses[0] and losses[-2] < losses[1]
    assert_params_close(model, ref, rtol, atol)


# ------------------------------------------------------------------------ converters


def test_reference_layout_and_mapping():
    config = make_config("dot")
    model = TorchDLRM(config, rng=np.random.default_rng(0))
    # Linear at 2i, activation at 2i + 1; the Sigmoid closes the top MLP (dlrm_s_pytorch.py).
    assert [type(m).__name__ for m in model.bot_l] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert [type(m).__name__ for m in model.top_l] == ["Linear", "ReLU", "Linear", "Sigmoid"]
    assert all(type(m).__name__ == "EmbeddingBag" and m.mode == "sum" for m in model.emb_l)
    assert all(m.sparse for m in model.emb_l)
    expected = {
        "bot_l.0.weight": (8, 5), "bot_l.0.bias": (8,),
        "bot_l.2.weight": (4, 8), "bot_l.2.bias": (4,),
        "emb_l.0.weight": (7, 4), "emb_l.1.weight": (11, 4), "emb_l.2.weight": (5, 4),
        "top_l.0.weight": (6, 10), "top_l.0.bias": (6,),
        "top_l.2.weight": (1, 6), "top_l.2.bias": (1,),
    }  # fmt: skip
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected

    params = random_params(config, np.random.default_rng(8))
    ref_sd = to_reference_state_dict(params, config)
    assert ref_sd.keys() == expected.keys()
    pairs = [
        ("bot_l.2.weight", "bottom_mlp.1.weight"),
        ("bot_l.0.bias", "bottom_mlp.0.bias"),
        ("top_l.2.weight", "top_mlp.1.weight"),
        ("emb_l.1.weight", "embeddings.1.weight"),
    ]
    for ref_name, name in pairs:
        np.testing.assert_array_equal(ref_sd[ref_name].numpy(), params[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_converters_round_trip_exactly(dtype):
    config = make_config("dot_itself")
    params = {
        k: v.astype(dtype) for k, v in random_params(config, np.random.default_rng(9)).items()
    }
    ref_sd = to_reference_state_dict(params, config)
    back = from_reference_state_dict(ref_sd, config)
    assert back.keys() == params.keys()
    for name, value in params.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value)
        assert not np.shares_memory(back[name], value)

    model = TorchDLRM(config, rng=np.random.default_rng(1))
    again = to_reference_state_dict(from_reference_state_dict(model.state_dict(), config), config)
    for name, value in model.state_dict().items():
        assert torch.equal(again[name], value)
    loaded = TorchDLRM.from_numbadlrm(config, params)
    for name, value in loaded.to_numbadlrm().items():
        np.testing.assert_array_equal(value, params[name].astype(np.float32))


def test_converter_errors():
    config = make_config("dot")
    params = random_params(config, np.random.default_rng(10))
    ref_sd = to_reference_state_dict(params, config)

    missing = {k: v for k, v in params.items() if k != "top_mlp.1.bias"}
    with pytest.raises(ValueError, match=r"missing \['top_mlp.1.bias'\]"):
        to_reference_state_dict(missing, config)
    with pytest.raises(ValueError, match=r"unexpected \['bottom_mlp.7.weight'\]"):
        to_reference_state_dict({**params, "bottom_mlp.7.weight": np.zeros(1)}, config)
    bad_shape = {**params, "embeddings.2.weight": np.zeros((6, 4), np.float32)}
    with pytest.raises(ValueError, match=r"embeddings.2.weight has shape \(6, 4\).*\(5, 4\)"):
        to_reference_state_dict(bad_shape, config)
    with pytest.raises(ValueError, match="shape"):
        TorchDLRM.from_numbadlrm(config, bad_shape)

    # numbadlrm names handed to the reverse converter: all missing, all unexpected.
    with pytest.raises(ValueError, match=r"missing \['bot_l.0.weight'.*unexpected"):
        from_reference_state_dict(params, config)
    with pytest.raises(ValueError, match=r"missing \['emb_l.2.weight'\]"):
        from_reference_state_dict(
            {k: v for k, v in ref_sd.items() if k != "emb_l.2.weight"}, config
        )
    with pytest.raises(ValueError, match=r"bot_l.2.weight has shape \(8, 4\)"):
        from_reference_state_dict({**ref_sd, "bot_l.2.weight": torch.zeros(8, 4)}, config)
    other = make_config("cat")  # top MLP input 16 instead of 10
    with pytest.raises(ValueError, match=r"top_l.0.weight has shape \(6, 10\).*\(6, 16\)"):
        from_reference_state_dict(ref_sd, other)


def test_batch_to_torch_offsets_are_per_table():
    config = make_config("dot")
    batch = random_batch(config, np.random.default_rng(11), batch_size=6)
    dense, offsets, indices, labels = batch_to_torch(batch)
    assert dense.dtype == torch.float32 and labels.shape == (6,)
    for t in range(config.num_tables):
        assert offsets[t].shape == (6,) and offsets[t][0] == 0
        for b in range(6):
            end = offsets[t][b + 1] if b < 5 else len(indices[t])
            lo, hi = batch.offsets[t, b], batch.offsets[t, b + 1]
            np.testing.assert_array_equal(
                indices[t][offsets[t][b] : end].numpy(), batch.indices[lo:hi]
            )


def test_module_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numbadlrm.interop.torch_dlrm as m\n"
        "from numbadlrm.config import DLRMConfig\n"
        "cfg = DLRMConfig.from_arch(4, '3-3', '2-4', '1')\n"
        "try:\n"
        "    m.TorchDLRM(cfg)\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PyTorch is not installed; pip install 'numbadlrm[torch]'"
