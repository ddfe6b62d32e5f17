"""The training loop: data, steps, progress, periodic evaluation, metrics file.

``TrainConfig`` is the single source of truth for a run; the command line
(numbadlrm/cli/main.py) is generated from its fields, whose names follow the reference
DLRM's flags (``arch_mlp_bot`` is ``--arch-mlp-bot``), with the reference's meanings
(its other flags: numbadlrm/cli/reference_flags.py). Each step's lr comes from the
reference's LR policy (numbadlrm/optim/lr_policy.py) at the global step count, which a
checkpoint carries, so a resumed run continues the schedule.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from ..batch import Batch
from ..config import DLRMConfig
from ..data.background import prefetch
from ..data.criteo import preprocess_for_training
from ..data.dataset import ProcessedData
from ..data.synthetic import Teacher, batch_stream
from ..io.checkpoint import (
    check_compatible,
    load_checkpoint,
    optimizer_to_resume,
    remove_stale_tmp,
    save_model_checkpoint,
)
from ..io.mlperf_log import MLPerfLog
from ..kernels.jit import announce_compilation
from ..layers.loss import LOSSES, LossConfig, parse_loss_weights
from ..model.dlrm import DLRM, kernel_choice
from ..model.memory import check_memory, estimate
from ..model.precision import PRECISIONS, check_bf16_optimizer, check_precision
from ..optim.lr_policy import LRPolicy
from ..optim.optimizers import OPTIMIZERS, OptimizerConfig
from ..runtime.profiling import OpTimes
from ..runtime.threads import set_num_threads
from .metrics import evaluate_predictions

DATA_GENERATIONS = ("synthetic", "random", "dataset")
DEFAULT_SYNTHETIC_BATCHES = 15000


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
        metadata=_opt(
            "synthetic (learnable), random (benchmarks) or dataset (--processed-data-file)",
            choices=DATA_GENERATIONS,
        ),
    )
    processed_data_file: str = field(
        default="", metadata=_opt("directory written by `numbadlrm preprocess`")
    )
    data_set: str = field(
        default="",
        metadata=_opt("preprocess --raw-data-file first", choices=("", "kaggle", "terabyte")),
    )
    raw_data_file: str = field(
        default="", metadata=_opt("Kaggle train.txt, or the Terabyte day_ prefix")
    )
    max_ind_range: int = field(
        default=0,
        metadata=_opt("with --data-set: hash ids modulo N (0 or -1: frequency vocabulary)"),
    )
    data_sub_sample_rate: float = field(
        default=0.0,
        metadata=_opt("with --data-set: drop each label-0 row with this probability, in [0, 1)"),
    )
    data_shuffle: bool = field(default=True, metadata=_opt("shuffle the dataset every epoch"))
    num_indices_per_lookup: int = field(default=1, metadata=_opt("lookups per bag"))
    num_indices_per_lookup_fixed: bool = field(
        default=False, metadata=_opt("every bag has exactly --num-indices-per-lookup lookups")
    )
    mini_batch_size: int = field(default=128, metadata=_opt("B, samples per step"))
    num_batches: int = field(
        default=0,
        metadata=_opt(
            f"steps per epoch (0: the whole dataset; built-in data: --data-size / B, else "
            f"{DEFAULT_SYNTHETIC_BATCHES})"
        ),
    )
    data_size: int = field(
        default=0, metadata=_opt("built-in data: samples per epoch, ceil(N / B) steps (0: unset)")
    )
    nepochs: int = field(default=1, metadata=_opt("passes over the training data"))
    learning_rate: float = field(default=0.1, metadata=_opt("base learning rate"))
    optimizer: str = field(
        default="sgd",
        metadata=_opt("tables and MLPs (rwsadagrad: row-wise for the tables)", choices=OPTIMIZERS),
    )
    adagrad_eps: float = field(default=1e-10, metadata=_opt("Adagrad's eps (torch's default)"))
    adagrad_initial_accumulator_value: float = field(
        default=0.0, metadata=_opt("Adagrad's initial state")
    )
    adagrad_lr_decay: float = field(
        default=0.0, metadata=_opt("Adagrad: lr / (1 + (t - 1) lr_decay) at its t-th step")
    )
    weight_decay: float = field(
        default=0.0, metadata=_opt("Adagrad: + weight_decay * p on the MLP gradients (not tables)")
    )
    lr_num_warmup_steps: int = field(
        default=0, metadata=_opt("LR policy: linear warmup over the first N steps")
    )
    lr_decay_start_step: int = field(
        default=0, metadata=_opt("LR policy: start the polynomial decay at this step")
    )
    lr_num_decay_steps: int = field(
        default=0, metadata=_opt("LR policy: decay over N steps (0: no decay)")
    )
    loss_function: str = field(
        default="bce",
        metadata=_opt("training loss (the reference's default is mse)", choices=LOSSES),
    )
    loss_weights: str = field(
        default="1.0-1.0", metadata=_opt("wbce: weights of label 0 and label 1, w0-w1")
    )
    round_targets: bool = field(
        default=False, metadata=_opt("round labels to 0/1 (they always are here: no effect)")
    )
    print_freq: int = field(default=500, metadata=_opt("log the loss every N steps"))
    print_time: bool = field(default=False, metadata=_opt("add ms per step to the loss lines"))
    test_freq: int = field(
        default=0, metadata=_opt("evaluate every N steps (0 or -1: only at the end)")
    )
    test_mini_batch_size: int = field(
        default=4096, metadata=_opt("evaluation batch size (-1: --mini-batch-size)")
    )
    test_num_batches: int = field(default=16, metadata=_opt("held-out batches per evaluation"))
    seed: int = field(
        default=0,
        metadata=_opt("seed of the model and the data streams", aliases=("--numpy-rand-seed",)),
    )
    mlperf_logging: bool = field(default=False, metadata=_opt("write MLPerf :::MLLOG lines"))
    mlperf_auc_threshold: float = field(
        default=0.0, metadata=_opt("stop once a --test-freq evaluation's AUC exceeds this")
    )
    mlperf_acc_threshold: float = field(
        default=0.0, metadata=_opt("stop once a --test-freq evaluation's accuracy exceeds this")
    )
    enable_profiling: bool = field(
        default=False, metadata=_opt("print a per-op time table (median ms) at the end")
    )
    threads: int = field(default=0, metadata=_opt("Numba threads (0: all cores)"))
    gemm: str = field(
        default="auto", metadata=_opt("linear-layer backend", choices=("auto", "numba", "blas"))
    )
    kernels: str = field(
        default="",
        metadata=_opt("kernel versions, op=version,... (`numbadlrm kernels` lists them)"),
    )
    precision: str = field(
        default="fp32",
        metadata=_opt(
            "bf16: split-SGD-BF16 mixed precision (bf16 compute, exact fp32 SGD on split "
            "master weights; emulated, slower, on a CPU without AVX512-BF16)",
            choices=PRECISIONS,
        ),
    )
    metrics_file: str = field(default="", metadata=_opt("write JSON lines of metrics here"))
    save_model: str = field(default="", metadata=_opt("write a checkpoint here (atomically)"))
    save_freq: int = field(default=0, metadata=_opt("also checkpoint every N steps"))
    load_model: str = field(default="", metadata=_opt("resume from (or evaluate) a checkpoint"))
    inference_only: bool = field(
        default=False, metadata=_opt("only evaluate the --load-model checkpoint")
    )
    progress: bool = field(default=True, metadata=_opt("show a progress bar"))

    def __post_init__(self) -> None:
        # the reference's "unset" values: -1 means 0 here (test_mini_batch_size: B)
        for name in ("test_freq", "max_ind_range"):
            if getattr(self, name) == -1:
                object.__setattr__(self, name, 0)
        if self.test_mini_batch_size == -1:
            object.__setattr__(self, "test_mini_batch_size", self.mini_batch_size)
        positive = (
            "arch_sparse_feature_size",
            "num_indices_per_lookup",
            "mini_batch_size",
            "nepochs",
            "print_freq",
            "test_mini_batch_size",
            "test_num_batches",
        )
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(
                f"learning_rate: must be a finite positive number, got {self.learning_rate}"
            )
        names = ("test_freq", "threads", "num_batches", "max_ind_range", "save_freq", "data_size")
        for name in names:
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.data_sub_sample_rate < 1.0:
            raise ValueError(
                f"data_sub_sample_rate: must be in [0, 1), got {self.data_sub_sample_rate}"
            )
        for name in ("mlperf_auc_threshold", "mlperf_acc_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        self.optimizer_config(), self.loss_config(), self.lr_policy()  # validate them
        if self.data_generation not in DATA_GENERATIONS:
            raise ValueError(
                f"data_generation: must be one of {DATA_GENERATIONS}, got {self.data_generation!r}"
            )
        if self.data_set and not (self.raw_data_file or self.processed_data_file):
            raise ValueError(
                f"data_set: --data-set {self.data_set} needs --raw-data-file (or the "
                "--processed-data-file it was preprocessed into)"
            )
        if self.uses_dataset and not (self.processed_data_file or self.data_set):
            raise ValueError(
                "data_generation: 'dataset' needs --processed-data-file DIR "
                "(or --data-set kaggle|terabyte --raw-data-file FILE)"
            )
        if self.inference_only and not self.load_model:
            raise ValueError("inference_only: needs --load-model CHECKPOINT")
        self.model_config()  # validates the architecture strings
        kernel_choice(self.gemm, self.kernels)  # validates the op and version names
        check_precision(self.precision)
        if self.precision == "bf16":
            check_bf16_optimizer(self.optimizer)

    def optimizer_config(self) -> OptimizerConfig:
        """--optimizer and its settings (ValueError names a bad flag; Adagrad's settings
        other than their defaults are refused with sgd)."""
        return OptimizerConfig(
            self.optimizer,
            eps=self.adagrad_eps,
            initial_accumulator_value=self.adagrad_initial_accumulator_value,
            weight_decay=self.weight_decay,
            lr_decay=self.adagrad_lr_decay,
        )

    def loss_config(self) -> LossConfig:
        return LossConfig(self.loss_function, parse_loss_weights(self.loss_weights))

    def lr_policy(self) -> LRPolicy:
        return LRPolicy(
            self.learning_rate,
            self.lr_num_warmup_steps,
            self.lr_decay_start_step,
            self.lr_num_decay_steps,
        )

    @property
    def uses_dataset(self) -> bool:
        return self.data_generation == "dataset" or bool(self.data_set)

    @property
    def data_source(self) -> str:
        """What the run trains on: "dataset" (--data-set implies it), else the generator."""
        return "dataset" if self.uses_dataset else self.data_generation

    def model_config(self, table_sizes: tuple[int, ...] | None = None) -> DLRMConfig:
        """The model; a dataset's table sizes replace --arch-embedding-size."""
        return DLRMConfig.from_arch(
            sparse_feature_size=self.arch_sparse_feature_size,
            embedding_size=table_sizes or self.arch_embedding_size,
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
            self._file = open(path, "w")

    def write(self, record: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def evaluate(model: DLRM, batches: Iterable[Batch], name: str = "evaluation") -> dict[str, float]:
    """AUC, log loss and accuracy of the model's predictions over all batches."""
    probs, labels = [], []
    for batch in batches:
        batch.require_rows(0, batch.batch_size)  # every label is needed
        probs.append(model.predict(batch))
        labels.append(batch.labels)
    if not probs:
        raise ValueError(f"{name}: no samples to evaluate (an empty split?)")
    p = np.concatenate(probs)
    metrics = evaluate_predictions(np.concatenate(labels), p)
    metrics["samples"] = int(p.size)
    metrics["prediction_mean"], metrics["prediction_std"] = float(p.mean()), float(p.std())
    return metrics


# Predictions whose spread is below this are "a constant": measured on the built-in data,
# healthy models spread 0.06..0.08 (std), models collapsed at lr 2..3 (dead ReLUs, AUC
# 0.50) 5e-7..8e-5. Random labels (--data-generation random) rightly give a near
# constant (std ~5e-4), so that mode is not checked.
COLLAPSED_STD = 1e-3


def collapse_warning(result: dict, split: str, step: int, lr: float) -> str | None:
    """A one-line warning if the evaluation's predictions are (nearly) all equal."""
    if result["prediction_std"] >= COLLAPSED_STD:
        return None
    return (
        f"warning: at step {step} every {split} prediction is nearly the same "
        f"({result['prediction_mean']:.4f}, std {result['prediction_std']:.1e}, AUC "
        f"{result['auc']:.3f}): the model has collapsed to a constant; try a smaller "
        f"--learning-rate (this run: {lr:g})"
    )


class SyntheticSource:
    """The built-in generators: an epoch is ``num_batches`` fresh batches from its own seed.

    The validation and test streams are fixed held-out samples from the same teacher.
    """

    def __init__(self, cfg: TrainConfig, mcfg: DLRMConfig):
        self.cfg, self.mcfg = cfg, mcfg
        from_size = -(-cfg.data_size // cfg.mini_batch_size)  # the reference's --data-size
        self.num_batches = cfg.num_batches or from_size or DEFAULT_SYNTHETIC_BATCHES

    @functools.cached_property
    def teacher(self) -> Teacher | None:
        """Built on first use, so the memory check runs before its per-row arrays exist."""
        return Teacher(self.mcfg) if self.cfg.data_generation == "synthetic" else None

    def preprocessing(self) -> tuple[None, None]:
        return None, None  # no raw ids to map

    def memory_need(self) -> tuple[str, int] | None:
        """(what, bytes) the generator holds: the teacher's 20 bytes per table row, and
        40 per row of the largest table while it is drawn (float64)."""
        if self.cfg.data_generation != "synthetic":
            return None
        rows = self.mcfg.embedding_sizes
        return "synthetic data generator", 20 * sum(rows) + 40 * max(rows)

    def _stream(self, num_batches: int, batch_size: int, seed: int) -> Iterator[Batch]:
        c = self.cfg
        return batch_stream(
            self.mcfg,
            c.data_generation,
            num_batches,
            batch_size,
            seed,
            lookups=c.num_indices_per_lookup,
            fixed=c.num_indices_per_lookup_fixed,
            teacher=self.teacher,
        )

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        stream = self._stream(
            self.num_batches, self.cfg.mini_batch_size, seed=self.cfg.seed * 1000 + epoch
        )
        # resume mid-epoch: regenerate and skip, so batch k is the same batch as before
        return prefetch(itertools.islice(stream, start_batch, None), depth=4)

    def eval_batches(self, split: str) -> Iterator[Batch]:
        offset = 999_998 if split == "validation" else 999_999
        return self._stream(
            self.cfg.test_num_batches,
            self.cfg.test_mini_batch_size,
            seed=self.cfg.seed * 1000 + offset,
        )


class DatasetSource:
    """A preprocessed Criteo directory: shuffled train split, validation and test splits."""

    def __init__(
        self, cfg: TrainConfig, data: ProcessedData, dense_rows: tuple[int, int] | None = None
    ):
        """dense_rows: read dense features and labels of these samples of each training
        batch only (an MPI rank's slice); every sample's categorical ids are read."""
        self.cfg, self.data, self.dense_rows = cfg, data, dense_rows
        self.train = data.split("train")
        full = self.train.num_batches(cfg.mini_batch_size, drop_last=True)
        if full == 0:
            raise ValueError(
                f"processed_data_file: the train split has {len(self.train)} rows, fewer than "
                f"one batch of {cfg.mini_batch_size}"
            )
        self.num_batches = min(cfg.num_batches, full) if cfg.num_batches else full
        evaluated = ("test",) if cfg.inference_only or not cfg.test_freq else ("validation", "test")
        for split in evaluated:  # refuse now, not after training
            if len(data.split(split)) == 0:
                when = "at the end" if split == "test" else "every --test-freq steps"
                raise ValueError(
                    f"processed_data_file: the {split} split of {data.directory} has no rows, "
                    f"and the run evaluates it {when}; preprocess with --split-fractions that "
                    f"give it rows" + (" or use --test-freq 0" if split == "validation" else "")
                )

    def preprocessing(self):
        """(options, vocabulary) of the dataset, for the checkpoint (see ProcessedData)."""
        return self.data.preprocessing()

    def memory_need(self) -> tuple[str, int]:
        """(what, bytes): a shuffle window of 4096 x 64 rows of 160 bytes, about 4 copies."""
        return "dataset loader", 4 * 4096 * 64 * 160

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The epoch's batches from start_batch on (the split's loader prefetches)."""
        batches = self.train.batches(
            self.cfg.mini_batch_size,
            shuffle=self.cfg.data_shuffle,
            seed=self.cfg.seed,
            epoch=epoch,
            start_batch=start_batch,
            drop_last=True,
            dense_rows=self.dense_rows,
        )
        try:
            yield from itertools.islice(batches, self.num_batches - start_batch)
        finally:
            batches.close()

    def eval_batches(self, split: str) -> Iterator[Batch]:
        return self.data.split(split).batches(self.cfg.test_mini_batch_size, shuffle=False)


def open_data(cfg: TrainConfig, log=print, dense_rows: tuple[int, int] | None = None):
    """(data source, model config) for the run; preprocesses raw data first if asked.

    dense_rows: an MPI rank's slice of each training batch (see DatasetSource); the
    built-in generators make whole batches, which costs little next to a step.
    """
    if not cfg.uses_dataset:
        mcfg = cfg.model_config()
        return SyntheticSource(cfg, mcfg), mcfg
    directory = cfg.processed_data_file
    if cfg.data_set and cfg.raw_data_file:
        raw = Path(cfg.raw_data_file)
        directory = directory or str(raw.parent / f"{raw.name}.numbadlrm")
        log(f"preprocessing {cfg.data_set} data {raw} -> {directory}")
        directory = str(
            preprocess_for_training(
                cfg.data_set, raw, directory, max_ind_range=cfg.max_ind_range,
                progress=cfg.progress, sub_sample_rate=cfg.data_sub_sample_rate,
            )
        )  # fmt: skip
    if cfg.data_size:
        log("note: --data-size sets the built-in generators' epoch; a dataset's epoch is "
            "its train split (or --num-batches)")  # fmt: skip
    if cfg.data_sub_sample_rate and not (cfg.data_set and cfg.raw_data_file):
        log("note: --data-sub-sample-rate applies when preprocessing (--data-set with "
            "--raw-data-file); the processed data is used as it is")  # fmt: skip
    data = ProcessedData(directory)
    mcfg = cfg.model_config(tuple(data.table_sizes))
    return DatasetSource(cfg, data, dense_rows), mcfg


def run_training(cfg: TrainConfig, log=print) -> dict:
    """Train (or only evaluate) as configured; returns the final test metrics and the model."""
    check_cpu(cfg, log)
    if cfg.threads:
        set_num_threads(cfg.threads)
    source, mcfg = open_data(cfg, log)
    batch_sizes = (cfg.mini_batch_size, cfg.test_mini_batch_size)
    need = estimate(
        mcfg, batch_sizes, source.memory_need(), optimizer=cfg.optimizer, precision=cfg.precision
    )
    check_memory(need)
    model = DLRM(
        mcfg, seed=cfg.seed, gemm=cfg.gemm, kernels=cfg.kernels,
        optimizer=cfg.optimizer_config(), loss=cfg.loss_config(), precision=cfg.precision,
    )  # fmt: skip
    position = load_into(model, cfg.load_model, mcfg, log) if cfg.load_model else (0, 0, 0)
    log(run_header(cfg, mcfg))
    if cfg.kernels:
        log(f"kernels: {model.kernels.describe()}")
    loop = TrainLoop(cfg, model, source, mcfg, log)
    return loop.run(*position)


def check_cpu(cfg: TrainConfig, log=print) -> None:
    """Note (one line, once) that --precision bf16 is emulated on a CPU without
    AVX512-BF16, before any work is done."""
    if cfg.precision == "bf16":
        from ..model.precision import note_bf16_emulation

        note_bf16_emulation(log)


def load_into(model, path: str, mcfg: DLRMConfig, log=print) -> tuple[int, int, int]:
    """Load a checkpoint's weights and, for the same optimizer, its optimizer state and
    step count; returns its (step, epoch, batch_in_epoch)."""
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, mcfg, path)
    model.load_state_dict(ckpt.state)
    resume, note = optimizer_to_resume(ckpt, model.optimizer.config, path)
    if resume:
        model.load_optimizer_state_dict(ckpt.optimizer_state, ckpt.optimizer_steps)
    if note:
        log(note)
    return ckpt.step, ckpt.epoch, ckpt.batch_in_epoch


class TrainLoop:
    """Epochs of steps with logging, periodic evaluation and checkpoints.

    Works with any model offering train_step, predict and state_dict (DLRM, and the
    MPI layer's DistributedDLRM); ``root`` says whether this process logs and saves.
    Step k (k steps done before it, counted over epochs and resumes) runs at the LR
    policy's lr_at(k). A --test-freq evaluation reaching --mlperf-auc-threshold or
    --mlperf-acc-threshold ends the training (then the checkpoint and the test split).
    """

    def __init__(
        self, cfg: TrainConfig, model, source, mcfg: DLRMConfig, log=print, root: bool = True
    ):
        self.cfg, self.model, self.source, self.mcfg = cfg, model, source, mcfg
        self.log, self.root = log, root
        self.metrics = MetricsLog(cfg.metrics_file if root else "")
        # the bar needs a terminal; without one (--no-progress, a file, a pipe) the loss
        # goes out as one log line per --print-freq steps, as the reference prints it
        self.show_bar = cfg.progress and root and sys.stderr.isatty()
        if root and cfg.save_model:
            remove_stale_tmp(cfg.save_model)  # a killed earlier run's half-written checkpoints
        self.policy = cfg.lr_policy()
        self.mlperf = MLPerfLog(log if cfg.mlperf_logging and root else None)
        self.reached = False  # a threshold was reached: stop training
        if cfg.enable_profiling:
            model.op_times = OpTimes()

    def run(self, step: int, epoch: int, batch_in_epoch: int) -> dict:
        cfg = self.cfg
        try:
            if not cfg.inference_only:
                self._mlperf_header()
                for e in range(epoch, cfg.nepochs):
                    start = batch_in_epoch if e == epoch else 0
                    self.mlperf.start("block_start", first_epoch_num=e + 1, epoch_count=1)
                    self.mlperf.start("epoch_start", epoch_num=e + 1)
                    step = self._epoch(e, start, step)
                    self.mlperf.end("epoch_stop", epoch_num=e + 1)
                    self.mlperf.end("block_stop", first_epoch_num=e + 1)
                    if self.reached:
                        break
                if cfg.save_model:
                    self.save(step, *(self._next if self.reached else (cfg.nepochs, 0)))
            final = self.evaluate("test", step)
            if not cfg.inference_only:
                self.mlperf.end("run_stop", status="success" if self.reached else "aborted")
            if self.model.op_times is not None and self.root:
                self.log("per-op times (--enable-profiling):\n" + self.model.op_times.table())
        finally:
            self.metrics.close()
        return {**final, "model": self.model, "steps": step}

    def _mlperf_header(self) -> None:
        c = self.cfg
        self.mlperf.run_header(
            c.mini_batch_size, c.learning_rate, c.lr_num_warmup_steps, c.lr_decay_start_step,
            c.lr_num_decay_steps, c.seed,
        )  # fmt: skip
        self.mlperf.event("train_samples", self.source.num_batches * c.mini_batch_size)

    def evaluate(self, split: str, step: int) -> dict:
        epoch_num = 1 + step / self.source.num_batches if self.source.num_batches else 1.0
        self.mlperf.start("eval_start", epoch_num=epoch_num)
        with announce_compilation(self.log):  # a first evaluation may compile kernels
            result = evaluate(self.model, self.source.eval_batches(split), f"{split} split")
        self.mlperf.event("eval_accuracy", result["auc"], epoch_num=epoch_num)
        self.mlperf.end("eval_stop", epoch_num=epoch_num)
        self.metrics.write({"step": step, "split": split, **result})
        self.log(_format_eval(split, step, result))
        warning = collapse_warning(result, split, step, self.cfg.learning_rate)
        if warning and self.cfg.data_generation != "random":
            self.metrics.write({"step": step, "split": split, "warning": warning})
            self.log(warning)
        return result

    def save(self, step: int, epoch: int, batch_in_epoch: int) -> None:
        """The model's checkpoint at cfg.save_model (a collective under MPI: every rank
        calls it, rank 0 writes)."""
        c = self.cfg
        extra = {
            "seed": c.seed,
            "data_generation": c.data_source,
            "learning_rate": c.learning_rate,
            "lr_policy": [c.lr_num_warmup_steps, c.lr_decay_start_step, c.lr_num_decay_steps],
            "loss_function": c.loss_function,
        }
        # what predict needs to map raw ids as this data was mapped (read by the writer only)
        prep, vocab = self.source.preprocessing() if self.root else (None, None)
        save_model_checkpoint(
            self.cfg.save_model, self.model, step, epoch, batch_in_epoch, extra, prep, vocab
        )

    def _epoch(self, epoch: int, start: int, step: int) -> int:
        """Train batches start.. of one epoch; returns the global step count.

        The epoch's first step runs before the progress bar exists and its time counts in
        no rate, so neither the bar's ETA nor the loss lines' samples/s include compiling
        kernels (which the first step of a first run does, announced as it starts).
        """
        total = self.source.num_batches
        window = _Window()
        batches = self.source.train_batches(epoch, start)  # a prefetching generator
        bar = None
        try:
            for i, batch in enumerate(batches, start=start + 1):
                first = bar is None
                lr = self.policy.lr_at(step)
                with announce_compilation(self.log) if first else nullcontext():
                    loss = self.model.train_step(batch, lr)
                step += 1
                window.add(loss, step)
                if first:
                    window.restart_clock()
                    bar = self._progress_bar(epoch, i, total)
                else:
                    bar.update(1)
                next_position = (epoch, i) if i < total else (epoch + 1, 0)
                self._next = next_position  # where a run stopped here resumes
                self._after_step(step, epoch, next_position, window, bar)
                if self.reached:
                    break
        finally:
            batches.close()
            if bar is not None:
                bar.close()
        return step

    def _progress_bar(self, epoch: int, done: int, total: int) -> tqdm:
        return tqdm(
            total=total,
            initial=done,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not self.show_bar,
            dynamic_ncols=True,
        )

    def _after_step(
        self, step: int, epoch: int, next_position: tuple[int, int], window: _Window, bar
    ) -> None:
        """Logging, evaluation and checkpoints due after this step."""
        cfg = self.cfg
        if step % cfg.print_freq == 0:
            record = {"step": step, "epoch": epoch, **window.flush(cfg.mini_batch_size)}
            self.metrics.write(record)
            if self.show_bar:
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}", samples_per_s=f"{record['samples_per_s']:,.0f}"
                )
            else:
                self.log(_format_step(record, cfg.print_time))
        if cfg.test_freq and step % cfg.test_freq == 0:
            bar.clear()
            self._check_thresholds(self.evaluate("validation", step))
            window.restart_clock()
        if cfg.save_model and cfg.save_freq and step % cfg.save_freq == 0:
            self.save(step, *next_position)

    def _check_thresholds(self, result: dict) -> None:
        """Stop when a threshold is reached (the reference: "MLPerf testing auc threshold
        0.8025 reached, stop training")."""
        thresholds = (("auc", self.cfg.mlperf_auc_threshold),
                      ("accuracy", self.cfg.mlperf_acc_threshold))  # fmt: skip
        for name, threshold in thresholds:
            if threshold > 0 and result[name] > threshold:
                self.log(f"MLPerf testing {name} threshold {threshold} reached, stop training")
                self.reached = True
                return


class _Window:
    """Mean loss over the steps since the last log line, and samples/s over those of them
    run since the clock last started (an evaluation, or an epoch's first step, which may
    have compiled kernels, stops the clock)."""

    def __init__(self):
        self.loss, self.steps = 0.0, 0
        self.restart_clock()

    def add(self, loss: float, step: int) -> None:
        if not np.isfinite(loss):
            raise FloatingPointError(
                f"training diverged: loss is {loss} at step {step}; try a smaller --learning-rate"
            )
        self.loss += loss
        self.steps += 1
        self.timed += 1

    def restart_clock(self) -> None:
        self.timed, self.start = 0, time.perf_counter()

    def flush(self, batch_size: int) -> dict[str, float]:
        """The window's mean loss and samples/s (NaN when no step was timed), then empty."""
        elapsed = time.perf_counter() - self.start
        rate = self.timed * batch_size / elapsed if self.timed else float("nan")
        ms = 1000 * elapsed / self.timed if self.timed else float("nan")
        out = {"loss": self.loss / self.steps, "samples_per_s": rate, "ms_per_step": ms}
        self.loss, self.steps = 0.0, 0
        self.restart_clock()
        return out


def _format_step(record: dict, print_time: bool = False) -> str:
    """The mean loss since the last line, e.g. 'step 500 epoch 0: loss 0.481234, 36,512
    samples/s' (with print_time, then ', 3.51 ms/step')."""
    line = (
        f"step {record['step']} epoch {record['epoch']}: loss {record['loss']:.6f}, "
        f"{record['samples_per_s']:,.0f} samples/s"
    )
    return line + f", {record['ms_per_step']:.2f} ms/step" if print_time else line


def _format_eval(split: str, step: int, m: dict) -> str:
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
