"""Linear layer (+ReLU), forward and backward side by side, on two GEMM backends.

W is stored (O, I) like PyTorch, x is (B, I), y is (B, O):

    forward:   y  = x W^T + b, then y = max(y, 0) if relu
    backward:  dz = dy * [y > 0] if relu else dy     (applied to dy in place: dy is scratch)
               dW = dz^T x      (O, I)
               db = sum_b dz    (O,)
               dx = dz W        (B, I), skipped when dx is None (the first layer)

Backends: "numba" runs numbadlrm.kernels.gemm (bias, ReLU and db fused into the GEMMs),
"blas" runs np.matmul into the output plus in-place NumPy epilogues, and "auto" picks one
per shape and pass with :func:`choose_backend`. Every array is float32 and C-contiguous;
outputs come first and are preallocated by the caller.
"""

from __future__ import annotations

import numpy as np

from ..kernels import gemm
from ..kernels._jit import run_serial

BACKENDS = ("auto", "numba", "blas")
PASSES = ("forward", "backward_data", "backward_weight")

_FORWARD, _BACKWARD_DATA, _BACKWARD_WEIGHT = gemm.VERSIONS[gemm.DEFAULT_VERSION]


def choose_backend(batch: int, in_features: int, out_features: int, pass_: str) -> str:
    """ "numba" or "blas" for one pass of a (batch, in_features -> out_features) layer.

    A fixed rule from measurements, never a timing taken at run time, so runs are
    reproducible. In isolation (bench/bench_gemm.py) the Numba kernels beat OpenBLAS on two
    degenerate shapes: the forward of the I = 13 input layer (1.4-1.7x) and the backward-data
    pass of the O = 1 logit layer (5-10x). Inside a whole training step they do not: a
    parallel Numba call between OpenBLAS calls wakes a second thread pool, and that costs
    more than the GEMM saves. Measured per step at 2 threads (the same run, medians):
    config a (B=128) 2.53 ms all-BLAS vs 2.89 / 2.72 ms with either Numba layer;
    config c (B=2048) 186.8 vs 189.4 / 185.2 ms (noise). So every shape picks "blas";
    ``--gemm numba`` runs the Numba kernels everywhere for kernel experiments.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    return "blas"


def _resolve(backend: str, batch: int, in_features: int, out_features: int, pass_: str) -> str:
    if backend == "auto":
        return choose_backend(batch, in_features, out_features, pass_)
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return backend


def _check(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != shape:
        raise ValueError(
            f"{name}: expected a C-contiguous float32 array of shape {shape}, "
            f"got {a.dtype} {a.shape} (C-contiguous: {a.flags.c_contiguous})"
        )


# ---------------------------------------------------------------------- forward


def linear_forward(
    y: np.ndarray, x: np.ndarray, W: np.ndarray, b: np.ndarray, relu: bool, backend: str = "auto"
) -> None:
    """y (B, O) <- x (B, I) @ W^T (I, O) + b (O,), then ReLU if relu."""
    batch, in_features = x.shape
    out_features = W.shape[0]
    which = _resolve(backend, batch, in_features, out_features, "forward")
    _check("x", x, (batch, in_features))
    _check("W", W, (out_features, in_features))
    _check("b", b, (out_features,))
    _check("y", y, (batch, out_features))
    if which == "numba":
        _FORWARD(y, x, W, b, relu)
    else:
        forward_blas(y, x, W, b, relu)


def forward_blas(y: np.ndarray, x: np.ndarray, W: np.ndarray, b: np.ndarray, relu: bool) -> None:
    np.matmul(x, W.T, out=y)
    # one fused pass for bias and ReLU (NumPy's y += b; maximum(y, 0) is two, and slow)
    (gemm.bias_act_serial if run_serial(y.nbytes) else gemm.bias_act)(y, b, relu)


# --------------------------------------------------------------------- backward


def linear_backward(
    dx: np.ndarray | None,
    dW: np.ndarray,
    db: np.ndarray,
    dy: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    relu: bool,
    backend: str = "auto",
) -> None:
    """dW (O, I), db (O,) and, unless dx is None, dx (B, I) from dy (B, O).

    dy is overwritten with dz = dy * [y > 0] when relu.
    """
    batch, in_features = x.shape
    out_features = W.shape[0]
    data = _resolve(backend, batch, in_features, out_features, "backward_data")
    weight = _resolve(backend, batch, in_features, out_features, "backward_weight")
    _check("x", x, (batch, in_features))
    _check("W", W, (out_features, in_features))
    for name, a in (("dy", dy), ("y", y)):
        _check(name, a, (batch, out_features))
    _check("dW", dW, (out_features, in_features))
    _check("db", db, (out_features,))
    if dx is not None:
        _check("dx", dx, (batch, in_features))
    dz = dy
    if weight == "numba":
        if relu:
            gemm.relu_mask(dy, y)
        _BACKWARD_WEIGHT(dW, db, dz, x)
    elif run_serial(dy.nbytes):  # small: mask and db in one pass on this thread
        gemm.relu_mask_bias_grad_serial(db, dy, y, relu)
        np.matmul(dz.T, x, out=dW)
    else:
        if relu:
            gemm.relu_mask(dy, y)
        backward_weight_blas(dW, db, dz, x)
    if dx is not None:
        if data == "numba":
            _BACKWARD_DATA(dx, dz, W)
        else:
            backward_data_blas(dx, dz, W)


def backward_data_blas(dx: np.ndarray, dz: np.ndarray, W: np.ndarray) -> None:
    if W.shape[0] == 1:  # the logit layer: an outer product, which BLAS runs as a slow K=1 GEMM
        np.multiply(dz, W, out=dx)
    else:
        np.matmul(dz, W, out=dx)


def backward_weight_blas(dW: np.ndarray, db: np.ndarray, dz: np.ndarray, x: np.ndarray) -> None:
    np.matmul(dz.T, x, out=dW)
    np.sum(dz, axis=0, out=db)
