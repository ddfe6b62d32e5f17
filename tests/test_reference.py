"""The float64 reference backward of every op against central finite differences."""

import numpy as np
import pytest

from numbadlrm import reference as ref
from numbadlrm.model.dlrm import DLRM

from ._helpers import assert_grad_close, numeric_grad, random_batch, small_config


@pytest.mark.parametrize("relu", [False, True])
def test_linear_backward(relu):
    rng = np.random.default_rng(0)
    x, W, b = rng.normal(size=(5, 7)), rng.normal(size=(3, 7)), rng.normal(size=3)
    G = rng.normal(size=(5, 3))  # loss = sum(y * G) so dL/dy = G

    def loss():
        return float((ref.linear_forward(x, W, b, relu)[0] * G).sum())

    _, cache = ref.linear_forward(x, W, b, relu)
    dx, dW, db = ref.linear_backward(G, cache)
    assert_grad_close(dx, numeric_grad(loss, x))
    assert_grad_close(dW, numeric_grad(loss, W))
    assert_grad_close(db, numeric_grad(loss, b))


def test_embedding_bag_backward():
    rng = np.random.default_rng(1)
    table = rng.normal(size=(6, 3))
    offsets = np.array([0, 3, 3, 5, 8])  # bag 1 is empty
    indices = np.array([0, 2, 2, 5, 1, 0, 0, 4])  # repeats within and across bags
    G = rng.normal(size=(4, 3))

    def loss():
        return float((ref.embedding_bag_forward(table, offsets, indices) * G).sum())

    dtable = ref.embedding_bag_backward(G, offsets, indices, 6)
    assert_grad_close(dtable, numeric_grad(loss, table))


@pytest.mark.parametrize("op,itself", [("dot", False), ("dot", True), ("cat", False)])
def test_interaction_backward(op, itself):
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(3, 4, 5))  # B=3, F=4, D=5
    width = ref.interaction_forward(feats, op, itself).shape[1]
    G = rng.normal(size=(3, width))

    def loss():
        return float((ref.interaction_forward(feats, op, itself) * G).sum())

    dfeats = ref.interaction_backward(G, feats, op, itself)
    assert_grad_close(dfeats, numeric_grad(loss, feats))


def test_pair_order_is_row_major_lower_triangle():
    li, lj = ref.pair_indices(4, False)
    assert list(zip(li, lj, strict=True)) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    li, lj = ref.pair_indices(3, True)
    assert list(zip(li, lj, strict=True)) == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]


def test_sigmoid_bce_backward_and_stability():
    rng = np.random.default_rng(3)
    s, y = rng.normal(size=7) * 3, rng.integers(0, 2, 7).astype(np.float64)
    _, p = ref.sigmoid_bce_forward(s, y)
    ds = ref.sigmoid_bce_backward(p, y)
    assert_grad_close(ds, numeric_grad(lambda: ref.sigmoid_bce_forward(s, y)[0], s))
    # the naive -log(sigmoid) overflows at |s| = 800; the fused form does not
    big, _ = ref.sigmoid_bce_forward(np.array([800.0, -800.0]), np.array([0.0, 1.0]))
    assert np.isclose(big, 800.0)


@pytest.mark.parametrize("loss", ["wbce", "mse"])
def test_other_losses_backward_and_stability(loss):
    """wbce and mse (--loss-function): ds against float64 finite differences of the loss,
    and both stay finite and exact at saturated logits."""
    rng = np.random.default_rng(5)
    s, y = rng.normal(size=9) * 3, rng.integers(0, 2, 9).astype(np.float64)
    w = (0.4, 3.0) if loss == "wbce" else ()
    forward = getattr(ref, f"sigmoid_{loss}_forward")
    _, p = forward(s, y, *w)
    ds = getattr(ref, f"sigmoid_{loss}_backward")(p, y, *w)
    assert_grad_close(ds, numeric_grad(lambda: forward(s, y, *w)[0], s))
    big, p_big = forward(np.array([800.0, -800.0]), np.array([0.0, 1.0]), *w)
    want = 0.5 * (0.4 * 800 + 3.0 * 800) if loss == "wbce" else 1.0
    assert np.isclose(big, want) and np.array_equal(p_big, [1.0, 0.0])


def test_wbce_weights_each_label():
    """wbce with weights (1, 1) is bce; a label-0 sample's loss scales with w0 only."""
    s, y = np.array([0.3, -1.2]), np.array([0.0, 1.0])
    assert np.isclose(ref.sigmoid_wbce_forward(s, y, 1.0, 1.0)[0], ref.sigmoid_bce_forward(s, y)[0])
    one = ref.sigmoid_bce_forward(s[:1], y[:1])[0]
    assert np.isclose(ref.sigmoid_wbce_forward(s[:1], y[:1], 5.0, 0.0)[0], 5.0 * one)


@pytest.mark.parametrize("op,itself", [("dot", False), ("dot", True), ("cat", False)])
def test_whole_model_backward(op, itself):
    """Every parameter's gradient of the full reference model, by finite differences."""
    cfg = small_config(op, itself)
    rng = np.random.default_rng(4)
    batch = random_batch(rng, cfg, 6)
    model = ref.ReferenceDLRM(cfg, DLRM(cfg, seed=3).state_dict(), dtype=np.float64)
    args = (batch.dense, batch.offsets, batch.indices, batch.labels)
    _, _, cache = model.forward(*args)
    grads = model.backward(batch.offsets, batch.indices, batch.labels, cache)
    assert set(grads) == set(model.params)
    for name, param in model.params.items():
        numeric = numeric_grad(lambda: model.forward(*args)[0], param)
        assert_grad_close(grads[name], numeric)
