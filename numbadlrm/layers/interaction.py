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

from ..kernels import interaction as k
from ..kernels._jit import run_serial
from ..reference import pair_indices


class Interaction:
    """Holds the op choice and the pair list; the arrays come from the model's workspace."""

    def __init__(self, op: str, itself: bool, num_tables: int):
        self.op = op
        self.itself = itself
        li, lj = pair_indices(num_tables + 1, itself)
        self.li = li
        self.lj = lj

    def forward(self, out: np.ndarray, x: np.ndarray, emb: np.ndarray) -> None:
        """out (B, width) <- interaction of x (B, D) and emb (T, B, D)."""
        if self.op == "cat":
            k.cat_interaction_forward(out, x, emb)
        elif run_serial(x.nbytes + emb.nbytes + out.nbytes):
            k.dot_interaction_forward_serial(out, x, emb, self.li, self.lj)
        else:
            k.dot_interaction_forward(out, x, emb, self.li, self.lj)

    def backward(
        self, dx: np.ndarray, demb: np.ndarray, dout: np.ndarray, x: np.ndarray, emb: np.ndarray
    ) -> None:
        """dx (B, D), demb (T, B, D) <- gradients from dout (B, width)."""
        if self.op == "cat":
            k.cat_interaction_backward(dx, demb, dout)
        elif run_serial(2 * (x.nbytes + emb.nbytes) + dout.nbytes):
            k.dot_interaction_backward_serial(dx, demb, dout, x, emb, self.li, self.lj)
        else:
            k.dot_interaction_backward(dx, demb, dout, x, emb, self.li, self.lj)
