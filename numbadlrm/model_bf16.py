"""DLRM in split-SGD-BF16 mixed precision (``DLRM(cfg, precision="bf16")``, ``--precision
bf16``), after Kalamkar et al., SC20.

The step is DLRM's (model.py), with bf16 where the paper puts it:

    x16   = bottom_mlp(bf16(dense))          bf16 activations, fp32 accumulation
    emb16 = bf16(embedding_bags(tables))     the tables' bf16 halves, summed in fp32
    r16   = interaction(x16, emb16)          fp32 dots, rounded to bf16
    s     = top_mlp(r16)                     fp32 logits
    loss  = mean BCE(sigmoid(s), labels)     fp32
    backward: bf16 activation gradients, fp32 weight gradients; every parameter updated
    by plain SGD, exactly in fp32, on its split master value (tower_bf16.py; the tables'
    update fused into the embedding backward, as in fp32)

Storage takes fp32's bytes: the flat dense buffer and the table buffer hold the split
halves in place (hi block then lo block; tables (R, 2, D)), so memory does not grow
(plus each layer's bf16 packings: 4 bytes per MLP weight). ``state_dict`` merges the
halves, so checkpoints hold fp32 weights: a bf16 run resumes bit for bit, converts to
PyTorch and loads into an fp32 model, and an fp32 checkpoint loads here (split exactly).

SGD only: split-SGD is an SGD method. The GEMMs and the interaction's dots run on
AVX512-BF16's vdpbf16ps; on a CPU without it (any other x86-64) the registry's default
versions of those ops are its emulation (two fp32 FMAs per instruction, the same bits on
normal-range values: kernels/microkernel_bf16.py), slower than fp32, and building the
model says so once per process (:func:`note_bf16_emulation`).
"""

from __future__ import annotations

import warnings

import numpy as np

from .batch import Batch
from .bf16 import merge_tables, split_tables
from .config import DLRMConfig
from .kernels import bf16 as kb
from .kernels import embedding_bf16 as ke
from .kernels import microkernel_bf16
from .kernels.registry import KernelChoice
from .layers.embedding_bag_bf16 import embedding_forward_bf16, embedding_update_bf16
from .layers.loss import LossConfig
from .model import DLRM, check_bf16_optimizer, check_state_dict, state_dict_shapes
from .optimizers import OptimizerConfig
from .tower_bf16 import Bf16Tower, Bf16Workspace, merged, split_in_place


class Bf16EmulatedWarning(UserWarning):
    """--precision bf16 runs on the emulation of vdpbf16ps: this CPU has no AVX512-BF16."""


_noted = False  # the note is given once per process


def note_bf16_emulation(log=None) -> None:
    """On a CPU without AVX512-BF16, say once per process, in one line, that bf16 is
    emulated here and slower than fp32: through ``log`` (the CLI's, as "note: ...") or
    else as a :class:`Bf16EmulatedWarning`. Silent where vdpbf16ps runs."""
    global _noted
    if _noted or microkernel_bf16.has_avx512_bf16():
        return
    _noted = True
    import llvmlite.binding as llvm
    import numba

    cpu = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    text = (
        f"precision bf16 is emulated on this CPU ({cpu}, no AVX512-BF16): each vdpbf16ps "
        f"runs as two fp32 FMAs, slower than --precision fp32"
    )
    if log is not None:
        log(f"note: {text}")
    else:
        warnings.warn(text, Bf16EmulatedWarning, stacklevel=3)


class Bf16DLRM(DLRM):
    """DLRM with bf16 compute and split fp32 master weights; see the module docstring.

    ``hi``, ``lo``: the dense parameters' halves (uint16, dense_layout's layout);
    ``tables`` (R, 2, D): the split tables. ``params`` and ``weights`` are None: their
    bytes hold the halves now.
    """

    def __init__(
        self,
        config: DLRMConfig,
        seed: int = 0,
        gemm: str = "auto",
        kernels: KernelChoice | dict[str, str] | str | None = None,
        optimizer: OptimizerConfig | str | None = None,
        loss: LossConfig | str | None = None,
        precision: str = "bf16",
    ):
        note_bf16_emulation()
        check_bf16_optimizer(optimizer)
        # fp32 buffers and values first, split in place below
        super().__init__(config, seed, gemm, kernels, "sgd", loss, precision="bf16")
        self.hi, self.lo = split_in_place(self.params)
        self.tables = split_tables(self.weights, in_place=True)
        self.params = self.weights = None
        self.tower = Bf16Tower(config, self.hi, self.lo, self.grads, self.kernels)
        self.bottom, self.top = self.tower.bottom, self.tower.top
        self.interaction = self.tower.interaction

    def table(self, t: int) -> np.ndarray:
        """Table t's split rows (rows, 2, D) uint16, a view into the tables buffer."""
        return self.tables[self.row_start[t] : self.row_start[t + 1]]

    def _embedding_forward(self, ws: Bf16Workspace, batch: Batch) -> None:
        embedding_forward_bf16(
            ws.emb, self.tables, self.row_start, batch.offsets, batch.indices, self.kernels
        )

    def _embedding_update(self, batch: Batch, ws: Bf16Workspace, lr: float) -> None:
        embedding_update_bf16(
            self.tables, self.row_start, batch.offsets, batch.indices, ws.demb, lr, self.kernels
        )

    def _slots(self):
        return self.bottom_slots + self.top_slots

    def state_dict(self) -> dict[str, np.ndarray]:
        """The fp32 master weights, merged from their halves (DLRM.state_dict's names)."""
        out = {}
        for slot, layer in zip(self._slots(), self.bottom + self.top, strict=True):
            out[f"{slot.name}.weight"] = merged(layer.w_hi, layer.w_lo)
            out[f"{slot.name}.bias"] = merged(layer.b_hi, layer.b_lo)
        for t in range(self.config.num_tables):
            out[f"embeddings.{t}.weight"] = merge_tables(self.table(t))
        return out

    def load_state_dict(self, sd: dict[str, np.ndarray]) -> None:
        """Split fp32 values in (exactly) after checking names, shapes and dtypes."""
        check_state_dict(sd, state_dict_shapes(self.config))
        for slot, layer in zip(self._slots(), self.bottom + self.top, strict=True):
            for hi, lo, name in (
                (layer.w_hi, layer.w_lo, "weight"),
                (layer.b_hi, layer.b_lo, "bias"),
            ):
                values = np.ascontiguousarray(sd[f"{slot.name}.{name}"]).reshape(-1)
                kb.split(hi.reshape(-1), lo.reshape(-1), values)
        for t in range(self.config.num_tables):
            ke.split_rows(self.table(t), np.ascontiguousarray(sd[f"embeddings.{t}.weight"]))
        self.tower.refresh()
