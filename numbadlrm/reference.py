"""DLRM in plain NumPy: every op's forward and hand-derived backward, and a whole step.

This module is the test oracle and the teaching text. It imports no Numba and is
written to be read, not to be fast. It works in whatever float dtype it is given
(float64 for finite-difference checks, float32 to compare with the kernels).

The model (Naumov et al. 2019, "Deep Learning Recommendation Model"):

    dense (B, I) --> bottom MLP --> x (B, D) --------------------+
                                                                 |  feats (B, F, D)
    sparse ids --> T embedding bags (sum) --> e_1..e_T (B, D) ---+--> interaction --> r
                                                                          |
    p = sigmoid(top MLP(r))  (B,)   loss = mean BCE(p, labels)  <---------+

Each op, with its backward derived by hand (``d`` + name is the gradient of the loss):

linear (+ReLU):  z = x W^T + b;  y = max(z, 0) or z
    dz = dy * [z > 0] (= dy * [y > 0]);  dW = dz^T x;  db = sum_b dz;  dx = dz W
embedding bag:   e[b] = sum_{j in bag b} E[idx_j]
    dE[idx_j] += de[b] for every lookup j of bag b (a sparse, row-wise scatter-add)
weighted bag:    e[b] = sum_{j in bag b} w[idx_j] E[idx_j]   (--weighted-pooling)
    dE[idx_j] += w[idx_j] de[b];  dw[idx_j] += <de[b], E[idx_j]>  (learned w only)
quotient-remainder (--qr-flag, c collisions): q = bag of Q over idx // c, r = bag of R
    over idx % c;  e = q * r (mult), q + r (add) or [q, r] (concat)
    mult: dq = de * r, dr = de * q;  add: dq = dr = de;  concat: dq, dr = the halves of de
mixed dimensions (--md-flag): u = bag of a narrow table (rows, d);  e = u P^T, P (D, d)
    dP = de^T u;  du = de P
dot interaction: Z[b] = feats[b] feats[b]^T (F x F);  r = [x, Z[b][i, j] for pairs i > j]
    dfeats[b, i] += dZ_ij feats[b, j];  dfeats[b, j] += dZ_ij feats[b, i]
    (a diagonal pair (i, i) with interaction_itself gives dfeats[b, i] += 2 dZ_ii feats[b, i])
    plus dx += dr[:, :D] for the pass-through copy of x
cat interaction: r = feats reshaped to (B, F*D);  dfeats = dr reshaped back
sigmoid + BCE:   loss = mean_b [softplus(s) - y s] = mean_b [max(s,0) - y s + log1p(exp(-|s|))]
    ds = (sigmoid(s) - y) / B
"""

from __future__ import annotations

import numpy as np

from .config import DLRMConfig, pair_indices

# ----------------------------------------------------------------------------- linear


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, relu: bool):
    """x (B, I), W (O, I), b (O,) -> y (B, O)."""
    y = x @ W.T + b
    if relu:
        y = np.maximum(y, 0)
    return y, (x, W, y, relu)


def linear_backward(dy: np.ndarray, cache):
    """dy (B, O) -> dx (B, I), dW (O, I), db (O,)."""
    x, W, y, relu = cache
    dz = dy * (y > 0) if relu else dy
    return dz @ W, dz.T @ x, dz.sum(axis=0)


def mlp_forward(x, weights, biases, relu_last: bool):
    """A stack of linear layers with ReLU after each (after the last only if relu_last)."""
    caches = []
    n = len(weights)
    for i, (W, b) in enumerate(zip(weights, biases, strict=True)):
        x, cache = linear_forward(x, W, b, relu=(i < n - 1) or relu_last)
        caches.append(cache)
    return x, caches


def mlp_backward(dy, caches):
    """The forward read in reverse: returns dx and per-layer (dW, db) lists."""
    dWs, dbs = [], []
    for cache in reversed(caches):
        dy, dW, db = linear_backward(dy, cache)
        dWs.append(dW)
        dbs.append(db)
    return dy, dWs[::-1], dbs[::-1]


# ------------------------------------------------------------------------ embedding bag


def embedding_bag_forward(table: np.ndarray, offsets: np.ndarray, indices: np.ndarray):
    """Sum pooling. table (rows, D), offsets (B+1,) into indices -> pooled (B, D)."""
    b = offsets.shape[0] - 1
    pooled = np.zeros((b, table.shape[1]), dtype=table.dtype)
    for i in range(b):
        rows = indices[offsets[i] : offsets[i + 1]]
        if rows.size:
            pooled[i] = table[rows].sum(axis=0)
    return pooled


def embedding_bag_backward(
    dpooled: np.ndarray, offsets: np.ndarray, indices: np.ndarray, num_rows: int
):
    """Dense gradient of the table (rows, D). Only the oracle builds this; kernels never do."""
    dtable = np.zeros((num_rows, dpooled.shape[1]), dtype=dpooled.dtype)
    bag_of = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
    np.add.at(dtable, indices[offsets[0] : offsets[-1]], dpooled[bag_of])
    return dtable


def weighted_bag_forward(table, row_weights, offsets, indices):
    """e[b] = sum_j w[idx_j] E[idx_j]: table (rows, D), row_weights (rows,) -> (B, D)."""
    scaled = table * row_weights[:, None]
    return embedding_bag_forward(scaled, offsets, indices)


def weighted_bag_backward(dpooled, table, row_weights, offsets, indices):
    """(dtable (rows, D), drow_weights (rows,)), both dense (the oracle only)."""
    dscaled = embedding_bag_backward(dpooled, offsets, indices, table.shape[0])
    return dscaled * row_weights[:, None], (dscaled * table).sum(axis=1)


def qr_forward(q, r, operation: str):
    """Combine the quotient and remainder bags q, r (B, d)."""
    if operation == "mult":
        return q * r
    if operation == "add":
        return q + r
    return np.concatenate([q, r], axis=1)


def qr_backward(de, q, r, operation: str):
    """de (B, D) -> (dq, dr)."""
    if operation == "mult":
        return de * r, de * q
    if operation == "add":
        return de, de
    d = q.shape[1]
    return de[:, :d], de[:, d:]


# -------------------------------------------------------------------------- interaction


def interaction_forward(feats: np.ndarray, op: str, itself: bool):
    """feats (B, F, D) with feats[:, 0] = x -> r (B, D + P) for dot, (B, F*D) for cat."""
    bsz, f, d = feats.shape
    if op == "cat":
        return feats.reshape(bsz, f * d).copy()
    Z = feats @ feats.transpose(0, 2, 1)  # (B, F, F)
    li, lj = pair_indices(f, itself)
    return np.concatenate([feats[:, 0, :], Z[:, li, lj]], axis=1)


def interaction_backward(dr: np.ndarray, feats: np.ndarray, op: str, itself: bool):
    """dr (B, width) -> dfeats (B, F, D)."""
    bsz, f, d = feats.shape
    if op == "cat":
        return dr.reshape(bsz, f, d).copy()
    li, lj = pair_indices(f, itself)
    dZ = np.zeros((bsz, f, f), dtype=dr.dtype)
    np.add.at(dZ, (slice(None), li, lj), dr[:, d:])  # only the kept pairs get gradient
    dZ = dZ + dZ.transpose(0, 2, 1)  # Z is symmetric: each pair feeds both rows
    dfeats = dZ @ feats
    dfeats[:, 0, :] += dr[:, :d]
    return dfeats


# ----------------------------------------------------------------------- sigmoid + BCE


def sigmoid(s: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(s))
    return np.where(s >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_bce_forward(s: np.ndarray, labels: np.ndarray):
    """Logits s (B,), labels (B,) -> (mean loss, probabilities)."""
    loss = np.maximum(s, 0) - labels * s + np.log1p(np.exp(-np.abs(s)))
    return loss.mean(), sigmoid(s)


def sigmoid_bce_backward(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (p - labels) / labels.shape[0]


# The reference's other losses (--loss-function), on p = sigmoid(s):
#   wbce: loss = mean_b w_b BCE_b with w_b = weights[y_b];  ds = w (p - y) / B
#   mse:  loss = mean_b (p_b - y_b)^2;  dp = 2 (p - y) / B,  ds = dp p (1 - p)


def sigmoid_wbce_forward(s: np.ndarray, labels: np.ndarray, w0: float, w1: float):
    """Logits s (B,), labels (B,) 0 or 1 -> (mean weighted loss, probabilities)."""
    weight = np.where(labels > 0.5, w1, w0)
    loss = np.maximum(s, 0) - labels * s + np.log1p(np.exp(-np.abs(s)))
    return (weight * loss).mean(), sigmoid(s)


def sigmoid_wbce_backward(p: np.ndarray, labels: np.ndarray, w0: float, w1: float):
    return np.where(labels > 0.5, w1, w0) * (p - labels) / labels.shape[0]


def sigmoid_mse_forward(s: np.ndarray, labels: np.ndarray):
    """Logits s (B,), labels (B,) -> (mean squared error of sigmoid(s), probabilities)."""
    p = sigmoid(s)
    return ((p - labels) ** 2).mean(), p


def sigmoid_mse_backward(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return 2 * (p - labels) * p * (1 - p) / labels.shape[0]


# ------------------------------------------------------------------------ whole model


class ReferenceDLRM:
    """The whole model over a dict of parameters named as :meth:`DLRM.state_dict` names them."""

    def __init__(self, config: DLRMConfig, params: dict[str, np.ndarray], dtype=np.float64):
        self.config = config
        self.params = {k: np.array(v, dtype=dtype) for k, v in params.items()}
        self.nb = len(config.bottom_sizes) - 1
        self.nt = len(config.top_sizes) - 1

    def _layers(self, prefix: str, n: int):
        ws = [self.params[f"{prefix}.{i}.weight"] for i in range(n)]
        bs = [self.params[f"{prefix}.{i}.bias"] for i in range(n)]
        return ws, bs

    def forward(self, dense, offsets, indices, labels):
        cfg = self.config
        dtype = next(iter(self.params.values())).dtype
        ws, bs = self._layers("bottom_mlp", self.nb)
        x, bot_caches = mlp_forward(dense.astype(dtype), ws, bs, relu_last=True)
        pooled, parts = [], []
        for t in range(cfg.num_tables):
            e, part = self._table_forward(t, offsets[t], indices)
            pooled.append(e)
            parts.append(part)
        feats = np.stack([x, *pooled], axis=1)  # (B, F, D)
        r = interaction_forward(feats, cfg.interaction_op, cfg.interaction_itself)
        ws, bs = self._layers("top_mlp", self.nt)
        s, top_caches = mlp_forward(r, ws, bs, relu_last=False)
        loss, p = sigmoid_bce_forward(s[:, 0], labels.astype(dtype))
        return loss, p, (bot_caches, feats, top_caches, p, parts)

    def _table_forward(self, t: int, offsets, indices):
        """Table t's pooled (B, D) and what its backward needs (see the plans)."""
        plan, cfg, prm = self.config.table_plans()[t], self.config, self.params
        name = f"embeddings.{t}"
        if plan.kind == "qr":
            c = cfg.qr_collisions
            q = embedding_bag_forward(prm[f"{name}.weight_q"], offsets, indices // c)
            r = embedding_bag_forward(prm[f"{name}.weight_r"], offsets, indices % c)
            return qr_forward(q, r, cfg.qr_operation), (q, r)
        if cfg.learned_pooling:
            w = prm[f"pooling_weights.{t}"]
            return weighted_bag_forward(prm[f"{name}.weight"], w, offsets, indices), None
        u = embedding_bag_forward(prm[f"{name}.weight"], offsets, indices)
        if plan.kind == "md":
            return u @ prm[f"projections.{t}.weight"].T, u
        return u, None

    def _table_backward(self, t: int, de, offsets, indices, part, grads) -> None:
        plan, cfg, prm = self.config.table_plans()[t], self.config, self.params
        name = f"embeddings.{t}"
        if plan.kind == "qr":
            c, (q, r) = cfg.qr_collisions, part
            dq, dr = qr_backward(de, q, r, cfg.qr_operation)
            rows_q, rows_r = plan.shapes_rows
            grads[f"{name}.weight_q"] = embedding_bag_backward(dq, offsets, indices // c, rows_q)
            grads[f"{name}.weight_r"] = embedding_bag_backward(dr, offsets, indices % c, rows_r)
            return
        if cfg.learned_pooling:
            w = prm[f"pooling_weights.{t}"]
            dE, dw = weighted_bag_backward(de, prm[f"{name}.weight"], w, offsets, indices)
            grads[f"{name}.weight"], grads[f"pooling_weights.{t}"] = dE, dw
            return
        if plan.kind == "md":
            grads[f"projections.{t}.weight"] = de.T @ part
            de = de @ prm[f"projections.{t}.weight"]
        grads[f"{name}.weight"] = embedding_bag_backward(de, offsets, indices, plan.rows)

    def backward(self, offsets, indices, labels, cache) -> dict[str, np.ndarray]:
        """Gradients of every parameter (tables as dense arrays), named like params."""
        cfg = self.config
        bot_caches, feats, top_caches, p, parts = cache
        ds = sigmoid_bce_backward(p, labels.astype(p.dtype))[:, None]
        dr, dWs, dbs = mlp_backward(ds, top_caches)
        grads = _named("top_mlp", dWs, dbs)
        dfeats = interaction_backward(dr, feats, cfg.interaction_op, cfg.interaction_itself)
        for t in range(cfg.num_tables):
            self._table_backward(t, dfeats[:, t + 1], offsets[t], indices, parts[t], grads)
        _, dWs, dbs = mlp_backward(dfeats[:, 0], bot_caches)
        grads.update(_named("bottom_mlp", dWs, dbs))
        return grads

    def train_step(self, dense, offsets, indices, labels, lr: float) -> float:
        loss, _, cache = self.forward(dense, offsets, indices, labels)
        grads = self.backward(offsets, indices, labels, cache)
        for name, g in grads.items():
            self.params[name] -= lr * g
        return float(loss)


def _named(prefix: str, dWs, dbs) -> dict[str, np.ndarray]:
    out = {}
    for i, (dW, db) in enumerate(zip(dWs, dbs, strict=True)):
        out[f"{prefix}.{i}.weight"] = dW
        out[f"{prefix}.{i}.bias"] = db
    return out


# --------------------------------------------------- bf16 and split-SGD (issue 12)
#
# bf16 is the top 16 bits of an fp32 value, held as uint16. Split-SGD (Kalamkar et al.,
# SC20) stores each fp32 master weight w as hi = bits(w) >> 16 (the bf16 weight used in
# compute: w truncated) and lo = bits(w) & 0xFFFF; SGD merges, updates in fp32, splits.


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest, ties to even; NaN stays NaN."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(nan, (bits >> 16) | 0x40, rounded).astype(np.uint16)


def bf16_to_f32(h: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) -> their float32 values (exact)."""
    return (np.asarray(h, dtype=np.uint32) << 16).view(np.float32)


def split_f32(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 -> (hi, lo) uint16 halves: hi is x truncated to bf16, lo the rest."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return (bits >> 16).astype(np.uint16), (bits & 0xFFFF).astype(np.uint16)


def merge_f32(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(hi, lo) halves -> the float32 value (hi << 16) | lo, bit for bit."""
    bits = (np.asarray(hi, dtype=np.uint32) << 16) | np.asarray(lo, dtype=np.uint32)
    return bits.view(np.float32)


def sgd_fma_f32(w: np.ndarray, g: np.ndarray, lr) -> np.ndarray:
    """fp32 SGD ``w - lr g`` as one fused multiply-add: the exact value, rounded once to
    float32 (nearest even), which is what the project's fp32 kernels compute (finite
    values; lr, a scalar or an array like g, is taken as float32).

    lr g is exact in float64 (24 + 24 bits), and so is the error e of the float64
    subtraction s = w - lr g (s + e = w - lr g, Knuth's TwoSum). Rounding s to float32
    gives the right answer except when s falls exactly halfway between two float32
    values; then the sign of e says which side the exact value is on.
    """
    w64 = np.asarray(w, dtype=np.float32).astype(np.float64)
    lr64 = np.asarray(lr, dtype=np.float32).astype(np.float64)
    p = lr64 * np.asarray(g, dtype=np.float32).astype(np.float64)
    s = w64 - p
    sw = s - w64
    e = (w64 - (s - sw)) + (-p - sw)  # s + e == w64 - p exactly
    r = s.astype(np.float32)
    d = s - r.astype(np.float64)  # exact (Sterbenz)
    side = np.nextafter(r, np.where(d > 0, np.float32(np.inf), np.float32(-np.inf)))
    tie = (d != 0) & (s == (r.astype(np.float64) + side.astype(np.float64)) / 2)
    beyond = tie & (e != 0) & ((e > 0) == (d > 0))  # the exact value is past the tie
    return np.where(beyond, side, r).astype(np.float32)
