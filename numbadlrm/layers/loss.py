"""Sigmoid + binary cross-entropy, fused, forward and backward in one pass.

loss = mean_b [max(s, 0) - y s + log1p(exp(-|s|))]    (= BCE(sigmoid(s), y), stable)
ds   = (sigmoid(s) - y) / B
"""

from __future__ import annotations

import numpy as np

from ..kernels import elementwise as k
from ..kernels.registry import DEFAULT, KernelChoice


def sigmoid_bce(
    p: np.ndarray,
    ds: np.ndarray,
    s: np.ndarray,
    labels: np.ndarray,
    kernels: KernelChoice = DEFAULT,
) -> float:
    """p (B,) probabilities and ds (B,) logit gradients out; returns the mean loss."""
    return float(kernels.get("sigmoid_bce").parallel(p, ds, s, labels))


def sigmoid(p: np.ndarray, s: np.ndarray) -> None:
    k.sigmoid(p, s)
