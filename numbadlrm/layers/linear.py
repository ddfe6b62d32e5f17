"""Linear layer (+ReLU), forward and backward side by side.

W is stored (O, I) like PyTorch, x is (B, I), y is (B, O):

    forward:   y  = x W^T + b, then y = max(y, 0) if relu
    backward:  dz = dy * [y > 0] if relu else dy     (applied to dy in place: dy is scratch)
               dW = dz^T x      (O, I)
               db = sum_b dz    (O,)
               dx = dz W        (B, I), skipped when dx is None (the first layer)
    backward + SGD (linear_backward_sgd): dx as above from the old W, then
               W -= lr dz^T x,  b -= lr sum_b dz   in place, no dW or db stored

Each pass runs the version of its op (linear_forward, linear_backward_data,
linear_backward_weight) that ``kernels`` selects in numbadlrm.kernels.registry, looked
up on every call. ``kernels`` is a KernelChoice, or one of the ``--gemm`` shorthands
"auto" (the default: GEMM v4 or the blas backend per shape, kernels/linear_auto.py),
"numba" (v4 everywhere) or "blas". Every array is float32 and C-contiguous; outputs
come first and are preallocated by the caller.
"""

from __future__ import annotations

import numpy as np

from ..kernels.elementwise import sgd_update_serial
from ..kernels.registry import KernelChoice
from ._checks import array_shape
from ._checks import check_array as _check

# --gemm: the version every linear pass runs
BACKENDS = {"auto": "auto", "numba": "v4", "blas": "blas"}
LINEAR_OPS = ("linear_forward", "linear_backward_data", "linear_backward_weight")
_BACKEND_CHOICES: dict[str, KernelChoice] = {}


def gemm_choice(backend: str) -> dict[str, str]:
    """{op: version} of the three linear passes for a ``--gemm`` backend name."""
    if backend not in BACKENDS:
        raise ValueError(f"gemm: must be one of {tuple(BACKENDS)}, got {backend!r}")
    return dict.fromkeys(LINEAR_OPS, BACKENDS[backend])


def as_choice(kernels: KernelChoice | str) -> KernelChoice:
    """A KernelChoice as it is, or the one of a ``--gemm`` backend name."""
    if isinstance(kernels, KernelChoice):
        return kernels
    choice = _BACKEND_CHOICES.get(kernels)
    if choice is None:
        choice = _BACKEND_CHOICES[kernels] = KernelChoice(gemm_choice(kernels))
    return choice


# ---------------------------------------------------------------------- forward


def linear_forward(
    y: np.ndarray,
    x: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    relu: bool,
    kernels: KernelChoice | str = "auto",
) -> None:
    """y (B, O) <- x (B, I) @ W^T (I, O) + b (O,), then ReLU if relu."""
    choice = as_choice(kernels)
    batch, in_features = array_shape("x", x, 2)
    out_features = array_shape("W", W, 2)[0]
    _check("x", x, (batch, in_features))
    _check("W", W, (out_features, in_features))
    _check("b", b, (out_features,))
    _check("y", y, (batch, out_features))
    choice.get("linear_forward").parallel(y, x, W, b, relu)


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
    kernels: KernelChoice | str = "auto",
    weight_pass: bool = True,
    mask_dx: bool = False,
) -> None:
    """dW (O, I), db (O,) and, unless dx is None, dx (B, I) from dy (B, O).

    dy is overwritten with dz = dy * [y > 0] when relu. With ``mask_dx``, dx is then
    multiplied by [x > 0]: the ReLU backward of the layer below, whose output x is (that
    layer then runs with relu=False). ``weight_pass=False`` stops after the masks and dx
    (dW and db may then be None): :func:`linear_backward_sgd` does the rest.
    """
    choice = as_choice(kernels)
    batch, in_features = array_shape("x", x, 2)
    out_features = array_shape("W", W, 2)[0]
    _check("x", x, (batch, in_features))
    _check("W", W, (out_features, in_features))
    for name, a in (("dy", dy), ("y", y)):
        _check(name, a, (batch, out_features))
    if weight_pass:
        _check("dW", dW, (out_features, in_features))
        _check("db", db, (out_features,))
    if dx is not None:
        _check("dx", dx, (batch, in_features))
    if batch == 0:  # no samples (an MPI rank when B < R): zero gradients, no kernel call
        if weight_pass:
            dW[...], db[...] = 0.0, 0.0
        return
    mask_dx = mask_dx and dx is not None
    choice.get("linear_backward_data").parallel(dx, dy, y, W, x, relu, mask_dx)
    if weight_pass:
        choice.get("linear_backward_weight").parallel(dW, db, dy, x)


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
    kernels: KernelChoice | str = "auto",
    mask_dx: bool = False,
) -> None:
    """The backward fused with plain SGD: dx from the old W, then W and b updated in place.

    A weight-pass version with an "sgd" extra writes ``W - lr dz^T x`` straight into W
    (blas: one GEMM with beta = 1; v4: each tile adds -lr times its product), so dW and db
    are never written and their memory is never touched. Any other version forms dW and
    db, which are then applied.
    """
    choice = as_choice(kernels)
    _check("b", b, (W.shape[0],))
    linear_backward(dx, None, None, dy, x, y, W, relu, choice, False, mask_dx)
    if x.shape[0] == 0:  # no samples: a zero gradient, nothing to update
        return
    weight = choice.get("linear_backward_weight")
    fused = weight.extras.get("sgd")
    if fused is not None:
        fused(W, b, dy, x, np.float32(lr))
        return
    _check("dW", dW, W.shape)
    _check("db", db, b.shape)
    weight.parallel(dW, db, dy, x)
    lr32 = np.float32(lr)
    sgd_update_serial(W.reshape(-1), dW.reshape(-1), lr32)
    sgd_update_serial(b, db, lr32)
