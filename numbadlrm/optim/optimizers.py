"""The optimizer a model trains with (``--optimizer``), its state and its step count.

    sgd         params -= lr grad; no state. Fused into the passes that form the
                gradients (numbadlrm/optim/sgd.py, layers/linear.py, layers/embedding_bag.py)
    adagrad     torch.optim.Adagrad: a per-element state for every parameter
    rwsadagrad  the reference's RWSAdagrad (--optimizer rwsadagrad): per-element Adagrad
                for the MLPs, one float of state per table row for the tables

The math is in numbadlrm/optim/reference.py, the kernels in
numbadlrm/kernels/embedding/optimizers.py.
Hyperparameters as torch.optim.Adagrad and RWSAdagrad define them (the reference passes
only lr, so their defaults are the reference's):

    clr    = lr / (1 + (t - 1) lr_decay)    at the optimizer's t-th step, t = 1, 2, ...
             (lr: the step's rate after the LR policy, numbadlrm/optim/lr_policy.py)
    state  starts at initial_accumulator_value (0); eps (1e-10) is added to sqrt(state)
    weight_decay adds weight_decay p to every MLP gradient. The tables take none: torch
             and RWSAdagrad refuse weight decay with the tables' sparse gradients.

One step of a model with Adagrad: each MLP layer forms dW and db (the non-fused weight
pass), then its dense update runs over its own slice of the flat buffer at once, while
those gradients are still in cache (:meth:`Optimizer.layer_update`); the tables take
one fused sparse update from dpooled, every looked-up row once from the sum of its bag
gradients (:meth:`TableState.update`), no dense table gradient ever built.

Every state array is float32, named after its parameter in :meth:`Optimizer` users'
``optimizer_state_dict`` (the checkpoint's ``__optim__.<name>`` arrays): the shape of
the parameter, except a row-wise table's, (rows,).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import numba
import numpy as np

from ..kernels.jit import run_serial
from ..layers._checks import check_array
from ..layers.embedding_bag import check_embedding_args
from .lr_policy import adagrad_decayed_lr
from .sgd import SERIAL_BELOW_PARAMS

OPTIMIZERS = ("sgd", "adagrad", "rwsadagrad")
# The fused table kernels sort keys row << bag bits | bag of 63 bits
# (kernels/embedding/optimizers.py): a batch has fewer than 2^30 samples, a table fewer
# than 2^33 rows.
MAX_BATCH = 2**30 - 1
MAX_TABLE_ROWS = 2**33 - 1
_FLAGS = {
    "eps": "--adagrad-eps",
    "initial_accumulator_value": "--adagrad-initial-accumulator-value",
    "weight_decay": "--weight-decay",
    "lr_decay": "--adagrad-lr-decay",
}


# the settings the kernels and the state take as float32 (lr_decay stays a Python float)
_FLOAT32_FIELDS = ("eps", "initial_accumulator_value", "weight_decay")
_FLOAT32 = np.finfo(np.float32)


def _check_float32(flag: str, value: float) -> None:
    """Refuse a setting float32 cannot hold: it would become inf, or 0 (eps 0 -> NaN)."""
    if value > float(_FLOAT32.max):
        raise ValueError(
            f"{flag}: {value!r} overflows float32 (the optimizer's kernels and state are "
            f"float32: at most {float(_FLOAT32.max):.4g})"
        )
    if value > 0 and np.float32(value) == 0:
        raise ValueError(
            f"{flag}: {value!r} underflows to 0 in float32 (the optimizer's kernels and state "
            f"are float32: the smallest positive value is {float(_FLOAT32.smallest_subnormal):.2g})"
        )


def check_steps(steps) -> int:
    """An optimizer step count (torch's state["step"]): an integer >= 0."""
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 0:
        raise ValueError(
            f"steps: the optimizer's step count must be an integer >= 0, got {steps!r}"
        )
    return int(steps)


@dataclass(frozen=True)
class OptimizerConfig:
    """Which optimizer and its hyperparameters (defaults: torch.optim.Adagrad's)."""

    name: str = "sgd"
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0
    weight_decay: float = 0.0
    lr_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(
                f"--optimizer: must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}"
            )
        for field, flag in _FLAGS.items():
            value = getattr(self, field)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag}: must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, field, float(value))
            if field in _FLOAT32_FIELDS:
                _check_float32(flag, float(value))
            if self.name == "sgd" and value != getattr(OptimizerConfig, field):
                raise ValueError(f"{flag}: applies to --optimizer adagrad or rwsadagrad, not sgd")
        if self.eps == 0 and self.initial_accumulator_value == 0:
            raise ValueError(
                "--adagrad-eps 0 with --adagrad-initial-accumulator-value 0 divides 0 by 0 "
                "for any zero gradient (a dead ReLU unit's weights): make one of them > 0"
            )

    @classmethod
    def of(cls, value: OptimizerConfig | str | None) -> OptimizerConfig:
        """An OptimizerConfig as it is; a name: that optimizer with the default settings."""
        if isinstance(value, OptimizerConfig):
            return value
        return cls() if value is None else cls(name=value)

    @property
    def stateful(self) -> bool:
        return self.name != "sgd"

    @property
    def rowwise_tables(self) -> bool:
        return self.name == "rwsadagrad"

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: OptimizerConfig) -> list[str]:
        """'field: mine vs other' for every field that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def state_shapes(
    config: OptimizerConfig, param_shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """{parameter name: its state's shape} (empty for SGD), from the parameters' shapes."""
    if not config.stateful:
        return {}
    out = {}
    for name, shape in param_shapes.items():
        table = name.startswith("embeddings.")
        out[name] = shape[:1] if table and config.rowwise_tables else shape
    return out


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte line, so that
    the row owners of the fused kernels never share a cache line of it."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(count * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + count * dtype.itemsize].view(dtype).reshape(shape)


def check_batch_size(name: str, batch: int) -> None:
    """ValueError for a batch of more samples than the fused table kernels' keys hold."""
    if batch > MAX_BATCH:
        raise ValueError(f"{name}: a batch must have fewer than 2^30 samples, got {batch}")


class TableState:
    """The optimizer state of one (R, D) table buffer, and the fused kernels' scratch.

    state (R, D) for Adagrad, (R,) for row-wise Adagrad, starting at the initial
    accumulator value. The scratch (lists (owners, 2, L) int64) may hold anything
    between calls: it is neither state nor checkpointed (see kernels/embedding/optimizers.py); it
    grows with the largest table's lookups.
    """

    def __init__(self, config: OptimizerConfig, rows: int, dim: int):
        self.config = config
        if rows > MAX_TABLE_ROWS:  # the rows of every table together: each is below
            raise ValueError(f"{config.name}: tables must have fewer than 2^33 rows, got {rows:,}")
        shape = (rows,) if config.rowwise_tables else (rows, dim)
        self.state = aligned_empty(shape, np.float32)
        self.state[...] = config.initial_accumulator_value
        self.lists = aligned_empty((1, 2, 0), np.int64)

    @property
    def op(self) -> str:
        rowwise = "rowwise_" if self.config.rowwise_tables else ""
        return f"embedding_update_{rowwise}adagrad"

    def update(self, weights, row_start, offsets, indices, dpooled, lr: float, kernels):
        """One sparse step of every looked-up row from dpooled (T, B, D) and the lookups.

        The arrays are those embedding_backward_sgd takes, checked as it checks them.
        """
        check_embedding_args("dpooled", dpooled, weights, row_start, offsets, indices)
        check_array("state", self.state, (weights.shape[0], *self.state.shape[1:]))
        check_batch_size(self.config.name, dpooled.shape[1])
        most = int((offsets[:, -1] - offsets[:, 0]).max()) if offsets.shape[0] else 0
        small = run_serial(3 * indices.shape[0] * weights.shape[1] * 4 + dpooled.nbytes)
        owners = 1 if small else numba.get_num_threads()
        if self.lists.shape[0] != owners or self.lists.shape[2] < most:
            self.lists = aligned_empty((owners, 2, max(most, self.lists.shape[2]) * 3 // 2 + 16),
                                       np.int64)  # fmt: skip
        kernel = kernels.get(self.op).entry(small)
        kernel(
            weights, self.state, self.lists, row_start, offsets, indices, dpooled,
            np.float32(lr), np.float32(self.config.eps),
        )  # fmt: skip

    def update_dense(self, weights, grads, lr: float, kernels) -> None:
        """One step of every row from a dense gradient grads (R, D) (the MPI model's
        replicated tables): rows with a zero gradient keep their weights and state."""
        check_array("grads", grads, weights.shape)
        eps = np.float32(self.config.eps)
        small = weights.size < SERIAL_BELOW_PARAMS
        if self.config.rowwise_tables:
            kernel = kernels.get("dense_update_rowwise_adagrad").entry(small)
            kernel(weights, self.state, grads, np.float32(lr), eps)
        else:
            kernel = kernels.get("dense_update_adagrad").entry(small)
            flat = (weights.reshape(-1), self.state.reshape(-1), grads.reshape(-1))
            kernel(*flat, np.float32(lr), eps, np.float32(0.0))  # no weight decay on tables


class Optimizer:
    """A model's optimizer: its config, step count, and the state of a flat buffer of
    ``dense_size`` MLP parameters and of a ``table_rows`` x ``dim`` table buffer.

    :meth:`begin_step` is called once per training step; it counts the step and gives
    the step's rate after Adagrad's lr_decay.
    """

    def __init__(self, config: OptimizerConfig, dense_size: int, table_rows: int, dim: int):
        self.config = config
        self.steps = 0  # optimizer steps taken (torch's state["step"]); checkpointed
        self.dense: np.ndarray | None = None
        self.tables: TableState | None = None
        if config.stateful:
            self.dense = np.full(dense_size, config.initial_accumulator_value, np.float32)
            self.tables = TableState(config, table_rows, dim)

    def check_batch(self, offsets: np.ndarray) -> None:
        """ValueError, before any update, for a batch the fused table kernels cannot
        index (2^30 samples: far beyond any memory today)."""
        if not self.config.stateful:
            return
        check_batch_size(self.config.name, offsets.shape[1] - 1)

    def begin_step(self, lr: float) -> float:
        """Count one step; its rate: lr for SGD, lr / (1 + (t - 1) lr_decay) for Adagrad."""
        self.steps += 1
        if not self.config.stateful:
            return lr
        return adagrad_decayed_lr(lr, self.config.lr_decay, self.steps)

    def layer_update(self, params: np.ndarray, grads: np.ndarray, lr: float, kernels):
        """A function (lo, hi) -> None: the dense Adagrad step of params[lo:hi] from
        grads[lo:hi] (one MLP layer's W and b, adjacent in the flat buffer), with weight
        decay. None for SGD, whose update is fused into the weight pass."""
        if not self.config.stateful:
            return None
        op = kernels.get("dense_update_adagrad")
        scalars = (
            np.float32(lr),
            np.float32(self.config.eps),
            np.float32(self.config.weight_decay),
        )
        state = self.dense

        def update(lo: int, hi: int) -> None:
            kernel = op.entry(hi - lo < SERIAL_BELOW_PARAMS)
            kernel(params[lo:hi], state[lo:hi], grads[lo:hi], *scalars)

        return update
