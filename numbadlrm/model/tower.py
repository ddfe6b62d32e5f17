"""The dense tower: bottom MLP, interaction and top MLP, in any precision.

    x    = bottom_mlp(dense)        (B, D)      ReLU after every layer
    r    = interaction(x, emb)      (B, D + P)  dot, (B, F * D) cat
    s    = top_mlp(r)               (B, 1)      ReLU between layers

The tower is everything but the embedding tables: the pooled embeddings enter through
``ws.emb`` and their gradient leaves through ``ws.demb``, so the single-process model and
the MPI model run the same code between their tables. Its layers are views of flat
parameter and gradient buffers laid out by :func:`dense_layout`, which the caller owns.

The precision policy (model/precision.py) says how the layers store their weights and
what the activations are: float32, or bf16 (uint16) with fp32 logits and loss gradient.
The backward runs the forward's list in reverse; below the last layer each ReLU mask is
applied by the layer above it to the dx it has just formed (``mask_dx``).
"""

from __future__ import annotations

import numpy as np

from ..config import DLRMConfig
from ..kernels.registry import KernelChoice
from ..layers.interaction import Interaction
from ..runtime.profiling import OpTimes, timed
from .params import LinearSlot, mlp_slots
from .precision import Fp32


class Workspace:
    """Every activation and gradient buffer of one step at batch size B, in the policy's
    dtype (bf16: uint16, with fp32 logits ``top[-1]``, their gradient ``dtop[-1]``, the
    bf16 copies ``dense16`` of the input and ``ds16`` of the logits' gradient)."""

    def __init__(self, cfg: DLRMConfig, batch: int, dtype=np.float32):
        f32 = np.float32
        self.bottom = [np.empty((batch, n), dtype) for n in cfg.bottom_sizes[1:]]
        self.dbottom = [np.empty((batch, n), dtype) for n in cfg.bottom_sizes[1:]]
        self.emb = np.empty((cfg.num_tables, batch, cfg.sparse_feature_size), dtype)
        self.demb = np.empty_like(self.emb)
        *hidden, logits = cfg.top_sizes  # top[0] = r; the last layer's output is fp32
        self.top = [np.empty((batch, n), dtype) for n in hidden] + [np.empty((batch, logits), f32)]
        self.dtop = [np.empty((batch, n), dtype) for n in hidden] + [np.empty((batch, logits), f32)]
        self.p = np.empty(batch, f32)
        if dtype != f32:
            self.dense16 = np.empty((batch, cfg.num_dense), dtype)
            self.ds16 = np.empty((batch, logits), dtype)


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
    """Bottom MLP, interaction and top MLP over the policy's ``storage`` of the flat
    parameters and the fp32 ``grads`` (both laid out by :func:`dense_layout`).

    ``kernels`` selects the version of every op (numbadlrm.kernels.registry);
    ``op_times``, when set, times each op.
    """

    def __init__(
        self,
        config: DLRMConfig,
        storage: tuple[np.ndarray, ...],
        grads: np.ndarray,
        kernels: KernelChoice,
        top_first: bool = False,
        policy: Fp32 | None = None,
    ):
        self.config = config
        self.kernels = kernels
        self.policy = policy = policy or Fp32()
        self.op_times: OpTimes | None = None
        self.bottom_slots, self.top_slots, self.num_params = dense_layout(config, top_first)
        self.bottom = [policy.layer(storage, grads, s) for s in self.bottom_slots]
        self.top = [policy.layer(storage, grads, s) for s in self.top_slots]
        # each layer's [W | b] range of the flat buffers, for a per-layer dense update
        self.bottom_ranges = [_layer_range(s) for s in self.bottom_slots]
        self.top_ranges = [_layer_range(s) for s in self.top_slots]
        self.interaction = Interaction(
            config.interaction_op, config.interaction_itself, config.num_tables, kernels
        )
        self._workspaces = WorkspaceCache(lambda batch: Workspace(config, batch, policy.dtype))

    @property
    def layers(self):
        """(slot, layer) of every linear layer, bottom MLP first."""
        slots = self.bottom_slots + self.top_slots
        return list(zip(slots, self.bottom + self.top, strict=True))

    def workspace(self, batch: int) -> Workspace:
        return self._workspaces.get(batch)

    def refresh(self) -> None:
        """Re-derive what the layers keep from their weights (bf16: packings), after
        the weights changed outside the backward (a load, the MPI model's update)."""
        for layer in self.bottom + self.top:
            layer.refresh()

    # ------------------------------------------------------------------- forward

    def bottom_forward(self, ws: Workspace, dense: np.ndarray, after_layer=None) -> None:
        """x = bottom_mlp(dense) into ws.bottom[-1]; ``after_layer()`` runs between layers."""
        with timed(self.op_times, "bottom fwd"):
            x = ws.bottom_in = self.policy.bottom_input(ws, dense)
            for layer, y in zip(self.bottom, ws.bottom, strict=True):
                layer.forward(y, x, True, self.kernels)
                x = y
                if after_layer is not None:
                    after_layer()

    def top_forward(self, ws: Workspace) -> None:
        """r = interaction(x, emb), s = top_mlp(r): logits in ws.top[-1]."""
        with timed(self.op_times, "interaction fwd"):
            self.interaction.forward(ws.top[0], ws.bottom[-1], ws.emb)
        with timed(self.op_times, "top fwd"):
            last = len(self.top) - 1
            for i, layer in enumerate(self.top):
                layer.forward(ws.top[i + 1], ws.top[i], i < last, self.kernels)

    # ------------------------------------------------------------------ backward

    def top_backward(self, ws: Workspace, lr: float | None = None, update=None) -> None:
        """From ds in ws.dtop[-1]: the top MLP's gradients (given lr: its SGD update) and
        dr in ws.dtop[0]. ``update(lo, hi)``, if given, runs after each layer's gradients
        are formed, on the layer's range of the flat buffers (Adagrad: optim.optimizers)."""
        with timed(self.op_times, "top bwd"):
            last = len(self.top) - 1
            dy = self.policy.logit_grad(ws)
            for i in reversed(range(len(self.top))):
                dy = dy if i == last else ws.dtop[i + 1]
                # dx of layer i is dL/d(top[i]); below layer 0 sits the interaction (no ReLU)
                self.top[i].backward(
                    ws.dtop[i], dy, ws.top[i], ws.top[i + 1], False, i > 0, self.kernels, lr,
                    _bound(update, self.top_ranges[i]),
                )  # fmt: skip

    def interaction_backward(self, ws: Workspace) -> None:
        """dx into ws.dbottom[-1], demb into ws.demb."""
        with timed(self.op_times, "interaction bwd"):
            mask = self.policy.mask_in_interaction
            self.interaction.backward(
                ws.dbottom[-1], ws.demb, ws.dtop[0], ws.bottom[-1], ws.emb, mask
            )

    def bottom_backward(
        self, ws: Workspace, after_layer=None, lr: float | None = None, update=None
    ) -> None:
        """The bottom MLP's gradients (or, given lr, its SGD update) from dx in
        ws.dbottom[-1]; ``after_layer()`` runs between layers, ``update`` as in
        :meth:`top_backward`."""
        with timed(self.op_times, "bottom bwd"):
            last = len(self.bottom) - 1
            for i in reversed(range(len(self.bottom))):
                x = ws.bottom[i - 1] if i > 0 else ws.bottom_in
                dx = ws.dbottom[i - 1] if i > 0 else None  # the first layer forms no dx
                relu = i == last and not self.policy.mask_in_interaction
                self.bottom[i].backward(
                    dx, ws.dbottom[i], x, ws.bottom[i], relu, i > 0, self.kernels, lr,
                    _bound(update, self.bottom_ranges[i]),
                )  # fmt: skip
                if after_layer is not None:
                    after_layer()


def _layer_range(slot: LinearSlot) -> tuple[int, int]:
    """[lo, hi) of the flat buffer holding the layer's W then b."""
    return slot.w_offset, slot.b_offset + slot.out_features


def _bound(update, layer_range):
    """update bound to one layer's range, or None."""
    if update is None:
        return None
    return lambda: update(*layer_range)
