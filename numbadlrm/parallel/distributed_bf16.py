"""DistributedDLRM in split-SGD-BF16 mixed precision (``precision="bf16"``).

The schedule is DistributedDLRM's (distributed.py); what changes is what it moves and
updates:

    tables        this rank's shards and the replicated tables split in place (R, 2, D)
    alltoall      the pooled vectors and their gradients as bf16: half of fp32's bytes
                  (a whole table's pooled vector is the same bf16 value the single
                  process computes; a row-split table's partial sums are each rounded,
                  then added in fp32 and rounded again by EmbeddingExchange.assemble)
    dense tower   the bf16 tower (tower_bf16.py) forms fp32 gradients of the MLPs
    allreduce     fp32, unchanged: the MLP gradients, the replicated tables' gradients
                  and the loss, over the one flat gradient buffer
    update        split-SGD on every master weight (exact fp32 SGD of the allreduced
                  gradient), then each layer's packings refreshed

The flat parameter buffer ``params`` keeps its bytes and layout ([top MLP | bottom MLP |
replicated tables]), now holding the tower's hi and lo halves and the replicated tables'
split rows, so ``comm.Bcast(params)`` still moves all of them at once.
"""

from __future__ import annotations

import numpy as np

from ..bf16 import from_bf16, merge_tables, split_tables
from ..kernels import bf16 as kb
from ..kernels import embedding_bf16 as ke
from ..kernels.jit import run_serial
from ..layers.embedding_bag import embedding_gradient
from ..layers.embedding_bag_bf16 import embedding_forward_bf16, embedding_update_bf16
from ..model import check_bf16_optimizer, dense_layout
from ..model_bf16 import note_bf16_emulation
from ..tower_bf16 import Bf16Tower, merged, split_in_place
from .distributed import DistributedDLRM


class DistributedBf16DLRM(DistributedDLRM):
    """DistributedDLRM with bf16 compute and split fp32 master weights."""

    precision = "bf16"
    exchange_dtype = np.uint16

    def __init__(self, config, comm, placement=None, seed=0, gemm="auto", kernels=None,
                 optimizer=None, loss=None, precision: str = "bf16"):  # fmt: skip
        note_bf16_emulation()
        check_bf16_optimizer(optimizer)
        super().__init__(config, comm, placement, seed, gemm, kernels, "sgd", loss, "bf16")
        tower_n = dense_layout(config, top_first=True)[2]
        hi, lo = split_in_place(self.params[:tower_n])
        self.rep_tables = split_tables(self.rep_weights, in_place=True)
        self.tables = split_tables(self.weights, in_place=True)
        self.weights = self.rep_weights = None  # their bytes hold the split halves now
        self.tower = Bf16Tower(config, hi, lo, self.grads[:tower_n], self.kernels, True)
        self._hi, self._lo, self._tower_n = hi, lo, tower_n

    def _rep_split(self, i: int) -> np.ndarray:
        return self.rep_tables[self.rep_row_start[i] : self.rep_row_start[i + 1]]

    def _pool_shards(self, pooled16, lookups) -> None:
        rs, offsets, indices = lookups.row_start, lookups.offsets, lookups.indices
        embedding_forward_bf16(pooled16, self.tables, rs, offsets, indices, self.kernels)

    def _pool_replicated(self, out16, offsets, indices) -> None:
        rs = self.rep_row_start
        embedding_forward_bf16(out16, self.rep_tables, rs, offsets, indices, self.kernels)

    def _replicated_gradients(self, demb16, state) -> None:
        demb = from_bf16(np.ascontiguousarray(demb16))  # exact; the gradient kernel is fp32's
        rs, offsets, indices = self.rep_row_start, state.rep_offsets, state.indices
        embedding_gradient(self.rep_grads, rs, offsets, indices, demb, self.kernels)

    def _update_shards(self, dpooled16, lookups, lr: float) -> None:
        rs, offsets, indices = lookups.row_start, lookups.offsets, lookups.indices
        embedding_update_bf16(self.tables, rs, offsets, indices, dpooled16, lr, self.kernels)

    def _dense_update(self, lr: float) -> None:
        """Split-SGD of the tower's masters and the replicated tables, then repacking."""
        lr32 = np.float32(lr)
        grads = self.grads[: self._tower_n]
        update = self.kernels.get("bf16_dense_update").entry(run_serial(grads.nbytes * 3))
        update(self._hi, self._lo, grads, lr32)
        if self.replicated:
            table_update = self.kernels.get("bf16_table_update")
            table_update.entry(run_serial(self.rep_grads.nbytes * 3))(
                self.rep_tables, self.rep_grads, lr32
            )
        self.tower.refresh()

    # ----------------------------------------------------------- state dict (fp32)

    def _local_state(self) -> dict[str, np.ndarray]:
        out = {}
        for slot, layer in zip(self._slots(), self.tower.bottom + self.tower.top, strict=True):
            out[f"{slot.name}.weight"] = merged(layer.w_hi, layer.w_lo)
            out[f"{slot.name}.bias"] = merged(layer.b_hi, layer.b_lo)
        for i, t in enumerate(self.replicated):
            out[f"embeddings.{t}.weight"] = merge_tables(self._rep_split(i))
        return out

    def _load_local_state(self, sd: dict[str, np.ndarray]) -> None:
        for slot, layer in zip(self._slots(), self.tower.bottom + self.tower.top, strict=True):
            for hi, lo, kind in (
                (layer.w_hi, layer.w_lo, "weight"),
                (layer.b_hi, layer.b_lo, "bias"),
            ):
                values = np.ascontiguousarray(sd[f"{slot.name}.{kind}"], np.float32)
                kb.split(hi.reshape(-1), lo.reshape(-1), values.reshape(-1))
        for i, t in enumerate(self.replicated):
            ke.split_rows(self._rep_split(i), np.ascontiguousarray(sd[f"embeddings.{t}.weight"]))

    def _after_load(self) -> None:
        self.tower.refresh()

    def _slots(self):
        return self.tower.bottom_slots + self.tower.top_slots

    def _shard_split(self, shard) -> np.ndarray:
        s = self.shards.index(shard)
        return self.tables[self.row_start[s] : self.row_start[s + 1]]

    def _shard_values(self, shard) -> np.ndarray:
        return merge_tables(self._shard_split(shard))  # fp32 copy, sent or received into

    def _store_shard(self, shard, values: np.ndarray) -> None:
        ke.split_rows(self._shard_split(shard), values)
