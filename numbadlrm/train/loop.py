"""The training loop: ``run_training`` builds the model and its data, ``TrainLoop`` runs
epochs of steps with logging, periodic evaluation and checkpoints."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext

import numpy as np
from tqdm import tqdm

from ..config import DLRMConfig
from ..io.checkpoint import (
    check_compatible,
    load_checkpoint,
    optimizer_to_resume,
    remove_stale_tmp,
    save_model_checkpoint,
)
from ..io.mlperf_log import MLPerfLog
from ..kernels.jit import announce_compilation
from ..model.dlrm import DLRM
from ..model.memory import check_memory, estimate
from ..model.precision import note_bf16_emulation
from ..runtime.profiling import OpTimes
from ..runtime.threads import set_num_threads
from .config import TrainConfig
from .evaluation import collapse_warning, evaluate
from .records import MetricsLog, check_outputs, format_eval, format_step, run_header
from .sources import open_data


def run_training(cfg: TrainConfig, log=print) -> dict:
    """Train (or only evaluate) as configured; returns the final test metrics and the model."""
    check_cpu(cfg, log)
    check_outputs(cfg)
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
        # a resumed run appends to the metrics file (its records carry their steps)
        self.metrics = MetricsLog(cfg.metrics_file if root else "", append=bool(cfg.load_model))
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
        self._check_position(epoch, batch_in_epoch)
        event = "evaluate" if cfg.inference_only else "resume" if cfg.load_model else "start"
        self.metrics.write({"step": step, "epoch": epoch, "event": event})  # fails early
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

    def _check_position(self, epoch: int, batch_in_epoch: int) -> None:
        """Refuse to resume past the end of this run's epoch (it would skip it, or fail)."""
        total = self.source.num_batches
        if self.cfg.inference_only or epoch >= self.cfg.nepochs or batch_in_epoch <= total:
            return
        raise ValueError(
            f"--num-batches {self.cfg.num_batches}: this run's epoch has {total} batches, but "
            f"{self.cfg.load_model} resumes at batch {batch_in_epoch} of epoch {epoch}; give "
            f"--num-batches {batch_in_epoch} or more (the run it continues had more)"
        )

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
        self.log(format_eval(split, step, result))
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
                self.log(format_step(record, cfg.print_time))
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
