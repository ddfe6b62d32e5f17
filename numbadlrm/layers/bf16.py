"""bf16 and split-SGD (Kalamkar et al., SC20): validating wrappers over the Numba kernels.

The kernels (kernels/bf16.py, kernels/embedding/bags_bf16.py, kernels/gemm/bf16.py) trust their
arguments; these functions check dtypes, shapes and contiguity first (one-line
ValueErrors), allocate the outputs, and run small work on the calling thread
(kernels/jit.py run_serial). bf16 arrays are uint16 bit patterns throughout.

    to_bf16 / from_bf16          fp32 <-> bf16 (round to nearest even)
    split / merge                fp32 master value <-> (hi, lo) halves; hi is the bf16
    split_sgd_update             exact fp32 SGD on (hi, lo)
    split_tables / merge_tables  (R, D) fp32 tables <-> (R, 2, D) split tables
    embedding_forward_split      pooled sums of bf16 rows, fp32
    embedding_update_split       the fused sparse split-SGD update
    pack_weight, repack          W16 (O, I) -> PackedWeight for the forward and data passes
    linear_forward / linear_backward_data / linear_backward_weight(_split_sgd)

The GEMMs run on AVX512-BF16's vdpbf16ps where the CPU has it and on its emulation (two
fp32 FMAs per instruction, the same results on normal-range values, slower) elsewhere:
``microkernel_bf16.default_dot()``. The conversions, split-SGD and embedding kernels are
integer and fp32 arithmetic and run anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..kernels import bf16 as kb
from ..kernels.embedding import bags_bf16 as ke
from ..kernels.gemm import bf16 as kg
from ..kernels.gemm import pack_bf16 as kp
from ..kernels.gemm.dpbf16 import default_dot
from ..kernels.jit import run_serial

_OUTS = ("bf16", "fp32", "both")


def _check(name: str, a, dtype, shape: tuple | None = None, ndim: int | None = None):
    """a must be a C-contiguous ndarray of dtype (and shape, with None for any size)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: dtype must be {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")
    want = ndim if shape is None else len(shape)
    if want is not None and a.ndim != want:
        raise ValueError(f"{name}: must have {want} dimensions, got shape {a.shape}")
    pairs = zip(shape or (), a.shape if shape else (), strict=True)
    if any(s is not None and s != g for s, g in pairs):
        raise ValueError(f"{name}: shape must be {shape} (None: any), got {a.shape}")


def _lr(lr) -> np.float32:
    lr32 = np.float32(lr)
    if not np.isfinite(lr32):
        raise ValueError(f"lr: must be finite, got {lr}")
    return lr32


# ------------------------------------------------------------------ numbers


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 array -> bf16 (uint16) array of the same shape, round to nearest even."""
    _check("x", x, np.float32)
    out = np.empty(x.shape, np.uint16)
    kernel = kb.to_bf16_serial if run_serial(x.nbytes) else kb.to_bf16
    kernel(out.reshape(-1), x.reshape(-1))
    return out


def from_bf16(h: np.ndarray) -> np.ndarray:
    """bf16 (uint16) array -> float32 array of the same shape (exact)."""
    _check("h", h, np.uint16)
    out = np.empty(h.shape, np.float32)
    kernel = kb.from_bf16_serial if run_serial(out.nbytes) else kb.from_bf16
    kernel(out.reshape(-1), h.reshape(-1))
    return out


def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 array -> (hi, lo) uint16 arrays: hi = x truncated to bf16, lo the rest."""
    _check("x", x, np.float32)
    hi, lo = np.empty(x.shape, np.uint16), np.empty(x.shape, np.uint16)
    kernel = kb.split_serial if run_serial(x.nbytes) else kb.split
    kernel(hi.reshape(-1), lo.reshape(-1), x.reshape(-1))
    return hi, lo


def merge(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(hi, lo) -> the float32 master values, bit for bit."""
    _check("hi", hi, np.uint16)
    _check("lo", lo, np.uint16, hi.shape)
    out = np.empty(hi.shape, np.float32)
    kernel = kb.merge_serial if run_serial(out.nbytes) else kb.merge
    kernel(out.reshape(-1), hi.reshape(-1), lo.reshape(-1))
    return out


def split_sgd_update(hi: np.ndarray, lo: np.ndarray, grads: np.ndarray, lr: float) -> None:
    """merge(hi, lo) -= lr grads in fp32, exactly, in place (hi refreshed)."""
    _check("hi", hi, np.uint16)
    _check("lo", lo, np.uint16, hi.shape)
    _check("grads", grads, np.float32, hi.shape)
    kernel = kb.split_sgd_update_serial if run_serial(grads.nbytes) else kb.split_sgd_update
    kernel(hi.reshape(-1), lo.reshape(-1), grads.reshape(-1), _lr(lr))


# ------------------------------------------------------------ embedding bags


def split_tables(weights: np.ndarray, in_place: bool = False) -> np.ndarray:
    """(R, D) fp32 tables -> (R, 2, D) uint16 split tables (kernels/embedding/bags_bf16.py).

    With ``in_place`` the result is a view of weights' own buffer (no second copy of the
    tables), and weights no longer holds fp32 values.
    """
    _check("weights", weights, np.float32, ndim=2)
    rows, dim = weights.shape
    if in_place:
        tables = weights.view(np.uint16).reshape(rows, 2, dim)
    else:
        tables = np.empty((rows, 2, dim), np.uint16)
    ke.split_rows(tables, weights)
    return tables


def merge_tables(tables: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(R, 2, D) split tables -> their (R, D) fp32 values, bit for bit (into out if given;
    out may be a float32 view of tables' own buffer)."""
    _check("tables", tables, np.uint16, (None, 2, None))
    shape = (tables.shape[0], tables.shape[2])
    if out is None:
        out = np.empty(shape, np.float32)
    _check("out", out, np.float32, shape)
    ke.merge_rows(out, tables)
    return out


def _check_bags(tables, row_start, offsets, indices) -> tuple[int, int, int]:
    """(T, B, D) after checking the lookup arrays' dtypes and shapes (values are checked
    by numbadlrm.batch.Batch.check_against, as for the fp32 layers)."""
    _check("tables", tables, np.uint16, (None, 2, None))
    _check("row_start", row_start, np.int64, ndim=1)
    _check("offsets", offsets, np.int64, (row_start.shape[0] - 1, None))
    _check("indices", indices, np.int64, ndim=1)
    if offsets.shape[1] < 1:
        raise ValueError(f"offsets: needs B + 1 >= 1 columns, got shape {offsets.shape}")
    return offsets.shape[0], offsets.shape[1] - 1, tables.shape[2]


def embedding_forward_split(tables, row_start, offsets, indices) -> np.ndarray:
    """pooled (T, B, D) fp32 = sum of each bag's bf16 rows (tables (R, 2, D))."""
    T, B, D = _check_bags(tables, row_start, offsets, indices)
    pooled = np.empty((T, B, D), np.float32)
    if run_serial(indices.shape[0] * D * 2 + pooled.nbytes):
        ke.embedding_bags_forward_split_serial(pooled, tables, row_start, offsets, indices)
    else:
        ke.embedding_bags_forward_split(pooled, tables, row_start, offsets, indices)
    return pooled


def embedding_update_split(tables, row_start, offsets, indices, dpooled, lr: float) -> None:
    """Each looked-up row's fp32 value -= lr dpooled[t, b], exactly, in place."""
    T, B, D = _check_bags(tables, row_start, offsets, indices)
    _check("dpooled", dpooled, np.float32, (T, B, D))
    lr32 = _lr(lr)
    if run_serial(2 * indices.shape[0] * D * 4 + dpooled.nbytes):
        ke.embedding_bags_sgd_update_split_serial(
            tables, row_start, offsets, indices, dpooled, lr32
        )
    else:
        owners = numba.get_num_threads()  # one owner per thread (see the kernel)
        ke.embedding_bags_sgd_update_split(
            tables, row_start, offsets, indices, dpooled, lr32, owners
        )


# ----------------------------------------------------------------- linear layer


@dataclass(frozen=True)
class PackedWeight:
    """A layer's bf16 weight W16 (O, I) and its two packings (kernels/gemm/bf16.py):
    ``forward`` = pack_rows(W16) for y = x W^T, ``data`` = pack_cols(W16) for dx = dz W.
    Made by :func:`pack_weight` once per weight update."""

    w16: np.ndarray
    forward: np.ndarray
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.w16.shape


def pack_weight(w16: np.ndarray) -> PackedWeight:
    """PackedWeight of a bf16 weight (O, I) (for a split weight: its hi half)."""
    _check("w16", w16, np.uint16, ndim=2)
    O, I = w16.shape
    forward = np.empty(kp.panels_shape(O, I), np.uint32)
    data = np.empty(kp.panels_shape(I, O), np.uint32)
    serial = run_serial(w16.nbytes * 2)
    (kp.pack_rows_serial if serial else kp.pack_rows)(forward, w16)
    (kp.pack_cols_serial if serial else kp.pack_cols)(data, w16)
    return PackedWeight(w16, forward, data)


def repack(packed: PackedWeight) -> None:
    """Refill packed's packings from its w16, in place (after w16 was updated)."""
    serial = run_serial(packed.w16.nbytes * 2)
    (kp.pack_rows_serial if serial else kp.pack_rows)(packed.forward, packed.w16)
    (kp.pack_cols_serial if serial else kp.pack_cols)(packed.data, packed.w16)


def _outputs(out: str, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    if out not in _OUTS:
        raise ValueError(f"out: expected one of {_OUTS}, got {out!r}")
    y = np.empty((rows, cols), np.float32) if out != "bf16" else kg.NONE_F32
    y16 = np.empty((rows, cols), np.uint16) if out != "fp32" else kg.NONE_U16
    return y, y16


def _result(out: str, y: np.ndarray, y16: np.ndarray):
    return {"bf16": y16, "fp32": y}.get(out, (y, y16))


def linear_forward(x16, packed: PackedWeight, b, relu: bool, out: str = "bf16"):
    """y = x16 W^T + b (ReLU), fp32 accumulation; out: "bf16" (uint16 (B, O)), "fp32"
    (float32) or "both" (a tuple (y, y16))."""
    O, I = packed.shape
    _check("x16", x16, np.uint16, (None, I))
    _check("b", b, np.float32, (O,))
    B = x16.shape[0]
    y, y16 = _outputs(out, B, O)
    serial = run_serial(x16.nbytes + packed.forward.nbytes + B * O * 4)
    if O == 1:
        fn = kg.logit_forward_serial if serial else kg.logit_forward
        fn(y, y16, x16, packed.w16, b, relu, kg.TASKS)
    else:
        fn = kg.linear_forward_serial if serial else kg.linear_forward
        fn(y, y16, x16, packed.forward, b, relu, kg.TASKS, default_dot())
    return _result(out, y, y16)


def linear_backward_data(dz16, packed: PackedWeight, x16=None, out: str = "bf16"):
    """dx = dz16 W, times [x16 > 0] when x16 (the layer's input, a ReLU output) is given;
    fp32 accumulation; out as :func:`linear_forward`."""
    O, I = packed.shape
    _check("dz16", dz16, np.uint16, (None, O))
    B = dz16.shape[0]
    if x16 is not None:
        _check("x16", x16, np.uint16, (B, I))
    dx, dx16 = _outputs(out, B, I)
    serial = run_serial(dz16.nbytes + packed.data.nbytes + B * I * 4)
    mask = x16 if x16 is not None else kg.NONE_U16
    if O == 1:
        fn = kg.logit_backward_data_serial if serial else kg.logit_backward_data
        fn(dx, dx16, dz16, packed.w16, mask, x16 is not None, kg.TASKS)
    else:
        fn = kg.linear_backward_data_serial if serial else kg.linear_backward_data
        fn(dx, dx16, dz16, packed.data, mask, x16 is not None, kg.TASKS, default_dot())
    return _result(out, dx, dx16)


def _check_weight_pass(dz16, x16) -> bool:
    """True if the pass is small enough for the calling thread alone."""
    _check("dz16", dz16, np.uint16, ndim=2)
    _check("x16", x16, np.uint16, (dz16.shape[0], None))
    return run_serial(2 * (dz16.nbytes + x16.nbytes) + dz16.shape[1] * x16.shape[1] * 4)


def linear_backward_weight(dz16, x16) -> tuple[np.ndarray, np.ndarray]:
    """(dW (O, I), db (O,)) fp32 = (dz16^T x16, sum_b dz16), fp32 accumulation."""
    serial = _check_weight_pass(dz16, x16)
    O, I = dz16.shape[1], x16.shape[1]
    dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
    if serial:
        kg.linear_backward_weight_serial(dW, db, dz16, x16, 1, default_dot())
    else:
        kg.linear_backward_weight(dW, db, dz16, x16, numba.get_num_threads(), default_dot())
    return dW, db


def linear_backward_weight_split_sgd(w_hi, w_lo, b_hi, b_lo, dz16, x16, lr: float) -> None:
    """W (w_hi, w_lo) -= lr dz16^T x16 and b (b_hi, b_lo) -= lr sum_b dz16, exact fp32
    split-SGD fused with the weight pass, in place. Repack W (:func:`pack_weight`) after."""
    serial = _check_weight_pass(dz16, x16)
    O, I = dz16.shape[1], x16.shape[1]
    for name, a, shape in (("w_hi", w_hi, (O, I)), ("w_lo", w_lo, (O, I))):
        _check(name, a, np.uint16, shape)
    for name, a in (("b_hi", b_hi), ("b_lo", b_lo)):
        _check(name, a, np.uint16, (O,))
    lr32 = _lr(lr)
    if serial:
        kg.linear_backward_weight_split_sgd_serial(
            w_hi, w_lo, b_hi, b_lo, dz16, x16, lr32, 1, default_dot()
        )
    else:
        threads = numba.get_num_threads()
        kg.linear_backward_weight_split_sgd(
            w_hi, w_lo, b_hi, b_lo, dz16, x16, lr32, threads, default_dot()
        )
