"""The optimizers in plain NumPy: SGD, Adagrad and row-wise Adagrad (the test oracle).

Written to be read, in whatever float dtype it is given; it imports no Numba. Each
function updates its arrays in place. ``lr`` is the step's lr (after the LR policy and
Adagrad's lr_decay: lr / (1 + (t - 1) lr_decay) at step t, numbadlrm.optim.lr_policy).

Dense parameters (a flat buffer p with gradient g), as torch.optim.SGD / Adagrad:

    sgd:      p -= lr g
    adagrad:  g' = g + weight_decay p;   s += g'^2;   p -= lr g' / (sqrt(s) + eps)

s is the per-element state ("sum"), of p's shape, starting at initial_accumulator_value
(default 0); eps defaults to 1e-10. The reference's RWSAdagrad (optim/rwsadagrad.py)
updates dense parameters exactly like this, per element: it is row-wise only for
parameters whose gradient is sparse, i.e. the embedding tables.

Embedding tables (all tables in one buffer E (R, D), table t at rows row_start[t]..),
given the pooled gradients dpooled (T, B, D) of sum-pooled bags. Bag (t, b) adds
dpooled[t, b] to the gradient of every row it looks up, so a row looked up n times in the
batch gets the sum of those n bag gradients. Adagrad is non-linear, so, as torch's
sparse path does (``grad.coalesce()``: duplicate indices summed), the row's gradient is
summed first and the row updated once; rows not looked up are not touched:

    G[r] = sum over lookups j of row r of dpooled[t, bag(j)]          (D,)  per unique row r
    sgd:              E[r] -= lr G[r]              (linear: the same as one update per lookup)
    adagrad:          S[r] += G[r]^2;              E[r] -= lr G[r] / (sqrt(S[r]) + eps)
    rowwise adagrad:  s[r] += mean_d G[r, d]^2;    E[r] -= lr G[r] / (sqrt(s[r]) + eps)

Adagrad's state S is (R, D) like E; row-wise Adagrad's s is one number per row (R,), the
state of FBGEMM's EXACT_ROWWISE_ADAGRAD and the reference's RWSAdagrad (its "momentum").
Both refuse weight decay with sparse gradients (torch raises), so these take none.
"""

from __future__ import annotations

import numpy as np

from ..reference import embedding_bag_backward

# ------------------------------------------------------------------ dense parameters


def sgd(params: np.ndarray, grads: np.ndarray, lr: float) -> None:
    params -= lr * grads


def adagrad(params, state, grads, lr: float, eps: float = 1e-10, weight_decay: float = 0.0):
    """Per element; state has params' shape."""
    g = grads + weight_decay * params if weight_decay else grads
    state += g * g
    params -= lr * g / (np.sqrt(state) + eps)


def rowwise_adagrad(weights, state, grads, lr: float, eps: float = 1e-10) -> None:
    """Every row of weights (rows, D) with its gradient grads (rows, D); state (rows,)."""
    state += (grads * grads).mean(axis=1)
    weights -= (lr / (np.sqrt(state) + eps))[:, None] * grads


# ------------------------------------------------------------------ embedding tables


def coalesced_gradient(dpooled_t, offsets_t, indices, num_rows: int):
    """One table's unique looked-up rows (U,) and their summed gradients G (U, D)."""
    rows = np.unique(indices[offsets_t[0] : offsets_t[-1]])
    dtable = embedding_bag_backward(dpooled_t, offsets_t, indices, num_rows)  # oracle only
    return rows, dtable[rows]


def _table_rows(row_start, offsets, indices, dpooled):
    """(global rows, G) of each table in turn."""
    for t in range(offsets.shape[0]):
        num_rows = int(row_start[t + 1] - row_start[t])
        rows, grads = coalesced_gradient(dpooled[t], offsets[t], indices, num_rows)
        yield row_start[t] + rows, grads


def embedding_sgd(weights, row_start, offsets, indices, dpooled, lr: float) -> None:
    for rows, grads in _table_rows(row_start, offsets, indices, dpooled):
        weights[rows] -= lr * grads


def embedding_adagrad(weights, state, row_start, offsets, indices, dpooled, lr, eps=1e-10):
    """state (R, D)."""
    for rows, grads in _table_rows(row_start, offsets, indices, dpooled):
        w, s = weights[rows], state[rows]  # copies (fancy indexing): written back below
        adagrad(w, s, grads, lr, eps)
        weights[rows], state[rows] = w, s


def embedding_rowwise_adagrad(weights, state, row_start, offsets, indices, dpooled, lr, eps=1e-10):
    """state (R,)."""
    for rows, grads in _table_rows(row_start, offsets, indices, dpooled):
        w, s = weights[rows], state[rows]
        rowwise_adagrad(w, s, grads, lr, eps)
        weights[rows], state[rows] = w, s
