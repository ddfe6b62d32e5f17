"""DLRM(cfg, precision="bf16"): split-SGD-BF16 mixed precision at the model level.

- split-SGD on the master weights is fp32 SGD bit for bit, given the gradients the step
  formed (its own bf16 activations and gradients, captured from the workspace);
- one step against the exact (float64) step of the fp32 model, within running error
  bounds derived op by op (tests/_bf16_bounds.py);
- a 200-step loss trajectory within a band of fp32's;
- state_dict / load_state_dict in fp32, the per-op timing hook;
- on any x86-64 CPU: without AVX512-BF16 the emulated kernels (one note says so), and
  where the CPU has it, a model on them trains as one on vdpbf16ps, bit for bit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from numbadlrm import DLRM, DLRMConfig
from numbadlrm import reference as ref
from numbadlrm.data.synthetic import batch_stream
from numbadlrm.kernels import elementwise
from numbadlrm.kernels.embedding import bags as kemb
from numbadlrm.kernels.gemm import dpbf16 as microkernel_bf16
from numbadlrm.layers import bf16
from numbadlrm.model.precision import Bf16EmulatedWarning
from numbadlrm.runtime.profiling import OPS, OpTimes

from ._bf16_bounds import LAMBDA, excess, step_bounds
from ._helpers import random_batch, small_config


def wide_config(itself: bool = False) -> DLRMConfig:
    """Widths past one 6 x 64 tile, odd sizes, a logit layer: every GEMM path."""
    return DLRMConfig.from_arch(
        sparse_feature_size=19,
        embedding_size="50-7-300",
        mlp_bot="13-70-19",
        mlp_top="131-67-1",
        interaction_itself=itself,
    )


def test_precision_builds_the_bf16_model_with_fp32_initial_weights():
    cfg = small_config()
    model = DLRM(cfg, seed=4, precision="bf16")
    assert type(model) is DLRM and model.policy.name == "bf16"
    assert model.precision == "bf16" and DLRM(cfg).precision == "fp32"
    fp32 = DLRM(cfg, seed=4).state_dict()
    got = model.state_dict()
    assert all(np.array_equal(got[k], fp32[k]) and got[k].dtype == np.float32 for k in fp32)
    with pytest.raises(ValueError, match="precision: must be one of"):
        DLRM(cfg, precision="fp16")


def _layer_inputs(model, ws):
    """[(dz16, x16)] of every linear layer (top, then bottom), as the backward used them."""
    n = len(model.tower.top)
    out = [(ws.ds16 if i == n - 1 else ws.dtop[i + 1], ws.top[i]) for i in range(n)]
    for i in range(len(model.tower.bottom)):
        out.append((ws.dbottom[i], ws.bottom[i - 1] if i > 0 else ws.dense16))
    return out


@pytest.mark.parametrize("batch_size", [9, 300])  # serial entries, parallel entries
def test_split_sgd_equals_fp32_sgd_bit_for_bit(threads, batch_size):
    """After a bf16 step, every master weight is what the project's fp32 SGD kernels give
    from the pre-step fp32 value and the step's own gradients: dW = dz16^T x16 (the
    unfused bf16 weight pass), db, and the tables' bf16 pooled gradients (fp32 kernel
    v2, in lookup order). Nothing is lost to the split: not one bit."""
    cfg = wide_config()
    rng = np.random.default_rng(1)
    model = DLRM(cfg, seed=2, precision="bf16")
    for _ in range(2):  # a first step so the weights are not at their initial values
        model.train_step(random_batch(rng, cfg, batch_size), 0.1)
    before = model.state_dict()
    batch = random_batch(rng, cfg, batch_size)
    lr = 0.3
    model.train_step(batch, lr)
    after = model.state_dict()
    ws = model.workspace(batch_size)
    lr32 = np.float32(lr)
    names = [s.name for s in model.top_slots] + [s.name for s in model.bottom_slots]
    for name, (dz16, x16) in zip(names, _layer_inputs(model, ws), strict=True):
        dW, db = bf16.linear_backward_weight(dz16, x16)
        for suffix, grad in (("weight", dW), ("bias", db)):
            want = before[f"{name}.{suffix}"].copy()
            elementwise.sgd_update_serial(want.reshape(-1), grad.reshape(-1), lr32)
            np.testing.assert_array_equal(after[f"{name}.{suffix}"], want, f"{name}.{suffix}")
    weights = np.concatenate([before[f"embeddings.{t}.weight"] for t in range(cfg.num_tables)])
    dpooled = bf16.from_bf16(ws.demb)
    kemb.embedding_bags_sgd_update_serial(
        weights, model.row_start, batch.offsets, batch.indices, dpooled, lr32
    )
    for t in range(cfg.num_tables):
        rows = weights[model.row_start[t] : model.row_start[t + 1]]
        np.testing.assert_array_equal(after[f"embeddings.{t}.weight"], rows, f"table {t}")


@pytest.mark.parametrize("itself", [False, True])
def test_bf16_step_within_derived_tolerance_of_the_exact_step(itself):
    """One bf16 step against the exact step (float64, the fp32 model's math) from the same
    fp32 weights. The tolerance of every logit, of the loss and of every updated
    parameter is derived op by op in tests/_bf16_bounds.py: the known truncation of the
    weights, rounding of the dense input and the bf16 run's ReLU masks propagated
    exactly, plus six standard deviations (Hoeffding) of the random bf16 and fp32
    roundings (2^-8 |v| per rounded activation, pooled sum, dot or gradient). A wiring
    error (a wrong operand or scale, a missed rounding, a mask in the wrong place, a
    lost gradient) is caught: its error is the size of the values, not of their
    roundings. The test also checks that bf16 differs from fp32 by more than fp32
    rounding, and that the tolerances are tight: a few % of each logit, and well under
    each parameter's change in the step."""
    cfg = wide_config(itself)
    rng = np.random.default_rng(7)
    model = DLRM(cfg, seed=5, precision="bf16")
    batch = random_batch(rng, cfg, 40)
    lr = 0.125
    before = model.state_dict()
    loss = model.train_step(batch, lr)
    ws = model.workspace(40)
    masks = ([a > 0 for a in ws.bottom], [a > 0 for a in ws.top[1:-1]])
    bounds = step_bounds(cfg, before, batch, lr, masks)
    s = ws.top[-1][:, 0]
    checked = {"logits": s, "loss": loss, **model.state_dict()}
    worst = {name: float(np.max(excess(got, *bounds[name]))) for name, got in checked.items()}
    assert max(worst.values()) <= 1.0, {k: round(v, 2) for k, v in worst.items() if v > 1}
    for name, (want, e) in bounds.items():
        tolerance = LAMBDA * np.sqrt(e.var) + np.abs(e.d)
        if name in ("logits", "loss"):
            assert np.median(tolerance / np.abs(want)) < 0.05, name
        elif not name.startswith("embeddings"):
            change = np.abs(want - before[name])
            assert np.median(tolerance) < 0.4 * np.median(change), name
    assert np.abs(s - bounds["logits"][0]).max() > 1e3 * 2.0**-24  # bf16 differs from fp32


def test_loss_trajectory_stays_within_a_band_of_fp32():
    """200 steps on the learnable synthetic data (the default run's model at batch 64):
    the bf16 loss follows fp32's. Band: the mean loss over every window of 20 steps
    within 0.5% of fp32's, and every step's loss within 0.02. bf16 rounds each
    activation by up to 2^-8 (0.4%), unbiased, so single steps differ by ~1e-3 and
    window means by less (measured: at most 0.11% and 0.0055); a systematic error (a
    scale, a lost gradient, a biased rounding) moves the loss by far more over 200
    steps. And the loss falls as much as fp32's."""
    cfg = DLRMConfig.from_arch(16, "-".join(["1000"] * 8), "13-512-256-64-16", "512-256-1")
    batches = list(batch_stream(cfg, "synthetic", 200, 64, seed=3))
    losses = {}
    for precision in ("fp32", "bf16"):
        model = DLRM(cfg, seed=0, precision=precision)
        losses[precision] = np.array([model.train_step(b, 0.1) for b in batches])
    windows = {p: v.reshape(10, 20).mean(1) for p, v in losses.items()}
    rel = np.abs(windows["bf16"] - windows["fp32"]) / windows["fp32"]
    assert rel.max() < 0.005, rel
    assert np.abs(losses["bf16"] - losses["fp32"]).max() < 0.02
    assert windows["bf16"][-1] < windows["bf16"][0] - 0.05  # it learns
    assert not np.array_equal(losses["bf16"], losses["fp32"])


def test_state_dict_round_trip_and_fp32_models_load_it():
    """load_state_dict splits exactly and state_dict merges exactly; a bf16 model's state
    loads into an fp32 model (predictions from the same master weights) and back."""
    cfg = wide_config()
    rng = np.random.default_rng(2)
    model = DLRM(cfg, seed=1, precision="bf16")
    for _ in range(3):
        model.train_step(random_batch(rng, cfg, 17), 0.2)
    sd = model.state_dict()
    other = DLRM(cfg, seed=9, precision="bf16")
    other.load_state_dict(sd)
    batch = random_batch(rng, cfg, 17)
    np.testing.assert_array_equal(other.predict(batch), model.predict(batch))
    assert other.train_step(batch, 0.2) == model.train_step(batch, 0.2)
    fp32 = DLRM(cfg, seed=9)
    fp32.load_state_dict(model.state_dict())
    assert all(np.array_equal(fp32.state_dict()[k], v) for k, v in model.state_dict().items())
    np.testing.assert_allclose(fp32.predict(batch), model.predict(batch), atol=0.02)
    with pytest.raises(ValueError, match=r"embeddings\.1\.weight has shape"):
        other.load_state_dict({**sd, "embeddings.1.weight": np.zeros((2, 19), np.float32)})


def test_without_avx512_bf16_one_note_says_bf16_is_emulated(monkeypatch):
    """A CPU without AVX512-BF16 builds the model (on the emulated kernels, the defaults
    there) and warns once per process, in one line; silent where vdpbf16ps runs."""
    from numbadlrm.model import precision as model_bf16

    monkeypatch.setattr(model_bf16, "_noted", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Bf16EmulatedWarning)
        if microkernel_bf16.has_avx512_bf16():
            DLRM(small_config(), precision="bf16")
    monkeypatch.setattr(model_bf16, "_noted", False)
    monkeypatch.setattr(microkernel_bf16, "has_avx512_bf16", lambda: False)
    with pytest.warns(Bf16EmulatedWarning) as caught:
        DLRM(small_config(), precision="bf16")
        DLRM(small_config(), precision="bf16")
    assert len(caught) == 1, [str(w.message) for w in caught]
    text = str(caught[0].message)
    assert "\n" not in text and "emulated" in text and "slower than --precision fp32" in text
    assert caught[0].filename == __file__  # points at the caller's line


EMULATED = "v1-emu"
VDPBF16PS_OPS = (
    "bf16_linear_forward",
    "bf16_linear_backward_data",
    "bf16_linear_backward_weight",
    "bf16_dot_interaction_forward",
)


@pytest.mark.skipif(
    not microkernel_bf16.has_avx512_bf16(), reason="this CPU has no AVX512-BF16 (vdpbf16ps)"
)
@pytest.mark.parametrize("batch_size", [9, 300])  # serial entries, parallel entries
def test_emulated_model_trains_as_the_vdpbf16ps_model_bit_for_bit(threads, batch_size):
    """The whole bf16 step on the emulated kernels (v1-emu) and on vdpbf16ps (v1): the
    same losses, predictions and master weights, bit for bit (normal-range values)."""
    cfg = wide_config(itself=True)
    models = [
        DLRM(cfg, seed=5, precision="bf16", kernels={op: name for op in VDPBF16PS_OPS})
        for name in ("v1", EMULATED)
    ]
    rng = np.random.default_rng(6)
    for _ in range(3):
        batch = random_batch(rng, cfg, batch_size)
        assert models[0].train_step(batch, 0.2) == models[1].train_step(batch, 0.2)
    np.testing.assert_array_equal(models[0].predict(batch), models[1].predict(batch))
    hw, emu = (m.state_dict() for m in models)
    for name in hw:
        np.testing.assert_array_equal(hw[name].view(np.uint32), emu[name].view(np.uint32), name)


def test_op_times_and_kernel_choice_work_in_bf16():
    """The per-op timing hook times every op of a bf16 step; a selected bf16 version runs."""
    from numbadlrm.kernels import registry

    calls = []
    real = registry.get("bf16_embedding_update")

    def counting(*args):
        calls.append(1)
        real.parallel(*args)

    registry.register("bf16_embedding_update", "counting", counting, description="test")
    try:
        cfg = small_config()
        model = DLRM(cfg, precision="bf16", kernels={"bf16_embedding_update": "counting"})
        model.op_times = times = OpTimes()
        for _ in range(2):
            model.train_step(random_batch(np.random.default_rng(0), cfg, 5), 0.1)
        assert set(times.medians()) == set(OPS) and all(len(v) == 2 for v in times.seconds.values())
        assert len(calls) == 2
    finally:
        registry.unregister("bf16_embedding_update", "counting")


def test_a_bf16_check_fails_on_a_wrong_kernel():
    """The bf16 checks can fail: a pooled forward that drops one value is caught."""
    from numbadlrm.kernels import registry
    from numbadlrm.kernels.checks import ops as checks

    real = registry.get("bf16_embedding_forward")

    def wrong(pooled16, *args):
        real.parallel(pooled16, *args)
        pooled16[..., 0] = 0

    registry.register("bf16_embedding_forward", "wrong", wrong, description="drops d = 0")
    try:
        with pytest.raises(AssertionError, match="bf16_embedding_forward/wrong"):
            checks.validate("bf16_embedding_forward", "wrong")
    finally:
        registry.unregister("bf16_embedding_forward", "wrong")


def test_bf16_matches_its_own_reference_rounding_of_pooled_and_dense():
    """The embedding output is bf16 of the fp32 sum of the truncated rows, exactly as
    reference.bf16_round would round it (one bag of one row: no summation at all)."""
    cfg = small_config()
    model = DLRM(cfg, seed=3, precision="bf16")
    batch = random_batch(np.random.default_rng(5), cfg, 6, max_bag=1, empty_bags=False)
    ws = model.forward(batch)
    sd = model.state_dict()
    for t in range(cfg.num_tables):
        rows = sd[f"embeddings.{t}.weight"][batch.table_indices(t)]
        hi = ref.bf16_to_f32(ref.split_f32(rows)[0])
        np.testing.assert_array_equal(ws.emb[t], ref.bf16_round(hi))
    np.testing.assert_array_equal(ws.dense16, ref.bf16_round(batch.dense))
