"""Feature interaction, forward and backward side by side.

Features of sample b: F = T + 1 vectors, x[b] (the bottom MLP's output) then the pooled
embeddings emb[0, b] ... emb[T-1, b], each of length D.

dot:  r[b] = [x[b], <f_i, f_j> for (i, j) in pairs]    pairs = row-major lower triangle
      (1,0), (2,0), (2,1), (3,0), ...; with interaction_itself also (0,0), (1,1), ...
      backward: df_i += dr_ij f_j, df_j += dr_ij f_i, and dx += dr[:, :D]
cat:  r[b] = [x[b], emb[0, b], ..., emb[T-1, b]];  backward splits dr the same way
"""

from __future__ import annotations

import numpy as np

from ..config import pair_indices
from ..kernels.jit import run_serial
from ..kernels.registry import DEFAULT, KernelChoice


class Interaction:
    """Holds the op choice, the pair list and the kernel choice; the arrays come from the
    model's workspace. Each call runs the version of its op (dot_interaction_forward, ...)
    that ``kernels`` selects, its serial entry for small work."""

    def __init__(self, op: str, itself: bool, num_tables: int, kernels: KernelChoice = DEFAULT):
        self.op = op
        self.itself = itself
        self.kernels = kernels
        self.li, self.lj = pair_indices(num_tables + 1, itself)

    def forward(self, out: np.ndarray, x: np.ndarray, emb: np.ndarray) -> None:
        """out (B, width) <- interaction of x (B, D) and emb (T, B, D)."""
        small = run_serial(x.nbytes + emb.nbytes + out.nbytes)
        if self.op == "cat":
            self.kernels.get("cat_interaction_forward").entry(small)(out, x, emb)
        else:
            kernel = self.kernels.get("dot_interaction_forward").entry(small)
            kernel(out, x, emb, self.li, self.lj)

    def backward(
        self, dx: np.ndarray, demb: np.ndarray, dout: np.ndarray, x: np.ndarray, emb: np.ndarray
    ) -> None:
        """dx (B, D), demb (T, B, D) <- gradients from dout (B, width)."""
        small = run_serial(2 * (x.nbytes + emb.nbytes) + dout.nbytes)
        if self.op == "cat":
            self.kernels.get("cat_interaction_backward").entry(small)(dx, demb, dout)
        else:
            kernel = self.kernels.get("dot_interaction_backward").entry(small)
            kernel(dx, demb, dout, x, emb, self.li, self.lj)
