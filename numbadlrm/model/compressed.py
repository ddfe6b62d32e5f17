"""The reference's table tricks as a DLRM stores and trains them (issue 22).

QR and MD tables (DLRMConfig.table_plans) are stored table by table, each its own array
with its own optimizer state, and run through the plain embedding kernels on the table's
own lookups (``id // c`` and ``id % c`` for QR's quotient and remainder tables):

    QR:  q = bags of Q (ceil(n/c), d) over id // c;  r = bags of R (c, d) over id % c
         e = q * r | q + r | [q, r]                          (layers/embedding_tricks.py)
    MD:  u = bags of E (n, d), d < D;  e = u P^T, P (D, d) bias-free
    plain tables of a QR/MD model (at or below the threshold): e = bags of E (n, D)

Backward: the combine's or the projection's backward gives each stored table its bag
gradients, then the table takes the model's optimizer step (fused SGD, or the sparse
Adagrad / row-wise Adagrad update) exactly as a plain table; P takes a dense step
(SGD, or element-wise Adagrad; no weight decay: it belongs to the table's module, which
the tables' optimizer group steps without decay, as interop/torch_optim.py converts it).

Weighted pooling (:class:`PoolingWeights`) keeps the one table buffer; learned weights
take SGD or element-wise Adagrad on the rows looked up (dw is zero elsewhere).
"""

from __future__ import annotations

import numpy as np

from ..config import DLRMConfig
from ..kernels.registry import KernelChoice
from ..layers.embedding_bag import embedding_backward_sgd, embedding_forward
from ..layers.embedding_tricks import (
    one_lookup_bags,
    projection_backward,
    projection_forward,
    qr_combine_backward,
    qr_combine_forward,
    row_sums,
    weighted_embedding_backward,
    weighted_embedding_forward,
)
from ..optim.optimizers import OptimizerConfig, TableState
from ..optim.sgd import SERIAL_BELOW_PARAMS
from .params import init_projection, init_qr_table, init_table_rows


def table_lookups(t: int, offsets: np.ndarray, indices: np.ndarray):
    """Table t's own lookups: (offsets (1, B+1) from 0, indices (nnz_t,), a view)."""
    first, last = offsets[t, 0], offsets[t, -1]
    return (offsets[t] - first)[None, :], indices[first:last]


class CompressedTables:
    """A model's QR / MD / plain tables, stored one by one (see the module docstring).

    ``stored[t]``: table t's arrays ([E] or [Q, R]); ``projections[t]``: MD's P or None.
    """

    def __init__(self, config: DLRMConfig, seed: int, optimizer: OptimizerConfig):
        self.config, self.optimizer = config, optimizer
        self.plans = config.table_plans()
        self.stored: list[list[np.ndarray]] = []
        self.projections: list[np.ndarray | None] = []
        for t, plan in enumerate(self.plans):
            arrays = [np.empty((rows, plan.dim), np.float32) for rows in plan.shapes_rows]
            if plan.kind == "qr":
                for part, a in enumerate(arrays):
                    init_qr_table(a, seed, t, part, plan.rows)
            else:
                init_table_rows(arrays[0], seed, t, plan.rows, 0)
            self.stored.append(arrays)
            proj = None
            if plan.kind == "md":
                proj = np.empty((config.sparse_feature_size, plan.dim), np.float32)
                init_projection(proj, seed, t)
            self.projections.append(proj)
        stateful = optimizer.stateful
        self.states = [
            [TableState(optimizer, a.shape[0], a.shape[1]) for a in arrays] if stateful else None
            for arrays in self.stored
        ]
        self.projection_states = [
            np.full(p.shape, optimizer.initial_accumulator_value, np.float32)
            if stateful and p is not None else None
            for p in self.projections
        ]  # fmt: skip
        self._scratch: dict[int, list] = {}

    def named(self) -> dict[str, np.ndarray]:
        """{state-dict name: the array itself} (model/state.py names)."""
        out = {}
        for t, (plan, arrays) in enumerate(zip(self.plans, self.stored, strict=True)):
            if plan.kind == "qr":
                out[f"embeddings.{t}.weight_q"], out[f"embeddings.{t}.weight_r"] = arrays
            else:
                out[f"embeddings.{t}.weight"] = arrays[0]
            if self.projections[t] is not None:
                out[f"projections.{t}.weight"] = self.projections[t]
        return out

    def named_states(self) -> dict[str, np.ndarray]:
        """{state-dict name: its optimizer state} (empty for SGD)."""
        if not self.optimizer.stateful:
            return {}
        names = list(self.named())
        out, k = {}, 0
        for t, states in enumerate(self.states):
            for s in states:
                out[names[k]] = s.state
                k += 1
            if self.projection_states[t] is not None:
                out[names[k]] = self.projection_states[t]
                k += 1
        return out

    def nbytes(self) -> int:
        """Bytes of every stored table and projection."""
        return sum(a.nbytes for a in self.named().values())

    def _buffers(self, batch: int) -> list:
        """Per table: (pooled parts, their gradients) of shape (1, B, d), by batch size."""
        found = self._scratch.get(batch)
        if found is None:
            if len(self._scratch) >= 4:
                self._scratch.clear()
            found = self._scratch[batch] = [
                [
                    np.empty((1, batch, plan.dim), np.float32)
                    for _ in range(4 * (plan.kind != "plain"))
                ]
                for plan in self.plans
            ]
        return found

    def _parts(self, t: int, offsets, indices):
        """[(table, its lookups' indices)] of table t, and the local offsets."""
        local, idx = table_lookups(t, offsets, indices)
        if self.plans[t].kind != "qr":
            return [(self.stored[t][0], idx)], local
        c = self.config.qr_collisions
        return [(self.stored[t][0], idx // c), (self.stored[t][1], idx % c)], local

    def forward(self, emb: np.ndarray, offsets, indices, kernels: KernelChoice) -> None:
        """emb (T, B, D) <- every table's pooled vectors."""
        buffers = self._buffers(emb.shape[1])
        for t, plan in enumerate(self.plans):
            parts, local = self._parts(t, offsets, indices)
            if plan.kind == "plain":
                embedding_forward(emb[t : t + 1], parts[0][0], _rows(parts[0][0]), local,
                                  parts[0][1], kernels)  # fmt: skip
                continue
            pooled = buffers[t]
            for (table, idx), out in zip(parts, pooled, strict=False):
                embedding_forward(out, table, _rows(table), local, idx, kernels)
            if plan.kind == "qr":
                op = self.config.qr_operation
                qr_combine_forward(emb[t], pooled[0][0], pooled[1][0], op, kernels)
            else:
                projection_forward(emb[t], pooled[0][0], self.projections[t])

    def backward_update(self, demb, offsets, indices, lr: float, kernels) -> None:
        """Every table's (and projection's) optimizer step from demb (T, B, D); the pooled
        parts are those the last forward of this batch left in the scratch."""
        buffers = self._buffers(demb.shape[1])
        for t, plan in enumerate(self.plans):
            parts, local = self._parts(t, offsets, indices)
            pooled, grads = buffers[t][:2], buffers[t][2:]
            if plan.kind == "plain":
                grads = [demb[t : t + 1]]
            elif plan.kind == "qr":
                op = self.config.qr_operation
                qr_combine_backward(grads[0][0], grads[1][0], demb[t], pooled[0][0],
                                    pooled[1][0], op, kernels)  # fmt: skip
            else:
                P = self.projections[t]
                dP = np.empty_like(P)
                projection_backward(grads[0][0], dP, demb[t], pooled[0][0], P)
                self._dense_step(P, self.projection_states[t], dP, lr, kernels)
            for k, ((table, idx), g) in enumerate(zip(parts, grads, strict=False)):
                if self.states[t] is None:
                    embedding_backward_sgd(table, _rows(table), local, idx, g, lr, kernels)
                else:
                    self.states[t][k].update(table, _rows(table), local, idx, g, lr, kernels)

    def _dense_step(self, P, state, dP, lr: float, kernels) -> None:
        if state is None:
            P -= np.float32(lr) * dP
            return
        opt = self.optimizer
        kernel = kernels.get("dense_update_adagrad").entry(P.size < SERIAL_BELOW_PARAMS)
        kernel(P.reshape(-1), state.reshape(-1), dP.reshape(-1), np.float32(lr),
               np.float32(opt.eps), np.float32(0.0))  # fmt: skip


def _rows(table: np.ndarray) -> np.ndarray:
    return np.array([0, table.shape[0]], np.int64)


class PoolingWeights:
    """Learned per-row pooling weights (--weighted-pooling learned) over a model's one
    table buffer: ``values`` (R,) start at 1; ``state`` (R,) with Adagrad."""

    def __init__(self, total_rows: int, optimizer: OptimizerConfig):
        if optimizer.stateful and optimizer.weight_decay:
            raise ValueError(
                "--weighted-pooling learned: --weight-decay is not supported (it would "
                "update every row's weight every step)"
            )
        self.optimizer = optimizer
        self.values = np.ones(total_rows, np.float32)
        self.state = None
        if optimizer.stateful:
            self.state = np.full(total_rows, optimizer.initial_accumulator_value, np.float32)

    def forward(self, emb, weights, row_start, offsets, indices, kernels) -> None:
        weighted_embedding_forward(emb, weights, self.values, row_start, offsets, indices,
                                   kernels)  # fmt: skip

    def backward_update(self, weights, row_start, offsets, indices, demb, lr, tables, kernels):
        """The tables' step (``tables``: their TableState, None for SGD) from per-lookup
        gradients w[row] demb[t, b], then the weights' step from dw."""
        grads, rows, dots = weighted_embedding_backward(
            weights, self.values, row_start, offsets, indices, demb, kernels
        )
        bags = one_lookup_bags(rows, weights.shape[0])
        if tables is None:
            embedding_backward_sgd(weights, *bags, grads[None], lr, kernels)
        else:
            tables.update(weights, *bags, grads[None], lr, kernels)
        unique, dw = row_sums(rows, dots)
        if self.state is None:
            self.values[unique] -= np.float32(lr) * dw
            return
        self.state[unique] += dw * dw
        step = dw / (np.sqrt(self.state[unique]) + np.float32(self.optimizer.eps))
        self.values[unique] -= np.float32(lr) * step
