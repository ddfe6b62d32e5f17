"""The training loop: data, steps, progress, periodic evaluation, metrics file.

``TrainConfig`` is the single source of truth for a run; the command line
(numbadlrm/cli.py) is generated from its fields, whose names follow the reference
DLRM's flags (``arch_mlp_bot`` is ``--arch-mlp-bot``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from .batch import Batch
from .config import DLRMConfig
from .data.prefetch import Prefetcher
from .data.synthetic import Teacher, batch_stream
from .kernels._jit import set_num_threads
from .metrics import evaluate_predictions
from .model import DLRM

DATA_GENERATIONS = ("synthetic", "random")


def _opt(help_text: str, **extra) -> dict:
    return {"help": help_text, **extra}


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``numbadlrm train``; the defaults train a small model in about a minute."""

    arch_sparse_feature_size: int = field(default=16, metadata=_opt("D, the embedding dim"))
    arch_embedding_size: str = field(
        default="-".join(["1000"] * 8), metadata=_opt("rows per table, e.g. 1000-1000-1000")
    )
    arch_mlp_bot: str = field(default="13-512-256-64-16", metadata=_opt("bottom MLP widths"))
    arch_mlp_top: str = field(
        default="512-256-1", metadata=_opt("top MLP widths after its computed input")
    )
    arch_interaction_op: str = field(
        default="dot", metadata=_opt("feature interaction", choices=("dot", "cat"))
    )
    arch_interaction_itself: bool = field(
        default=False, metadata=_opt("dot interaction keeps each feature's self product")
    )
    data_generation: str = field(
        default="synthetic",
        metadata=_opt("built-in data: synthetic (learnable) or random", choices=DATA_GENERATIONS),
    )
    num_indices_per_lookup: int = field(default=1, metadata=_opt("lookups per bag"))
    num_indices_per_lookup_fixed: bool = field(
        default=False, metadata=_opt("every bag has exactly --num-indices-per-lookup lookups")
    )
    mini_batch_size: int = field(default=128, metadata=_opt("B, samples per step"))
    num_batches: int = field(default=8000, metadata=_opt("training steps per epoch"))
    nepochs: int = field(default=1, metadata=_opt("passes over the training data"))
    learning_rate: float = field(default=0.1, metadata=_opt("SGD learning rate"))
    print_freq: int = field(default=500, metadata=_opt("log the loss every N steps"))
    test_freq: int = field(default=0, metadata=_opt("evaluate every N steps (0: at the end)"))
    test_mini_batch_size: int = field(default=4096, metadata=_opt("evaluation batch size"))
    test_num_batches: int = field(default=16, metadata=_opt("held-out batches per evaluation"))
    seed: int = field(default=0, metadata=_opt("seed of the model and the data streams"))
    threads: int = field(default=0, metadata=_opt("Numba threads (0: all cores)"))
    gemm: str = field(
        default="auto", metadata=_opt("linear-layer backend", choices=("auto", "numba", "blas"))
    )
    metrics_file: str = field(default="", metadata=_opt("write JSON lines of metrics here"))
    progress: bool = field(default=True, metadata=_opt("show a progress bar"))

    def __post_init__(self) -> None:
        positive = ("arch_sparse_feature_size", "num_indices_per_lookup", "mini_batch_size",
                    "num_batches", "nepochs", "print_freq", "test_mini_batch_size",
                    "test_num_batches")
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be positive, got {self.learning_rate}")
        for name in ("test_freq", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.data_generation not in DATA_GENERATIONS:
            raise ValueError(
                f"data_generation: must be one of {DATA_GENERATIONS}, got {self.data_generation!r}"
            )
        self.model_config()  # validates the architecture strings

    def model_config(self) -> DLRMConfig:
        return DLRMConfig.from_arch(
            sparse_feature_size=self.arch_sparse_feature_size,
            embedding_size=self.arch_embedding_size,
            mlp_bot=self.arch_mlp_bot,
            mlp_top=self.arch_mlp_top,
            interaction_op=self.arch_interaction_op,
            interaction_itself=self.arch_interaction_itself,
        )


class MetricsLog:
    """JSON lines: one object per logged step and per evaluation; a no-op without a path."""

    def __init__(self, path: str):
        self._file: TextIO | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w")  # noqa: SIM115 (closed in close())

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def evaluate(model: DLRM, batches: Iterable[Batch]) -> dict[str, float]:
    """AUC, log loss and accuracy of the model's predictions over all batches."""
    probs, labels = [], []
    for batch in batches:
        probs.append(model.predict(batch))
        labels.append(batch.labels)
    metrics = evaluate_predictions(np.concatenate(labels), np.concatenate(probs))
    metrics["samples"] = int(sum(len(x) for x in labels))
    return metrics


def synthetic_streams(cfg: TrainConfig, mcfg: DLRMConfig):
    """(train batches for one epoch, held-out batches) factories for the built-in data."""
    teacher = Teacher(mcfg) if cfg.data_generation == "synthetic" else None
    lookups, fixed = cfg.num_indices_per_lookup, cfg.num_indices_per_lookup_fixed

    def train_batches(epoch: int) -> Iterator[Batch]:
        return batch_stream(mcfg, cfg.data_generation, cfg.num_batches, cfg.mini_batch_size,
                            seed=cfg.seed * 1000 + epoch, lookups=lookups, fixed=fixed,
                            teacher=teacher)

    def test_batches() -> Iterator[Batch]:
        return batch_stream(mcfg, cfg.data_generation, cfg.test_num_batches,
                            cfg.test_mini_batch_size, seed=cfg.seed * 1000 + 999_999,
                            lookups=lookups, fixed=fixed, teacher=teacher)

    return train_batches, test_batches


def run_training(cfg: TrainConfig, log=print) -> dict:
    """Train as configured; returns the final evaluation metrics (and the model)."""
    if cfg.threads:
        set_num_threads(cfg.threads)
    mcfg = cfg.model_config()
    model = DLRM(mcfg, seed=cfg.seed, gemm=cfg.gemm)
    train_batches, test_batches = synthetic_streams(cfg, mcfg)
    metrics = MetricsLog(cfg.metrics_file)
    log(f"numbadlrm: {describe(mcfg)}; data {cfg.data_generation}, batch {cfg.mini_batch_size}")
    step = 0
    try:
        for epoch in range(cfg.nepochs):
            with Prefetcher(train_batches(epoch)) as batches:
                step = _train_epoch(model, cfg, batches, epoch, step, metrics, test_batches, log)
        final = evaluate(model, test_batches())
        metrics.write({"step": step, "split": "test", **final})
        log(_format_eval("test", step, final))
    finally:
        metrics.close()
    return {**final, "model": model, "steps": step}


def _train_epoch(model, cfg, batches, epoch, step, metrics, test_batches, log) -> int:
    bar = tqdm(total=cfg.num_batches, desc=f"epoch {epoch}", disable=not cfg.progress,
               unit="batch", dynamic_ncols=True)
    window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
    for batch in batches:
        loss = model.train_step(batch, cfg.learning_rate)
        step += 1
        window_loss += loss
        window_n += 1
        bar.update(1)
        if step % cfg.print_freq == 0:
            elapsed = time.perf_counter() - window_start
            rate = window_n * cfg.mini_batch_size / elapsed
            record = {"step": step, "epoch": epoch, "loss": window_loss / window_n,
                      "samples_per_s": rate}
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", samples_per_s=f"{rate:,.0f}")
            window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
        if cfg.test_freq and step % cfg.test_freq == 0:
            result = evaluate(model, test_batches())
            metrics.write({"step": step, "split": "validation", **result})
            bar.write(_format_eval("validation", step, result))
            window_start = time.perf_counter()
    bar.close()
    if not np.isfinite(window_loss):
        raise FloatingPointError(f"training diverged: loss is {window_loss} at step {step}; "
                                 "try a smaller --learning-rate")
    return step


def _format_eval(split: str, step: int, m: dict) -> str:
    return (f"{split} at step {step}: auc {m['auc']:.4f}  logloss {m['logloss']:.4f}  "
            f"accuracy {m['accuracy']:.4f}  ({m['samples']} samples)")


def describe(mcfg: DLRMConfig) -> str:
    s = mcfg.arch_strings()
    return (f"T={mcfg.num_tables} D={mcfg.sparse_feature_size} bottom {s['mlp_bot']} "
            f"top {mcfg.top_sizes[0]}-{s['mlp_top']} interaction {mcfg.interaction_op}")


def config_as_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
