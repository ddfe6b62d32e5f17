"""Feature interaction, forward and backward side by side.

Features of sample b: F = T + 1 vectors, x[b] (the bottom MLP's output) then the pooled
embeddings emb[0, b] ... emb[T-1, b], each of length D.

dot:  r[b] = [x[b], <f_i, f_j> for (i, j) in pairs]    pairs = row-major lower triangle
      (1,0), (2,0), (2,1), (3,0), ...; with interaction_itself also (0,0), (1,1), ...
      backward: df_i += dr_ij f_j, df_j += dr_ij f_i, and dx += dr[:, :D]
cat:  r[b] = [x[b], emb[0, b], ..., emb[T-1, b]];  backward splits dr the same way

In bf16 (--precision bf16) every array is bf16 (uint16), each sum fp32 and rounded once
(the bf16_* ops); the backward's dx16 then carries the ReLU backward of the bottom MLP's
last layer (``mask_dx``: dx16 *= [x16 > 0]), so that layer's weight pass takes it as is.

Every array is checked (float32 or uint16 like x, C-contiguous, its shape from x's
(B, D)) before a kernel runs: the v3 dot kernels compute raw row addresses from x and emb.
"""

from __future__ import annotations

import numpy as np

from ..config import pair_indices
from ..kernels.jit import run_serial
from ..kernels.registry import DEFAULT, KernelChoice
from ._checks import array_shape, check_array


class Interaction:
    """Holds the op choice, the pair list and the kernel choice; the arrays come from the
    model's workspace. Each call runs the version of its op (dot_interaction_forward, ...)
    that ``kernels`` selects, its serial entry for small work."""

    def __init__(self, op: str, itself: bool, num_tables: int, kernels: KernelChoice = DEFAULT):
        self.op = op
        self.itself = itself
        self.kernels = kernels
        self.num_tables = num_tables  # T
        self.li, self.lj = pair_indices(num_tables + 1, itself)

    def width(self, dim: int) -> int:
        """Columns of the output: D + P (dot) or F * D (cat)."""
        return dim + self.li.shape[0] if self.op == "dot" else (self.num_tables + 1) * dim

    def _check(self, x: np.ndarray, **arrays: np.ndarray) -> str:
        """x (B, D); emb, demb (T, B, D); out, dout (B, width); dx (B, D); all of x's
        dtype (float32, or uint16 for bf16)."""
        batch, dim = array_shape("x", x, 2)
        dtype = np.uint16 if x.dtype == np.uint16 else np.float32
        shapes = {
            "x": (batch, dim),
            "dx": (batch, dim),
            "emb": (self.num_tables, batch, dim),
            "demb": (self.num_tables, batch, dim),
            "out": (batch, self.width(dim)),
            "dout": (batch, self.width(dim)),
        }
        check_array("x", x, shapes["x"], dtype)
        for name, a in arrays.items():
            check_array(name, a, shapes[name], dtype)
        return "bf16_" if dtype == np.uint16 else ""

    def forward(self, out: np.ndarray, x: np.ndarray, emb: np.ndarray) -> None:
        """out (B, width) <- interaction of x (B, D) and emb (T, B, D)."""
        prefix = self._check(x, emb=emb, out=out)
        small = run_serial(x.nbytes + emb.nbytes + out.nbytes)
        if self.op == "cat":
            self.kernels.get(prefix + "cat_interaction_forward").entry(small)(out, x, emb)
        else:
            kernel = self.kernels.get(prefix + "dot_interaction_forward").entry(small)
            kernel(out, x, emb, self.li, self.lj)

    def backward(
        self, dx: np.ndarray, demb: np.ndarray, dout: np.ndarray, x: np.ndarray,
        emb: np.ndarray, mask_dx: bool = False,
    ) -> None:  # fmt: skip
        """dx (B, D), demb (T, B, D) <- gradients from dout (B, width); with ``mask_dx``
        (bf16 only: the fp32 kernels leave the mask to the bottom MLP's last layer) dx is
        multiplied by [x > 0]."""
        prefix = self._check(x, emb=emb, dout=dout, dx=dx, demb=demb)
        small = run_serial(2 * (x.nbytes + emb.nbytes) + dout.nbytes)
        op = "cat" if self.op == "cat" else "dot"
        kernel = self.kernels.get(f"{prefix}{op}_interaction_backward").entry(small)
        if prefix and op == "cat":
            kernel(dx, demb, dout, x, mask_dx)
        elif prefix:
            kernel(dx, demb, dout, x, emb, self.li, self.lj, mask_dx)
        elif mask_dx:
            raise ValueError("interaction: mask_dx is a bf16 option (fp32 masks in the MLP)")
        elif op == "cat":
            kernel(dx, demb, dout)
        else:
            kernel(dx, demb, dout, x, emb, self.li, self.lj)
