"""The reference's row-wise Adagrad in PyTorch: an independent oracle and benchmark baseline.

``RowWiseSparseAdagrad`` follows RWSAdagrad (facebookresearch/dlrm, optim/rwsadagrad.py),
the optimizer the reference selects with ``--optimizer rwsadagrad``, written here with
torch ops from its equations. Per parameter p with gradient g, at its t-th step
(clr = lr / (1 + (t - 1) lr_decay)):

    sparse g (an EmbeddingBag's table): coalesce g (sum duplicate rows), then per row r
        momentum[r] += mean_d g[r, d]^2;   p[r] -= clr g[r] / (sqrt(momentum[r]) + eps)
    dense g: per element, exactly torch.optim.Adagrad
        g += weight_decay p;  sum += g^2;  p -= clr g / (sqrt(sum) + eps)

momentum (state key "momentum", as the reference names it; "sum" for a dense parameter)
is one number per row, starting at initial_accumulator_value; weight decay with
a sparse gradient raises, as in the reference. The reference keeps momentum in float32
whatever the parameter's dtype; this keeps it in the parameter's dtype, so that a float64
run is float64 throughout (identical for float32 parameters).

``embedding_pooled(bags, offsets, indices)`` and ``embedding_backward(pooled, dpooled)`` run
EmbeddingBags forward and their sparse backward from given pooled gradients, as the tests
and bench_embedding feed them (the backward can repeat on one forward's graph).

PyTorch is optional: this module imports without it and raises ImportError on use.
"""

from __future__ import annotations

import numpy as np

try:
    import torch

    _Optimizer = torch.optim.Optimizer
except ImportError:  # torch is an optional dependency
    torch = None
    _Optimizer = object

_NO_TORCH = "PyTorch is not installed; pip install 'numbadlrm[torch]'"
# The state's name, as the reference keys it: "momentum" (rows,) for a sparse gradient's
# parameter, "sum" (shaped like the parameter) for a dense one's.
STATE_KEY = {True: "momentum", False: "sum"}


class RowWiseSparseAdagrad(_Optimizer):
    """Row-wise Adagrad for sparse gradients, per-element Adagrad for dense ones."""

    def __init__(
        self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
        eps=1e-10,
    ):  # fmt: skip
        if torch is None:
            raise ImportError(_NO_TORCH)
        for name, value in (
            ("lr", lr), ("lr_decay", lr_decay), ("weight_decay", weight_decay),
            ("initial_accumulator_value", initial_accumulator_value), ("eps", eps),
        ):  # fmt: skip
            if not value >= 0:
                raise ValueError(f"{name}: must be >= 0, got {value}")
        defaults = dict(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps,
        )  # fmt: skip
        super().__init__(params, defaults)

    def step(self, closure=None):
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._step_param(p, group)

    def _step_param(self, p, group) -> None:
        grad = p.grad
        state = self.state[p]
        if not state:  # created on the first step, as the reference does
            shape = p.shape[:1] if grad.is_sparse else p.shape
            state["step"] = 0
            state[STATE_KEY[grad.is_sparse]] = torch.full(
                shape, group["initial_accumulator_value"], dtype=p.dtype
            )
        state["step"] += 1
        clr = group["lr"] / (1.0 + (state["step"] - 1.0) * group["lr_decay"])
        if grad.is_sparse:
            if group["weight_decay"] != 0:
                raise RuntimeError("weight_decay option is not compatible with sparse gradients")
            grad = grad.coalesce()  # one row per index: the update is non-linear
            rows, values = grad.indices()[0], grad.values()
            if values.numel() == 0:
                return
            momentum = state["momentum"]
            momentum.index_add_(0, rows, values.pow(2).mean(dim=1))
            std = momentum[rows].sqrt_().add_(group["eps"])
            p.index_add_(0, rows, values / std[:, None], alpha=-clr)
        else:
            if group["weight_decay"] != 0:
                grad = grad.add(p, alpha=group["weight_decay"])
            total = state["sum"]
            total.addcmul_(grad, grad, value=1.0)
            p.addcdiv_(grad, total.sqrt().add_(group["eps"]), value=-clr)


def embedding_pooled(bags, offsets, indices) -> list:
    """Each table's pooled bags (B, D), with the graph for :func:`embedding_backward`."""
    if torch is None:
        raise ImportError(_NO_TORCH)
    return [bag(idx, off) for bag, off, idx in zip(bags, offsets, indices, strict=True)]


def embedding_backward(pooled, dpooled) -> None:
    """Accumulate the tables' sparse gradients from dpooled (T, B, D); keeps the graph."""
    torch.autograd.backward(pooled, [torch.as_tensor(d) for d in dpooled], retain_graph=True)


# ------------------------------------------------------------- optimizer state_dicts
# The reference saves optimizer.state_dict() as "opt_state_dict" next to "state_dict".
# Its optimizer takes dlrm.parameters(): DLRM_Net registers emb_l before bot_l and top_l,
# so state entry i is parameter i of: the tables, then bottom and top MLP (weight, bias).
# torch.optim.Adagrad keeps per parameter {"step": tensor(float), "sum": like the
# parameter}; RWSAdagrad {"step": int, "momentum": (rows,)} for a table, "sum" otherwise.

_GROUP_KEYS = ("lr_decay", "eps", "weight_decay", "initial_accumulator_value")


def reference_parameter_order(config) -> list[str]:
    """numbadlrm's parameter names in the order of the reference's dlrm.parameters()."""
    from ..model.state import state_dict_shapes

    names = list(state_dict_shapes(config))
    tables = [n for n in names if n.startswith("embeddings.")]
    return tables + [n for n in names if not n.startswith("embeddings.")]


def to_reference_optimizer_state(config, optimizer, steps: int, state: dict, lr: float) -> dict:
    """numbadlrm's optimizer state (Adagrad or row-wise) -> the reference's optimizer
    state_dict. With weight decay, two param groups (tables without it, MLPs with it):
    numbadlrm decays the MLPs only, which one group of dlrm.parameters() cannot say."""
    if torch is None:
        raise ImportError(_NO_TORCH)
    names = reference_parameter_order(config)
    out_state = {}
    for i, name in enumerate(names):
        table = name.startswith("embeddings.")
        key = STATE_KEY[table and optimizer.rowwise_tables]
        step = steps if optimizer.rowwise_tables else torch.tensor(float(steps))
        out_state[i] = {"step": step, key: torch.from_numpy(np.array(state[name], copy=True))}
    settings = {k: getattr(optimizer, k) for k in _GROUP_KEYS}
    extra = {} if optimizer.rowwise_tables else {"foreach": None, "maximize": False,
                                                "differentiable": False, "fused": None}  # fmt: skip
    tables = sum(n.startswith("embeddings.") for n in names)
    if optimizer.weight_decay == 0:
        groups = [{"lr": lr, **settings, **extra, "params": list(range(len(names)))}]
    else:
        groups = [
            {"lr": lr, **settings, "weight_decay": 0.0, **extra, "params": list(range(tables))},
            {"lr": lr, **settings, **extra, "params": list(range(tables, len(names)))},
        ]
    return {"state": out_state, "param_groups": groups}


def from_reference_optimizer_state(osd: dict, config):
    """The reference's optimizer state_dict -> (OptimizerConfig, steps, {name: state}).

    Adagrad ("sum" everywhere) or RWSAdagrad ("momentum" for the tables); SGD's (no state,
    its "dampening" and "nesterov" settings) gives sgd. Everything is checked before it is
    returned: one ValueError line names the entry, what it needs and what it holds (state
    of the model's shapes, finite and >= 0, one step count >= 0).
    """
    from ..model.state import optimizer_state_shapes
    from ..optim.optimizers import OptimizerConfig
    from .torch_dlrm import reference_names

    names = reference_parameter_order(config)
    groups = osd.get("param_groups") if isinstance(osd, dict) else None
    state = osd.get("state") if isinstance(osd, dict) else None
    if not (isinstance(groups, list) and groups and isinstance(state, dict)) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        raise ValueError(
            "opt_state_dict: expected an optimizer's state_dict, a dict with 'state' (a dict) "
            f"and 'param_groups' (a list of dicts with 'params'), found {_short(osd)}"
        )
    if not state and "nesterov" in groups[0]:
        return OptimizerConfig("sgd"), 0, {}
    if set(state) != set(range(len(names))):
        raise ValueError(
            f"opt_state_dict: states for parameters {sorted(map(str, state))}, the model has "
            f"{len(names)} (0..{len(names) - 1})"
        )
    rowwise = any(isinstance(s, dict) and "momentum" in s for s in state.values())
    settings = _group_settings(groups, names)
    try:
        optimizer = OptimizerConfig("rwsadagrad" if rowwise else "adagrad", **settings)
    except ValueError as exc:
        raise ValueError(f"opt_state_dict: param_groups: {exc}") from None
    shapes = optimizer_state_shapes(config, optimizer)
    ref = reference_names(config)
    out, steps = {}, set()
    for i, name in enumerate(names):
        key = STATE_KEY[name.startswith("embeddings.") and rowwise]
        where = f"opt_state_dict: state {i} ({ref[name]})"
        out[name] = _state_array(state[i], key, shapes[name], where)
        steps.add(_step(state[i]["step"], where))
    if len(steps) != 1:
        raise ValueError(f"opt_state_dict: the parameters took different step counts {steps}")
    return optimizer, steps.pop(), out


def _group_settings(groups: list, names: list[str]) -> dict[str, float]:
    """Adagrad's settings from the param group holding the MLPs (weight decay's group)."""
    mlp = [g for g in groups if any(_is_mlp(names, p) for p in g["params"])]
    group = mlp[0] if mlp else groups[0]
    settings = {}
    for k in _GROUP_KEYS:
        value = group.get(k)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"opt_state_dict: param_groups' {k!r} is {value!r}, expected a number")
        settings[k] = float(value)
    return settings


def _is_mlp(names: list[str], p) -> bool:
    return isinstance(p, int) and 0 <= p < len(names) and not names[p].startswith("embeddings.")


def _state_array(entry, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if not isinstance(entry, dict) or key not in entry or "step" not in entry:
        found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{where}: expected the keys 'step' and {key!r}, found {found}")
    value = entry[key]
    if not (torch.is_tensor(value) and value.dtype in (torch.float32, torch.float64)):
        raise ValueError(f"{where}: {key!r} is {_short(value)}, expected a float32 tensor")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{where}: {key!r} has shape {tuple(value.shape)}, expected {shape}")
    array = value.detach().cpu().numpy().astype(np.float32)
    if not (np.isfinite(array).all() and (array >= 0).all()):
        bad = array[~(np.isfinite(array) & (array >= 0))][0]
        raise ValueError(f"{where}: {key!r} holds {bad}, expected sums of squares (finite, >= 0)")
    return array


def _step(value, where: str) -> int:
    """torch.optim.Adagrad's step (a float tensor) or RWSAdagrad's (an int), as an int >= 0."""
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}: 'step' is {value!r}, expected an integer >= 0")
    return value


def _short(value) -> str:
    if torch is not None and torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
