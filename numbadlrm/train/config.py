"""``TrainConfig``: every option of a training run, validated on construction.

``TrainConfig`` is the single source of truth for a run; the command line
(numbadlrm/cli/main.py) is generated from its fields, whose names follow the reference
DLRM's flags (``arch_mlp_bot`` is ``--arch-mlp-bot``), with the reference's meanings
(its other flags: numbadlrm/cli/reference_flags.py). Each step's lr comes from the
reference's LR policy (numbadlrm/optim/lr_policy.py) at the global step count, which a
checkpoint carries, so a resumed run continues the schedule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..config import TRICK_DEFAULTS, DLRMConfig, parse_arch
from ..layers.loss import LOSSES, LossConfig, parse_loss_weights
from ..model.dlrm import kernel_choice
from ..model.precision import PRECISIONS, check_bf16_optimizer, check_precision
from ..optim.lr_policy import LRPolicy
from ..optim.optimizers import OPTIMIZERS, OptimizerConfig

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
    qr_flag: bool = field(default=False, metadata=_opt("quotient-remainder tables (QR trick)"))
    qr_threshold: int = field(default=200, metadata=_opt("QR: tables with more rows than N"))
    qr_collisions: int = field(default=4, metadata=_opt("QR: c, the remainder table's rows"))
    qr_operation: str = field(
        default="mult",
        metadata=_opt("QR: combine the two bags (concat: the bottom MLP ends at 2D)",
                      choices=("mult", "add", "concat")),
    )  # fmt: skip
    md_flag: bool = field(default=False, metadata=_opt("mixed-dimension tables (md_solver)"))
    md_threshold: int = field(default=200, metadata=_opt("MD: tables with more rows than N"))
    md_temperature: float = field(default=0.3, metadata=_opt("MD: alpha of md_solver"))
    md_round_dims: bool = field(default=False, metadata=_opt("MD: widths rounded to powers of 2"))
    weighted_pooling: str = field(
        default="",
        metadata=_opt("per-row weights in the bag sums (fixed: all 1, the plain sum)",
                      choices=("", "fixed", "learned")),
    )  # fmt: skip
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
        if self.seed < 0:  # NumPy's generators take seeds >= 0
            raise ValueError(f"--seed: must be >= 0, got {self.seed}")
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
            if self.qr_flag or self.md_flag or self.weighted_pooling == "learned":
                raise ValueError(
                    "--precision bf16: --qr-flag, --md-flag and --weighted-pooling learned "
                    "train in fp32 only (use --precision fp32)"
                )

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
        dim = self.arch_sparse_feature_size
        if self.qr_flag and self.qr_operation == "concat":  # the pooled vectors are 2D wide
            dim *= 2
            last = parse_arch(self.arch_mlp_bot, "mlp_bot")[-1]
            if last != dim:
                raise ValueError(
                    f"--qr-operation concat: the bottom MLP's last width ({last}) must be 2 x "
                    f"--arch-sparse-feature-size ({dim}), the width of the two tables' bags"
                )
        config = DLRMConfig.from_arch(
            sparse_feature_size=dim,
            embedding_size=table_sizes or self.arch_embedding_size,
            mlp_bot=self.arch_mlp_bot,
            mlp_top=self.arch_mlp_top,
            interaction_op=self.arch_interaction_op,
            interaction_itself=self.arch_interaction_itself,
        )
        tricks = {k: getattr(self, k) for k in TRICK_DEFAULTS}
        tricks["weighted_pooling"] = self.weighted_pooling or None
        return dataclasses.replace(config, **tricks)
