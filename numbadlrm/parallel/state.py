"""The MPI model's state dicts: the single-process DLRM's names and shapes, gathered to
rank 0 from the shards and the replicated copies, or scattered from rank 0 to them.

Every method is a collective: every rank calls it. Values travel as fp32 whatever the
precision (the policy merges split halves on the way out and splits them on the way in);
a check on rank 0 raises the same ValueError on every rank.
"""

from __future__ import annotations

import numpy as np

from ..model.params import slot_views
from ..model.state import check_state_dict, optimizer_state_shapes, state_dict_shapes
from ..optim.optimizers import check_steps


class ShardedState:
    """DistributedDLRM's state_dict, load_state_dict and their optimizer-state twins."""

    def state_dict(self) -> dict[str, np.ndarray] | None:
        """The single-process DLRM.state_dict() on rank 0 (tables gathered); None elsewhere."""
        root = self.comm.rank == 0
        out = self._local_state()
        shapes = state_dict_shapes(self.config)
        for t in range(self.config.num_tables):
            name = f"embeddings.{t}.weight"
            if t in self.replicated:
                continue
            full = np.empty(shapes[name], np.float32) if root else None
            for shard in self.placement.shards_of(t):
                self._move_shard(shard, full, to_root=True)
            out[name] = full
        return {name: out[name] for name in shapes} if root else None

    def load_state_dict(self, sd: dict[str, np.ndarray] | None) -> None:
        """Scatter a single-process state dict, read on rank 0 (others may pass None).

        Checked on rank 0 first; on error every rank raises the same ValueError.
        """
        error = None
        if self.comm.rank == 0:
            try:
                check_state_dict(sd, state_dict_shapes(self.config))
            except ValueError as exc:
                error = str(exc)
        error = self.comm.bcast(error, root=0)
        if error is not None:
            raise ValueError(error)
        if self.comm.rank == 0:
            self._load_local_state(sd)
        self.comm.Bcast(self.params, root=0)  # MLPs and replicated tables: their bytes
        self.tower.refresh()  # what the layers derive from them (bf16: packings)
        for shard in self.placement.shards:
            full = sd[f"embeddings.{shard.table}.weight"] if self.comm.rank == 0 else None
            self._move_shard(shard, full, to_root=False)

    def _local_state(self) -> dict[str, np.ndarray]:
        """fp32 copies of what every rank holds: the MLPs and the replicated tables."""
        out = {}
        for slot, layer in self.tower.layers:
            out[f"{slot.name}.weight"], out[f"{slot.name}.bias"] = layer.values()
        for i, t in enumerate(self.replicated):
            out[f"embeddings.{t}.weight"] = self.policy.table_values(self._rep_table(i))
        return out

    def _load_local_state(self, sd: dict[str, np.ndarray]) -> None:
        """Rank 0: the MLPs and replicated tables from a checked state dict."""
        for slot, layer in self.tower.layers:
            layer.load(sd[f"{slot.name}.weight"], sd[f"{slot.name}.bias"])
        for i, t in enumerate(self.replicated):
            self.policy.load_table(self._rep_table(i), sd[f"embeddings.{t}.weight"])

    def optimizer_state_dict(self) -> dict[str, np.ndarray] | None:
        """The single-process DLRM.optimizer_state_dict() on rank 0 (shards' state
        gathered); None elsewhere. A collective, like :meth:`state_dict`."""
        opt, root = self.optimizer, self.comm.rank == 0
        shapes = optimizer_state_shapes(self.config, opt.config)
        if not shapes:
            return {} if root else None
        out = {}
        for slot in self.tower.bottom_slots + self.tower.top_slots:
            w, b = slot_views(opt.dense, slot)
            out[f"{slot.name}.weight"], out[f"{slot.name}.bias"] = w.copy(), b.copy()
        for t in range(self.config.num_tables):
            name = f"embeddings.{t}.weight"
            if t in self.replicated:
                out[name] = self._rep_rows(self.rep_state.state, t).copy()
                continue
            full = np.empty(shapes[name], np.float32) if root else None
            for shard in self.placement.shards_of(t):
                self._move_shard(shard, full, to_root=True, buffer=opt.tables.state)
            out[name] = full
        return {name: out[name] for name in shapes} if root else None

    def load_optimizer_state_dict(self, sd: dict[str, np.ndarray] | None, steps: int) -> None:
        """Scatter a single-process optimizer state dict read on rank 0 (others may pass
        None), and set the step count; checked on rank 0, the same ValueError everywhere."""
        opt, root = self.optimizer, self.comm.rank == 0
        shapes = optimizer_state_shapes(self.config, opt.config)
        error = None
        if root:
            try:
                steps = check_steps(steps)
                check_state_dict(sd, shapes, "optimizer state")
            except ValueError as exc:
                error = str(exc)
        error = self.comm.bcast(error, root=0)
        if error is not None:
            raise ValueError(error)
        opt.steps = self.comm.bcast(steps if root else None, root=0)
        if not shapes:
            return
        for slot in self.tower.bottom_slots + self.tower.top_slots:
            w, b = slot_views(opt.dense, slot)
            if root:
                w[...], b[...] = sd[f"{slot.name}.weight"], sd[f"{slot.name}.bias"]
        for t in self.replicated:
            if root:
                self._rep_rows(self.rep_state.state, t)[...] = sd[f"embeddings.{t}.weight"]
        self.comm.Bcast(opt.dense, root=0)
        if self.replicated:
            self.comm.Bcast(self.rep_state.state, root=0)
        for shard in self.placement.shards:
            full = sd[f"embeddings.{shard.table}.weight"] if root else None
            self._move_shard(shard, full, to_root=False, buffer=opt.tables.state)

    def _rep_rows(self, buffer: np.ndarray, t: int) -> np.ndarray:
        """Replicated table t's rows of a per-row buffer (its state)."""
        i = self.replicated.index(t)
        return buffer[self.rep_row_start[i] : self.rep_row_start[i + 1]]

    def _move_shard(
        self, shard, full: np.ndarray | None, to_root: bool, buffer: np.ndarray | None = None
    ) -> None:
        """Copy one shard between its owner and rows of the full table on rank 0: rows
        of the weights, or of ``buffer`` (an optimizer state laid out by row as they are)."""
        rank = self.comm.rank
        rows = slice(shard.row_begin, shard.row_end)
        if shard.rank == rank:
            local = self._shard_values(shard) if buffer is None else self._shard_rows(shard, buffer)
            if rank == 0:
                if to_root:
                    full[rows] = local
                else:
                    local[...] = full[rows]
            elif to_root:
                self.comm.Send(local, dest=0, tag=shard.table)
            else:
                self.comm.Recv(local, source=0, tag=shard.table)
            if not to_root and buffer is None:
                self._store_shard(shard, local)
        elif rank == 0:
            if to_root:
                self.comm.Recv(full[rows], source=shard.rank, tag=shard.table)
            else:
                self.comm.Send(np.ascontiguousarray(full[rows]), dest=shard.rank, tag=shard.table)

    def _shard_rows(self, shard, buffer: np.ndarray) -> np.ndarray:
        s = self.shards.index(shard)
        return buffer[self.row_start[s] : self.row_start[s + 1]]

    def _shard_values(self, shard) -> np.ndarray:
        """An fp32 copy of the shard's rows, to send or receive into."""
        return self.policy.table_values(self._shard_rows(shard, self.tables))

    def _store_shard(self, shard, values: np.ndarray) -> None:
        """Put values received into _shard_values' array back into the shard's rows."""
        self.policy.load_table(self._shard_rows(shard, self.tables), values)
