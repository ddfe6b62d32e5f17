"""Evaluation metrics: exact ROC AUC in O(n log n), log loss, accuracy.

AUC is the Mann-Whitney statistic: the probability that a random positive scores above
a random negative, ties counting one half. With ranks r (1-based, ties averaged):
    AUC = (sum of positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos * n_neg)
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC; NaN when only one class is present."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"roc_auc: {labels.shape[0]} labels but {scores.shape[0]} scores")
    pos = labels > 0.5
    n_pos = int(pos.sum())
    n_neg = labels.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(probs) > threshold) == (np.asarray(labels) > 0.5)))


def evaluate_predictions(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {
        "auc": roc_auc(labels, probs),
        "logloss": log_loss(labels, probs),
        "accuracy": accuracy(labels, probs),
    }
