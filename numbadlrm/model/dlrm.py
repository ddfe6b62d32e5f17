"""DLRM wired from the layers: the forward reads like the paper, the backward reverses it.

    x    = bottom_mlp(dense)                        (B, D)    ReLU after every layer
    emb  = embedding_bags(offsets, indices)         (T, B, D) sum pooling
    r    = interaction(x, emb)                      (B, D+P) dot, (B, F*D) cat
    s    = top_mlp(r)                               (B, 1)    ReLU between layers
    loss = mean BCE(sigmoid(s), labels)             (or wbce, mse: layers/loss.py)

The backward runs the same list in reverse; every parameter is updated by SGD inside the
pass that forms its gradient (the sparse update fused into the embedding backward, each
MLP layer's update fused into its weight GEMM), so no gradient buffer is needed.
With Adagrad (numbadlrm/optim/optimizers.py) each MLP layer forms dW and db, then updates its
own slice of the flat buffer at once; the tables take a fused sparse Adagrad update.
All activations and gradients live in a per-batch-size workspace allocated once.

Everything except the tables is a :class:`DenseTower` (model/tower.py: bottom MLP,
interaction, top MLP): the pooled embeddings enter it through ``ws.emb`` and their
gradient leaves through ``ws.demb``. The MPI model (numbadlrm.parallel.distributed) runs
the same tower between its own table shards and the embedding exchange.

``precision`` ("fp32" or "bf16") picks a policy (model/precision.py) that says how the
weights are stored and which kernels run; nothing here is written per precision.
"""

from __future__ import annotations

import numpy as np

from ..batch import Batch, require_batch
from ..config import DLRMConfig, require_config
from ..kernels.jit import announce_first_compilation
from ..kernels.registry import KernelChoice
from ..layers.embedding_bag import embedding_backward_sgd, embedding_forward, embedding_gradient
from ..layers.linear import gemm_choice
from ..layers.loss import LossConfig, sigmoid, sigmoid_loss
from ..optim.optimizers import Optimizer, OptimizerConfig, check_steps
from ..optim.sgd import check_learning_rate
from ..runtime.profiling import OpTimes, timed
from .compressed import CompressedTables, PoolingWeights
from .memory import allocation_errors, check_memory, estimate
from .params import init_mlp, init_table_rows, slot_views, table_buffer
from .precision import policy
from .state import check_state_dict, state_dict_shapes
from .tower import DenseTower, Workspace, dense_layout


def kernel_choice(gemm: str = "auto", kernels=None) -> KernelChoice:
    """The versions a model runs: ``kernels`` ({op: version}, or "op=version,...") over
    the linear passes' ``gemm`` backend ("auto", "numba" = GEMM v4, "blas")."""
    return KernelChoice(kernels).with_defaults(gemm_choice(gemm))


class DLRM:
    """A DLRM model.

    ``kernels`` names the version of any op to run instead of its default, e.g.
    ``{"embedding_update": "v1"}`` (``numbadlrm kernels`` lists them); ``gemm`` is the
    shorthand for the linear passes: "auto", "numba" (GEMM v4) or "blas". Set
    ``op_times`` to a :class:`numbadlrm.runtime.profiling.OpTimes` to time every op.
    ``optimizer`` ("sgd", "adagrad", "rwsadagrad" or an OptimizerConfig) and ``loss``
    ("bce", "wbce", "mse" or a LossConfig) choose how train_step learns.
    ``precision="bf16"``: split-SGD-BF16 mixed precision (model/precision.py; SGD only;
    the same methods, state_dict in fp32). Then ``params`` and ``weights`` are None (their
    bytes hold the split halves): the tower's storage is ``hi``, ``lo`` and the tables'
    ``tables`` (R, 2, D) uint16. In fp32 ``tables`` is ``weights``.
    """

    def __init__(
        self,
        config: DLRMConfig,
        seed: int = 0,
        gemm: str = "auto",
        kernels: KernelChoice | dict[str, str] | str | None = None,
        optimizer: OptimizerConfig | str | None = None,
        loss: LossConfig | str | None = None,
        precision: str = "fp32",
    ):
        config = require_config(config, "DLRM")
        self.policy = policy(precision)
        self.precision = self.policy.name
        self.config = config
        self.seed = seed
        self.gemm = gemm
        self.kernels = kernel_choice(gemm, kernels)
        self.loss_config = LossConfig.of(loss)
        optimizer_config = OptimizerConfig.of(optimizer)
        self.policy.check(optimizer_config)  # before allocating anything
        if self.precision != "fp32" and (config.compressed or config.learned_pooling):
            raise ValueError(
                f"--precision {self.precision}: QR, MD and learned weighted pooling train in "
                "fp32 only (use --precision fp32)"
            )
        _, _, n = dense_layout(config)
        # QR / MD tables are stored table by table (model/compressed.py), not in one buffer
        sizes = np.asarray(
            () if config.compressed else config.embedding_sizes, dtype=np.int64
        ).reshape(-1)
        need = estimate(config, optimizer=optimizer_config.name, precision=self.precision)
        check_memory(need)  # before allocating: a clear message, not a MemoryError
        with allocation_errors(need):
            self.params = np.empty(n, np.float32)  # every dense parameter, one buffer
            # Their gradients, same layout. train_step fuses SGD into the backward, so on the
            # blas backend this buffer is never written (np.zeros: its pages are never touched).
            self.grads = np.zeros(n, np.float32)
            self.weights = table_buffer(int(sizes.sum()), config.sparse_feature_size)
            dim = config.sparse_feature_size
            self.optimizer = Optimizer(optimizer_config, n, int(sizes.sum()), dim)
        self.bottom_slots, self.top_slots, _ = dense_layout(config)
        init_mlp(self.params, self.bottom_slots + self.top_slots, seed)
        self.row_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (T+1,)
        self.compressed = self.pooling = None
        if config.compressed:
            with allocation_errors(need):
                self.compressed = CompressedTables(config, seed, optimizer_config)
        if config.learned_pooling:
            self.pooling = PoolingWeights(int(sizes.sum()), optimizer_config)
        for t, rows in enumerate(() if config.compressed else config.embedding_sizes):
            init_table_rows(
                self.weights[self.row_start[t] : self.row_start[t + 1]], seed, t, rows, 0
            )
        # the fp32 values are in place: the policy's storage takes them over (bf16: split
        # into the same bytes, after which params and weights no longer hold fp32 values)
        storage = self.policy.dense_storage(self.params)
        self.tables = self.policy.store_tables(self.weights)
        if self.precision != "fp32":
            (self.hi, self.lo), self.params, self.weights = storage, None, None
        self.tower = DenseTower(config, storage, self.grads, self.kernels, policy=self.policy)
        self.bottom, self.top = self.tower.bottom, self.tower.top
        self.interaction = self.tower.interaction

    def table(self, t: int) -> np.ndarray:
        """Table t's rows, a view into the shared table storage: (rows, D) float32, or
        split (rows, 2, D) uint16."""
        return self.tables[self.row_start[t] : self.row_start[t + 1]]

    def workspace(self, batch: int) -> Workspace:
        return self.tower.workspace(batch)

    @property
    def op_times(self) -> OpTimes | None:
        """Set to an OpTimes to time every op of the steps (runtime.profiling); None: off."""
        return self.tower.op_times

    @op_times.setter
    def op_times(self, value: OpTimes | None) -> None:
        self.tower.op_times = value

    def forward(self, batch: Batch) -> Workspace:
        """Run the model; returns the workspace holding every activation (logits in top[-1]).

        The batch is checked against the model first, every time (Batch.check_against).
        """
        require_batch(batch, "DLRM")
        batch.check_against(self.config.num_dense, self.config.embedding_sizes)
        batch.require_rows(0, batch.batch_size)
        ws = self.workspace(batch.batch_size)
        with announce_first_compilation("forward"):  # "compiling kernels ..." on stderr
            self.tower.bottom_forward(ws, batch.dense)
            with timed(self.op_times, "embedding fwd"):
                self._embedding_forward(ws, batch)
            self.tower.top_forward(ws)
        return ws

    def _embedding_forward(self, ws: Workspace, batch: Batch) -> None:
        lookups = (batch.offsets, batch.indices)
        if self.compressed is not None:
            self.compressed.forward(ws.emb, *lookups, self.kernels)
            return
        if self.pooling is not None:
            self.pooling.forward(ws.emb, self.tables, self.row_start, *lookups, self.kernels)
            return
        embedding_forward(
            ws.emb, self.tables, self.row_start, batch.offsets, batch.indices, self.kernels
        )

    def _backward_and_update(self, batch: Batch, ws: Workspace, lr: float) -> None:
        """The forward in reverse, each parameter updated as soon as its gradient exists.

        Private: it trusts that ``batch`` is unchanged since :meth:`forward` checked it,
        which only :meth:`train_step` can promise.

        SGD: the tables' sparse update is fused into the embedding backward, each MLP
        layer's update into its weight pass (layers.linear.linear_backward_sgd), after the
        layer's dx has used the old weights. So no dense gradient is stored on the blas
        backend (self.grads stays untouched, its pages never allocated). Adagrad: each
        layer forms dW, db in self.grads, then updates its range (Optimizer.layer_update);
        the tables take the fused sparse Adagrad update (TableState.update).
        """
        update = self.optimizer.layer_update(self.params, self.grads, lr, self.kernels)
        sgd_lr = lr if update is None else None
        self.tower.top_backward(ws, sgd_lr, update)
        self.tower.interaction_backward(ws)
        with timed(self.op_times, "embedding update"):
            if self.compressed is not None or self.pooling is not None:
                self._trick_update(batch, ws, lr)
            elif update is None:
                self._embedding_update(batch, ws, lr)
            else:
                lookups = (self.row_start, batch.offsets, batch.indices, ws.demb)
                self.optimizer.tables.update(self.weights, *lookups, lr, self.kernels)
        self.tower.bottom_backward(ws, lr=sgd_lr, update=update)

    def _trick_update(self, batch: Batch, ws: Workspace, lr: float) -> None:
        lookups = (batch.offsets, batch.indices)
        if self.compressed is not None:
            self.compressed.backward_update(ws.demb, *lookups, lr, self.kernels)
            return
        self.pooling.backward_update(self.tables, self.row_start, *lookups, ws.demb, lr,
                                     self.optimizer.tables, self.kernels)  # fmt: skip

    def _embedding_update(self, batch: Batch, ws: Workspace, lr: float) -> None:
        embedding_backward_sgd(
            self.tables, self.row_start, batch.offsets, batch.indices, ws.demb, lr, self.kernels
        )

    # ----------------------------------------------------------------- public API

    def train_step(self, batch: Batch, lr: float) -> float:
        """One optimizer step; returns the batch's mean loss before the update.

        ``lr`` is the step's rate (after the LR policy); Adagrad scales it by its own
        lr_decay (numbadlrm.optim.optimizers). A NaN, infinite or negative ``lr`` is refused
        before anything changes.
        """
        lr = check_learning_rate(lr)
        with announce_first_compilation("train_step"):  # "compiling kernels ..." on stderr
            ws, loss = self._forward_loss(batch)
            self.optimizer.check_batch(batch.offsets)
            self._backward_and_update(batch, ws, self.optimizer.begin_step(lr))
        return loss

    def gradients(self, batch: Batch) -> dict[str, np.ndarray]:
        """{name: dL/d(parameter)} for the batch's mean loss, fp32, named as
        :meth:`state_dict` names the parameters; nothing is updated (no optimizer step).

        The tables' gradients are dense (rows, D) arrays, zero on rows the batch does not
        look up: fine for small models; a training step never forms them (the update is
        fused into the embedding backward). fp32 models only.
        """
        if self.precision != "fp32":
            raise ValueError(f"gradients: fp32 models only, this one is {self.precision}")
        with announce_first_compilation("gradients"):
            ws, _ = self._forward_loss(batch)
            self.tower.top_backward(ws)  # no lr, no update: dW, db into the grads buffer
            self.tower.interaction_backward(ws)
            self.tower.bottom_backward(ws)
            dtables = np.empty_like(self.weights)
            embedding_gradient(
                dtables, self.row_start, batch.offsets, batch.indices, ws.demb, self.kernels
            )
        out = {}
        for slot, layer in self.tower.layers:
            out[f"{slot.name}.weight"], out[f"{slot.name}.bias"] = layer.dW.copy(), layer.db.copy()
        for t in range(self.config.num_tables):
            out[f"embeddings.{t}.weight"] = dtables[self.row_start[t] : self.row_start[t + 1]]
        return out

    def loss(self, batch: Batch) -> float:
        """The batch's mean loss (no update)."""
        return self._forward_loss(batch)[1]

    def _forward_loss(self, batch: Batch) -> tuple[Workspace, float]:
        """Forward, then the fused loss: probabilities in ws.p, ds in ws.dtop[-1]."""
        ws = self.forward(batch)
        with timed(self.op_times, "loss"):
            loss = sigmoid_loss(
                ws.p, ws.dtop[-1][:, 0], ws.top[-1][:, 0], batch.labels, self.loss_config,
                self.kernels,
            )  # fmt: skip
        return ws, loss

    def predict(self, batch: Batch) -> np.ndarray:
        """(B,) float32 click probabilities (a copy)."""
        ws = self.forward(batch)
        sigmoid(ws.p, ws.top[-1][:, 0])
        return ws.p.copy()

    def state_dict(self) -> dict[str, np.ndarray]:
        """{name: fp32 copy}: bottom_mlp.{i}.weight (O, I), .bias, top_mlp.*,
        embeddings.{t}.weight (a bf16 model's master weights, merged)."""
        out = {}
        for slot, layer in self.tower.layers:
            out[f"{slot.name}.weight"], out[f"{slot.name}.bias"] = layer.values()
        if self.precision != "fp32":
            for t in range(self.config.num_tables):
                out[f"embeddings.{t}.weight"] = self.policy.table_values(self.table(t))
            return out
        return {**out, **{name: a.copy() for name, a in self._tables_named().items()}}

    def _tables_named(self) -> dict[str, np.ndarray]:
        """{state-dict name: the table-side array} of fp32 tables (views; see model/state.py)."""
        if self.compressed is not None:
            return self.compressed.named()
        out = {}
        for t in range(self.config.num_tables):
            out[f"embeddings.{t}.weight"] = self.table(t)
            if self.pooling is not None:
                out[f"pooling_weights.{t}"] = self._pooling_rows(self.pooling.values, t)
        return out

    def _pooling_rows(self, values: np.ndarray, t: int) -> np.ndarray:
        return values[self.row_start[t] : self.row_start[t + 1]]

    def load_state_dict(self, sd: dict[str, np.ndarray]) -> None:
        """Copy fp32 values in (split exactly in bf16) after checking names, shapes and
        dtypes (nothing changes on error)."""
        check_state_dict(sd, state_dict_shapes(self.config))
        for slot, layer in self.tower.layers:
            layer.load(sd[f"{slot.name}.weight"], sd[f"{slot.name}.bias"])
        if self.precision != "fp32":
            for t in range(self.config.num_tables):
                self.policy.load_table(self.table(t), sd[f"embeddings.{t}.weight"])
            return
        for name, target in self._tables_named().items():
            target[...] = sd[name]

    def optimizer_state_dict(self) -> dict[str, np.ndarray]:
        """{parameter name: a copy of its optimizer state} (empty for SGD); the step
        count is ``self.optimizer.steps``."""
        return {name: value.copy() for name, value in self._state_targets().items()}

    def load_optimizer_state_dict(self, sd: dict[str, np.ndarray], steps: int) -> None:
        """Copy optimizer state in after checking names, shapes and dtypes; set the step count."""
        steps = check_steps(steps)
        own = self._state_targets()
        check_state_dict(sd, {n: t.shape for n, t in own.items()}, "optimizer state")
        for name, target in own.items():
            target[...] = sd[name]
        self.optimizer.steps = steps

    def _state_targets(self) -> dict[str, np.ndarray]:
        opt = self.optimizer
        if not opt.config.stateful:
            return {}
        out = {}
        for slot in self.bottom_slots + self.top_slots:
            w, b = slot_views(opt.dense, slot)
            out[f"{slot.name}.weight"], out[f"{slot.name}.bias"] = w, b
        if self.compressed is not None:
            return {**out, **self.compressed.named_states()}
        for t in range(self.config.num_tables):
            out[f"embeddings.{t}.weight"] = opt.tables.state[
                self.row_start[t] : self.row_start[t + 1]
            ]
            if self.pooling is not None:
                out[f"pooling_weights.{t}"] = self._pooling_rows(self.pooling.state, t)
        return out
