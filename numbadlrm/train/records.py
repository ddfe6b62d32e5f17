"""What a run writes besides checkpoints: the metrics file (JSON lines), the loss and
evaluation log lines, and the run's header line; the check of every output path before
the run does any work."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..io.files import WriteError, check_output_path, write_error

if TYPE_CHECKING:
    from ..config import DLRMConfig
    from .config import TrainConfig


def check_outputs(cfg: TrainConfig) -> None:
    """Refuse, before any work, a --save-model or --metrics-file that cannot be written
    (a directory, a missing or unwritable directory; --metrics-file's directory is
    created) or that names another of the run's files (ValueError naming the flag)."""
    if cfg.save_model and not cfg.inference_only:
        check_output_path(cfg.save_model, "--save-model")
    if not cfg.metrics_file:
        return
    path = Path(cfg.metrics_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"--metrics-file {path}: cannot create its directory ({exc.strerror or exc})"
        ) from None
    check_output_path(path, "--metrics-file")
    for flag, other in (("--save-model", cfg.save_model), ("--load-model", cfg.load_model)):
        if other and os.path.abspath(other) == os.path.abspath(path):
            raise ValueError(f"--metrics-file {path}: is also the {flag} checkpoint")


class MetricsLog:
    """JSON lines: one object per logged step and per evaluation, each with its step; a
    no-op without a path. ``append``: a resumed run adds to the file (the records up to
    its checkpoint's step stay); otherwise the file starts empty. Errors name the file."""

    def __init__(self, path: str, append: bool = False):
        self.path = path
        self._file: TextIO | None = None
        if path:
            try:
                self._file = open(path, "a" if append else "w")
            except OSError as exc:
                raise self._error(exc) from None

    def write(self, record: dict) -> None:
        if self._file is not None:
            try:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()
            except OSError as exc:
                raise self._error(exc) from None

    def _error(self, exc: OSError) -> WriteError:
        err = WriteError(f"--metrics-file {write_error(self.path, exc)}")
        err.errno = exc.errno
        return err

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:  # a failed flush was reported by write; nothing is buffered
                pass


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
