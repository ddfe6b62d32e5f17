"""Where a run's batches come from: the built-in generators (``SyntheticSource``) or a
preprocessed Criteo directory (``DatasetSource``); ``open_data`` picks one for a config."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from pathlib import Path

from ..batch import Batch
from ..config import DLRMConfig
from ..data.background import prefetch
from ..data.criteo import preprocess_for_training
from ..data.dataset import ProcessedData
from ..data.synthetic import Teacher, batch_stream
from .config import DEFAULT_SYNTHETIC_BATCHES, TrainConfig


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
