"""model.gradients(batch): every parameter's gradient without an update, named as the
state_dict names the parameters, against numbadlrm.reference's hand-derived backward in
float64; and the Python API's one compile notice."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from numbadlrm import DLRM
from numbadlrm.kernels import jit, registry
from numbadlrm.reference import ReferenceDLRM

from ._helpers import random_batch, small_config

COMPILING = "compiling kernels (once: they are cached on disk for later runs) ..."


def reference_gradients(model: DLRM, batch) -> dict[str, np.ndarray]:
    ref = ReferenceDLRM(model.config, model.state_dict())  # float64
    _, _, cache = ref.forward(batch.dense, batch.offsets, batch.indices, batch.labels)
    return ref.backward(batch.offsets, batch.indices, batch.labels, cache)


@pytest.mark.parametrize(("op", "itself"), [("dot", False), ("dot", True), ("cat", False)])
def test_gradients_match_the_reference_backward(op, itself):
    cfg = small_config(op, itself)
    model = DLRM(cfg, seed=2)
    batch = random_batch(np.random.default_rng(5), cfg, 13)
    got = model.gradients(batch)
    want = reference_gradients(model, batch)
    assert sorted(got) == sorted(model.state_dict()) == sorted(want)
    for name, g in want.items():
        assert got[name].dtype == np.float32 and got[name].shape == g.shape, name
        np.testing.assert_allclose(got[name], g, rtol=1e-4, atol=1e-6, err_msg=name)
    assert np.abs(got["embeddings.1.weight"]).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_gradients_update_nothing(optimizer):
    cfg = small_config()
    model = DLRM(cfg, seed=2, optimizer=optimizer)
    batch = random_batch(np.random.default_rng(1), cfg, 6)
    before, state = model.state_dict(), model.optimizer_state_dict()
    first = model.gradients(batch)
    second = model.gradients(batch)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    for name, value in model.optimizer_state_dict().items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    assert model.optimizer.steps == 0


def test_an_sgd_step_moves_every_parameter_by_minus_lr_times_its_gradient():
    cfg = small_config()
    model = DLRM(cfg, seed=4)
    batch = random_batch(np.random.default_rng(2), cfg, 9)
    before, grads = model.state_dict(), model.gradients(batch)
    model.train_step(batch, lr=0.5)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value, before[name] - 0.5 * grads[name], atol=1e-6, err_msg=name)


def test_gradients_of_a_bf16_model_are_refused_in_one_line():
    model = DLRM(small_config(), precision="bf16")
    batch = random_batch(np.random.default_rng(0), model.config, 3)
    with pytest.raises(ValueError, match=r"^gradients: fp32 models only, this one is bf16$"):
        model.gradients(batch)


@pytest.fixture
def fresh_kernel():
    """A loss kernel no process has compiled (no cache): its first call compiles."""

    @numba.njit
    def fresh(p, ds, s, labels):
        n = s.shape[0]
        loss = 0.0
        for i in range(n):
            p[i] = 1.0 / (1.0 + np.exp(-s[i]))
            ds[i] = (p[i] - labels[i]) / n
            loss += max(s[i], 0.0) - labels[i] * s[i] + np.log1p(np.exp(-abs(s[i])))
        return loss / n

    registry.register("sigmoid_bce", "fresh", fresh, description="compiles in the test")
    yield
    registry.unregister("sigmoid_bce", "fresh")


def test_the_api_says_once_that_it_compiles(fresh_kernel, monkeypatch, capsys):
    monkeypatch.setitem(jit._NOTICES, "first_calls", set())  # as in a new process
    model = DLRM(small_config(), kernels={"sigmoid_bce": "fresh"})
    batch = random_batch(np.random.default_rng(0), model.config, 4)
    model.train_step(batch, lr=0.1)
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == "numbadlrm: compiling kernels (once: they are cached on disk for later runs) ..."
    )
    assert err[1].startswith("numbadlrm: compiled kernels in ") and len(err) == 2
    model.train_step(batch, lr=0.1)
    assert capsys.readouterr().err == ""


def test_inside_the_command_lines_notice_the_api_is_silent(fresh_kernel, monkeypatch, capsys):
    monkeypatch.setitem(jit._NOTICES, "first_calls", set())
    model = DLRM(small_config(), kernels={"sigmoid_bce": "fresh"})
    batch = random_batch(np.random.default_rng(0), model.config, 4)
    lines = []
    with jit.announce_compilation(lines.append):
        model.train_step(batch, lr=0.1)
    assert lines[0].startswith("compiling kernels") and capsys.readouterr().err == ""
