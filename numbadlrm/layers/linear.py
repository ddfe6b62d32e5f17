"""Linear layer (+ReLU), forward and backward side by side, on two GEMM backends.

W is stored (O, I) like PyTorch, x is (B, I), y is (B, O):

    forward:   y  = x W^T + b, then y = max(y, 0) if relu
    backward:  dz = dy * [y > 0] if relu else dy     (applied to dy in place: dy is scratch)
               dW = dz^T x      (O, I)
               db = sum_b dz    (O,)
               dx = dz W        (B, I), skipped when dx is None (the first layer)
    backward + SGD (linear_backward_sgd): dx as above from the old W, then
               W -= lr dz^T x,  b -= lr sum_b dz   in place, no dW or db stored

Backends: "numba" runs numbadlrm.kernels.gemm (bias, ReLU and db fused into the GEMMs),
"blas" runs numbadlrm.kernels.blas (one single-threaded OpenBLAS sgemm per Numba thread on
its share of the pass, the epilogue fused after it), and "auto" picks one per shape and
pass with :func:`choose_backend`. Every array is float32 and C-contiguous;
outputs come first and are preallocated by the caller.
"""

from __future__ import annotations

import numba
import numpy as np

from ..kernels import blas, gemm
from ..kernels.elementwise import sgd_update_serial

BACKENDS = ("auto", "numba", "blas")
PASSES = ("forward", "backward_data", "backward_weight")
SMALL_BATCH = 128  # choose_backend: at most this many rows, the Numba (v4) kernels
NARROW_IN = 32  # choose_backend: weight passes of layers with fewer inputs, the Numba kernels

_FORWARD, _BACKWARD_DATA, _BACKWARD_WEIGHT = gemm.VERSIONS[gemm.DEFAULT_VERSION]
_BACKWARD_WEIGHT_SGD = gemm.SGD_VERSIONS.get(gemm.DEFAULT_VERSION)


def choose_backend(batch: int, in_features: int, out_features: int, pass_: str) -> str:
    """ "numba" or "blas" for one pass of a (batch, in_features -> out_features) layer.

    A fixed rule from measurements, never a timing taken at run time, so runs are
    reproducible. In isolation (bench/bench_gemm.py, 2 threads) the Numba v4 kernels and
    the blas backend are level: summed over all passes 1.04 (a), 0.98-0.99 (b) and
    0.97-1.01 (c) of blas, Numba ahead on most narrow and backward passes, behind on the
    1024-wide weight passes (0.81-0.87; level since session 4, 0.99 summed on b and c,
    yet whole config c steps still ran 163.5-166.2 ms here against 170.4-189.9 ms with
    "numba" everywhere, 3 alternating pairs). In whole training steps (medians of 3 runs per
    backend, alternating processes, 2 threads, ms): B=2048 config b 230 blas vs 246 Numba,
    config c 181 vs 187; B=1024 12.4 vs 15.4; B=256 3.20 vs 3.51; only at B=128 (config a)
    Numba led, in three runs: 1.76 vs 2.17, 1.65 vs 1.80, 1.99 vs 2.13 (5 rounds), while
    at 1 thread blas led by 4% (3.01 vs 3.12). Small batches therefore pick "numba" (the
    gain at 2 threads outweighs the loss at 1), every other shape "blas", except the
    weight pass of a narrow layer (I < NARROW_IN, the 13 -> 512 first bottom layer), where
    v4 forms dW^T in full tiles while OpenBLAS gets only I columns of C per call: at B=2048
    inside config c's step 0.25 against 0.68 ms (2 threads).
    ``--gemm numba`` or ``--gemm blas`` forces one backend everywhere.
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    if batch <= SMALL_BATCH or (pass_ == "backward_weight" and in_features < NARROW_IN):
        return "numba"
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
    blas.forward(y, x, W, b, relu, numba.get_num_threads())


# --------------------------------------------------------------------- backward


def linear_backward(
    dx: np.ndarray | None,
    dW: np.ndarray | None,
    db: np.ndarray | None,
    dy: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    W: np.ndarray,
    relu: bool,
    backend: str = "auto",
    weight_pass: bool = True,
    mask_dx: bool = False,
) -> None:
    """dW (O, I), db (O,) and, unless dx is None, dx (B, I) from dy (B, O).

    dy is overwritten with dz = dy * [y > 0] when relu. With ``mask_dx``, dx is then
    multiplied by [x > 0]: the ReLU backward of the layer below, whose output x is (that
    layer then runs with relu=False). ``weight_pass=False`` stops after the masks and dx
    (dW and db may then be None): :func:`linear_backward_sgd` does the rest.
    """
    batch, in_features = x.shape
    out_features = W.shape[0]
    data = _resolve(backend, batch, in_features, out_features, "backward_data")
    weight = _resolve(backend, batch, in_features, out_features, "backward_weight")
    _check("x", x, (batch, in_features))
    _check("W", W, (out_features, in_features))
    for name, a in (("dy", dy), ("y", y)):
        _check(name, a, (batch, out_features))
    if weight_pass:
        _check("dW", dW, (out_features, in_features))
        _check("db", db, (out_features,))
    if dx is not None:
        _check("dx", dx, (batch, in_features))
    threads = numba.get_num_threads()
    has_dx = dx is not None
    mask_dx = mask_dx and has_dx
    if data == "blas":  # the ReLU mask, dx, then dx's mask, on each thread's rows
        dx_ = dx if has_dx else blas.NO_DX
        blas.backward_data(dx_, dy, y, W, x, relu, has_dx, mask_dx, threads)
    elif relu:
        gemm.relu_mask(dy, y)
    dz = dy
    if weight_pass and weight == "numba":
        _BACKWARD_WEIGHT(dW, db, dz, x)
    elif weight_pass:
        blas.backward_weight(dW, db, dz, x, threads)
    if has_dx and data == "numba":
        _BACKWARD_DATA(dx, dz, W)
        if mask_dx:
            gemm.relu_mask(dx, x)


def linear_backward_sgd(
    dx: np.ndarray | None,
    W: np.ndarray,
    b: np.ndarray,
    dy: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    relu: bool,
    lr: float,
    dW: np.ndarray,
    db: np.ndarray,
    backend: str = "auto",
    mask_dx: bool = False,
) -> None:
    """The backward fused with plain SGD: dx from the old W, then W and b updated in place.

    The weight pass writes ``W - lr dz^T x`` straight into W (blas: one GEMM with beta = 1;
    numba v4: each tile adds -lr times its product), so dW and db are never written and
    their memory is never touched. A Numba GEMM version without a fused form forms dW and
    db, then applies them.
    """
    batch, in_features = x.shape
    out_features = W.shape[0]
    weight = _resolve(backend, batch, in_features, out_features, "backward_weight")
    if weight == "numba" and _BACKWARD_WEIGHT_SGD is None:
        linear_backward(dx, dW, db, dy, x, y, W, relu, backend, mask_dx=mask_dx)
        lr32 = np.float32(lr)
        sgd_update_serial(W.reshape(-1), dW.reshape(-1), lr32)
        sgd_update_serial(b, db, lr32)
        return
    _check("b", b, (out_features,))
    linear_backward(dx, None, None, dy, x, y, W, relu, backend, False, mask_dx)
    if weight == "numba":
        _BACKWARD_WEIGHT_SGD(W, b, dy, x, np.float32(lr))
    else:
        blas.backward_weight_sgd(W, b, dy, x, np.float32(lr), numba.get_num_threads())
