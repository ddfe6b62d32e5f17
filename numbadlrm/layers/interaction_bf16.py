"""Feature interaction in bf16 with fp32 accumulation (--precision bf16), forward and
backward side by side; the math is layers/interaction.py's, the kernels
kernels/interaction_bf16.py's. Inputs and outputs are bf16 (uint16); every sum is fp32,
rounded once. The backward's dx16 carries the ReLU backward of the bottom MLP's last
layer (``mask_dx``: dx16 *= [x16 > 0]), so that layer's weight pass takes it as is.
"""

from __future__ import annotations

import numpy as np

from ..kernels.jit import run_serial
from ._checks import array_shape, check_array
from .interaction import Interaction


class InteractionBf16(Interaction):
    """As Interaction, on bf16 arrays; runs the bf16_* ops' versions ``kernels`` selects."""

    def _check16(self, x16: np.ndarray, **arrays: np.ndarray) -> None:
        batch, dim = array_shape("x16", x16, 2)
        shapes = {
            "dx16": (batch, dim),
            "emb16": (self.num_tables, batch, dim),
            "demb16": (self.num_tables, batch, dim),
            "out16": (batch, self.width(dim)),
            "dout16": (batch, self.width(dim)),
        }
        check_array("x16", x16, (batch, dim), np.uint16)
        for name, a in arrays.items():
            check_array(name, a, shapes[name], np.uint16)

    def forward(self, out16: np.ndarray, x16: np.ndarray, emb16: np.ndarray) -> None:
        """out16 (B, width) <- interaction of x16 (B, D) and emb16 (T, B, D)."""
        self._check16(x16, emb16=emb16, out16=out16)
        small = run_serial(x16.nbytes + emb16.nbytes + out16.nbytes)
        if self.op == "cat":
            self.kernels.get("bf16_cat_interaction_forward").entry(small)(out16, x16, emb16)
        else:
            kernel = self.kernels.get("bf16_dot_interaction_forward").entry(small)
            kernel(out16, x16, emb16, self.li, self.lj)

    def backward(self, dx16, demb16, dout16, x16, emb16, mask_dx: bool = True) -> None:
        """dx16 (B, D) (times [x16 > 0] with mask_dx), demb16 (T, B, D) <- dout16."""
        self._check16(x16, emb16=emb16, dout16=dout16, dx16=dx16, demb16=demb16)
        small = run_serial(2 * (x16.nbytes + emb16.nbytes) + dout16.nbytes)
        if self.op == "cat":
            kernel = self.kernels.get("bf16_cat_interaction_backward").entry(small)
            kernel(dx16, demb16, dout16, x16, mask_dx)
        else:
            kernel = self.kernels.get("bf16_dot_interaction_backward").entry(small)
            kernel(dx16, demb16, dout16, x16, emb16, self.li, self.lj, mask_dx)
