"""DLRM on R MPI ranks: data-parallel MLPs, model-parallel (sharded) embedding tables.

One step with global batch B on R ranks: rank q owns samples [start_q, stop_q) of every
global batch, Bl = stop_q - start_q of them (partition.sample_ranges: divmod(B, R), the
first B mod R ranks one more, as the reference's distributed code); W = ceil(B / R):

    own shards:  pooled_out = embedding_bags(shards, all B samples)   (R, S, W, D)
                 start alltoallv(pooled_out -> pooled_in) ...........+
    x = bottom_mlp(dense[start_q:stop_q])     overlaps the exchange   |
    replicated tables: pooled for the Bl local samples                |
                 wait <-----------------------------------------------+
    emb = assemble(pooled_in, replicated)     (T, Bl, D), shard partial sums added
    s = top_mlp(interaction(x, emb));  local loss, ds = (p - y) / Bl

    backward:    ds *= Bl / B                  <- the only scaling (see below)
                 top MLP backward;  start allreduce(top MLP grads) ...........+
                 interaction backward -> dx, demb                             |
                 start alltoallv(demb -> owners) ..........+                  |
                 replicated tables: dense grads over Bl    |                  |
                 bottom MLP backward; start allreduce(rest)|..............+   |
                 wait; fused sparse update of own shards <-+              |   |
                 wait allreduces; one SGD call over the flat buffer <-----+---+
                 (Adagrad: one dense Adagrad call over the MLPs, one over the
                 replicated tables, whose state is per row with row-wise Adagrad)

Scaling: the loss of the global batch is mean_B = sum_q (Bl_q / B) mean_Bl(q).
Multiplying the local ds by Bl / B makes every gradient that flows from it (dense grads,
demb, the shards' updates) the gradient of the global mean restricted to the local
samples, so a plain SUM allreduce gives the exact global gradient and the learning rate
is the single-process one: R ranks at global batch B train the same model as one
process at batch B, up to float32 summation order, whether or not R divides B. (A rank
with no samples, when B < R, adds zeros.)

Dense state: one flat float32 buffer [top MLP | bottom MLP | replicated tables], its
gradients in another of the same layout plus one trailing slot that carries the local
loss times Bl / B through the same allreduce (the global mean loss, for free).

Optimizer state (numbadlrm/optim/optimizers.py) lives with what it updates: the MLPs' and the
replicated tables' on every rank (each rank applies the same update to the same
allreduced gradient), a row-split table's rows' state on the rank holding those rows.
Adagrad updates a row once from the sum of every sample's gradient, so a shard's R
routes (one per destination rank) are regrouped into one table first
(partition.shard_major); SGD, being linear, applies them one after the other.

Precision (model/precision.py's policy, as in DLRM): with bf16 the flat buffer and the
shards keep their bytes and layout but hold split halves (the tower's hi and lo, the
tables' (R, 2, D) rows), so ``comm.Bcast(params)`` still moves all of them at once; the
alltoall carries bf16 pooled vectors and gradients (half of fp32's bytes; a row-split
table's partial sums are each rounded, then added in fp32 and rounded again by
EmbeddingExchange.assemble); the allreduce stays fp32 (weight gradients, the replicated
tables' gradients, the loss); every update is split-SGD, then each layer's packings
are refreshed.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

from ..batch import Batch, require_batch
from ..config import DLRMConfig, require_config
from ..kernels.registry import KernelChoice
from ..layers.embedding_bag import embedding_backward_sgd, embedding_forward, embedding_gradient
from ..layers.loss import LossConfig, sigmoid, sigmoid_loss
from ..model.dlrm import kernel_choice
from ..model.memory import (
    allocation_errors,
)
from ..model.params import init_mlp, init_table_rows
from ..model.precision import policy
from ..model.tower import DenseTower, Workspace, dense_layout
from ..optim.optimizers import Optimizer, OptimizerConfig, TableState
from ..optim.sgd import check_learning_rate
from ..runtime.profiling import OpTimes, timed
from .exchange import EmbeddingExchange, GradientAllreduce, poke
from .memory import check_node_memory, rank_memory
from .partition import Placement, plan_placement, sample_ranges, shard_lookups, shard_major
from .state import ShardedState


class DistributedDLRM(ShardedState):
    """The DLRM of ``config`` spread over ``comm``; every rank calls every method.

    Batches passed in are global batches (the same on every rank); each rank reads the
    dense features and labels of its own slice and the sparse ids of its own shards.
    ``precision="bf16"``: split-SGD-BF16, as DLRM's (see the module docstring).
    """

    def __init__(
        self,
        config: DLRMConfig,
        comm: MPI.Comm,
        placement: Placement | None = None,
        seed: int = 0,
        gemm: str = "auto",
        kernels: KernelChoice | dict[str, str] | str | None = None,
        optimizer: OptimizerConfig | str | None = None,
        loss: LossConfig | str | None = None,
        precision: str = "fp32",
    ):
        config = require_config(config, "DistributedDLRM")
        if config.compressed or config.learned_pooling:
            raise ValueError(
                "MPI: QR, MD and learned weighted-pooling tables are not implemented across "
                "ranks yet; train them in one process"
            )
        self.config, self.comm, self.seed, self.gemm = config, comm, seed, gemm
        self.policy = policy(precision)
        self.precision = self.policy.name
        self.exchange_dtype = self.policy.dtype  # what the embedding alltoall carries
        self.kernels = kernel_choice(gemm, kernels)
        self.loss_config = LossConfig.of(loss)
        optimizer_config = OptimizerConfig.of(optimizer)
        self.policy.check(optimizer_config)  # before allocating anything
        dim = config.sparse_feature_size
        if placement is None:
            placement = plan_placement(config.embedding_sizes, dim, comm.size)
        _check_placement(placement, config, comm.size)
        self.placement = placement
        self.replicated = placement.replicated
        rep_rows = [config.embedding_sizes[t] for t in self.replicated]
        self.rep_row_start = np.cumsum([0, *rep_rows]).astype(np.int64)  # (n_rep+1,)

        tower_n = dense_layout(config, top_first=True)[2]
        n = tower_n + int(self.rep_row_start[-1]) * dim
        self.shards = placement.shards_on(comm.rank)  # S of them
        need = rank_memory(
            config, placement, comm.rank, optimizer=optimizer_config.name, precision=precision
        )
        check_node_memory(comm, need)  # before allocating, the same verdict on every rank
        with allocation_errors(need):
            self.params = np.empty(n, np.float32)  # [top MLP | bottom MLP | replicated tables]
            self._grad_buffer = np.zeros(n + 1, np.float32)  # + the loss slot
            self.row_start = np.cumsum([0] + [s.num_rows for s in self.shards]).astype(np.int64)
            self.weights = np.empty((int(self.row_start[-1]), dim), np.float32)
            # the MLPs' and own shards' state; the replicated tables' in rep_state
            self.optimizer = Optimizer(optimizer_config, tower_n, self.weights.shape[0], dim)
            self.rep_state = None
            if optimizer_config.stateful:
                self.rep_state = TableState(optimizer_config, int(self.rep_row_start[-1]), dim)
        self.tower_size = tower_n
        self.grads = self._grad_buffer[:n]
        bottom_slots, top_slots, _ = dense_layout(config, top_first=True)
        init_mlp(self.params, bottom_slots + top_slots, seed)
        self.rep_weights = self.params[tower_n:].reshape(-1, dim)
        self.rep_grads = self.grads[tower_n:].reshape(-1, dim)
        for i, t in enumerate(self.replicated):
            rows = self.rep_weights[self.rep_row_start[i] : self.rep_row_start[i + 1]]
            init_table_rows(rows, seed, t, config.embedding_sizes[t], 0)
        for s, shard in enumerate(self.shards):
            rows = self.weights[self.row_start[s] : self.row_start[s + 1]]
            init_table_rows(
                rows, seed, shard.table, config.embedding_sizes[shard.table], shard.row_begin
            )
        # the fp32 values are in place: the policy's storage takes them over (bf16: split
        # into the same bytes; weights and rep_weights then no longer hold fp32 values)
        self._storage = self.policy.dense_storage(self.params[:tower_n])
        self.rep_tables = self.policy.store_tables(self.rep_weights)
        self.tables = self.policy.store_tables(self.weights)
        if self.precision != "fp32":
            self.weights = self.rep_weights = None
        self.tower = DenseTower(
            config, self._storage, self.grads[:tower_n], self.kernels, True, self.policy
        )
        top_n = sum(s.in_features * s.out_features + s.out_features for s in top_slots)
        self.allreduce = GradientAllreduce(comm, self._grad_buffer, [(0, top_n), (top_n, n + 1)])
        self._exchanges: dict[int, EmbeddingExchange] = {}
        # seconds spent in MPI calls of train_step: "start" (posting, testing), "wait"
        self.mpi_seconds = {"start": 0.0, "wait": 0.0}

    def _mpi(self, bucket: str, fn, *args):
        """Call an MPI function, adding its wall time to mpi_seconds[bucket]."""
        start = time.perf_counter()
        out = fn(*args)
        self.mpi_seconds[bucket] += time.perf_counter() - start
        return out

    @property
    def op_times(self) -> OpTimes | None:
        """Set to an OpTimes to time every op of the steps (runtime.profiling); None: off."""
        return self.tower.op_times

    @op_times.setter
    def op_times(self, value: OpTimes | None) -> None:
        self.tower.op_times = value

    def _rep_table(self, i: int) -> np.ndarray:
        return self.rep_tables[self.rep_row_start[i] : self.rep_row_start[i + 1]]

    def local_slice(self, batch_size: int) -> slice:
        """The samples of a global batch that this rank computes the MLPs for."""
        start, stop = sample_ranges(batch_size, self.comm.size)[self.comm.rank]
        return slice(start, stop)

    def exchange(self, batch_size: int) -> EmbeddingExchange:
        """The alltoallv plan for global batches of ``batch_size`` (kept for reuse)."""
        plan = self._exchanges.get(batch_size)
        if plan is None:
            if len(self._exchanges) >= 4:
                self._exchanges.clear()
            plan = EmbeddingExchange(self.comm, self.placement, batch_size, self.exchange_dtype)
            self._exchanges[batch_size] = plan
        return plan

    # ------------------------------------------------------------------- forward

    def forward(self, batch: Batch) -> tuple[Workspace, _StepState]:
        """Logits of the local samples in ws.top[-1]; the step state feeds the backward."""
        require_batch(batch, "DistributedDLRM")
        batch.check_against(self.config.num_dense, self.config.embedding_sizes)
        mine = self.local_slice(batch.batch_size)
        batch.require_rows(mine.start, mine.stop)
        local = mine.stop - mine.start
        plan = self.exchange(batch.batch_size)
        lookups = shard_lookups(
            self.shards, self.config.embedding_sizes, batch.offsets, batch.indices, self.comm.size
        )
        pooled = plan.pooled_out.reshape(-1, plan.width, self.config.sparse_feature_size)
        with timed(self.op_times, "embedding fwd"):
            self._pool_shards(pooled, lookups)
        request = self._mpi("start", plan.start_forward)
        ws = self.tower.workspace(local)
        dense = batch.dense[mine]
        self.tower.bottom_forward(
            ws, dense, after_layer=lambda: self._mpi("start", poke, [request])
        )
        rep_offsets = np.ascontiguousarray(
            batch.offsets[list(self.replicated), mine.start : mine.stop + 1]
        )
        if self.replicated:  # pooled for the local samples only
            rep_emb = np.empty((len(self.replicated), *ws.emb.shape[1:]), ws.emb.dtype)
            self._pool_replicated(rep_emb, rep_offsets, batch.indices)
        self._mpi("wait", request.Wait)
        plan.assemble(ws.emb)
        for i, t in enumerate(self.replicated):
            ws.emb[t] = rep_emb[i]
        self.tower.top_forward(ws)
        return ws, _StepState(plan, lookups, dense, rep_offsets, batch.indices, batch.labels[mine])

    # ------------------------------------------------------------------ backward

    def _backward_and_update(self, ws: Workspace, state: _StepState, lr: float) -> None:
        """Gradients from ds in ws.dtop[-1] (already scaled to the global mean); update.

        Private: the step state holds the batch's arrays, checked by :meth:`forward` and
        unchanged only within :meth:`train_step`.
        """
        self.tower.top_backward(ws)
        self._mpi("start", self.allreduce.start, 0)  # top MLP grads are final
        self.tower.interaction_backward(ws)
        state.plan.scatter(ws.demb)
        exchange = self._mpi("start", state.plan.start_backward)
        open_requests = [exchange, *self.allreduce.requests]
        if self.replicated:  # dense gradients of the small tables, allreduced below
            self._replicated_gradients(ws.demb[list(self.replicated)], state)
        poke_all = lambda: self._mpi("start", poke, open_requests)  # noqa: E731
        self.tower.bottom_backward(ws, after_layer=poke_all)
        self._mpi("start", self.allreduce.start, 1)  # bottom MLP, replicated tables, loss
        self._mpi("wait", exchange.Wait)
        width, dim = state.plan.width, ws.demb.shape[2]
        dpooled = state.plan.dpooled_in.reshape(-1, width, dim)  # (R*S, W, D)
        lookups = state.lookups
        with timed(self.op_times, "embedding update"):
            self._update_shards(dpooled, lookups, lr)
        self._mpi("wait", self.allreduce.wait)
        with timed(self.op_times, "dense update"):
            self._dense_update(lr)

    # ------------------------------------------------------------- tables and updates

    def _pool_shards(self, pooled: np.ndarray, lookups) -> None:
        """pooled (R S, W, D): this rank's shards pooled for the whole global batch."""
        w = self.tables
        embedding_forward(
            pooled, w, lookups.row_start, lookups.offsets, lookups.indices, self.kernels
        )

    def _pool_replicated(self, out: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> None:
        """out (n_rep, Bl, D): the replicated tables pooled for the local samples."""
        embedding_forward(out, self.rep_tables, self.rep_row_start, offsets, indices, self.kernels)

    def _replicated_gradients(self, demb: np.ndarray, state) -> None:
        """The replicated tables' dense gradients into rep_grads, from demb (n_rep, Bl, D)."""
        demb = self.policy.pooled_gradient(demb)  # fp32 (bf16: converted exactly)
        rs, offsets, indices = self.rep_row_start, state.rep_offsets, state.indices
        embedding_gradient(self.rep_grads, rs, offsets, indices, demb, self.kernels)

    def _update_shards(self, dpooled: np.ndarray, lookups, lr: float) -> None:
        """The fused sparse update of this rank's shards from dpooled (R S, W, D): SGD, or
        the optimizer's state-keeping update on the gradients grouped shard-major."""
        rs, offsets, indices = lookups.row_start, lookups.offsets, lookups.indices
        if not self.optimizer.config.stateful:
            embedding_backward_sgd(self.tables, rs, offsets, indices, dpooled, lr, self.kernels)
        elif self.shards:
            row_start, offsets, grouped = shard_major(lookups, dpooled, self.comm.size)
            self.optimizer.tables.update(
                self.weights, row_start, offsets, indices, grouped, lr, self.kernels
            )

    def _dense_update(self, lr: float) -> None:
        """The allreduced gradients applied: SGD over the whole flat buffer, or Adagrad over
        the MLPs (with weight decay) and over the replicated tables (without)."""
        if not self.optimizer.config.stateful:
            grads = self.grads[: self.tower_size]
            self.policy.sgd(self._storage, grads, lr, self.kernels)
            if self.replicated:
                self.policy.table_sgd(self.rep_tables, self.rep_grads, lr, self.kernels)
            self.tower.refresh()
            return
        self.optimizer.layer_update(self.params, self.grads, lr, self.kernels)(0, self.tower_size)
        if self.replicated:
            self.rep_state.update_dense(self.rep_weights, self.rep_grads, lr, self.kernels)

    # ----------------------------------------------------------------- public API

    def train_step(self, batch: Batch, lr: float) -> float:
        """One optimizer step on a global batch; returns its mean loss before the update.

        A NaN, infinite or negative ``lr`` is refused on every rank before any collective.
        """
        lr = check_learning_rate(lr)
        ws, state = self.forward(batch)
        self.optimizer.check_batch(batch.offsets)  # the same verdict on every rank
        share = np.float32(state.labels.shape[0] / batch.batch_size)  # Bl / B
        loss = self._local_loss(ws, state.labels)
        ws.dtop[-1] *= share
        self._grad_buffer[-1] = loss * share
        self._backward_and_update(ws, state, self.optimizer.begin_step(lr))
        return float(self._grad_buffer[-1])

    def loss(self, batch: Batch) -> float:
        """Mean loss over the global batch (no update)."""
        ws, state = self.forward(batch)
        local = self._local_loss(ws, state.labels) * state.labels.shape[0] / batch.batch_size
        return self.comm.allreduce(local, MPI.SUM)

    def _local_loss(self, ws: Workspace, labels: np.ndarray) -> float:
        """Mean loss of the local samples (0 without any), p and its ds (over Bl) into ws."""
        if labels.shape[0] == 0:
            return 0.0
        s, ds = ws.top[-1][:, 0], ws.dtop[-1][:, 0]
        return sigmoid_loss(ws.p, ds, s, labels, self.loss_config, self.kernels)

    def predict(self, batch: Batch) -> np.ndarray:
        """(B,) float32 probabilities of the whole global batch, on every rank."""
        ws, _ = self.forward(batch)
        sigmoid(ws.p, ws.top[-1][:, 0])
        ranges = sample_ranges(batch.batch_size, self.comm.size)
        counts = [stop - start for start, stop in ranges]
        displacements = [start for start, _ in ranges]
        out = np.empty(batch.batch_size, np.float32)
        self.comm.Allgatherv(ws.p, [out, counts, displacements, MPI.FLOAT])
        return out


class _StepState:
    """What the backward needs from the forward besides the workspace."""

    def __init__(self, plan, lookups, dense, rep_offsets, indices, labels):
        self.plan, self.lookups, self.dense = plan, lookups, dense
        self.rep_offsets, self.indices, self.labels = rep_offsets, indices, labels


def _check_placement(placement: Placement, config: DLRMConfig, ranks: int) -> None:
    if placement.num_ranks != ranks:
        raise ValueError(f"placement is for {placement.num_ranks} ranks, the job has {ranks}")
    if placement.embedding_sizes != config.embedding_sizes:
        raise ValueError("placement: its embedding_sizes differ from the model config's")
    if placement.dim != config.sparse_feature_size:
        raise ValueError(
            f"placement: D={placement.dim}, the model has {config.sparse_feature_size}"
        )
