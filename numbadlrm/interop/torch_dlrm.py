"""An independent PyTorch DLRM: a test oracle, a benchmark baseline, and state_dict converters.

It follows the public reference, ``DLRM_Net`` in facebookresearch/dlrm
``dlrm_s_pytorch.py``, and lets autograd derive every gradient, so it shares no
hand-written backward with numbadlrm:

    x  = bot_l(dense)                      ReLU after every Linear, the last included  (B, D)
    e_t = emb_l[t](indices_t, offsets_t)   nn.EmbeddingBag(mode="sum", sparse=True)    (B, D)
    feats = stack([x, e_1..e_T])                                                       (B, F, D)
    dot: Z = feats feats^T;  r = [x, Z[b, i, j] for (1,0), (2,0), (2,1), (3,0)...]     (B, D + P)
         (the diagonal (i, i) too with interaction_itself, row-major: (0,0), (1,0), (1,1)...)
    cat: r = [x, e_1, ..., e_T]                                                        (B, F*D)
    p  = top_l(r)                          ReLU after each Linear, Sigmoid after the last (B, 1)
    loss = nn.BCELoss(reduction="mean")(p, labels)
           (--loss-function mse: nn.MSELoss; wbce: nn.BCELoss(reduction="none") times
           the label's weight, then the mean: the reference's loss_fn_wrap)

The reference builds each MLP as one ``nn.Sequential`` of (Linear, activation) pairs,
so Linear layer i sits at index 2i and its activation at 2i + 1 (``create_mlp``); the
top MLP's last activation is the Sigmoid (``sigmoid_top = ln_top.size - 2``). Its
state_dict therefore names parameters

    bot_l.{2i}.weight (O, I), bot_l.{2i}.bias (O,)   <->  bottom_mlp.{i}.weight / .bias
    top_l.{2i}.weight (O, I), top_l.{2i}.bias (O,)   <->  top_mlp.{i}.weight / .bias
    emb_l.{t}.weight (rows, D)                       <->  embeddings.{t}.weight
    emb_l.{t}.weight_q, .weight_r (QREmbeddingBag)   <->  embeddings.{t}.weight_q, .weight_r
    emb_l.{t}.embs.weight, .proj.weight (PrEmbeddingBag, --md-flag; no proj at width D)
                                          <->  embeddings.{t}.weight, projections.{t}.weight
    v_W_l.{t} (--weighted-pooling learned)           <->  pooling_weights.{t}

The table tricks are the reference's tricks/qr_embedding_bag.py QREmbeddingBag (two
EmbeddingBags over id // c and id % c, combined by mult, add or concat) and
tricks/md_embedding_bag.py PrEmbeddingBag (a narrow EmbeddingBag, then a bias-free
Linear to D), transcribed below; weighted pooling passes per_sample_weights =
v_W_l[t][indices] to the table's EmbeddingBag.

and :func:`to_reference_state_dict` / :func:`from_reference_state_dict` translate.

Inputs use the EmbeddingBag convention: per table, a 1-D ``offsets`` tensor of length B
(bag starts, relative to that table's own index tensor) and the table's ``indices``.
:func:`batch_to_torch` converts a numbadlrm :class:`Batch` to it.

PyTorch is optional: this module imports without it and raises ImportError on use.
"""

from __future__ import annotations

import numpy as np

from ..batch import Batch
from ..config import DLRMConfig
from ..model.state import state_dict_shapes

try:
    import torch
    from torch import nn

    _Module = nn.Module
except ImportError:  # torch is an optional dependency
    torch = None
    nn = None
    _Module = object

_NO_TORCH = "PyTorch is not installed; pip install 'numbadlrm[torch]'"


def _require_torch() -> None:
    if torch is None:
        raise ImportError(_NO_TORCH)


# ------------------------------------------------------------------------------ model


class TorchDLRM(_Module):
    """DLRM as the reference ``DLRM_Net`` computes it, for one process on the CPU.

    Parameters are initialised as the reference does, drawn from ``rng`` (default: a
    fresh ``np.random.default_rng()``): weights N(0, 2 / (I + O)), biases N(0, 1 / O),
    tables U(-sqrt(1/rows), sqrt(1/rows)). Use :meth:`from_numbadlrm` to load ours.
    """

    def __init__(
        self, config: DLRMConfig, rng: np.random.Generator | None = None, loss: str = "bce",
        loss_weights: tuple[float, float] = (1.0, 1.0),
    ):  # fmt: skip
        _require_torch()
        super().__init__()
        self.config = config
        rng = np.random.default_rng() if rng is None else rng
        self.bot_l = _make_mlp(config.bottom_sizes, nn.ReLU(), rng)
        self.emb_l = nn.ModuleList(_make_table(config, plan, rng) for plan in config.table_plans())
        if config.learned_pooling:
            self.v_W_l = nn.ParameterList(
                nn.Parameter(torch.ones(rows)) for rows in config.embedding_sizes
            )
        self.top_l = _make_mlp(config.top_sizes, nn.Sigmoid(), rng)
        self.loss_name = loss
        self.loss_fn = {"bce": nn.BCELoss(reduction="mean"), "mse": nn.MSELoss(reduction="mean"),
                        "wbce": nn.BCELoss(reduction="none")}[loss]  # fmt: skip
        self.loss_ws = torch.tensor(loss_weights, dtype=torch.float64)
        # The kept pairs (i, j) of the dot interaction; not parameters, not in state_dict.
        offset = 1 if config.interaction_itself else 0
        f = config.num_tables + 1
        li = [i for i in range(f) for j in range(i + offset)]
        lj = [j for i in range(f) for j in range(i + offset)]
        self.register_buffer("li", torch.tensor(li, dtype=torch.int64), persistent=False)
        self.register_buffer("lj", torch.tensor(lj, dtype=torch.int64), persistent=False)

    @classmethod
    def from_numbadlrm(
        cls, config: DLRMConfig, state_dict: dict[str, np.ndarray], **loss
    ) -> TorchDLRM:
        """A float32 model holding numbadlrm's parameters (named as ReferenceDLRM names them);
        ``loss``: the constructor's loss and loss_weights."""
        _require_torch()
        model = cls(config, rng=np.random.default_rng(0), **loss)
        sd32 = {name: np.asarray(v, dtype=np.float32) for name, v in state_dict.items()}
        model.load_state_dict(to_reference_state_dict(sd32, config), strict=True)
        return model

    def to_numbadlrm(self) -> dict[str, np.ndarray]:
        """This model's parameters under numbadlrm's names, as NumPy copies."""
        return from_reference_state_dict(self.state_dict(), self.config)

    def forward(self, dense, offsets, indices):
        """dense (B, I), offsets[t] (B,), indices[t] (nnz_t,) -> probabilities p (B, 1)."""
        x = self.bot_l(dense.to(self.bot_l[0].weight.dtype))  # (B, D)
        if self.config.learned_pooling:
            pooled = [
                bag(idx, off, per_sample_weights=w[idx])
                for bag, off, idx, w in zip(self.emb_l, offsets, indices, self.v_W_l, strict=True)
            ]
        else:
            pooled = [
                bag(idx, off) for bag, off, idx in zip(self.emb_l, offsets, indices, strict=True)
            ]  # T x (B, D)
        r = self.interact(x, pooled)  # (B, D + P) or (B, F*D)
        return self.top_l(r)  # (B, 1)

    def interact(self, x, pooled):
        """x (B, D), pooled T x (B, D) -> r, the top MLP's input."""
        if self.config.interaction_op == "cat":
            return torch.cat([x, *pooled], dim=1)  # (B, F*D)
        feats = torch.stack([x, *pooled], dim=1)  # (B, F, D)
        Z = torch.bmm(feats, feats.transpose(1, 2))  # (B, F, F)
        return torch.cat([x, Z[:, self.li, self.lj]], dim=1)  # (B, D + P)

    def loss(self, p, labels):
        """Mean loss (binary cross-entropy by default) of p (B, 1) against labels (B,)."""
        target = labels.to(p.dtype).reshape(p.shape)
        if self.loss_name != "wbce":
            return self.loss_fn(p, target)
        weights = self.loss_ws[labels.long()].to(p.dtype).reshape(p.shape)
        return (weights * self.loss_fn(p, target)).mean()


def _bag(rows: int, d: int, values: np.ndarray):
    return nn.EmbeddingBag(rows, d, mode="sum", sparse=True, _weight=_tensor(values))


def _make_table(config: DLRMConfig, plan, rng: np.random.Generator):
    """Table t as the reference builds it (create_emb): EmbeddingBag, QR or Pr."""
    n, d, bound = plan.rows, plan.dim, np.sqrt(1 / plan.rows)
    if plan.kind == "qr":
        return QREmbeddingBag(n, d, config.qr_collisions, config.qr_operation, rng)
    if config.md_flag and n > config.md_threshold:  # "md", or "plain" at full width
        return PrEmbeddingBag(n, d, config.sparse_feature_size, rng)
    return _bag(n, d, rng.uniform(-bound, bound, (n, d)))


class QREmbeddingBag(_Module):
    """The reference's QREmbeddingBag (mode "sum"): tables of ceil(n/c) and c rows,
    initialised by nn.init.uniform_(w, sqrt(1/n)), i.e. U(sqrt(1/n), 1)."""

    def __init__(self, n: int, d: int, collisions: int, operation: str, rng):
        super().__init__()
        self.collisions, self.operation = collisions, operation
        rows = (-(-n // collisions), collisions)
        low = np.sqrt(1 / n)
        self.weight_q = nn.Parameter(_tensor(rng.uniform(low, 1, (rows[0], d))))
        self.weight_r = nn.Parameter(_tensor(rng.uniform(low, 1, (rows[1], d))))

    def forward(self, indices, offsets):
        q = nn.functional.embedding_bag(
            indices // self.collisions, self.weight_q, offsets, mode="sum", sparse=True
        )
        r = nn.functional.embedding_bag(
            torch.remainder(indices, self.collisions), self.weight_r, offsets, mode="sum",
            sparse=True,
        )  # fmt: skip
        if self.operation == "concat":
            return torch.cat((q, r), dim=1)
        return q + r if self.operation == "add" else q * r


class PrEmbeddingBag(_Module):
    """The reference's PrEmbeddingBag: a narrow (n, d) EmbeddingBag (initialised as
    create_emb does, U(+-sqrt(1/n))), then a bias-free Linear d -> D (xavier_uniform)."""

    def __init__(self, n: int, d: int, base: int, rng):
        super().__init__()
        bound = np.sqrt(1 / n)
        self.embs = _bag(n, d, rng.uniform(-bound, bound, (n, d)))
        self.proj = nn.Identity() if d == base else nn.Linear(d, base, bias=False)
        limit = np.sqrt(6 / (d + base))
        with torch.no_grad():
            if d == base:
                return
            self.proj.weight.copy_(_tensor(rng.uniform(-limit, limit, (base, d))))

    def forward(self, indices, offsets, per_sample_weights=None):
        return self.proj(self.embs(indices, offsets, per_sample_weights=per_sample_weights))


def _make_mlp(sizes: tuple[int, ...], last_activation, rng: np.random.Generator):
    """Linear(sizes[i] -> sizes[i+1]) at index 2i, its activation at 2i + 1."""
    layers = []
    n = len(sizes) - 1
    for i in range(n):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        linear = nn.Linear(fan_in, fan_out, bias=True)
        with torch.no_grad():
            linear.weight.copy_(
                _tensor(rng.normal(0, np.sqrt(2 / (fan_in + fan_out)), (fan_out, fan_in)))
            )
            linear.bias.copy_(_tensor(rng.normal(0, np.sqrt(1 / fan_out), fan_out)))
        layers += [linear, last_activation if i == n - 1 else nn.ReLU()]
    return nn.Sequential(*layers)


def _tensor(values: np.ndarray):
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


# ------------------------------------------------------------------ batches and steps


def batch_to_torch(batch: Batch):
    """A Batch -> (dense (B, I), offsets T x (B,), indices T x (nnz_t,), labels (B,)).

    numbadlrm's offsets (T, B+1) point into one concatenated ``indices``; EmbeddingBag
    wants each table's own index tensor with bag starts relative to it.
    """
    _require_torch()
    dense = torch.from_numpy(batch.dense)
    offsets, indices = [], []
    for t in range(batch.num_tables):
        starts = batch.offsets[t, :-1] - batch.offsets[t, 0]  # (B,)
        offsets.append(torch.from_numpy(np.ascontiguousarray(starts)))
        indices.append(torch.from_numpy(batch.table_indices(t)))
    return dense, offsets, indices, torch.from_numpy(batch.labels)


def torch_train_step(model: TorchDLRM, optimizer, batch: Batch) -> float:
    """One step: forward, mean BCE, backward, ``optimizer.step()``; returns the loss.

    The reference pairs this with ``torch.optim.SGD(model.parameters(), lr=lr)``; plain
    SGD (no momentum or weight decay) accepts the tables' sparse gradients.
    """
    batch.check_against(model.config.num_dense, model.config.embedding_sizes)
    dense, offsets, indices, labels = batch_to_torch(batch)
    optimizer.zero_grad()
    loss = model.loss(model(dense, offsets, indices), labels)
    loss.backward()
    optimizer.step()
    return loss.item()


def torch_predict(model: TorchDLRM, batch: Batch) -> np.ndarray:
    """Click probabilities (B,) as float64, without building the autograd graph."""
    batch.check_against(model.config.num_dense, model.config.embedding_sizes)
    dense, offsets, indices, _ = batch_to_torch(batch)
    with torch.no_grad():
        p = model(dense, offsets, indices)
    return p[:, 0].double().numpy()


# ------------------------------------------------------------------------- converters


def reference_names(config: DLRMConfig) -> dict[str, str]:
    """numbadlrm parameter name -> the reference DLRM_Net's state_dict name."""
    names = {}
    for prefix, ref_prefix, sizes in (
        ("bottom_mlp", "bot_l", config.bottom_sizes),
        ("top_mlp", "top_l", config.top_sizes),
    ):
        for i in range(len(sizes) - 1):
            for kind in ("weight", "bias"):
                names[f"{prefix}.{i}.{kind}"] = f"{ref_prefix}.{2 * i}.{kind}"
    for t, plan in enumerate(config.table_plans()):
        if plan.kind == "qr":
            for part in ("weight_q", "weight_r"):
                names[f"embeddings.{t}.{part}"] = f"emb_l.{t}.{part}"
        elif config.md_flag and plan.rows > config.md_threshold:
            names[f"embeddings.{t}.weight"] = f"emb_l.{t}.embs.weight"
            if plan.kind == "md":
                names[f"projections.{t}.weight"] = f"emb_l.{t}.proj.weight"
        else:
            names[f"embeddings.{t}.weight"] = f"emb_l.{t}.weight"
        if config.learned_pooling:
            names[f"pooling_weights.{t}"] = f"v_W_l.{t}"
    return names


def to_reference_state_dict(state_dict: dict[str, np.ndarray], config: DLRMConfig) -> dict:
    """numbadlrm names -> reference names; values become CPU tensors (copies, dtype kept)."""
    _require_torch()
    names = reference_names(config)
    shapes = state_dict_shapes(config)
    _check_state_dict(state_dict, shapes, "numbadlrm")
    return {names[name]: torch.from_numpy(np.array(state_dict[name], copy=True)) for name in names}


def from_reference_state_dict(torch_state_dict: dict, config: DLRMConfig) -> dict:
    """Reference names -> numbadlrm names; values become NumPy arrays (copies, dtype kept)."""
    _require_torch()
    names = reference_names(config)
    shapes = state_dict_shapes(config)
    ref_shapes = {names[name]: shape for name, shape in shapes.items()}
    _check_state_dict(torch_state_dict, ref_shapes, "reference DLRM")
    out = {}
    for name, ref_name in names.items():
        value = torch_state_dict[ref_name]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        out[name] = np.array(value, copy=True)
    return out


def _check_state_dict(state_dict: dict, shapes: dict[str, tuple[int, ...]], kind: str) -> None:
    missing = [name for name in shapes if name not in state_dict]
    unexpected = [name for name in state_dict if name not in shapes]
    if missing or unexpected:
        raise ValueError(
            f"{kind} state_dict does not fit the config: missing {missing}, unexpected {unexpected}"
        )
    for name, shape in shapes.items():
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise ValueError(f"{kind} state_dict: {name} has shape {got}, the config needs {shape}")
