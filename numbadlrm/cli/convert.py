"""``numbadlrm convert``: a checkpoint to the reference DLRM's PyTorch format and back.

    numbadlrm convert m.npz --to-torch m.pt     (a state_dict the reference DLRM loads)
    numbadlrm convert m.pt --from-torch m.npz   (config inferred from the tensor shapes)

The .pt (``torch.save`` of a dict):

    a model trained with SGD, at step 0: the bare state_dict (as the reference's
        dlrm.state_dict(): bot_l.{2i}.weight/.bias, top_l.{2i}.weight/.bias, emb_l.{t}.weight)
    otherwise the reference's checkpoint layout {"state_dict", "iter", "epoch",
        "numbadlrm_step"}, plus "opt_state_dict" (torch.optim.Adagrad's or RWSAdagrad's)
        with Adagrad or row-wise Adagrad (numbadlrm/interop/torch_optim.py maps them).
        "iter" is the batches done in "epoch" (the reference's j + 1, our batch_in_epoch),
        "numbadlrm_step" the global step count that drives the LR policy.

--from-torch reads either layout. The training position comes back from "epoch" and
"iter"; the global step from "numbadlrm_step", else epoch * "nbatches" + iter (what the
reference saves), else the optimizer's step count, else iter in epoch 0. So a round trip
resumes exactly where the checkpoint stopped.

Nothing is written from a malformed input: every key, tensor type, dtype and shape is
checked first, with one line naming the key, what was expected and what was found; the
optimizer state must have the model's shapes, be finite and >= 0, with one step count
>= 0. Both directions write atomically (io.files.atomic_output).
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..config import DLRMConfig, num_pairs
from ..io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..io.files import atomic_output, check_output_path

# the reference's parameter names: Linear layers at even indices of each nn.Sequential
_PARAMETER = re.compile(r"(bot_l|top_l)\.(\d+)\.(weight|bias)|emb_l\.(\d+)\.weight")
_TRICK = re.compile(r"emb_l\.\d+\.(weight_q|weight_r|embs\.weight|proj\.weight)|v_W_l\.\d+")
_EXPECTED_KEYS = "bot_l.{2i}.weight/.bias, top_l.{2i}.weight/.bias and emb_l.{t}.weight"


def convert(src: str, dst: str, to_torch: bool) -> None:
    """Convert ``src`` into ``dst`` (see the module docstring); ValueError on bad input."""
    try:
        import torch
    except ImportError:
        raise ImportError("convert needs PyTorch: pip install 'numbadlrm[torch]'") from None
    flag = "--to-torch" if to_torch else "--from-torch"
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ValueError(f"convert: {flag} {dst}: is the input file; choose another path")
    check_output_path(dst, flag)
    if to_torch:
        _to_torch(src, dst, torch)
    else:
        save_checkpoint(dst, _from_torch(src, torch))


def _to_torch(src: str, dst: str, torch) -> None:
    from ..interop.torch_dlrm import to_reference_state_dict
    from ..interop.torch_optim import to_reference_optimizer_state

    ckpt = load_checkpoint(src)
    out = to_reference_state_dict(ckpt.state, ckpt.config)
    stateful = ckpt.optimizer is not None and ckpt.optimizer.stateful
    if stateful or (ckpt.step, ckpt.epoch, ckpt.batch_in_epoch) != (0, 0, 0):
        out = {"state_dict": out, "iter": ckpt.batch_in_epoch, "epoch": ckpt.epoch,
               "numbadlrm_step": ckpt.step}  # fmt: skip
    if stateful:
        lr = float(ckpt.extra.get("learning_rate", 0.01))
        out["opt_state_dict"] = to_reference_optimizer_state(
            ckpt.config, ckpt.optimizer, ckpt.optimizer_steps, ckpt.optimizer_state, lr
        )
    with atomic_output(dst) as f:
        torch.save(out, f)


def _from_torch(src: str, torch) -> Checkpoint:
    """The checkpoint ``src`` converts to, every part of it checked."""
    from ..interop.torch_dlrm import from_reference_state_dict
    from ..interop.torch_optim import from_reference_optimizer_state

    where = f"convert: {src}"
    loaded = _load(src, torch)
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{where}: holds {_kind(loaded, torch)}, expected a dict (a state_dict, or the "
            "reference's {'state_dict': ..., 'opt_state_dict': ..., 'iter': ..., 'epoch': ...})"
        )
    wrapped = "state_dict" in loaded
    sd = loaded["state_dict"] if wrapped else loaded
    if not isinstance(sd, dict):
        raise ValueError(f"{where}: 'state_dict' is {_kind(sd, torch)}, expected a dict")
    config = config_from_reference_shapes(sd, where, torch)
    state = {
        k: np.ascontiguousarray(v, dtype=np.float32)
        for k, v in from_reference_state_dict(sd, config).items()
    }
    ckpt = Checkpoint(config, state, extra={"converted_from": str(src)})
    if wrapped and "opt_state_dict" in loaded:
        try:
            optimizer, steps, optimizer_state = from_reference_optimizer_state(
                loaded["opt_state_dict"], config
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        ckpt.optimizer, ckpt.optimizer_steps = optimizer, steps
        ckpt.optimizer_state = optimizer_state
    ckpt.step, ckpt.epoch, ckpt.batch_in_epoch = _position(
        loaded if wrapped else {}, ckpt, where, torch
    )
    return ckpt


def _load(src: str, torch):
    if not os.path.isfile(src):
        raise ValueError(f"convert: {src}: no such file")
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise ValueError(
            f"convert: {src}: not a readable torch file (truncated or corrupt?): "
            f"{type(exc).__name__}: {first}"
        ) from None


def _kind(value, torch) -> str:
    """How a found value is described in messages: 'a torch.bfloat16 tensor', 'a list'."""
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def config_from_reference_shapes(sd: dict, where: str, torch) -> DLRMConfig:
    """The DLRMConfig a reference-format state_dict's tensors describe; ValueError names
    the first key that does not fit (unknown, not a float tensor, wrong shape, a gap)."""
    layers: dict[str, dict[int, dict]] = {"bot_l": {}, "top_l": {}}
    tables: dict[int, tuple] = {}
    for key, value in sd.items():
        match = _PARAMETER.fullmatch(key) if isinstance(key, str) else None
        if match is None and isinstance(key, str) and _TRICK.fullmatch(key):
            raise ValueError(
                f"{where}: {key!r} is a QR, MD or weighted-pooling parameter: the reference's "
                "file does not record their flags, so --from-torch cannot rebuild the model "
                "(--to-torch writes them)"
            )
        if match is None:
            raise ValueError(
                f"{where}: unexpected key {key!r} in the state_dict (expected {_EXPECTED_KEYS})"
            )
        if not (torch.is_tensor(value) and value.dtype in (torch.float32, torch.float64)):
            found = _kind(value, torch)
            raise ValueError(f"{where}: {key!r} is {found}, expected a float32 tensor")
        if match.group(4) is not None:
            tables[int(match.group(4))] = tuple(value.shape)
        else:
            layers[match.group(1)].setdefault(int(match.group(2)), {})[match.group(3)] = tuple(
                value.shape
            )
    bottom = _mlp_sizes("bot_l", layers["bot_l"], where)
    top = _mlp_sizes("top_l", layers["top_l"], where)
    for t in range(max(tables, default=-1) + 1):
        if t not in tables:
            raise ValueError(
                f"{where}: no 'emb_l.{t}.weight' (tables are numbered 0..T-1; found "
                f"{sorted(tables)})"
            )
        if len(tables[t]) != 2 or tables[t][1] != bottom[-1]:
            raise ValueError(
                f"{where}: 'emb_l.{t}.weight' has shape {tables[t]}, expected (rows, "
                f"{bottom[-1]}) (D = the bottom MLP's last width)"
            )
    rows = tuple(tables[t][0] for t in range(len(tables)))
    return _infer_interaction(rows, bottom, top, where)


def _mlp_sizes(prefix: str, found: dict[int, dict], where: str) -> tuple[int, ...]:
    """An MLP's widths (its input first) from its Linear layers' shapes, checked."""
    if not found:
        raise ValueError(f"{where}: no '{prefix}.0.weight' in the state_dict")
    expected = list(range(0, 2 * len(found), 2))
    if sorted(found) != expected:
        raise ValueError(
            f"{where}: {prefix} has Linear layers at {sorted(found)}, expected {expected} "
            "(the reference's nn.Sequential puts each Linear at an even index)"
        )
    sizes: list[int] = []
    for i in expected:
        weight, bias = found[i].get("weight"), found[i].get("bias")
        name = f"{prefix}.{i}"
        if weight is None or len(weight) != 2:
            got = "missing" if weight is None else f"of shape {weight}"
            raise ValueError(f"{where}: '{name}.weight' is {got}, expected 2-D (out, in)")
        if sizes and weight[1] != sizes[-1]:
            raise ValueError(
                f"{where}: '{name}.weight' has shape {weight}, expected ({weight[0]}, "
                f"{sizes[-1]}) (the previous layer's output)"
            )
        if bias != (weight[0],):
            got = "missing" if bias is None else f"of shape {bias}"
            raise ValueError(f"{where}: '{name}.bias' is {got}, expected ({weight[0]},)")
        sizes = sizes or [weight[1]]
        sizes.append(weight[0])
    return tuple(sizes)


def _infer_interaction(rows, bottom, top, where: str) -> DLRMConfig:
    dim, f = bottom[-1], len(rows) + 1
    for op, itself, width in (
        ("dot", False, dim + num_pairs(f, False)),
        ("dot", True, dim + num_pairs(f, True)),
        ("cat", False, f * dim),
    ):
        if top[0] == width:
            try:
                return DLRMConfig(rows, dim, bottom, top, op, itself)
            except ValueError as exc:
                raise ValueError(f"{where}: the tensors describe no valid DLRM: {exc}") from None
    raise ValueError(
        f"{where}: 'top_l.0.weight' takes {top[0]} inputs, which fits no interaction of "
        f"T={len(rows)} tables with D={dim}"
    )


def _position(loaded: dict, ckpt: Checkpoint, where: str, torch) -> tuple[int, int, int]:
    """(step, epoch, batch_in_epoch) of a reference-layout file (see the module docstring)."""
    counts = {}
    for key in ("iter", "epoch", "numbadlrm_step", "nbatches"):
        if key in loaded:
            counts[key] = _count(loaded[key], key, where, torch)
    epoch, done = counts.get("epoch", 0), counts.get("iter", 0)
    if "numbadlrm_step" in counts:
        step = counts["numbadlrm_step"]
    elif "nbatches" in counts:
        step = epoch * counts["nbatches"] + done
    elif ckpt.optimizer is not None and ckpt.optimizer.stateful:
        step = ckpt.optimizer_steps
    elif epoch == 0:
        step = done
    else:
        raise ValueError(
            f"{where}: 'epoch' {epoch} and 'iter' {done} but no 'nbatches' or "
            "'numbadlrm_step' to count the steps done (the LR policy's position)"
        )
    if step < done:
        raise ValueError(f"{where}: the step count {step} is below 'iter' {done}")
    return step, epoch, done


def _count(value, key: str, where: str, torch) -> int:
    """An integer >= 0 from a Python int or a one-element integral tensor."""
    if torch.is_tensor(value) and value.numel() == 1:
        number = value.item()
        value = int(number) if float(number).is_integer() else number
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}: {key!r} is {value!r}, expected an integer >= 0")
    return value
