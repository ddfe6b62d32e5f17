"""How far one --precision bf16 training step may be from the exact step: a derivation.

For a model's fp32 master weights and a batch, :func:`step_bounds` computes in float64
the exact step (numbadlrm.reference's math) and, for every value v of it, a tolerance on
v_bf16 - v, where v_bf16 is what the bf16 model computes. The bf16 step departs from the
exact step in two ways, carried by two error channels through each op:

    d    known, signed: the weights the GEMMs read are the masters truncated to bf16
         (W16 = trunc(W)), the table rows too, the dense input is rounded to bf16, and
         in the backward a ReLU passes or blocks each gradient by the bf16 run's mask
         (read from its activations); all computed here exactly and propagated
         linearly (d(x W^T) = d_x W^T + x (W16 - W)^T + d_x (W16 - W)^T, ...).
    var  random, zero mean, bounded: every rounding of a computed activation, pooled sum,
         dot or gradient to bf16 (nearest even: |error| <= c = 2^-8 |v|), every fp32 sum
         (c = (K + 2) 2^-24 sum |terms|), and every ReLU output whose mask the two runs
         set differently (checked to happen only where |z| is within its error; then
         off by at most c = |z| + error). The channel holds the sum of c^2 of the terms
         reaching a value, weighted by the squared coefficients of the linear ops in
         between; a product of two random errors is a term of its own (varA varB).

The test requires |v_bf16 - v - d| <= LAMBDA sqrt(var) + 4 * 2^-24 |v| entrywise. For
independent zero-mean terms bounded by c_i, Hoeffding's inequality gives
P(|sum| > LAMBDA sqrt(sum c_i^2)) <= 2 exp(-LAMBDA^2 / 2): 3e-8 per entry at LAMBDA = 6,
however few the terms. (Bounding every term by its absolute value instead, as a
worst-case analysis does, grows by sqrt(K) per layer: at these widths it allows more
than the logits themselves, a test that could not fail.) Independence and zero mean are
the model's assumptions (Higham and Mary, "A new approach to probabilistic rounding
error analysis", SIAM J. Sci. Comput. 2019): round-to-nearest errors of unrelated values.
"""

from __future__ import annotations

import numpy as np

from numbadlrm import reference as ref
from numbadlrm.config import pair_indices

U, E32, LAMBDA = 2.0**-8, 2.0**-24, 6.0


class Err:
    """The error channels of an array of values: d (known, signed), var (sum of c^2)."""

    def __init__(self, d, var=None):
        self.d = np.asarray(d, dtype=np.float64)
        self.var = np.zeros_like(self.d) if var is None else var

    def size(self):
        """|error| at the tolerance (for second-order terms, rounding sizes, masks)."""
        return np.abs(self.d) + LAMBDA * np.sqrt(self.var)

    def rounded(self, v):
        """After rounding the computed value v + error to bf16."""
        return Err(self.d, self.var + (U * (np.abs(v) + self.size())) ** 2)

    def transposed(self):
        return Err(self.d.T, self.var.T)

    def scaled(self, c):
        return Err(c * self.d, c**2 * self.var)

    def part(self, index):
        return Err(self.d[index], self.var[index])


def truncated(W):
    """W16 - W: the masters truncated to bf16, exactly."""
    return ref.bf16_to_f32(ref.split_f32(W.astype(np.float32))[0]) - W


def _product(A, eA, B, eB):
    """Err of the computed (A + eA) @ (B + eB) against A @ B, in fp32 with K terms.

    With e = d + r (known part d, random part r): d' = dA B + A dB + dA dB exactly;
    r' = rA (B + dB) + (A + dA) rB + rA rB, independent zero-mean terms whose bounds'
    squares add as var' = varA (B + dB)^2 + (A + dA)^2 varB + varA varB."""
    K = A.shape[-1]
    Ah, Bh = A + eA.d, B + eB.d
    d = eA.d @ B + A @ eB.d + eA.d @ eB.d
    var = eA.var @ Bh**2 + Ah**2 @ eB.var + eA.var @ eB.var
    return Err(d, var + ((K + 2) * E32 * (np.abs(Ah) @ np.abs(Bh))) ** 2)


def _mlp_forward(x, ex, layers, relu_last, masks):
    """Forward through an MLP whose ReLU masks in the bf16 run were ``masks`` (a layer's
    output > 0, read from the bf16 workspace); caches for the backward."""
    caches = []
    for i, (W, b) in enumerate(layers):
        last = i == len(layers) - 1
        ez = _product(x, ex, W.T, Err(truncated(W).T))
        z = x @ W.T + b
        if last and not relu_last:  # the logits: fp32, no ReLU
            caches.append((x, ex, W, None, None))
            return z, ez, caches
        keep, bf16_keep = z > 0, masks[i]
        flip = keep != bf16_keep
        # a mask may differ only where z is within its own error
        assert (np.abs(z[flip]) <= ez.size()[flip]).all(), (
            f"layer {i}: a mask differs at |z| = {np.abs(z[flip]).max()}"
        )
        y = np.maximum(z, 0)
        caches.append((x, ex, W, keep, bf16_keep))
        worst = np.abs(z) + ez.size()  # where flipped: y^ = z^ > 0 against 0, or 0 against z
        ey = Err(ez.d * keep * ~flip, np.where(flip, worst**2, ez.var * keep))
        x, ex = y, ey.rounded(y)
    return x, ex, caches


def _mlp_backward(dy, edy, caches, lr, out, names):
    """Backward through an MLP; out[name] = (change, Err of change) of each parameter.

    The ReLU backward: exact dz = dy [z > 0], bf16 dz^ = dy^ m with m the bf16 run's
    mask, so dz^ - dz = (dy^ - dy) m + dy (m - [z > 0]): the last term is known."""
    for i in reversed(range(len(caches))):
        x, ex, W, keep, bf16_keep = caches[i]
        dz, edz = dy, edy
        if keep is not None:
            dz = dy * keep
            edz = Err(
                edy.d * bf16_keep + dy * (bf16_keep.astype(float) - keep), edy.var * bf16_keep
            )
        ones = np.ones((x.shape[0], 1))
        edW = _product(dz.T, edz.transposed(), x, ex)
        edb = _product(dz.T, edz.transposed(), ones, Err(0 * ones)).part((slice(None), 0))
        out[f"{names}.{i}.weight"] = (-lr * dz.T @ x, edW.scaled(-lr))
        out[f"{names}.{i}.bias"] = (-lr * dz.sum(0), edb.scaled(-lr))
        dx = dz @ W
        edx = _product(dz, edz, W, Err(truncated(W)))
        dy, edy = dx, edx.rounded(dx)
    return dy, edy


def _embeddings(cfg, sd, batch):
    """pooled (T x (B, D)) and their Errs: truncated rows summed in fp32, rounded."""
    pooled, errs = [], []
    for t in range(cfg.num_tables):
        table = sd[f"embeddings.{t}.weight"]
        o, i = batch.offsets[t], batch.indices
        p = ref.embedding_bag_forward(table, o, i)
        d = ref.embedding_bag_forward(truncated(table), o, i)
        fp32 = (np.diff(o)[:, None] + 2) * E32 * ref.embedding_bag_forward(np.abs(table), o, i)
        pooled.append(p)
        errs.append(Err(d, fp32**2).rounded(p))
    return pooled, errs


def _join(errs, stack):
    combine = (lambda a: np.stack(a, axis=1)) if stack else (lambda a: np.hstack(a))
    return Err(combine([e.d for e in errs]), combine([e.var for e in errs]))


def _dots(f, ef, li, lj):
    """The pair dots <f_i, f_j> (B, P) and their Err, rounded to bf16."""
    g = lambda a, b: np.einsum("bpd,bpd->bp", a[:, li], b[:, lj])  # noqa: E731
    D = f.shape[2]
    fh, r = f + ef.d, np.sqrt(ef.var)
    d = g(ef.d, f) + g(f, ef.d) + g(ef.d, ef.d)
    var = g(ef.var, fh**2) + g(fh**2, ef.var) + (LAMBDA * g(r, r)) ** 2  # last: r_i . r_j
    var += ((D + 2) * E32 * g(np.abs(fh), np.abs(fh))) ** 2
    dots = g(f, f)
    return dots, Err(d, var).rounded(dots)


def _dot_backward(g, eg, f, ef, li, lj):
    """dA = G A (B, F, D) from pair gradients g (B, P) and features f, with its Err."""

    def apply(gp, feats):
        out = np.zeros_like(feats)
        for p, (i, j) in enumerate(zip(li, lj, strict=True)):
            out[:, i] += gp[:, p, None] * feats[:, j]
            out[:, j] += gp[:, p, None] * feats[:, i]
        return out

    F = f.shape[1]
    gh, fh = g + eg.d, f + ef.d
    d = apply(eg.d, f) + apply(g, ef.d) + apply(eg.d, ef.d)
    var = apply(eg.var, fh**2) + apply(gh**2, ef.var) + apply(eg.var, ef.var)
    var += ((F + 3) * E32 * apply(np.abs(gh), np.abs(fh))) ** 2
    return apply(g, f), Err(d, var)


def _forward(cfg, sd, batch, layers, masks):
    """(f, ef, r, er, s, es, caches): features, top input, logits and their Errs."""
    dense = batch.dense.astype(np.float64)
    e_dense = Err(ref.bf16_to_f32(ref.bf16_round(batch.dense)) - dense)
    n_bottom, n_top = len(cfg.bottom_sizes) - 1, len(cfg.top_sizes) - 1
    x, ex, bottom = _mlp_forward(dense, e_dense, layers("bottom_mlp", n_bottom), True, masks[0])
    pooled, e_pooled = _embeddings(cfg, sd, batch)
    f, ef = np.stack([x, *pooled], axis=1), _join([ex, *e_pooled], stack=True)  # (B, F, D)
    li, lj = pair_indices(cfg.num_tables + 1, cfg.interaction_itself)
    dots, edots = _dots(f, ef, li, lj)
    r, er = np.hstack([x, dots]), _join([ex, edots], stack=False)
    s, es, top = _mlp_forward(r, er, layers("top_mlp", n_top), False, masks[1])
    return f, ef, s, es, bottom, top, (li, lj)


def step_bounds(cfg, sd: dict, batch, lr: float, masks) -> dict:
    """{"logits": (s, Err), "loss": (L, Err), name: (new value, Err) per parameter}.

    masks: (bottom, top) lists of the bf16 run's ReLU masks, layer by layer (its bf16
    activations > 0); the forward checks that they differ from the exact run's only where
    the pre-activation is within its error."""
    assert cfg.interaction_op == "dot", "written for the dot interaction"
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    layers = lambda p, n: [(sd[f"{p}.{i}.weight"], sd[f"{p}.{i}.bias"]) for i in range(n)]  # noqa: E731
    f, ef, s, es, bottom, top, (li, lj) = _forward(cfg, sd, batch, layers, masks)
    y = batch.labels.astype(np.float64)[:, None]
    loss, p = ref.sigmoid_bce_forward(s[:, 0], y[:, 0])
    p, B = p[:, None], s.shape[0]
    w = (p - y) / B  # dL/ds
    second = np.sum(es.size() ** 2) / (8 * B) + (B + 2) * E32 * loss  # softplus'' <= 1/4
    out = {
        "logits": (s[:, 0], es.part((slice(None), 0))),
        "loss": (loss, Err(np.sum(w * es.d), np.sum(w**2 * es.var) + second**2)),
    }
    slope = p * (1 - p) / B  # d ds / d s: ds = (sigmoid(s) - y) / B
    e_ds = Err(slope * es.d, slope**2 * es.var + ((4 * E32 + es.size() ** 2 / 8) / B) ** 2)
    dr, edr = _mlp_backward(w, e_ds.rounded(w), top, lr, out, "top_mlp")
    D = f.shape[2]
    dA, edA = _dot_backward(dr[:, D:], edr.part((slice(None), slice(D, None))), f, ef, li, lj)
    dA[:, 0] += dr[:, :D]
    edA.d[:, 0] += edr.d[:, :D]
    edA.var[:, 0] += edr.var[:, :D] + (E32 * np.abs(dA[:, 0])) ** 2
    edA = edA.rounded(dA)  # dx16 and demb16 are bf16
    for t in range(cfg.num_tables):
        rows, o, i = cfg.embedding_sizes[t], batch.offsets[t], batch.indices

        def grad(v, t=t, o=o, i=i, rows=rows):
            return ref.embedding_bag_backward(v[:, t + 1], o, i, rows)

        lookups = np.bincount(i[o[0] : o[-1]], minlength=rows)[:, None]
        fma = (lookups + 1) * E32 * (np.abs(sd[f"embeddings.{t}.weight"]) + lr * grad(np.abs(dA)))
        change = Err(-lr * grad(edA.d), lr**2 * grad(edA.var) + fma**2)
        out[f"embeddings.{t}.weight"] = (-lr * grad(dA), change)
    # the bottom MLP's last ReLU: the interaction backward masks dx16 by [x16 > 0]
    _mlp_backward(dA[:, 0], edA.part((slice(None), 0)), bottom, lr, out, "bottom_mlp")
    for name, value in sd.items():
        change, e = out[name]
        out[name] = (value + change, e)
    return out


def excess(got, want, e: Err) -> np.ndarray:
    """|got - want - d| / (LAMBDA sqrt(var) + 4 eps32 |want|): <= 1 within the tolerance."""
    err = np.abs(np.asarray(got, np.float64) - want - e.d)
    return err / (LAMBDA * np.sqrt(e.var) + 4 * E32 * np.abs(want) + 1e-300)
