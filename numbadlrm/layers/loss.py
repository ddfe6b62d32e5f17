"""Sigmoid + loss, fused, forward and backward in one pass (``--loss-function``).

bce   loss = mean_b [max(s, 0) - y s + log1p(exp(-|s|))]  (= BCE(sigmoid(s), y), stable)
      ds   = (sigmoid(s) - y) / B
wbce  each sample's BCE weighted by w0 (label 0) or w1 (label 1), the reference's
      --loss-weights w0-w1:  loss = mean_b w_b BCE_b,  ds = w_b (sigmoid(s) - y) / B
mse   loss = mean_b (sigmoid(s) - y)^2,  ds = 2 (p - y) p (1 - p) / B

(the reference's default is mse; numbadlrm's is bce, which every reference recipe passes)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


LOSSES = ("bce", "wbce", "mse")


@dataclass(frozen=True)
class LossConfig:
    """The training loss; ``weights`` (w0, w1) are wbce's per-label weights."""

    name: str = "bce"
    weights: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(
                f"--loss-function: must be one of {', '.join(LOSSES)}, got {self.name!r}"
            )
        weights = tuple(self.weights)
        if len(weights) != 2 or not all(
            isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights
        ):
            raise ValueError(
                f"--loss-weights: two finite weights >= 0 (label 0, label 1), got {self.weights!r}"
            )
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))

    @classmethod
    def of(cls, value: LossConfig | str | None) -> LossConfig:
        if isinstance(value, LossConfig):
            return value
        return cls() if value is None else cls(name=value)


def parse_loss_weights(text: str) -> tuple[float, ...]:
    """The reference's dash-separated ``--loss-weights`` ("1.0-1.0") as floats."""
    try:
        return tuple(float(part) for part in text.split("-"))
    except ValueError:
        raise ValueError(
            f"--loss-weights: expected two numbers like 1.0-9.0, got {text!r}"
        ) from None


def sigmoid_loss(
    p: np.ndarray,
    ds: np.ndarray,
    s: np.ndarray,
    labels: np.ndarray,
    loss: LossConfig,
    kernels: KernelChoice = DEFAULT,
) -> float:
    """The configured loss: p (B,) and ds (B,) out, returns the mean loss (see above)."""
    if loss.name == "bce":
        return sigmoid_bce(p, ds, s, labels, kernels)
    _check(p=p, ds=ds, s=s, labels=labels)
    if loss.name == "wbce":
        w0, w1 = loss.weights
        return float(kernels.get("sigmoid_wbce").parallel(p, ds, s, labels, w0, w1))
    return float(kernels.get("sigmoid_mse").parallel(p, ds, s, labels))
