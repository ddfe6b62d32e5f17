"""What a run writes besides checkpoints: the metrics file (JSON lines), the loss and
evaluation log lines, and the run's header line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..config import DLRMConfig
    from .config import TrainConfig


class MetricsLog:
    """JSON lines: one object per logged step and per evaluation; a no-op without a path."""

    def __init__(self, path: str):
        self._file: TextIO | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w")

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def format_step(record: dict, print_time: bool = False) -> str:
    """The mean loss since the last line, e.g. 'step 500 epoch 0: loss 0.481234, 36,512
    samples/s' (with print_time, then ', 3.51 ms/step')."""
    line = (
        f"step {record['step']} epoch {record['epoch']}: loss {record['loss']:.6f}, "
        f"{record['samples_per_s']:,.0f} samples/s"
    )
    return line + f", {record['ms_per_step']:.2f} ms/step" if print_time else line


def format_eval(split: str, step: int, m: dict) -> str:
    return (
        f"{split} at step {step}: auc {m['auc']:.4f}  logloss {m['logloss']:.4f}  "
        f"accuracy {m['accuracy']:.4f}  ({m['samples']} samples)"
    )


def run_header(cfg: TrainConfig, mcfg: DLRMConfig) -> str:
    """The run's first line: the model, the data and the batch size."""
    precision = ", precision bf16" if cfg.precision == "bf16" else ""
    return (
        f"numbadlrm: {describe(mcfg)}; data {cfg.data_source}, batch {cfg.mini_batch_size}"
        + precision
    )


def describe(mcfg: DLRMConfig) -> str:
    s = mcfg.arch_strings()
    return (
        f"T={mcfg.num_tables} D={mcfg.sparse_feature_size} bottom {s['mlp_bot']} "
        f"top {mcfg.top_sizes[0]}-{s['mlp_top']} interaction {mcfg.interaction_op}"
    )
