"""Linear layer (+ReLU), forward and backward side by side, in either precision.

W is stored (O, I) like PyTorch, x is (B, I), y is (B, O):

    forward:   y  = x W^T + b, then y = max(y, 0) if relu
    backward:  dz = dy * [y > 0] if relu else dy     (applied to dy in place: dy is scratch)
               dW = dz^T x      (O, I)
               db = sum_b dz    (O,)
               dx = dz W        (B, I), skipped when dx is None (the first layer)
    backward + SGD (linear_backward_sgd): dx as above from the old W, then
               W -= lr dz^T x,  b -= lr sum_b dz   in place, no dW or db stored

:class:`Linear` is one layer of a model: views of the model's flat buffers in its
precision (fp32, or split bf16: see "bf16" below) with one forward and one backward.

Each fp32 pass runs the version of its op (linear_forward, linear_backward_data,
linear_backward_weight) that ``kernels`` selects in numbadlrm.kernels.registry, looked
up on every call. ``kernels`` is a KernelChoice, or one of the ``--gemm`` shorthands
"auto" (the default: GEMM v4 or the blas backend per shape, kernels/gemm/auto.py),
"numba" (v4 everywhere) or "blas". Every array is float32 and C-contiguous; outputs
come first and are preallocated by the caller.

bf16 (split-SGD-BF16, Kalamkar et al.): the fp32 master weights are split (kernels/bf16.py)
into w (the hi halves: the bf16 weight W16 every GEMM reads) and w_lo (the bits below),
b likewise, with b's fp32 value merged into ``b32`` for the forward's bias add.
Activations and their gradients are bf16 (uint16), accumulation fp32:

    forward:   y16 = bf16(relu(x16 W16^T + b32))           (fp32 y: the logit layer)
    backward:  dx16 = bf16((dz16 W16) [x16 > 0])           the mask with mask_dx
               dW = dz16^T x16,  db = sum_b dz16           fp32, into the grads buffer
    + split-SGD (lr given): dx16 from the old W16, then W (w, w_lo) -= lr dW and
               b -= lr db exactly in fp32, fused into the weight pass (no dW stored);
               W16's packings refreshed by the same tiles, then b32

In bf16, dz16 is the gradient after the layer's own ReLU mask: the layer above applied
it (mask_dx), or, for the bottom MLP's last layer, the interaction backward did; so a
split layer takes ``relu=False`` in its backward. Each bf16 pass runs the version of its
op (bf16_linear_forward, ...), its serial entry for small work.
"""

from __future__ import annotations

import numba
import numpy as np

from ..kernels import bf16 as kb
from ..kernels.elementwise import sgd_update_serial
from ..kernels.gemm.bf16 import NONE_F32, NONE_U16
from ..kernels.registry import KernelChoice
from ._checks import array_shape
from ._checks import check_array as _check
from .bf16 import merge, pack_weight, repack

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


# ------------------------------------------------------------------ the layer

# bf16 passes of fewer flops run on the calling thread (a parallel launch costs more than
# the work); measured in whole steps of config a (bench/RESULTS.md, bf16).
SERIAL_BELOW_FLOPS = 1 << 20


def _small(batch: int, in_features: int, out_features: int) -> bool:
    flops = 2 * batch * in_features * out_features
    return numba.get_num_threads() == 1 or flops < SERIAL_BELOW_FLOPS


class Linear:
    """One linear layer: views ``w`` (O, I), ``b`` (O,) of the model's parameters and
    ``dW``, ``db`` of its gradient buffer (fp32).

    fp32: w and b are the float32 parameters. Split bf16 (``w_lo`` and ``b_lo`` given):
    w and b are the uint16 hi halves of the fp32 master values (W16 = w), w_lo and b_lo
    the bits below; the layer keeps W16's packings and b's merged fp32 value, refreshed
    after every update (see the module docstring).
    """

    def __init__(self, w, b, dW, db, w_lo=None, b_lo=None):
        self.w, self.b, self.dW, self.db = w, b, dW, db
        self.w_lo, self.b_lo = w_lo, b_lo
        self.split = w_lo is not None
        if self.split:
            self.packed = pack_weight(w)
            self.b32 = np.empty(b.shape, np.float32)
            self.refresh()

    @property
    def shape(self) -> tuple[int, int]:
        return self.w.shape

    def refresh(self) -> None:
        """Re-derive W16's packings and b32 from split master weights (after an update)."""
        if self.split:
            repack(self.packed)
            kb.merge_serial(self.b32, self.b, self.b_lo)

    def values(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the fp32 (W, b) (split halves merged)."""
        if not self.split:
            return self.w.copy(), self.b.copy()
        return merge(self.w, self.w_lo), merge(self.b, self.b_lo)

    def load(self, W: np.ndarray, b: np.ndarray) -> None:
        """Set the fp32 values (split exactly), then refresh."""
        if not self.split:
            self.w[...], self.b[...] = W, b
            return
        for hi, lo, values in ((self.w, self.w_lo, W), (self.b, self.b_lo, b)):
            kb.split(hi.reshape(-1), lo.reshape(-1), np.ascontiguousarray(values).reshape(-1))
        self.refresh()

    # -------------------------------------------------------------------- forward

    def forward(self, y: np.ndarray, x: np.ndarray, relu: bool, kernels: KernelChoice) -> None:
        """y (B, O) <- x (B, I) W^T + b, then ReLU if relu. Split: x bf16; y bf16, or
        fp32 for the logit layer."""
        if not self.split:
            linear_forward(y, x, self.w, self.b, relu, kernels)
            return
        y32, y16 = (y, NONE_U16) if y.dtype == np.float32 else (NONE_F32, y)
        batch = self._check16(x, y=y32, y16=y16)
        small = _small(batch, *self.shape[::-1])
        kernels.get("bf16_linear_forward").entry(small)(y32, y16, x, self.packed, self.b32, relu)

    # ------------------------------------------------------------------- backward

    def backward(
        self, dx, dy, x, y, relu: bool, mask_dx: bool, kernels: KernelChoice,
        lr: float | None = None, update=None,
    ) -> None:  # fmt: skip
        """dx (B, I) (None: the first layer, no dx) from dy (B, O) and the old W; then the
        gradients into dW, db and ``update()`` if given, or, given lr, the SGD update.

        ``relu``: dy <- dy [y > 0] first (fp32 only); ``mask_dx``: dx <- dx [x > 0], the
        ReLU backward of the layer below (layers.linear.linear_backward).
        """
        if self.split:
            if relu or update is not None:
                raise ValueError("precision bf16: a split layer takes its ReLU mask from the "
                                 "layer above and trains with split-SGD only")  # fmt: skip
            self._backward16(dx, dy, x, mask_dx, kernels, lr)
        elif lr is None:
            linear_backward(dx, self.dW, self.db, dy, x, y, self.w, relu, kernels, True, mask_dx)
            if update is not None:
                update()
        else:
            linear_backward_sgd(
                dx, self.w, self.b, dy, x, y, relu, lr, self.dW, self.db, kernels, mask_dx
            )

    def _backward16(self, dx16, dz16, x16, mask_dx: bool, kernels: KernelChoice, lr) -> None:
        batch = self._check16(x16, dz16=dz16, **({} if dx16 is None else {"dx16": dx16}))
        if batch == 0:  # no samples (an MPI rank when B < R): zero gradients, no update
            self.dW[...], self.db[...] = 0.0, 0.0
            return
        O, I = self.shape
        small = _small(batch, I, O)
        if dx16 is not None:
            kernel = kernels.get("bf16_linear_backward_data").entry(small)
            kernel(NONE_F32, dx16, dz16, self.packed, x16 if mask_dx else NONE_U16, mask_dx)
        weight = kernels.get("bf16_linear_backward_weight")
        if lr is None:
            weight.entry(small)(self.dW, self.db, dz16, x16)
            return
        fused = (small and weight.extras.get("split_sgd_serial")) or weight.extras.get("split_sgd")
        lr32 = np.float32(lr)
        if fused is not None:  # it refreshes the packings too
            fused(self.packed, self.w_lo, self.b, self.b_lo, dz16, x16, lr32)
            kb.merge_serial(self.b32, self.b, self.b_lo)
            return
        # a version without the fused form: its gradients, then split-SGD, then repacking
        weight.entry(small)(self.dW, self.db, dz16, x16)
        kb.split_sgd_update_serial(self.w.reshape(-1), self.w_lo.reshape(-1),
                                   self.dW.reshape(-1), lr32)  # fmt: skip
        kb.split_sgd_update_serial(self.b, self.b_lo, self.db, lr32)
        self.refresh()

    def _check16(self, x16: np.ndarray, **arrays) -> int:
        """x16 (B, I) uint16; arrays (B, O) or (B, I), uint16 or float32 by name."""
        batch = array_shape("x16", x16, 2)[0]
        out_features, in_features = self.shape
        _check("x16", x16, (batch, in_features), np.uint16)
        for name, a in arrays.items():
            if a.size == 0 and a.shape == (0, 0):  # NONE_F32 / NONE_U16: not wanted
                continue
            width = in_features if name.startswith("dx") else out_features
            dtype = np.uint16 if name.endswith("16") else np.float32
            _check(name, a, (batch, width), dtype)
        return batch
