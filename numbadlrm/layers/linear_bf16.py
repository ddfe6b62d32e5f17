"""Linear layer (+ReLU) in bf16 with fp32 accumulation (--precision bf16), forward and
backward side by side.

The layer's fp32 master weights are split (kernels/bf16.py): w_hi, the bf16 weight W16
every GEMM reads, and w_lo, the bits below; b likewise, with its fp32 value merged into
``b32`` for the forward's fp32 bias add. Activations and their gradients are bf16:

    forward:   y16 = bf16(relu(x16 W16^T + b32))           (fp32 y: the logit layer)
    backward:  dx16 = bf16((dz16 W16) [x16 > 0])           the mask with mask_dx: the ReLU
                                                           backward of the layer below
               dW = dz16^T x16,  db = sum_b dz16           fp32, into the grads buffer
    backward + split-SGD (lr given): dx16 from the old W16, then W (w_hi, w_lo) -= lr dW
               and b -= lr db, exactly in fp32, fused into the weight pass (no dW stored);
               W16's packings refreshed by the same tiles, then b32

dz16 is the gradient of the layer's output after its own ReLU mask: the layer above
applied it (mask_dx), or, for the bottom MLP's last layer, the interaction backward did.
Each pass runs the version of its op (bf16_linear_forward, ...) that ``kernels`` selects,
its serial entry for small work.
"""

from __future__ import annotations

import numba
import numpy as np

from ..kernels import bf16 as kb
from ..kernels.gemm.bf16 import NONE_F32, NONE_U16
from ..kernels.registry import KernelChoice
from . import bf16
from ._checks import array_shape, check_array

# Passes of fewer flops run on the calling thread (a parallel launch costs more than
# the work); measured in whole steps of config a (bench/RESULTS.md, bf16).
SERIAL_BELOW_FLOPS = 1 << 20


def _small(batch: int, in_features: int, out_features: int) -> bool:
    flops = 2 * batch * in_features * out_features
    return numba.get_num_threads() == 1 or flops < SERIAL_BELOW_FLOPS


class SplitLinear:
    """One layer's views of the split master weights and gradients, and its packings."""

    def __init__(self, w_hi, w_lo, b_hi, b_lo, dW, db):
        self.w_hi, self.w_lo, self.b_hi, self.b_lo = w_hi, w_lo, b_hi, b_lo  # uint16 views
        self.dW, self.db = dW, db  # float32 views of the gradient buffer
        self.packed = bf16.pack_weight(w_hi)  # W16 = w_hi and its packings
        self.b32 = np.empty(b_hi.shape, np.float32)
        self.refresh()

    @property
    def shape(self) -> tuple[int, int]:
        return self.w_hi.shape

    def refresh(self) -> None:
        """Re-derive the packings and b32 from the master weights (after an update)."""
        bf16.repack(self.packed)
        kb.merge_serial(self.b32, self.b_hi, self.b_lo)

    def _check(self, x16: np.ndarray, **arrays) -> int:
        """x16 (B, I) uint16; arrays (B, O) or (B, I), uint16 or float32 by name."""
        batch = array_shape("x16", x16, 2)[0]
        out_features, in_features = self.shape
        check_array("x16", x16, (batch, in_features), np.uint16)
        for name, a in arrays.items():
            if a.size == 0 and a.shape == (0, 0):  # NONE_F32 / NONE_U16: not wanted
                continue
            width = in_features if name.startswith("dx") else out_features
            dtype = np.uint16 if name.endswith("16") else np.float32
            check_array(name, a, (batch, width), dtype)
        return batch

    # -------------------------------------------------------------------- forward

    def forward(self, y, y16, x16, relu: bool, kernels: KernelChoice) -> None:
        """y (B, O) fp32 and/or y16 (B, O) bf16 (the other NONE_*) <- x16 W16^T + b (ReLU)."""
        batch = self._check(x16, y=y, y16=y16)
        small = _small(batch, *self.shape[::-1])
        kernels.get("bf16_linear_forward").entry(small)(y, y16, x16, self.packed, self.b32, relu)

    # ------------------------------------------------------------------- backward

    def backward(self, dx16, dz16, x16, mask_dx: bool, kernels: KernelChoice, lr=None) -> None:
        """dx16 (B, I) (None: the first layer, no dx) from dz16 (B, O) and the old W16;
        then the gradients into dW, db, or, given lr, the split-SGD update (and refresh)."""
        batch = self._check(x16, dz16=dz16, **({} if dx16 is None else {"dx16": dx16}))
        if batch == 0:  # no samples (an MPI rank when B < R): zero gradients, no update
            self.dW[...], self.db[...] = 0.0, 0.0
            return
        O, I = self.shape
        if dx16 is not None:
            small = _small(batch, I, O)
            kernel = kernels.get("bf16_linear_backward_data").entry(small)
            kernel(NONE_F32, dx16, dz16, self.packed, x16 if mask_dx else NONE_U16, mask_dx)
        weight = kernels.get("bf16_linear_backward_weight")
        small = _small(batch, I, O)
        if lr is None:
            weight.entry(small)(self.dW, self.db, dz16, x16)
            return
        fused = (small and weight.extras.get("split_sgd_serial")) or weight.extras.get("split_sgd")
        lr32 = np.float32(lr)
        if fused is not None:  # it refreshes the packings too
            fused(self.packed, self.w_lo, self.b_hi, self.b_lo, dz16, x16, lr32)
            kb.merge_serial(self.b32, self.b_hi, self.b_lo)
            return
        # a version without the fused form: its gradients, then split-SGD, then repacking
        weight.entry(small)(self.dW, self.db, dz16, x16)
        kb.split_sgd_update_serial(
            self.w_hi.reshape(-1), self.w_lo.reshape(-1), self.dW.reshape(-1), lr32
        )
        kb.split_sgd_update_serial(self.b_hi, self.b_lo, self.db, lr32)
        self.refresh()
