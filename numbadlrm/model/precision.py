"""Precision policies: how a model stores its weights and which kernels its layers run.

A model (DLRM, DistributedDLRM) and its dense tower are written once; what a precision
changes is asked of its policy:

    fp32   every parameter float32; activations float32; SGD, Adagrad or row-wise Adagrad
    bf16   split-SGD-BF16 (Kalamkar et al., SC20): each fp32 master weight split in place
           into a bf16 hi half (what the GEMMs and the embedding bags read) and the 16 bits
           below (lo), so storage takes fp32's bytes; tables (R, 2, D) uint16; activations
           and their gradients bf16 with fp32 accumulation; logits, loss and weight
           gradients fp32; every update exact fp32 SGD on the split value. SGD only.

The bf16 GEMMs and dot interaction run ``vdpbf16ps`` where the CPU has AVX512-BF16 and an
FMA emulation of it elsewhere (the registry's v1-emu versions, kernels/gemm/dpbf16.py:
the same bits on normal-range values), slower than fp32 there; building a bf16 model
says so once per process (:func:`note_bf16_emulation`).
Checkpoints always hold fp32 values: the policy merges halves on the way out and splits
them exactly on the way in.
"""

from __future__ import annotations

import warnings

import llvmlite.binding as llvm
import numba
import numpy as np

from ..kernels import bf16 as kb
from ..kernels.embedding import bags_bf16 as ke
from ..kernels.gemm import dpbf16
from ..kernels.jit import run_serial
from ..kernels.registry import KernelChoice
from ..layers._checks import check_array
from ..layers.bf16 import from_bf16, merge_tables, split_tables
from ..layers.linear import Linear
from ..optim.optimizers import OptimizerConfig
from ..optim.sgd import sgd_step
from .params import LinearSlot, slot_views

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {PRECISIONS}, got {precision!r}")
    return precision


def check_bf16_optimizer(optimizer: OptimizerConfig | str | None) -> None:
    """ValueError (one line) for an optimizer other than SGD: split-SGD is an SGD method."""
    name = OptimizerConfig.of(optimizer).name
    if name != "sgd":
        raise ValueError(
            f"--optimizer {name}: --precision bf16 trains with split-SGD only (the paper's "
            f"method); use --optimizer sgd, or --precision fp32 for {name}"
        )


class Bf16EmulatedWarning(UserWarning):
    """--precision bf16 runs on the emulation of vdpbf16ps: this CPU has no AVX512-BF16."""


_noted = False  # the note is given once per process


def note_bf16_emulation(log=None) -> None:
    """On a CPU without AVX512-BF16, say once per process, in one line, that bf16 is
    emulated here and slower than fp32: through ``log`` (the CLI's, as "note: ...") or
    else as a :class:`Bf16EmulatedWarning`. Silent where vdpbf16ps runs."""
    global _noted
    if _noted or dpbf16.has_avx512_bf16():
        return
    _noted = True
    cpu = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    text = (
        f"precision bf16 is emulated on this CPU ({cpu}, no AVX512-BF16): each vdpbf16ps "
        f"runs as two fp32 FMAs, slower than --precision fp32"
    )
    if log is not None:
        log(f"note: {text}")
    else:
        warnings.warn(text, Bf16EmulatedWarning, stacklevel=4)


class Fp32:
    """float32 everywhere: the storage is the fp32 buffers themselves."""

    name = "fp32"
    dtype = np.float32  # activations, their gradients and what the embedding alltoall carries
    mask_in_interaction = False  # the bottom MLP's last ReLU mask: applied by that layer

    def check(self, optimizer: OptimizerConfig) -> None:
        """Refuse what this precision cannot train (nothing, for fp32)."""

    def dense_storage(self, flat: np.ndarray) -> tuple[np.ndarray, ...]:
        """The tower's parameter storage over the fp32 buffer ``flat`` (its own bytes)."""
        return (flat,)

    def layer(self, storage: tuple, grads: np.ndarray, slot: LinearSlot) -> Linear:
        w, b = slot_views(storage[0], slot)
        return Linear(w, b, *slot_views(grads, slot))

    def bottom_input(self, ws, dense: np.ndarray) -> np.ndarray:
        """The bottom MLP's input for ``dense`` (B, 13) float32."""
        return dense

    def logit_grad(self, ws) -> np.ndarray:
        """The gradient the logit layer's backward reads (ds, after the loss)."""
        return ws.dtop[-1]

    # ------------------------------------------------------------------- tables

    def store_tables(self, weights: np.ndarray) -> np.ndarray:
        """The table storage over fp32 ``weights`` (R, D) holding their values."""
        return weights

    def table_values(self, rows: np.ndarray) -> np.ndarray:
        """fp32 (rows, D) copy of some rows of the table storage."""
        return rows.copy()

    def load_table(self, rows: np.ndarray, values: np.ndarray) -> None:
        rows[...] = values

    def pooled_gradient(self, dpooled: np.ndarray) -> np.ndarray:
        """fp32 (contiguous) pooled gradients, for the dense table-gradient kernel."""
        return np.ascontiguousarray(dpooled)

    def sgd(self, storage: tuple, grads: np.ndarray, lr: float, kernels: KernelChoice) -> None:
        """storage -= lr grads over a flat parameter storage (the MPI model's tower)."""
        sgd_step(storage[0], grads, lr, kernels)

    def table_sgd(self, tables, grads: np.ndarray, lr: float, kernels: KernelChoice) -> None:
        """tables -= lr grads, dense (the MPI model's replicated tables)."""
        sgd_step(tables.reshape(-1), grads.reshape(-1), lr, kernels)


class Bf16(Fp32):
    """Split-SGD-BF16: split fp32 masters, bf16 compute (see the module docstring)."""

    name = "bf16"
    dtype = np.uint16
    mask_in_interaction = True  # the interaction's bf16 backward applies it to dx16

    def check(self, optimizer: OptimizerConfig) -> None:
        note_bf16_emulation()
        check_bf16_optimizer(optimizer)

    def dense_storage(self, flat: np.ndarray) -> tuple[np.ndarray, ...]:
        """(hi, lo) uint16 views of float32 ``flat``'s own bytes holding its values split
        (hi first, then lo): no second copy of the buffer stays alive."""
        values = flat.copy()
        halves = flat.view(np.uint16)
        hi, lo = halves[: flat.shape[0]], halves[flat.shape[0] :]
        kb.split(hi, lo, values)
        return hi, lo

    def layer(self, storage: tuple, grads: np.ndarray, slot: LinearSlot) -> Linear:
        (w, b), (w_lo, b_lo) = slot_views(storage[0], slot), slot_views(storage[1], slot)
        return Linear(w, b, *slot_views(grads, slot), w_lo=w_lo, b_lo=b_lo)

    def bottom_input(self, ws, dense: np.ndarray) -> np.ndarray:
        check_array("dense", dense, ws.dense16.shape)
        kb.to_bf16_serial(ws.dense16.reshape(-1), dense.reshape(-1))
        return ws.dense16

    def logit_grad(self, ws) -> np.ndarray:
        kb.to_bf16_serial(ws.ds16.reshape(-1), ws.dtop[-1].reshape(-1))
        return ws.ds16

    def store_tables(self, weights: np.ndarray) -> np.ndarray:
        return split_tables(weights, in_place=True)

    def table_values(self, rows: np.ndarray) -> np.ndarray:
        return merge_tables(rows)

    def load_table(self, rows: np.ndarray, values: np.ndarray) -> None:
        ke.split_rows(rows, np.ascontiguousarray(values, np.float32))

    def pooled_gradient(self, dpooled: np.ndarray) -> np.ndarray:
        return from_bf16(np.ascontiguousarray(dpooled))  # exact

    def sgd(self, storage: tuple, grads: np.ndarray, lr: float, kernels: KernelChoice) -> None:
        update = kernels.get("bf16_dense_update").entry(run_serial(grads.nbytes * 3))
        update(storage[0], storage[1], grads, np.float32(lr))

    def table_sgd(self, tables, grads: np.ndarray, lr: float, kernels: KernelChoice) -> None:
        update = kernels.get("bf16_table_update").entry(run_serial(grads.nbytes * 3))
        update(tables, grads, np.float32(lr))


POLICIES = {"fp32": Fp32(), "bf16": Bf16()}


def policy(precision: str) -> Fp32:
    """The policy of ``precision`` ("fp32" or "bf16")."""
    return POLICIES[check_precision(precision)]
