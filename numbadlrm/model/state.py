"""The names and shapes of a model's state dict and optimizer state dict, and their check.

    bottom_mlp.{i}.weight (O, I), bottom_mlp.{i}.bias (O,), top_mlp.*, embeddings.{t}.weight
    (rows, D): fp32 in every precision (a bf16 model's master weights, merged)
    table tricks (DLRMConfig.table_plans): a QR table's embeddings.{t}.weight_q
    (ceil(rows/c), d) and .weight_r (c, d) instead of .weight; an MD table's
    embeddings.{t}.weight (rows, d) and projections.{t}.weight (D, d); learned weighted
    pooling's pooling_weights.{t} (rows,)

Checkpoints (io/checkpoint.py), the PyTorch converters (interop/) and both models use them.
"""

from __future__ import annotations

import numpy as np

from ..config import DLRMConfig
from ..optim.optimizers import OptimizerConfig, state_shapes
from .tower import dense_layout


def state_dict_shapes(config: DLRMConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every entry of :meth:`DLRM.state_dict`, in its order."""
    bottom_slots, top_slots, _ = dense_layout(config)
    out: dict[str, tuple[int, ...]] = {}
    for slot in bottom_slots + top_slots:
        out[f"{slot.name}.weight"] = (slot.out_features, slot.in_features)
        out[f"{slot.name}.bias"] = (slot.out_features,)
    return {**out, **table_shapes(config)}


def table_shapes(config: DLRMConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the tables' entries of the state dict (see the module docstring)."""
    out: dict[str, tuple[int, ...]] = {}
    for t, plan in enumerate(config.table_plans()):
        if plan.kind == "qr":
            out[f"embeddings.{t}.weight_q"] = (plan.shapes_rows[0], plan.dim)
            out[f"embeddings.{t}.weight_r"] = (plan.shapes_rows[1], plan.dim)
            continue
        out[f"embeddings.{t}.weight"] = (plan.rows, plan.dim)
        if plan.kind == "md":
            out[f"projections.{t}.weight"] = (config.sparse_feature_size, plan.dim)
        if config.learned_pooling:
            out[f"pooling_weights.{t}"] = (plan.rows,)
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
