"""The dense tower in bf16 (--precision bf16): bottom MLP, interaction, top MLP.

Mixed precision as the SC20 paper's Split-SGD-BF16 (Kalamkar et al.):

    dense (B, 13) fp32 -> bf16 once per step
    bottom MLP    bf16 activations, vdpbf16ps GEMMs with fp32 accumulation, bias + ReLU
                  in fp32, each output rounded to bf16 once            x16 (B, D)
    emb16         the pooled embeddings, bf16 (the caller's: ws.emb)    (T, B, D)
    interaction   bf16 in, fp32 dots, bf16 out                          r16 (B, D + P)
    top MLP       as the bottom; the last layer's logits stay fp32      s (B, 1)
    loss          sigmoid + BCE in fp32 (the caller's), ds (B, 1) fp32 -> bf16
    backward      bf16 gradients of every activation (ReLU masks applied by the layer
                  above, mask_dx), fp32 weight gradients; SGD on the split master
                  weights, exact in fp32 (split-SGD), fused into each weight pass

Master weights: the flat dense buffer's fp32 values split into two uint16 buffers of the
same layout (numbadlrm.model.dlrm.dense_layout), ``hi`` (the bf16 weights the GEMMs read)
and ``lo``, 4 bytes per weight as in fp32; each layer also keeps W16's two packings and
its merged fp32 bias (layers/linear_bf16.py), refreshed after every update.

The tower has DenseTower's methods and workspace names (emb, demb, top, dtop, p), so
DLRM and the MPI model drive it the same way; its activations are bf16 arrays, except
the logits ws.top[-1] and their gradient ws.dtop[-1] (fp32, for the loss).
"""

from __future__ import annotations

import numpy as np

from ..config import DLRMConfig
from ..kernels import bf16 as kb
from ..kernels.gemm.bf16 import NONE_F32 as _NONE_F32
from ..kernels.gemm.bf16 import NONE_U16 as _NONE_U16
from ..kernels.registry import KernelChoice
from ..layers._checks import check_array
from ..layers.interaction_bf16 import InteractionBf16
from ..layers.linear_bf16 import SplitLinear
from ..runtime.profiling import OpTimes, timed
from .dlrm import WorkspaceCache
from .params import LinearSlot, slot_views


class Bf16Workspace:
    """Every activation and gradient buffer of one bf16 step at batch size B."""

    def __init__(self, cfg: DLRMConfig, batch: int):
        u16, f32 = np.uint16, np.float32
        self.dense16 = np.empty((batch, cfg.num_dense), u16)
        self.bottom = [np.empty((batch, n), u16) for n in cfg.bottom_sizes[1:]]
        self.dbottom = [np.empty((batch, n), u16) for n in cfg.bottom_sizes[1:]]
        self.emb = np.empty((cfg.num_tables, batch, cfg.sparse_feature_size), u16)
        self.demb = np.empty_like(self.emb)
        *hidden, logits = cfg.top_sizes  # top[0] = r16; the last layer's output is fp32
        self.top = [np.empty((batch, n), u16) for n in hidden] + [np.empty((batch, logits), f32)]
        self.dtop = [np.empty((batch, n), u16) for n in hidden] + [np.empty((batch, logits), f32)]
        self.ds16 = np.empty((batch, logits), u16)
        self.p = np.empty(batch, f32)


def split_in_place(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint16 views of float32 ``flat``'s own bytes holding its values split
    (hi first, then lo): no second copy of the buffer stays alive."""
    values = flat.copy()
    halves = flat.view(np.uint16)
    hi, lo = halves[: flat.shape[0]], halves[flat.shape[0] :]
    kb.split(hi, lo, values)
    return hi, lo


def merged(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """The float32 values of split halves (a new array)."""
    out = np.empty(hi.shape, np.float32)
    kb.merge(out.reshape(-1), hi.reshape(-1), lo.reshape(-1))
    return out


class Bf16Tower:
    """DenseTower in bf16 over split master weights ``hi``, ``lo`` (uint16) and fp32
    ``grads``, all laid out by dense_layout (the caller owns them; with ``lr`` the
    backward updates the weights, without it the gradients go to ``grads``)."""

    def __init__(
        self,
        config: DLRMConfig,
        hi: np.ndarray,
        lo: np.ndarray,
        grads: np.ndarray,
        kernels: KernelChoice,
        top_first: bool = False,
    ):
        from .dlrm import dense_layout  # model.py builds this tower: import late

        self.config = config
        self.kernels = kernels
        self.op_times: OpTimes | None = None
        self.bottom_slots, self.top_slots, self.num_params = dense_layout(config, top_first)
        self.bottom = [_layer(hi, lo, grads, s) for s in self.bottom_slots]
        self.top = [_layer(hi, lo, grads, s) for s in self.top_slots]
        self.interaction = InteractionBf16(
            config.interaction_op, config.interaction_itself, config.num_tables, kernels
        )
        self._workspaces = WorkspaceCache(lambda batch: Bf16Workspace(config, batch))

    def refresh(self) -> None:
        """Re-derive every layer's packings and fp32 bias (after the weights changed)."""
        for layer in self.bottom + self.top:
            layer.refresh()

    def workspace(self, batch: int) -> Bf16Workspace:
        return self._workspaces.get(batch)

    # ------------------------------------------------------------------- forward

    def bottom_forward(self, ws: Bf16Workspace, dense: np.ndarray, after_layer=None) -> None:
        """x16 = bottom_mlp(bf16(dense)) into ws.bottom[-1]; ``after_layer()`` between layers."""
        with timed(self.op_times, "bottom fwd"):
            check_array("dense", dense, ws.dense16.shape)
            kb.to_bf16_serial(ws.dense16.reshape(-1), dense.reshape(-1))
            x16 = ws.dense16
            for layer, y16 in zip(self.bottom, ws.bottom, strict=True):
                layer.forward(_NONE_F32, y16, x16, True, self.kernels)
                x16 = y16
                if after_layer is not None:
                    after_layer()

    def top_forward(self, ws: Bf16Workspace) -> None:
        """r16 = interaction(x16, emb16), s = top_mlp(r16): fp32 logits in ws.top[-1]."""
        with timed(self.op_times, "interaction fwd"):
            self.interaction.forward(ws.top[0], ws.bottom[-1], ws.emb)
        with timed(self.op_times, "top fwd"):
            last = len(self.top) - 1
            for i, layer in enumerate(self.top):
                y, y16 = (ws.top[-1], _NONE_U16) if i == last else (_NONE_F32, ws.top[i + 1])
                layer.forward(y, y16, ws.top[i], i < last, self.kernels)

    # ------------------------------------------------------------------ backward

    def top_backward(self, ws: Bf16Workspace, lr: float | None = None, update=None) -> None:
        """From ds in ws.dtop[-1] (fp32): dr16 into ws.dtop[0]; gradients, or given lr the
        split-SGD update of the top MLP. ``update`` (DenseTower's Adagrad hook) must be None:
        bf16 is SGD only."""
        _sgd_only(update)
        with timed(self.op_times, "top bwd"):
            kb.to_bf16_serial(ws.ds16.reshape(-1), ws.dtop[-1].reshape(-1))
            last = len(self.top) - 1
            for i in reversed(range(len(self.top))):
                dz16 = ws.ds16 if i == last else ws.dtop[i + 1]
                # dx of layer i is dL/d(top[i]); below layer 0 sits the interaction (no ReLU)
                self.top[i].backward(ws.dtop[i], dz16, ws.top[i], i > 0, self.kernels, lr)

    def interaction_backward(self, ws: Bf16Workspace) -> None:
        """dx16 (masked by the bottom MLP's last ReLU) into ws.dbottom[-1], demb16 into ws.demb."""
        with timed(self.op_times, "interaction bwd"):
            self.interaction.backward(
                ws.dbottom[-1], ws.demb, ws.dtop[0], ws.bottom[-1], ws.emb, mask_dx=True
            )

    def bottom_backward(
        self, ws: Bf16Workspace, dense=None, after_layer=None, lr: float | None = None,
        update=None,
    ) -> None:  # fmt: skip
        """The bottom MLP's gradients (given lr, its update) from ws.dbottom[-1]; the layer
        inputs are ws.bottom and ws.dense16 (``dense`` is DenseTower's argument, unused)."""
        _sgd_only(update)
        with timed(self.op_times, "bottom bwd"):
            for i in reversed(range(len(self.bottom))):
                x16 = ws.bottom[i - 1] if i > 0 else ws.dense16
                dx16 = ws.dbottom[i - 1] if i > 0 else None  # the first layer forms no dx
                self.bottom[i].backward(dx16, ws.dbottom[i], x16, True, self.kernels, lr)
                if after_layer is not None:
                    after_layer()


def _sgd_only(update) -> None:
    if update is not None:
        raise ValueError("precision bf16: the MLPs train with split-SGD only (no optimizer hook)")


def _layer(hi: np.ndarray, lo: np.ndarray, grads: np.ndarray, slot: LinearSlot) -> SplitLinear:
    w_hi, b_hi = slot_views(hi, slot)
    w_lo, b_lo = slot_views(lo, slot)
    dW, db = slot_views(grads, slot)
    return SplitLinear(w_hi, w_lo, b_hi, b_lo, dW, db)
