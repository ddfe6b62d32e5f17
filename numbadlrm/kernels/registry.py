"""One registry of kernel versions for every op: what the layers call, what the tests check
and what the benches time.

An *op* is one computation with a fixed calling convention (outputs first), for example

    embedding_forward(pooled, weights, row_start, offsets, indices)

and a *version* is one implementation of it: a name, a one-line description, a parallel
entry (runs on Numba's thread pool) and, optionally, a serial entry (the same result on
the calling thread, which the layers pick for small work, where waking the pool costs
more than the work). A version may carry extra entries for fused forms (the linear
weight pass fused with SGD). Each op has a default version.

The layers look the version up here *at call time*, on every path, so a version
registered after the model was built is used by it as soon as it is selected:

    from numbadlrm.kernels import registry

    registry.register("embedding_update", "mine", my_parallel, my_serial, "what it does")
    model = DLRM(cfg, kernels={"embedding_update": "mine"})

Kernel modules register their versions when imported (at the bottom of each module);
:func:`load_all` imports every built-in kernel module and every module in
``numbadlrm/kernels/lab/``, the place for your own kernels (see its docstring), then any
module named by ``--kernel-module PATH`` or $NUMBADLRM_KERNEL_MODULES (kernels/loader.py:
any folder, any install). A module that fails to import stops the load with one line
naming its file (a lab module's: and how to skip it, a leading ``_``). This module
imports no kernel module at import time, so it never takes part in an import cycle.

A version chosen by name (:class:`KernelChoice`, ``--kernels op=version``) is checked
then: its entries must take the op's arguments. The first call of each of its entries
re-raises any error as a :class:`KernelError` naming the op and the version.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .loader import KernelError, environment_paths, first_line, import_lab, import_paths

# op name -> (calling convention, what it computes); the order is the listing's order
OPS: dict[str, tuple[str, str]] = {
    "linear_forward": ("(y, x, W, b, relu)", "y = x W^T + b, then ReLU if relu"),
    "linear_backward_data": (
        "(dx, dy, y, W, x, relu, mask_dx)",
        "dy <- dy [y > 0] if relu; dx = dy W (dx None: first layer, none); "
        "dx <- dx [x > 0] if mask_dx",
    ),
    "linear_backward_weight": (
        "(dW, db, dz, x)",
        "dW = dz^T x, db = sum_b dz; extra 'sgd' (W, b, dz, x, lr): W -= lr dW, b -= lr db",
    ),
    "embedding_forward": (
        "(pooled, weights, row_start, offsets, indices)",
        "pooled[t, b] = sum of the rows of bag (t, b)",
    ),
    "embedding_update": (
        "(weights, row_start, offsets, indices, dpooled, lr)",
        "fused SGD: weights[row] -= lr dpooled[t, b] for every lookup of bag (t, b)",
    ),
    "embedding_gradient": (
        "(dweights, row_start, offsets, indices, dpooled)",
        "dense table gradient: dweights[row] += dpooled[t, b] for every lookup (small tables)",
    ),
    "qr_combine_forward": ("(out, q, r, operation)", "out = q * r, q + r or [q, r] (0, 1, 2)"),
    "qr_combine_backward": ("(dq, dr, dout, q, r, operation)", "dq, dr from dout"),
    "weighted_embedding_forward": (
        "(pooled, weights, row_weights, row_start, offsets, indices)",
        "pooled[t, b] = sum over bag (t, b) of w[row] weights[row]",
    ),
    "weighted_embedding_backward": (
        "(grads, rows, dots, weights, row_weights, row_start, offsets, indices, dpooled)",
        "per lookup k: rows[k], grads[k] = w[row] dpooled[t, b], dots[k] = <dpooled, E[row]>",
    ),
    "dot_interaction_forward": (
        "(out, x, emb, li, lj)",
        "out[b] = [x[b], <f_li[p], f_lj[p]> for each pair p]",
    ),
    "dot_interaction_backward": (
        "(dx, demb, dout, x, emb, li, lj)",
        "dx, demb from dout through the pair dot products",
    ),
    "cat_interaction_forward": ("(out, x, emb)", "out[b] = [x[b], emb[0, b], ..., emb[T-1, b]]"),
    "cat_interaction_backward": ("(dx, demb, dout)", "split dout back into dx and demb"),
    "sigmoid_bce": (
        "(p, ds, s, labels) -> loss",
        "p = sigmoid(s), ds = (p - y) / B, returns mean BCE",
    ),
    "sigmoid_mse": (
        "(p, ds, s, labels) -> loss",
        "p = sigmoid(s), ds = 2 (p - y) p (1 - p) / B, returns mean (p - y)^2",
    ),
    "sigmoid_wbce": (
        "(p, ds, s, labels, w0, w1) -> loss",
        "p = sigmoid(s), w = w1 if y else w0, ds = w (p - y) / B, returns mean w BCE",
    ),
    "dense_update": ("(params, grads, lr)", "SGD over the flat dense buffer: params -= lr grads"),
    "dense_update_adagrad": (
        "(params, state, grads, lr, eps, weight_decay)",
        "g' = g + weight_decay p; state += g'^2; params -= lr g' / (sqrt(state) + eps)",
    ),
    "embedding_update_adagrad": (
        "(weights, state, lists, row_start, offsets, indices, dpooled, lr, eps)",
        "per looked-up row r, G = sum of its bags' dpooled: S[r] += G^2; "
        "E[r] -= lr G / (sqrt(S[r]) + eps); lists (owners, 2, L): scratch",
    ),
    "embedding_update_rowwise_adagrad": (
        "(weights, state, lists, row_start, offsets, indices, dpooled, lr, eps)",
        "per looked-up row r: s[r] += mean_d G^2; E[r] -= lr G / (sqrt(s[r]) + eps); state (R,)",
    ),
    "dense_update_rowwise_adagrad": (
        "(weights, state, grads, lr, eps)",
        "row-wise Adagrad from a dense table gradient grads (R, D), state (R,)",
    ),
    # --precision bf16 (issue 12): bf16 arrays are uint16 bits; y / y16 pairs are fp32 and
    # bf16 outputs, either one an empty (0, 0) array when not wanted (gemm_bf16.NONE_*);
    # W is a numbadlrm.layers.bf16.PackedWeight (its bf16 w16 and packings, made per update)
    "bf16_linear_forward": (
        "(y, y16, x16, W, b, relu)",
        "y / y16 = x16 W^T + b (fp32 b), then ReLU if relu; fp32 accumulation",
    ),
    "bf16_linear_backward_data": (
        "(dx, dx16, dz16, W, x16, mask_dx)",
        "dx / dx16 = dz16 W, then times [x16 > 0] if mask_dx; fp32 accumulation",
    ),
    "bf16_linear_backward_weight": (
        "(dW, db, dz16, x16)",
        "dW = dz16^T x16, db = sum_b dz16 (fp32); extra 'split_sgd' (W, w_lo, b_hi, b_lo, "
        "dz16, x16, lr): exact fp32 SGD of the split master weights (W.w16 = w_hi), "
        "W's packings refreshed",
    ),
    "bf16_embedding_forward": (
        "(pooled16, tables, row_start, offsets, indices)",
        "pooled16[t, b] = bf16 of the fp32 sum of bag (t, b)'s bf16 rows; tables (R, 2, D)",
    ),
    "bf16_embedding_update": (
        "(tables, row_start, offsets, indices, dpooled16, lr)",
        "fused split-SGD: each looked-up row's fp32 value -= lr dpooled16[t, b], exactly",
    ),
    "bf16_table_update": (
        "(tables, grads, lr)",
        "split-SGD of whole split tables by a dense fp32 gradient (replicated tables)",
    ),
    "bf16_dot_interaction_forward": (
        "(out16, x16, emb16, li, lj)",
        "out16[b] = [x16[b], bf16(<f_li[p], f_lj[p]>) for each pair p]; fp32 dots",
    ),
    "bf16_dot_interaction_backward": (
        "(dx16, demb16, dout16, x16, emb16, li, lj, mask_dx)",
        "dx16, demb16 from dout16 in fp32, rounded once; dx16 times [x16 > 0] if mask_dx",
    ),
    "bf16_cat_interaction_forward": ("(out16, x16, emb16)", "out16[b] = [x16[b], emb16[:, b]]"),
    "bf16_cat_interaction_backward": (
        "(dx16, demb16, dout16, x16, mask_dx)",
        "split dout16 into dx16 (times [x16 > 0] if mask_dx) and demb16",
    ),
    "bf16_dense_update": (
        "(hi, lo, grads, lr)",
        "split-SGD over the flat dense buffer's halves: merge(hi, lo) -= lr grads, exactly",
    ),
}

# built-in kernel modules, imported by load_all (each registers its versions)
BUILTIN_MODULES = (
    "numbadlrm.kernels.gemm.fp32",
    "numbadlrm.kernels.gemm.blas",
    "numbadlrm.kernels.gemm.auto",
    "numbadlrm.kernels.embedding.bags",
    "numbadlrm.kernels.embedding.tricks",
    "numbadlrm.kernels.interaction.fp32",
    "numbadlrm.kernels.elementwise",
    "numbadlrm.kernels.embedding.optimizers",
    "numbadlrm.kernels.bf16",
    "numbadlrm.kernels.gemm.bf16",
    "numbadlrm.kernels.embedding.bags_bf16",
    "numbadlrm.kernels.interaction.bf16",
    "numbadlrm.kernels.naive",
)
LAB_PACKAGE = "numbadlrm.kernels.lab"


@dataclass(frozen=True)
class Version:
    """One implementation of an op."""

    op: str
    name: str
    parallel: Callable
    serial: Callable | None = None  # same result on the calling thread; None: parallel
    description: str = ""
    extras: Mapping[str, Callable] = field(default_factory=dict)  # fused forms, by name

    def entry(self, small: bool) -> Callable:
        """The serial entry for small work when the version has one, else the parallel."""
        return self.serial if small and self.serial is not None else self.parallel


@dataclass
class _Op:
    versions: dict[str, Version] = field(default_factory=dict)
    default: str = ""


_REGISTRY: dict[str, _Op] = {op: _Op() for op in OPS}
_loaded = False


def register(
    op: str,
    name: str,
    parallel: Callable,
    serial: Callable | None = None,
    description: str = "",
    *,
    default: bool = False,
    extras: Mapping[str, Callable] | None = None,
) -> Version:
    """Add (or replace) version ``name`` of ``op``; ``default=True`` makes it the op's
    default (each op's default is chosen by its built-in module, never implicitly)."""
    if op not in _REGISTRY:
        raise ValueError(f"kernels: unknown op {op!r}; the ops are {', '.join(OPS)}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"kernels: a version name is letters, digits, '_' or '-', got {name!r}")
    if not callable(parallel) or (serial is not None and not callable(serial)):
        raise ValueError(f"kernels: {op}/{name}: entries must be callable")
    version = Version(op, name, parallel, serial, description, dict(extras or {}))
    entry = _REGISTRY[op]
    entry.versions[name] = version
    if default:
        entry.default = name
    return version


def unregister(op: str, name: str) -> None:
    """Remove a version (not the default); for tests and experiments."""
    entry = _op(op)
    if name == entry.default:
        raise ValueError(f"kernels: {op}/{name} is the default and cannot be removed")
    entry.versions.pop(name, None)


def load_all(modules: Sequence[str | os.PathLike] | None = None) -> None:
    """Import every built-in kernel module, every module of numbadlrm.kernels.lab, then
    the kernel modules of ``modules`` (files or folders anywhere; None: those named by
    $NUMBADLRM_KERNEL_MODULES, read on the first load only). See kernels/loader.py."""
    global _loaded
    if not _loaded:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        import_lab(LAB_PACKAGE)
        _loaded = True
        if modules is None:
            modules = environment_paths()
    import_paths(modules or ())


def _op(op: str) -> _Op:
    if op not in _REGISTRY:
        raise ValueError(f"kernels: unknown op {op!r}; the ops are {', '.join(OPS)}")
    return _REGISTRY[op]


def _teaching_order(name: str) -> tuple:
    """naive first, then v1, v2, ... by number, then every other name alphabetically."""
    if name == "naive":
        return (0, 0, "")
    if name[:1] == "v" and name[1:].isdigit():
        return (1, int(name[1:]), "")
    return (2, 0, name)


def versions(op: str) -> dict[str, Version]:
    """{name: Version} of an op: naive, v1, v2, ..., then the others by name."""
    load_all()
    found = _op(op).versions
    return {name: found[name] for name in sorted(found, key=_teaching_order)}


def default(op: str) -> str:
    load_all()
    return _op(op).default


def get(op: str, name: str | None = None) -> Version:
    """Version ``name`` of ``op`` (its default when name is None)."""
    load_all()
    entry = _op(op)
    version = entry.versions.get(name or entry.default)
    if version is None:
        raise ValueError(
            f"kernels: {op} has no version {name!r}; its versions are {', '.join(versions(op))}"
        )
    return version


class KernelChoice:
    """Which version of each op a model runs: the defaults unless named otherwise.

    ``KernelChoice({"embedding_update": "v1"})``, or parsed from the command line's
    ``"embedding_update=v1,linear_forward=blas"``. Names are checked on construction; the
    version itself is looked up on every call (:meth:`get`).
    """

    def __init__(self, choice: Mapping[str, str] | str | None = None):
        if isinstance(choice, KernelChoice):
            choice = choice.choice
        if isinstance(choice, str):
            choice = parse_choice(choice)
        self.choice: dict[str, str] = dict(choice or {})
        for op, name in self.choice.items():
            check_signature(get(op, name))  # ValueError naming the op or version
        self._wrapped: dict[str, tuple[Version, Version]] = {}

    def get(self, op: str) -> Version:
        """The version of ``op`` to run; a chosen one (not the op's default) with entries
        whose first call names the op and version in any error."""
        version = get(op, self.choice.get(op))
        if op not in self.choice or version.name == default(op):
            return version
        cached = self._wrapped.get(op)
        if cached is None or cached[0] is not version:  # (re-)registered since
            cached = self._wrapped[op] = (version, _first_calls_named(version))
        return cached[1]

    def with_defaults(self, defaults: Mapping[str, str]) -> KernelChoice:
        """This choice, with ``defaults`` for the ops it does not name."""
        return KernelChoice({**defaults, **self.choice})

    def describe(self) -> str:
        """ "op=version, ..." of the ops not on their default version, or "defaults"."""
        changed = [f"{op}={name}" for op, name in self.choice.items() if name != default(op)]
        return ", ".join(changed) or "defaults"

    def __repr__(self) -> str:
        return f"KernelChoice({self.choice!r})"


DEFAULT = KernelChoice()  # every op's default version


def signature_arity(op: str) -> int:
    """The number of arguments of an op's calling convention, from OPS."""
    inside = OPS[op][0].split("->")[0].strip()[1:-1]
    return len([a for a in inside.split(",") if a.strip()])


def check_signature(version: Version) -> None:
    """KernelError unless the version's entries take its op's arguments (Numba
    dispatchers are judged by their Python function; uninspectable callables pass)."""
    n = signature_arity(version.op)
    for which, entry in (("parallel", version.parallel), ("serial", version.serial)):
        if entry is None:
            continue
        try:
            signature = inspect.signature(getattr(entry, "py_func", entry))
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(*range(n))
        except TypeError:
            raise KernelError(
                f"kernels: {version.op}={version.name}: its {which} entry takes {signature}, "
                f"the op passes {n} arguments {OPS[version.op][0]}"
            ) from None


class _FirstCall:
    """An entry whose first call re-raises any error as a KernelError naming the op and
    version (a wrong signature or Numba typing error shows there); later calls pass."""

    def __init__(self, entry: Callable, version: Version, which: str):
        self.entry, self.version, self.which, self.called = entry, version, which, False

    def __call__(self, *args):
        if self.called:
            return self.entry(*args)
        try:
            out = self.entry(*args)
        except Exception as exc:
            v = self.version
            raise KernelError(
                f"kernels: {v.op}={v.name} ({self.which} entry) failed on its first call: "
                f"{type(exc).__name__}: {first_line(exc)} (the op's arguments: {OPS[v.op][0]})"
            ) from exc
        self.called = True
        return out


def _first_calls_named(version: Version) -> Version:
    wrap = {"parallel": _FirstCall(version.parallel, version, "parallel")}
    if version.serial is not None:
        wrap["serial"] = _FirstCall(version.serial, version, "serial")
    extras = {k: _FirstCall(f, version, k) for k, f in version.extras.items()}
    return dataclasses.replace(version, **wrap, extras=extras)


def parse_choice(text: str) -> dict[str, str]:
    """``"op=version,op=version"`` -> {op: version} (an empty string: no choice)."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        op, sep, name = item.partition("=")
        if not sep or not op.strip() or not name.strip():
            raise ValueError(f"kernels: expected op=version, got {item!r}")
        out[op.strip()] = name.strip()
    return out


def listing() -> str:
    """Every op, its calling convention, versions (default marked) and descriptions."""
    load_all()
    lines = []
    for op, (signature, what) in OPS.items():
        entry = _REGISTRY[op]
        lines.append(f"{op}{signature}: {what}")
        width = max(10, *(len(name) for name in entry.versions))
        for name, v in versions(op).items():
            mark = "*" if name == entry.default else " "
            serial = " [serial entry]" if v.serial is not None else ""
            extras = "".join(f" [+{e}]" for e in v.extras)
            lines.append(f"  {mark} {name:{width}} {v.description}{serial}{extras}")
    lines.append("(* default)")
    return "\n".join(lines)
