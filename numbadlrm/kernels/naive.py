"""Naive versions of the ops that had none: numbadlrm.reference's NumPy, called with the
op's arguments and written into its outputs. Each is the op's specification in runnable
form (the checks hold them to the reference like any version; ``--kernels op=naive``
trains with them, slowly). The linear passes, the embedding forward and SGD update and
the optimizers keep their naive versions beside their kernels.

The dot interaction receives its pair lists li, lj (config.pair_indices); the reference
takes ``itself`` and forms them again: P = F(F+1)/2 pairs means the diagonal is kept.
"""

from __future__ import annotations

import numpy as np

from .. import reference as ref
from .registry import register

NAIVE = "numbadlrm.reference's NumPy, as the op's specification (slow)"


def _feats(x, emb):
    """(B, F, D) float64: x, then each table's pooled vector."""
    return np.concatenate([x[:, None], emb.transpose(1, 0, 2)], axis=1).astype(np.float64)


def _itself(li, num_features: int) -> bool:
    return li.shape[0] == num_features * (num_features + 1) // 2


def dot_forward_naive(out, x, emb, li, lj):
    feats = _feats(x, emb)
    out[...] = ref.interaction_forward(feats, "dot", _itself(li, feats.shape[1]))


def dot_backward_naive(dx, demb, dout, x, emb, li, lj):
    feats = _feats(x, emb)
    dfeats = ref.interaction_backward(dout, feats, "dot", _itself(li, feats.shape[1]))
    dx[...], demb[...] = dfeats[:, 0], dfeats[:, 1:].transpose(1, 0, 2)


def cat_forward_naive(out, x, emb):
    out[...] = ref.interaction_forward(_feats(x, emb), "cat", False)


def cat_backward_naive(dx, demb, dout):
    dfeats = dout.reshape(dx.shape[0], demb.shape[0] + 1, dx.shape[1])
    dx[...], demb[...] = dfeats[:, 0], dfeats[:, 1:].transpose(1, 0, 2)


def embedding_gradient_naive(dweights, row_start, offsets, indices, dpooled):
    for t in range(dpooled.shape[0]):
        rows = slice(row_start[t], row_start[t + 1])
        num_rows = int(row_start[t + 1] - row_start[t])
        dweights[rows] += ref.embedding_bag_backward(dpooled[t], offsets[t], indices, num_rows)


def _loss_naive(name: str):
    forward = getattr(ref, f"sigmoid_{name}_forward")
    backward = getattr(ref, f"sigmoid_{name}_backward")

    def loss(p, ds, s, labels, *weights):
        s64, y64 = s.astype(np.float64), labels.astype(np.float64)
        value, p[...] = forward(s64, y64, *weights)
        ds[...] = backward(p.astype(np.float64), y64, *weights)
        return value

    return loss


def _wbce_naive(p, ds, s, labels, w0, w1):
    return _loss_naive("wbce")(p, ds, s, labels, w0, w1)


def dense_update_naive(params, grads, lr):
    params -= np.float32(lr) * grads


register("dot_interaction_forward", "naive", dot_forward_naive, description=NAIVE)
register("dot_interaction_backward", "naive", dot_backward_naive, description=NAIVE)
register("cat_interaction_forward", "naive", cat_forward_naive, description=NAIVE)
register("cat_interaction_backward", "naive", cat_backward_naive, description=NAIVE)
register("embedding_gradient", "naive", embedding_gradient_naive, description=NAIVE)
register("sigmoid_bce", "naive", _loss_naive("bce"), description=NAIVE)
register("sigmoid_mse", "naive", _loss_naive("mse"), description=NAIVE)
register("sigmoid_wbce", "naive", _wbce_naive, description=NAIVE)
register("dense_update", "naive", dense_update_naive, description=NAIVE)
