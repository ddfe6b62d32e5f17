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

Everything except the tables is a :class:`DenseTower` (bottom MLP, interaction, top MLP):
the pooled embeddings enter it through ``ws.emb`` and their gradient leaves through
``ws.demb``. The MPI model (numbadlrm.parallel.distributed) runs the same tower between
its own table shards and the embedding exchange.
"""

from __future__ import annotations

import importlib

import numpy as np

from ..batch import Batch, require_batch
from ..config import DLRMConfig, require_config
from ..kernels.registry import KernelChoice
from ..layers.embedding_bag import embedding_backward_sgd, embedding_forward
from ..layers.interaction import Interaction
from ..layers.linear import gemm_choice, linear_backward, linear_backward_sgd, linear_forward
from ..layers.loss import LossConfig, sigmoid, sigmoid_loss
from ..optim.optimizers import Optimizer, OptimizerConfig, check_steps, state_shapes
from ..optim.sgd import check_learning_rate
from ..runtime.profiling import OpTimes, timed
from .memory import allocation_errors, check_memory, estimate
from .params import LinearSlot, init_mlp, init_table_rows, mlp_slots, slot_views, table_buffer


class Workspace:
    """Every activation and gradient buffer of one step at batch size B."""

    def __init__(self, cfg: DLRMConfig, batch: int):
        f32 = np.float32
        self.bottom = [np.empty((batch, n), f32) for n in cfg.bottom_sizes[1:]]
        self.dbottom = [np.empty((batch, n), f32) for n in cfg.bottom_sizes[1:]]
        self.emb = np.empty((cfg.num_tables, batch, cfg.sparse_feature_size), f32)
        self.demb = np.empty_like(self.emb)
        self.top = [np.empty((batch, n), f32) for n in cfg.top_sizes]  # top[0] = r
        self.dtop = [np.empty((batch, n), f32) for n in cfg.top_sizes]
        self.p = np.empty(batch, f32)


def dense_layout(
    config: DLRMConfig, top_first: bool = False
) -> tuple[list[LinearSlot], list[LinearSlot], int]:
    """(bottom slots, top slots, parameter count) of the MLPs in one flat buffer.

    The bottom MLP comes first unless ``top_first`` (the MPI model puts the top MLP first
    so its gradients, ready first in the backward, are one contiguous slice to allreduce).
    Initial values do not depend on the order (see params.init_mlp).
    """
    if top_first:
        top_slots, n = mlp_slots("top_mlp", config.top_sizes, 0)
        bottom_slots, n = mlp_slots("bottom_mlp", config.bottom_sizes, n)
    else:
        bottom_slots, n = mlp_slots("bottom_mlp", config.bottom_sizes, 0)
        top_slots, n = mlp_slots("top_mlp", config.top_sizes, n)
    return bottom_slots, top_slots, n


class WorkspaceCache:
    """A tower's workspaces by batch size, made by ``make(batch)`` on first use; at most
    four kept (training and evaluation sizes), all dropped when a fifth size comes."""

    def __init__(self, make):
        self._make = make
        self._by_batch: dict[int, object] = {}

    def get(self, batch: int):
        ws = self._by_batch.get(batch)
        if ws is None:
            if len(self._by_batch) >= 4:
                self._by_batch.clear()
            ws = self._by_batch[batch] = self._make(batch)
        return ws


class DenseTower:
    """Bottom MLP, interaction and top MLP: everything but the embedding tables.

    Works on views of flat ``params`` and ``grads`` buffers laid out by
    :func:`dense_layout`; the caller owns the buffers (and may make them longer, as
    the MPI model does). The tables' pooled output enters through ``ws.emb`` and their
    gradient leaves through ``ws.demb``, so the single-process model and the MPI model
    run the same code between them. ``kernels`` selects the version of every op
    (numbadlrm.kernels.registry); ``op_times``, when set, times each op.
    """

    def __init__(
        self,
        config: DLRMConfig,
        params: np.ndarray,
        grads: np.ndarray,
        kernels: KernelChoice,
        top_first: bool = False,
    ):
        self.config = config
        self.kernels = kernels
        self.op_times: OpTimes | None = None
        self.bottom_slots, self.top_slots, self.num_params = dense_layout(config, top_first)
        self.bottom = [_views(params, grads, s) for s in self.bottom_slots]
        self.top = [_views(params, grads, s) for s in self.top_slots]
        # each layer's [W | b] range of the flat buffers, for a per-layer dense update
        self.bottom_ranges = [_layer_range(s) for s in self.bottom_slots]
        self.top_ranges = [_layer_range(s) for s in self.top_slots]
        self.interaction = Interaction(
            config.interaction_op, config.interaction_itself, config.num_tables, kernels
        )
        self._workspaces = WorkspaceCache(lambda batch: Workspace(config, batch))

    def workspace(self, batch: int) -> Workspace:
        return self._workspaces.get(batch)

    # ------------------------------------------------------------------- forward

    def bottom_forward(self, ws: Workspace, dense: np.ndarray, after_layer=None) -> None:
        """x = bottom_mlp(dense) into ws.bottom[-1]; ``after_layer()`` runs between layers."""
        with timed(self.op_times, "bottom fwd"):
            _mlp_forward(self.bottom, ws.bottom, dense, True, self.kernels, after_layer)

    def top_forward(self, ws: Workspace) -> None:
        """r = interaction(x, emb), s = top_mlp(r): logits in ws.top[-1]."""
        with timed(self.op_times, "interaction fwd"):
            self.interaction.forward(ws.top[0], ws.bottom[-1], ws.emb)
        with timed(self.op_times, "top fwd"):
            _mlp_forward(self.top, ws.top[1:], ws.top[0], False, self.kernels, None)

    # ------------------------------------------------------------------ backward

    def top_backward(self, ws: Workspace, lr: float | None = None, update=None) -> None:
        """From ds in ws.dtop[-1]: top MLP grads (given lr: its SGD update), dr in ws.dtop[0].

        ``update(lo, hi)``, if given, runs after each layer's grads are formed, on the
        layer's range of the flat buffers (Adagrad: numbadlrm.optim.optimizers).
        """
        top_in = ws.top[0]
        with timed(self.op_times, "top bwd"):
            updates = _per_layer(update, self.top_ranges)
            _mlp_backward(
                self.top, ws.top[1:], ws.dtop[1:], top_in, ws.dtop[0], False, self.kernels, None,
                lr, updates,
            )  # fmt: skip

    def interaction_backward(self, ws: Workspace) -> None:
        """dx into ws.dbottom[-1], demb into ws.demb."""
        with timed(self.op_times, "interaction bwd"):
            self.interaction.backward(ws.dbottom[-1], ws.demb, ws.dtop[0], ws.bottom[-1], ws.emb)

    def bottom_backward(
        self, ws: Workspace, dense: np.ndarray, after_layer=None, lr: float | None = None,
        update=None,
    ) -> None:  # fmt: skip
        """Bottom MLP grads (or, given lr, its SGD update) from dx in ws.dbottom[-1].

        ``after_layer()`` runs between layers; ``update`` as in :meth:`top_backward`.
        """
        with timed(self.op_times, "bottom bwd"):
            updates = _per_layer(update, self.bottom_ranges)
            _mlp_backward(
                self.bottom, ws.bottom, ws.dbottom, dense, None, True, self.kernels, after_layer,
                lr, updates,
            )  # fmt: skip


def _layer_range(slot: LinearSlot) -> tuple[int, int]:
    """[lo, hi) of the flat buffer holding the layer's W then b."""
    return slot.w_offset, slot.b_offset + slot.out_features


def _per_layer(update, ranges):
    """update bound to each layer's range, or None."""
    if update is None:
        return None
    return [lambda lo=lo, hi=hi: update(lo, hi) for lo, hi in ranges]


def _views(params: np.ndarray, grads: np.ndarray, slot: LinearSlot):
    w, b = slot_views(params, slot)
    dw, db = slot_views(grads, slot)
    return w, b, dw, db


def _mlp_forward(layers, acts, x, relu_last: bool, kernels: KernelChoice, after_layer) -> None:
    n = len(layers)
    for i, (w, b, _, _) in enumerate(layers):
        relu = i < n - 1 or relu_last
        linear_forward(acts[i], x, w, b, relu, kernels)
        x = acts[i]
        if after_layer is not None:
            after_layer()


def _mlp_backward(
    layers, acts, dacts, x, dx_first, relu_last: bool, kernels: KernelChoice, after_layer, lr=None,
    updates=None,
) -> None:  # fmt: skip
    """dacts[i] holds dL/d(acts[i]); layer i writes dL/d(its input) into dacts[i-1].

    Without lr the parameter gradients go to the grads buffer (then ``updates[i]()``, if
    given, updates layer i from them); with lr each layer applies SGD to its own
    parameters as soon as its dx is formed (linear_backward_sgd).

    Every layer below the last has a ReLU. Its mask is applied by the layer above, to the
    dx that layer has just formed (``mask_dx``), so it runs with relu=False: the mask
    reads the layer's input while its rows are in cache, and so brings that input into
    cache for the weight pass, which reads it next.
    """
    n = len(layers)
    for i in reversed(range(n)):
        w, b, dw, db = layers[i]
        layer_in = acts[i - 1] if i > 0 else x
        dx = dacts[i - 1] if i > 0 else dx_first
        relu = i == n - 1 and relu_last  # below the last layer, applied by the layer above
        mask_dx = i > 0  # layer i - 1 (never the last) has a ReLU
        if lr is None:
            linear_backward(
                dx, dw, db, dacts[i], layer_in, acts[i], w, relu, kernels, True, mask_dx
            )
            if updates is not None:
                updates[i]()
        else:
            linear_backward_sgd(
                dx, w, b, dacts[i], layer_in, acts[i], relu, lr, dw, db, kernels, mask_dx
            )
        if after_layer is not None:
            after_layer()


def kernel_choice(gemm: str = "auto", kernels=None) -> KernelChoice:
    """The versions a model runs: ``kernels`` ({op: version}, or "op=version,...") over
    the linear passes' ``gemm`` backend ("auto", "numba" = GEMM v4, "blas")."""
    return KernelChoice(kernels).with_defaults(gemm_choice(gemm))


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {PRECISIONS}, got {precision!r}")
    return precision


# The subclass each precision other than fp32 builds, by (module, class) name: the
# subclasses build on this module, so it names them instead of importing them (imported
# on first use, as the kernel registry loads its modules).
PRECISION_MODELS = {"bf16": ("numbadlrm.model.dlrm_bf16", "Bf16DLRM")}
PRECISION_DISTRIBUTED = {"bf16": ("numbadlrm.parallel.distributed_bf16", "DistributedBf16DLRM")}


def precision_class(table: dict[str, tuple[str, str]], precision: str) -> type:
    """The class ``table`` names for ``precision`` (its module imported now)."""
    module, name = table[precision]
    return getattr(importlib.import_module(module), name)


def check_bf16_optimizer(optimizer: OptimizerConfig | str | None) -> None:
    """ValueError (one line) for an optimizer other than SGD: split-SGD is an SGD method."""
    name = OptimizerConfig.of(optimizer).name
    if name != "sgd":
        raise ValueError(
            f"--optimizer {name}: --precision bf16 trains with split-SGD only (the paper's "
            f"method); use --optimizer sgd, or --precision fp32 for {name}"
        )


class DLRM:
    """A DLRM model.

    ``kernels`` names the version of any op to run instead of its default, e.g.
    ``{"embedding_update": "v1"}`` (``numbadlrm kernels`` lists them); ``gemm`` is the
    shorthand for the linear passes: "auto", "numba" (GEMM v4) or "blas". Set
    ``op_times`` to a :class:`numbadlrm.runtime.profiling.OpTimes` to time every op.
    ``optimizer`` ("sgd", "adagrad", "rwsadagrad" or an OptimizerConfig) and ``loss``
    ("bce", "wbce", "mse" or a LossConfig) choose how train_step learns.
    ``precision="bf16"`` builds a :class:`numbadlrm.model.dlrm_bf16.Bf16DLRM` (split-SGD-BF16
    mixed precision, SGD only; the same methods, state_dict in fp32).
    """

    def __new__(
        cls, config, seed=0, gemm="auto", kernels=None, optimizer=None, loss=None,
        precision: str = "fp32",
    ):  # fmt: skip
        if cls is DLRM and check_precision(precision) != "fp32":
            return super().__new__(precision_class(PRECISION_MODELS, precision))
        return super().__new__(cls)

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
        self.precision = check_precision(precision)
        self.config = config
        self.seed = seed
        self.gemm = gemm
        self.kernels = kernel_choice(gemm, kernels)
        self.loss_config = LossConfig.of(loss)
        optimizer_config = OptimizerConfig.of(optimizer)
        _, _, n = dense_layout(config)
        sizes = np.asarray(config.embedding_sizes, dtype=np.int64)
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
        self.tower = DenseTower(config, self.params, self.grads, self.kernels)
        self.bottom_slots, self.top_slots = self.tower.bottom_slots, self.tower.top_slots
        self.bottom, self.top = self.tower.bottom, self.tower.top
        self.interaction = self.tower.interaction
        init_mlp(self.params, self.bottom_slots + self.top_slots, seed)
        self.row_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (T+1,)
        for t, rows in enumerate(config.embedding_sizes):
            init_table_rows(
                self.weights[self.row_start[t] : self.row_start[t + 1]], seed, t, rows, 0
            )

    def table(self, t: int) -> np.ndarray:
        """Table t (rows, D), a view into the shared embedding buffer."""
        return self.weights[self.row_start[t] : self.row_start[t + 1]]

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
        self.tower.bottom_forward(ws, batch.dense)
        with timed(self.op_times, "embedding fwd"):
            self._embedding_forward(ws, batch)
        self.tower.top_forward(ws)
        return ws

    def _embedding_forward(self, ws: Workspace, batch: Batch) -> None:
        embedding_forward(
            ws.emb, self.weights, self.row_start, batch.offsets, batch.indices, self.kernels
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
            if update is None:
                self._embedding_update(batch, ws, lr)
            else:
                lookups = (self.row_start, batch.offsets, batch.indices, ws.demb)
                self.optimizer.tables.update(self.weights, *lookups, lr, self.kernels)
        self.tower.bottom_backward(ws, batch.dense, lr=sgd_lr, update=update)

    def _embedding_update(self, batch: Batch, ws: Workspace, lr: float) -> None:
        embedding_backward_sgd(
            self.weights, self.row_start, batch.offsets, batch.indices, ws.demb, lr, self.kernels
        )

    # ----------------------------------------------------------------- public API

    def train_step(self, batch: Batch, lr: float) -> float:
        """One optimizer step; returns the batch's mean loss before the update.

        ``lr`` is the step's rate (after the LR policy); Adagrad scales it by its own
        lr_decay (numbadlrm.optim.optimizers). A NaN, infinite or negative ``lr`` is refused
        before anything changes.
        """
        lr = check_learning_rate(lr)
        ws, loss = self._forward_loss(batch)
        self.optimizer.check_batch(batch.offsets)
        self._backward_and_update(batch, ws, self.optimizer.begin_step(lr))
        return loss

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
        """{name: copy}: bottom_mlp.{i}.weight (O, I), .bias, top_mlp.*, embeddings.{t}.weight."""
        return {name: value.copy() for name, value in self._param_targets().items()}

    def load_state_dict(self, sd: dict[str, np.ndarray]) -> None:
        """Copy values in after checking names, shapes and dtypes (nothing changes on error)."""
        own = self._param_targets()
        check_state_dict(sd, {name: target.shape for name, target in own.items()})
        for name, target in own.items():
            target[...] = sd[name]

    def _param_targets(self) -> dict[str, np.ndarray]:
        out = {}
        for slot in self.bottom_slots + self.top_slots:
            w, b = slot_views(self.params, slot)
            out[f"{slot.name}.weight"] = w
            out[f"{slot.name}.bias"] = b
        for t in range(self.config.num_tables):
            out[f"embeddings.{t}.weight"] = self.table(t)
        return out

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
        for t in range(self.config.num_tables):
            out[f"embeddings.{t}.weight"] = opt.tables.state[
                self.row_start[t] : self.row_start[t + 1]
            ]
        return out


def state_dict_shapes(config: DLRMConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every entry of :meth:`DLRM.state_dict`, in its order."""
    bottom_slots, top_slots, _ = dense_layout(config)
    out: dict[str, tuple[int, ...]] = {}
    for slot in bottom_slots + top_slots:
        out[f"{slot.name}.weight"] = (slot.out_features, slot.in_features)
        out[f"{slot.name}.bias"] = (slot.out_features,)
    for t, rows in enumerate(config.embedding_sizes):
        out[f"embeddings.{t}.weight"] = (rows, config.sparse_feature_size)
    return out


def optimizer_state_shapes(
    config: DLRMConfig, optimizer: OptimizerConfig
) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every entry of :meth:`DLRM.optimizer_state_dict` (empty for SGD)."""
    return state_shapes(optimizer, state_dict_shapes(config))


def check_state_dict(
    sd: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], what: str = "load_state_dict"
) -> None:
    """Raise ValueError unless ``sd`` has exactly these names, shapes and dtype float32."""
    missing = sorted(set(shapes) - set(sd))
    unexpected = sorted(set(sd) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"{what}: missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}"
        )
    for name, shape in shapes.items():
        value = sd[name]
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{what}: {name} is {type(value).__name__}, not ndarray")
        if value.shape != tuple(shape):
            raise ValueError(f"{what}: {name} has shape {value.shape}, expected {shape}")
        if value.dtype != np.float32:
            raise ValueError(f"{what}: {name} has dtype {value.dtype}, expected float32")
