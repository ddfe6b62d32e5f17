"""The kernel registry: every registered version of every op (yours too: drop a module in
numbadlrm/kernels/lab/) against the NumPy reference, on both entries and 1 and 2 threads;
selection by name, listing, and the proof that a selected version runs inside a step."""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm import DLRM
from numbadlrm.kernels import registry
from numbadlrm.kernels.checks import bf16 as checks_bf16
from numbadlrm.kernels.checks import ops as checks
from numbadlrm.kernels.gemm.dpbf16 import has_avx512_bf16

from ._helpers import random_batch, small_config

registry.load_all()
VERSIONS = [
    pytest.param(op, name, serial, id=f"{op}-{name}-{'serial' if serial else 'parallel'}")
    for op in registry.OPS
    for name, version in registry.versions(op).items()
    for serial in checks.entries(version)
]


@pytest.mark.parametrize(("op", "name", "serial"), VERSIONS)
def test_version_matches_reference(threads, op, name, serial):
    if (op, name) in checks_bf16.NEEDS_AVX512_BF16 and not has_avx512_bf16():
        pytest.skip("this CPU has no AVX512-BF16 (vdpbf16ps): its emulated version is checked")
    checks.validate(op, name, serial)


def test_every_op_has_a_default_and_a_check():
    for op in registry.OPS:
        assert registry.default(op) in registry.versions(op), op
        assert op in checks._CHECKS, op


def test_listing_names_every_op_version_and_default():
    text = registry.listing()
    for op in registry.OPS:
        assert op in text
        for name in registry.versions(op):
            assert f" {name} " in text
    assert "* v2         chunks of bags" in text


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"no version 'v9'.*naive, v1, v2"):
        registry.KernelChoice({"embedding_update": "v9"})
    with pytest.raises(ValueError, match="unknown op 'embeding_update'"):
        registry.KernelChoice("embeding_update=v1")
    with pytest.raises(ValueError, match="expected op=version"):
        registry.KernelChoice("embedding_update")


def test_a_check_fails_on_a_wrong_kernel():
    """The checks can fail: a version that drops the last lookup of every bag is caught."""

    def wrong(pooled, weights, row_start, offsets, indices):
        for t in range(pooled.shape[0]):
            for b in range(pooled.shape[1]):
                lo, hi = offsets[t, b], max(offsets[t, b], offsets[t, b + 1] - 1)
                pooled[t, b] = weights[row_start[t] + indices[lo:hi]].sum(axis=0)

    registry.register("embedding_forward", "wrong", wrong, description="drops a lookup")
    try:
        with pytest.raises(AssertionError, match="embedding_forward/wrong"):
            checks.validate("embedding_forward", "wrong")
    finally:
        registry.unregister("embedding_forward", "wrong")


def test_selected_version_runs_inside_a_default_sized_step():
    """A throwaway kernel that counts its calls, selected by name, runs in every step of a
    model of `numbadlrm train`'s default size (B=128, D=16, T=8: the serial paths)."""
    from numbadlrm.train.config import TrainConfig

    calls = {"parallel": 0, "serial": 0}
    real = registry.get("embedding_update", "v2")

    def counting(entry):
        def run(*args):
            calls[entry] += 1
            real.entry(entry == "serial")(*args)

        return run

    registry.register(
        "embedding_update", "counting", counting("parallel"), counting("serial"), "test"
    )
    try:
        cfg = TrainConfig().model_config()
        model = DLRM(cfg, seed=0, kernels={"embedding_update": "counting"})
        reference = DLRM(cfg, seed=0)
        rng = np.random.default_rng(0)
        for _ in range(3):
            batch = random_batch(rng, cfg, TrainConfig().mini_batch_size, max_bag=1)
            assert model.train_step(batch, 0.1) == reference.train_step(batch, 0.1)
        assert calls["parallel"] + calls["serial"] == 3
        np.testing.assert_array_equal(model.weights, reference.weights)
        # and through the training loop of `numbadlrm train --kernels ...`, default sizes
        from numbadlrm.train.loop import run_training

        run = TrainConfig(
            num_batches=20, kernels="embedding_update=counting", test_num_batches=1, progress=False
        )
        run_training(run, log=lambda *a: None)
        assert calls["parallel"] + calls["serial"] == 3 + 20
    finally:
        registry.unregister("embedding_update", "counting")


def test_gemm_shorthand_and_kernels_combine():
    choice = DLRM(small_config(), gemm="blas", kernels={"linear_forward": "v2"}).kernels
    assert choice.get("linear_forward").name == "v2"
    assert choice.get("linear_backward_weight").name == "blas"
    assert choice.get("embedding_forward").name == registry.default("embedding_forward")
    with pytest.raises(ValueError, match="gemm"):
        DLRM(small_config(), gemm="mkl")


def test_lab_modules_are_registered_and_checked(tmp_path, monkeypatch):
    """A module in numbadlrm/kernels/lab/ is imported by load_all, so its versions are
    listed, selectable and checked: the README's one-file workflow, with the example."""
    import shutil
    import sys
    from pathlib import Path

    from numbadlrm.kernels import lab

    example = Path(__file__).resolve().parents[1] / "examples" / "lab_embedding_update.py"
    shutil.copy(example, tmp_path / "lab_embedding_update.py")
    monkeypatch.setattr(lab, "__path__", [*lab.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        registry.load_all()
        assert "per_table" in registry.versions("embedding_update")
        assert "per_table" in registry.listing()
        for serial in (False, True):
            checks.validate("embedding_update", "per_table", serial)
        cfg = small_config()
        rng = np.random.default_rng(3)
        batch = random_batch(rng, cfg, 9)
        ours = DLRM(cfg, kernels="embedding_update=per_table")
        default = DLRM(cfg)
        assert ours.train_step(batch, 0.1) == default.train_step(batch, 0.1)
        np.testing.assert_allclose(ours.weights, default.weights, rtol=1e-6, atol=1e-7)
    finally:
        registry.unregister("embedding_update", "per_table")
        sys.modules.pop("numbadlrm.kernels.lab.lab_embedding_update", None)
