"""The linear layer's default version, "auto": per pass and shape, GEMM v4 or the blas
backend, by a fixed rule (:func:`choose_backend`) from measurements, never a timing
taken at run time, so runs are reproducible. The measurements behind the rule are in
bench/RESULTS.md ("choose_backend").
"""

from __future__ import annotations

from ..registry import get, register

PASSES = ("forward", "backward_data", "backward_weight")
SMALL_BATCH = 128  # at most this many rows: v4 (2 threads: 7-19% faster steps at config a)
NARROW_IN = 32  # weight passes of narrower layers: v4 (13 -> 512: 0.25 vs 0.68 ms, config c)


def choose_backend(batch: int, in_features: int, out_features: int, pass_: str) -> str:
    """The version ("v4" or "blas") that "auto" runs for one pass of a layer.

    Small batches run v4 (Numba): at B=128 (config a) it led the blas backend in whole
    steps at 2 threads. Every other shape runs blas, except the weight pass of a narrow
    layer (I < NARROW_IN), where v4 forms dW^T in full tiles while OpenBLAS gets only I
    columns of C per call.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    if batch <= SMALL_BATCH or (pass_ == "backward_weight" and in_features < NARROW_IN):
        return "v4"
    return "blas"


def forward(y, x, W, b, relu):
    name = choose_backend(x.shape[0], x.shape[1], W.shape[0], "forward")
    get("linear_forward", name).parallel(y, x, W, b, relu)


def backward_data(dx, dy, y, W, x, relu, mask_dx):
    name = choose_backend(x.shape[0], x.shape[1], W.shape[0], "backward_data")
    get("linear_backward_data", name).parallel(dx, dy, y, W, x, relu, mask_dx)


def backward_weight(dW, db, dz, x):
    name = choose_backend(x.shape[0], x.shape[1], dW.shape[0], "backward_weight")
    get("linear_backward_weight", name).parallel(dW, db, dz, x)


def backward_weight_sgd(W, b, dz, x, lr):
    name = choose_backend(x.shape[0], x.shape[1], W.shape[0], "backward_weight")
    get("linear_backward_weight", name).extras["sgd"](W, b, dz, x, lr)


_WHAT = "v4 for batches <= 128 rows and narrow weight passes, else blas (the default)"
register("linear_forward", "auto", forward, description=_WHAT, default=True)
register("linear_backward_data", "auto", backward_data, description=_WHAT, default=True)
register(
    "linear_backward_weight",
    "auto",
    backward_weight,
    description=_WHAT,
    default=True,
    extras={"sgd": backward_weight_sgd},
)
