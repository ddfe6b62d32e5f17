"""Evaluation: AUC, log loss and accuracy over held-out batches, and the warning for a
model whose predictions have collapsed to a constant."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..batch import Batch
from .metrics import evaluate_predictions


def evaluate(model, batches: Iterable[Batch], name: str = "evaluation") -> dict[str, float]:
    """AUC, log loss and accuracy of the model's predictions over all batches."""
    probs, labels = [], []
    for batch in batches:
        batch.require_rows(0, batch.batch_size)  # every label is needed
        probs.append(model.predict(batch))
        labels.append(batch.labels)
    if not probs:
        raise ValueError(f"{name}: no samples to evaluate (an empty split?)")
    p = np.concatenate(probs)
    metrics = evaluate_predictions(np.concatenate(labels), p)
    metrics["samples"] = int(p.size)
    metrics["prediction_mean"], metrics["prediction_std"] = float(p.mean()), float(p.std())
    return metrics


# Predictions whose spread is below this are "a constant": measured on the built-in data,
# healthy models spread 0.06..0.08 (std), models collapsed at lr 2..3 (dead ReLUs, AUC
# 0.50) 5e-7..8e-5. Random labels (--data-generation random) rightly give a near
# constant (std ~5e-4), so that mode is not checked.
COLLAPSED_STD = 1e-3


def collapse_warning(result: dict, split: str, step: int, lr: float) -> str | None:
    """A one-line warning if the evaluation's predictions are (nearly) all equal."""
    if result["prediction_std"] >= COLLAPSED_STD:
        return None
    return (
        f"warning: at step {step} every {split} prediction is nearly the same "
        f"({result['prediction_mean']:.4f}, std {result['prediction_std']:.1e}, AUC "
        f"{result['auc']:.3f}): the model has collapsed to a constant; try a smaller "
        f"--learning-rate (this run: {lr:g})"
    )
