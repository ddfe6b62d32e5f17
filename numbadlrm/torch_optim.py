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
