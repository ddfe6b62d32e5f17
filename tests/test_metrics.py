"""AUC against scikit-learn and a brute-force pairwise count; log loss and accuracy."""

import numpy as np
import pytest

from numbadlrm.train.metrics import accuracy, evaluate_predictions, log_loss, roc_auc


def brute_force_auc(labels, scores):
    """P(score of a random positive > score of a random negative), ties count 1/2."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500).astype(np.float32)
    scores = np.round(rng.random(500) + 0.3 * labels, 1)  # coarse: many ties
    assert abs(roc_auc(labels, scores) - brute_force_auc(labels, scores)) < 1e-12


def test_auc_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 100_000)
    scores = (rng.random(100_000) + 0.2 * labels).astype(np.float32)
    expect = sklearn_metrics.roc_auc_score(labels, scores)
    assert abs(roc_auc(labels, scores) - expect) < 1e-6
    p = np.clip(scores / scores.max(), 1e-7, 1 - 1e-7)
    assert abs(log_loss(labels, p) - sklearn_metrics.log_loss(labels, p)) < 1e-6


def test_auc_edge_cases():
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.1, 0.2])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.9, 0.8])) == 0.0
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(roc_auc(np.ones(3), np.arange(3.0)))
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        roc_auc(np.ones(3), np.ones(2))


def test_log_loss_and_accuracy():
    y = np.array([1.0, 0.0, 1.0, 0.0])
    p = np.array([0.9, 0.2, 0.4, 0.6])
    expect = -np.mean(np.log([0.9, 0.8, 0.4, 0.4]))
    assert abs(log_loss(y, p) - expect) < 1e-12
    assert accuracy(y, p) == 0.5
    assert evaluate_predictions(y, p)["accuracy"] == 0.5
