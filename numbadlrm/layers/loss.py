"""Sigmoid + binary cross-entropy, fused, forward and backward in one pass.

loss = mean_b [max(s, 0) - y s + log1p(exp(-|s|))]    (= BCE(sigmoid(s), y), stable)
ds   = (sigmoid(s) - y) / B
"""

from __future__ import annotations

import numpy as np

from ..kernels import elementwise as k
from ..kernels.registry import DEFAULT, KernelChoice
from ._checks import array_shape


def _check(**arrays: np.ndarray) -> None:
    """Every array 1-D float32 of one length B (strided views are fine: no raw addresses)."""
    lengths = {name: array_shape(name, a, 1)[0] for name, a in arrays.items()}
    for name, a in arrays.items():
        if a.dtype != np.float32:
            raise ValueError(f"{name}: expected float32, got {a.dtype}")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"sigmoid/BCE: the arrays differ in length: {lengths}")


def sigmoid_bce(
    p: np.ndarray,
    ds: np.ndarray,
    s: np.ndarray,
    labels: np.ndarray,
    kernels: KernelChoice = DEFAULT,
) -> float:
    """p (B,) probabilities and ds (B,) logit gradients out; returns the mean loss."""
    _check(p=p, ds=ds, s=s, labels=labels)
    return float(kernels.get("sigmoid_bce").parallel(p, ds, s, labels))


def sigmoid(p: np.ndarray, s: np.ndarray) -> None:
    """p (B,) <- sigmoid of the logits s (B,)."""
    _check(p=p, s=s)
    k.sigmoid(p, s)
