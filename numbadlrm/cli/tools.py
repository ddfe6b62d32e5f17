"""The smaller commands: predict, plot, convert (to and from the reference's PyTorch format).

numbadlrm predict --load-model m.npz --processed-data-file DIR --split test --output p.txt
numbadlrm predict --load-model m.npz --raw-data-file day.tsv --output p.txt
                (ids mapped as in training: the checkpoint holds max_ind_range or the vocabulary)
numbadlrm plot runs/metrics.jsonl --output curves.png
numbadlrm convert m.npz --to-torch m.pt         (a state_dict the reference DLRM loads)
numbadlrm convert m.pt --from-torch m.npz       (config inferred from the tensor shapes)

A model trained with Adagrad or row-wise Adagrad converts to the reference's checkpoint
layout {"state_dict", "opt_state_dict" (torch.optim.Adagrad's or RWSAdagrad's), "iter",
"epoch"}; a model trained with SGD to the bare state_dict, as before. --from-torch reads
either, and an "opt_state_dict" of Adagrad or RWSAdagrad becomes the checkpoint's
optimizer state (numbadlrm/interop/torch_optim.py maps the two).
"""

from __future__ import annotations

import glob
import json
import tempfile
from pathlib import Path

import numpy as np

from ..config import DLRMConfig, num_pairs
from ..io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..io.files import atomic_file, remove_stale, tmp_path
from ..model.dlrm import DLRM


def predict_to_file(
    ckpt_path: str,
    output: str,
    batch_size: int,
    processed: str = "",
    split: str = "test",
    raw_files: list[str] | None = None,
    max_ind_range: int = 0,
) -> int:
    """Write one probability per input row (in input order); returns the row count.

    Raw rows are preprocessed as the model's training data was, from what the checkpoint
    records (hashing range, or vocabulary); ``max_ind_range`` is needed only for a
    checkpoint that records nothing, and must agree with one that does.
    """
    from ..data.criteo import preprocess
    from ..data.dataset import ProcessedData

    out = Path(output)
    remove_stale(out.parent, (glob.escape(tmp_path(out).name), f".{glob.escape(out.name)}.tmp"))
    ckpt = load_checkpoint(ckpt_path)
    model = DLRM(ckpt.config)
    model.load_state_dict(ckpt.state)
    with tempfile.TemporaryDirectory(prefix="numbadlrm-predict-") as tmp:
        if raw_files:
            options, vocab = raw_preprocessing(ckpt, ckpt_path, max_ind_range)
            preprocess([Path(f) for f in raw_files], tmp, options, False, vocabulary=vocab)
            processed, split = tmp, "train"
        data = ProcessedData(processed)
        if not raw_files:
            check_data_preprocessing(ckpt, ckpt_path, data, max_ind_range)
        rows = 0
        with atomic_file(output, "w") as f:  # removed if anything fails
            for batch in data.split(split).batches(batch_size, shuffle=False):
                probs = model.predict(batch)
                f.write("".join(f"{p:.6f}\n" for p in probs))
                rows += len(probs)
    return rows


def raw_preprocessing(ckpt: Checkpoint, path: str, max_ind_range: int = 0):
    """(PreprocessOptions, vocabulary or None) that map raw ids as in the model's training."""
    from ..data.criteo import PreprocessOptions

    one_split = {"split": "fractions", "split_fractions": (1.0, 0.0, 0.0)}
    prep = ckpt.preprocessing
    if prep is None:
        if max_ind_range <= 0:
            raise ValueError(
                f"predict: {path} does not record how its training data's ids were made "
                "(not trained on a preprocessed dataset, converted, or saved by an older "
                "numbadlrm); give --max-ind-range N as used for training"
            )
        return PreprocessOptions(**one_split, max_ind_range=max_ind_range), None
    if prep["max_ind_range"] > 0:
        if max_ind_range not in (0, prep["max_ind_range"]):
            raise ValueError(
                f"predict: --max-ind-range {max_ind_range} differs from the "
                f"{prep['max_ind_range']} the model in {path} was trained with; leave it out"
            )
        return PreprocessOptions(**one_split, max_ind_range=prep["max_ind_range"]), None
    if max_ind_range > 0:
        raise ValueError(
            f"predict: the model in {path} was trained on a frequency vocabulary (--min-count "
            f"{prep['min_count']}), which the checkpoint holds; leave out --max-ind-range"
        )
    return PreprocessOptions(**one_split, min_count=prep["min_count"]), ckpt.vocabulary


def check_data_preprocessing(ckpt: Checkpoint, path: str, data, max_ind_range: int = 0) -> None:
    """Refuse a processed directory whose ids were made otherwise than the model's."""
    prep, vocab = data.preprocessing()
    if max_ind_range not in (0, prep["max_ind_range"]):
        raise ValueError(
            f"predict: --max-ind-range {max_ind_range} differs from the {prep['max_ind_range']} "
            f"{data.directory} was preprocessed with"
        )
    if ckpt.preprocessing is None:
        return
    digest = None if ckpt.vocabulary is None else ckpt.vocabulary.digest
    if prep["max_ind_range"] != ckpt.preprocessing["max_ind_range"] or (
        digest != (None if vocab is None else vocab.digest)
    ):
        raise ValueError(
            f"predict: {data.directory} was preprocessed differently from the model's "
            f"training data ({_describe(prep)} vs {_describe(ckpt.preprocessing)} "
            f"in {path}); preprocess the raw rows with predict --raw-data-file instead"
        )


def _describe(prep: dict) -> str:
    if prep["max_ind_range"] > 0:
        return f"--max-ind-range {prep['max_ind_range']}"
    return f"a --min-count {prep['min_count']} vocabulary"


def plot_metrics(metrics_file: str, output: str) -> None:
    """Training loss and evaluation AUC against step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot needs matplotlib: pip install 'numbadlrm[plot]'") from None
    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "auc" in r]
    if not train and not evals:
        raise ValueError(f"plot: {metrics_file} holds no loss or auc records")
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
    ax_loss.set(xlabel="step", ylabel="training loss (BCE)", title="loss")
    for split in sorted({r.get("split", "eval") for r in evals}):
        pts = [r for r in evals if r.get("split", "eval") == split]
        ax_auc.plot([r["step"] for r in pts], [r["auc"] for r in pts], "o-", label=split)
    ax_auc.set(xlabel="step", ylabel="AUC", title="evaluation AUC")
    if evals:
        ax_auc.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def config_from_reference_shapes(sd: dict) -> DLRMConfig:
    """Recover a DLRMConfig from a reference-format state_dict's tensor shapes."""

    def sizes(prefix: str) -> tuple[int, ...]:
        layers = sorted(
            int(k.split(".")[1]) for k in sd if k.startswith(prefix) and k.endswith(".weight")
        )
        if not layers:
            raise ValueError(f"convert: no {prefix}*.weight tensors in the state_dict")
        shapes = [tuple(sd[f"{prefix}{i}.weight"].shape) for i in layers]
        return (shapes[0][1], *[s[0] for s in shapes])

    bottom, top = sizes("bot_l."), sizes("top_l.")
    tables = [
        tuple(sd[f"emb_l.{t}.weight"].shape) for t in range(sum(k.startswith("emb_l.") for k in sd))
    ]
    dim, f = bottom[-1], len(tables) + 1
    for op, itself, width in (
        ("dot", False, dim + num_pairs(f, False)),
        ("dot", True, dim + num_pairs(f, True)),
        ("cat", False, f * dim),
    ):
        if top[0] == width:
            return DLRMConfig(tuple(r for r, _ in tables), dim, bottom, top, op, itself)
    raise ValueError(
        f"convert: top MLP input width {top[0]} fits no interaction of "
        f"T={len(tables)} tables with D={dim}"
    )


def convert(src: str, dst: str, to_torch: bool) -> None:
    try:
        import torch
    except ImportError:
        raise ImportError("convert needs PyTorch: pip install 'numbadlrm[torch]'") from None

    from ..interop.torch_dlrm import from_reference_state_dict, to_reference_state_dict
    from ..interop.torch_optim import from_reference_optimizer_state, to_reference_optimizer_state

    if to_torch:
        ckpt = load_checkpoint(src)
        sd = to_reference_state_dict(ckpt.state, ckpt.config)
        if ckpt.optimizer is not None and ckpt.optimizer.stateful:
            lr = float(ckpt.extra.get("learning_rate", 0.01))
            osd = to_reference_optimizer_state(
                ckpt.config, ckpt.optimizer, ckpt.optimizer_steps, ckpt.optimizer_state, lr
            )
            sd = {"state_dict": sd, "opt_state_dict": osd, "iter": ckpt.batch_in_epoch,
                  "epoch": ckpt.epoch}  # fmt: skip
        torch.save(sd, dst)
        return
    loaded = torch.load(src, map_location="cpu", weights_only=True)
    sd = loaded.get("state_dict", loaded)  # the reference saves {"state_dict": ..., ...}
    config = config_from_reference_shapes(sd)
    state = {
        k: np.ascontiguousarray(v, dtype=np.float32)
        for k, v in from_reference_state_dict(sd, config).items()
    }
    ckpt = Checkpoint(config, state, extra={"converted_from": str(src)})
    if "opt_state_dict" in loaded:
        optimizer, steps, optimizer_state = from_reference_optimizer_state(
            loaded["opt_state_dict"], config
        )
        ckpt.optimizer, ckpt.optimizer_steps = optimizer, steps
        ckpt.optimizer_state = optimizer_state
    save_checkpoint(dst, ckpt)
