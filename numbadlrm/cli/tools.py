"""The smaller commands: predict and plot (convert: numbadlrm/cli/convert.py).

numbadlrm predict --load-model m.npz --processed-data-file DIR --split test --output p.txt
numbadlrm predict --load-model m.npz --raw-data-file day.tsv --output p.txt
                (ids mapped as in training: the checkpoint holds max_ind_range or the vocabulary)
numbadlrm plot runs/metrics.jsonl --output curves.png

predict refuses, before it reads a row, an --output that cannot be written or that is
one of its inputs, and data whose tables do not fit the model (as train --load-model
refuses them).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..io.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ..io.files import atomic_output, check_output_path
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

    check_predict_output(output, ckpt_path, processed, raw_files or [])
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
        check_data_fits(ckpt, ckpt_path, data)
        rows = 0
        with atomic_output(output, "w") as f:  # removed if anything fails
            for batch in data.split(split).batches(batch_size, shuffle=False):
                probs = model.predict(batch)
                f.write("".join(f"{p:.6f}\n" for p in probs))
                rows += len(probs)
    return rows


def check_predict_output(output: str, ckpt_path: str, processed: str, raw_files: list) -> None:
    """Refuse an --output that cannot be written or that is one of predict's inputs (the
    checkpoint, a raw file, a file of the processed directory)."""
    check_output_path(output, "--output")
    inputs = [("--load-model", ckpt_path)] + [("--raw-data-file", f) for f in raw_files]
    if processed and Path(processed).is_dir():
        inputs += [("--processed-data-file", p) for p in Path(processed).rglob("*") if p.is_file()]
    for flag, path in inputs:
        same = os.path.realpath(path) == os.path.realpath(output) or (
            os.path.exists(path) and os.path.exists(output) and os.path.samefile(path, output)
        )
        if same:
            raise ValueError(f"predict: --output {output}: is the {flag} input {path}")


def check_data_fits(ckpt: Checkpoint, path: str, data) -> None:
    """Refuse data whose features or tables differ from the model's, as train --load-model
    does (a table of fewer rows would train nothing and predict from the wrong rows)."""
    model = {"num_dense": ckpt.config.num_dense, "embedding_sizes": ckpt.config.embedding_sizes}
    found = {"num_dense": data.num_dense, "embedding_sizes": tuple(data.table_sizes)}
    diffs = [f"{k}: checkpoint {model[k]!r} vs data {found[k]!r}" for k in model
             if model[k] != found[k]]  # fmt: skip
    if diffs:
        raise CheckpointError(
            f"checkpoint: {path} was saved for another model than {data.directory}'s data "
            f"fits ({'; '.join(diffs)})"
        )


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
