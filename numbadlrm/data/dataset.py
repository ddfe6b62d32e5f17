"""Memory-mapped Criteo data (written by :mod:`numbadlrm.data.criteo`) as Batches.

    data = ProcessedData("criteo-kaggle")
    train = data.split("train")
    for batch in train.batches(128, shuffle=True, seed=0, epoch=3, start_batch=0):
        ...                                   # a numbadlrm.batch.Batch

A split is a list of row ranges ("segments") over the per-input-file parts; the
binary layout is documented in :mod:`numbadlrm.data.criteo`.

Batches: one lookup per table per sample, so with B rows and T = 26 tables

    offsets[t] = t * B + arange(B + 1)            # (T, B+1) int64
    indices    = categorical.T.ravel()            # (T * B,) int64, table by table

Shuffling (deterministic given seed and epoch, a permutation of the split's rows):
the split's rows are cut into blocks of ``block_rows`` contiguous rows; the block
order is permuted with ``default_rng([seed, epoch])``; consecutive permuted blocks
are grouped into windows of ``buffer_blocks`` blocks (the shuffle buffer, about
``block_rows * buffer_blocks`` rows); the rows inside window w are permuted with
``default_rng([seed, epoch, w])``. Reading stays sequential inside each block, and
memory holds one window. ``start_batch=k`` skips to row k * batch_size of the same
order without reading the rows before it, so a resumed run continues exactly.

Batches are assembled by a background thread (:func:`prefetch`) a few batches
ahead of the consumer; stopping early (``break``, ``close()``) stops that thread.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from numbadlrm.batch import Batch
from numbadlrm.data.background import prefetch
from numbadlrm.data.metadata import METADATA_FILE, SPLITS, read_metadata
from numbadlrm.data.vocabulary import Vocabulary, load_vocabulary
from numbadlrm.kernels.parse import NUM_CATEGORICAL, NUM_DENSE  # I1..I13, C1..C26

# part file suffix -> (dtype, columns); columns 0 means a 1-D array
PART_FILES = {
    "dense": (".dense.f32", np.float32, NUM_DENSE),
    "categorical": (".categorical.i32", np.int32, NUM_CATEGORICAL),
    "labels": (".labels.u8", np.uint8, 0),
}

T = TypeVar("T")


def part_path(directory: Path, part: str, kind: str) -> Path:
    """Path of one array of a part: kind is "dense", "categorical" or "labels"."""
    return Path(directory) / (part + PART_FILES[kind][0])


def part_bytes(rows: int, kind: str) -> int:
    """Size in bytes of one array of a part of ``rows`` rows."""
    _, dtype, cols = PART_FILES[kind]
    return rows * max(cols, 1) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class Rows:
    """A range of rows: dense (N, 13) float32, categorical (N, 26) int32, labels (N,) float32."""

    dense: np.ndarray  # (N, 13) float32
    categorical: np.ndarray  # (N, 26) int32
    labels: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return self.labels.shape[0]


class ProcessedData:
    """A preprocessed Criteo directory: metadata plus one memory map per part array."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / METADATA_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.directory}: no {METADATA_FILE}; preprocessing is missing or unfinished"
            )
        self.metadata = read_metadata(meta_path)  # schema and split ranges checked
        self.table_sizes: tuple[int, ...] = tuple(self.metadata["table_sizes"])
        self.num_dense: int = self.metadata["num_dense"]
        self._parts = {p["name"]: _Part(self.directory, p) for p in self.metadata["parts"]}

    def preprocessing(self) -> tuple[dict, Vocabulary | None]:
        """How the ids were made: ({"max_ind_range": N, "min_count": K}, the vocabulary in
        --min-count mode, checked against metadata.json's sha256, else None)."""
        options = self.metadata.get("options")
        keys = ("max_ind_range", "min_count")
        if not isinstance(options, dict) or not all(
            type(options.get(k)) is int and options[k] >= 0 for k in keys
        ):
            raise ValueError(
                f"{self.directory / METADATA_FILE}: key 'options' lacks the integers "
                "max_ind_range and min_count; preprocess again"
            )
        prep = {k: options[k] for k in keys}
        if prep["max_ind_range"] > 0:
            return prep, None
        vocab = load_vocabulary(self.directory, options.get("vocabulary_sha256"))
        if vocab.table_sizes != list(self.table_sizes):
            raise ValueError(f"{self.directory}: vocabulary.npz does not fit table_sizes")
        return prep, vocab

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"split: must be one of {SPLITS}, got {name!r}")
        segments = [
            (self._parts[p], start, stop) for p, start, stop in self.metadata["splits"][name]
        ]
        return Split(name, segments)


class _Part:
    """One part's three arrays, memory-mapped read-only, and their files' expected sizes.

    A file truncated while mapped would kill the process with SIGBUS on the first read
    past its new end, which no handler can turn into an exception. So every read goes
    through :meth:`column`, which compares the file's current size (fstat of the map's
    descriptor) with the size metadata.json promises, and refuses in one line naming
    the file; the sizes were checked when the part was opened, too.
    """

    def __init__(self, directory: Path, part: dict):
        rows = part["rows"]
        self.paths, self.expected, self._maps, self.arrays = [], [], [], []
        for kind in ("dense", "categorical", "labels"):
            _, dtype, cols = PART_FILES[kind]
            shape = (rows, cols) if cols else (rows,)
            path = part_path(directory, part["name"], kind)
            expected = part_bytes(rows, kind)
            if not path.is_file() or path.stat().st_size != expected:
                raise ValueError(f"{path}: missing or not {expected} bytes; preprocess again")
            if rows == 0:  # mmap refuses empty files
                self._maps.append(None)
                self.arrays.append(np.zeros(shape, dtype=dtype))
            else:
                with open(path, "rb") as f:
                    mapped = mmap.mmap(f.fileno(), expected, access=mmap.ACCESS_READ)
                self._maps.append(mapped)
                self.arrays.append(np.frombuffer(mapped, dtype=dtype).reshape(shape))
            self.paths.append(path)
            self.expected.append(expected)

    def column(self, column: int) -> np.ndarray:
        """Array ``column`` (0 dense, 1 categorical, 2 labels), after checking that its
        file still holds every byte the map covers."""
        mapped = self._maps[column]
        if mapped is not None and mapped.size() < self.expected[column]:
            raise ValueError(
                f"{self.paths[column]}: the file shrank to {mapped.size()} of "
                f"{self.expected[column]} bytes while in use (truncated or overwritten?); "
                "preprocess again"
            )
        return self.arrays[column]


class Split:
    """The rows of one split: ``len``, :meth:`rows_slice` and :meth:`batches`."""

    def __init__(self, name: str, segments: list) -> None:
        self.name = name
        self._segments = [(part, start, stop) for part, start, stop in segments if stop > start]
        lengths = [stop - start for _, start, stop in self._segments]
        self._starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def rows_slice(self, start: int, stop: int) -> Rows:
        """Rows [start, stop) of this split (e.g. one MPI rank's share), copied into RAM."""
        n = len(self)
        if not 0 <= start <= stop <= n:
            raise ValueError(f"rows_slice: need 0 <= start <= stop <= {n}, got {start}, {stop}")
        pos = np.arange(start, stop, dtype=np.int64)
        return Rows(self._take(0, pos), self._take(1, pos), self._take(2, pos))

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        full, tail = divmod(len(self), batch_size)
        return full + (1 if tail and not drop_last else 0)

    def batches(
        self,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        drop_last: bool = False,
        *,
        block_rows: int = 4096,
        buffer_blocks: int = 64,
        prefetch_depth: int = 4,
        dense_rows: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """Batches of ``batch_size`` rows in epoch order, from batch ``start_batch`` on.

        ``dense_rows=(lo, hi)``: read dense features and labels only for samples lo..hi-1
        of each batch (one MPI rank's slice; the rest stay zero and the Batch records
        ``local_rows``); the categorical ids are read for every sample.
        """
        for name, value in (("batch_size", batch_size), ("block_rows", block_rows)):
            if value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")
        if buffer_blocks < 1 or prefetch_depth < 1:
            raise ValueError("buffer_blocks and prefetch_depth must be >= 1")
        total = self.num_batches(batch_size, drop_last)
        if not 0 <= start_batch <= total:
            raise ValueError(f"start_batch: must be in [0, {total}], got {start_batch}")
        if dense_rows is not None and not 0 <= dense_rows[0] <= dense_rows[1] <= batch_size:
            raise ValueError(f"dense_rows: must lie in [0, {batch_size}], got {dense_rows}")
        if dense_rows is not None and not drop_last:
            raise ValueError("dense_rows: needs drop_last=True (a short last batch has no slice)")
        plan = _epoch_plan(len(self), block_rows, buffer_blocks, shuffle, seed, epoch)
        slice_ = (batch_size, *dense_rows) if dense_rows is not None else None
        rows = self._ordered_rows(plan, start_batch * batch_size, slice_)
        batches = _to_batches(rows, batch_size, drop_last, dense_rows)
        return prefetch(batches, prefetch_depth)

    def _ordered_rows(self, plan: _EpochPlan, first: int, dense_slice=None) -> Iterator[Rows]:
        """The split's rows in epoch order, one window at a time, from position ``first``.

        dense_slice = (batch_size, lo, hi): read dense and labels only where the epoch
        position modulo batch_size lies in [lo, hi) (zeros elsewhere).
        """
        n = len(self)
        w0 = int(np.searchsorted(plan.window_starts, first, side="right")) - 1
        for w in range(max(w0, 0), len(plan.windows)):
            pos = np.concatenate(  # split positions of the window's blocks, in block order
                [
                    np.arange(b * plan.block_rows, min((b + 1) * plan.block_rows, n))
                    for b in plan.windows[w]
                ]
            )
            if plan.shuffle:
                pos = pos[np.random.default_rng([plan.seed, plan.epoch, w]).permutation(len(pos))]
            start = max(first, int(plan.window_starts[w]))
            pos = pos[start - int(plan.window_starts[w]) :]
            if dense_slice is None:
                yield Rows(self._take(0, pos), self._take(1, pos), self._take(2, pos))
                continue
            batch_size, lo, hi = dense_slice
            in_batch = (start + np.arange(len(pos))) % batch_size
            mine = (in_batch >= lo) & (in_batch < hi)
            dense = np.zeros((len(pos), NUM_DENSE), np.float32)
            labels = np.zeros(len(pos), np.float32)
            dense[mine] = self._take(0, pos[mine])
            labels[mine] = self._take(2, pos[mine])
            yield Rows(dense, self._take(1, pos), labels)

    def _take(self, column: int, positions: np.ndarray) -> np.ndarray:
        """Column 0 (dense), 1 (categorical) or 2 (labels) at split positions, from the maps.

        The maps are read in ascending row order (then put back in the asked order), so a
        shuffled window still reads each file forwards and the OS readahead keeps working.
        """
        order = np.argsort(positions, kind="stable")
        ascending = positions[order]
        seg = np.searchsorted(self._starts, ascending, side="right") - 1
        if not self._segments:  # an empty split: typed, shaped empty columns
            empty = _rows_from_pieces([])
            return (empty.dense, empty.categorical, empty.labels)[column]
        first = self._segments[0][0].arrays[column]
        gathered = np.empty((len(positions), *first.shape[1:]), first.dtype)
        bounds = np.searchsorted(seg, np.arange(len(self._segments) + 1))
        for s in range(len(self._segments)):
            lo, hi = bounds[s], bounds[s + 1]
            if lo < hi:
                part, seg_start, _ = self._segments[s]
                rows = seg_start + ascending[lo:hi] - self._starts[s]
                gathered[lo:hi] = part.column(column)[rows]
        out = np.empty_like(gathered)
        out[order] = gathered
        return out.astype(np.float32) if column == 2 else out


@dataclass(frozen=True)
class _EpochPlan:
    block_rows: int
    windows: list  # block ids of each window, in epoch order
    window_starts: np.ndarray  # first epoch position of each window
    shuffle: bool
    seed: int
    epoch: int


def _epoch_plan(
    n: int, block_rows: int, buffer_blocks: int, shuffle: bool, seed: int, epoch: int
) -> _EpochPlan:
    num_blocks = -(-n // block_rows)
    order = np.arange(num_blocks, dtype=np.int64)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_blocks)
    block_len = np.minimum(block_rows, n - order * block_rows)
    windows = [order[w : w + buffer_blocks] for w in range(0, num_blocks, buffer_blocks)]
    window_len = [
        int(block_len[w : w + buffer_blocks].sum()) for w in range(0, num_blocks, buffer_blocks)
    ]
    window_starts = np.concatenate([[0], np.cumsum(window_len, dtype=np.int64)])[:-1]
    return _EpochPlan(block_rows, windows, window_starts, shuffle, seed, epoch)


def _rows_from_pieces(pieces: list) -> Rows:
    if not pieces:
        return Rows(
            np.zeros((0, NUM_DENSE), np.float32),
            np.zeros((0, NUM_CATEGORICAL), np.int32),
            np.zeros(0, np.float32),
        )
    dense = np.concatenate([p[0] for p in pieces])
    cat = np.concatenate([p[1] for p in pieces])
    labels = np.concatenate([p[2] for p in pieces]).astype(np.float32)
    return Rows(dense, cat, labels)


def _to_batches(
    windows: Iterable[Rows], batch_size: int, drop_last: bool, local_rows=None
) -> Iterator[Batch]:
    """Cut a stream of row windows into batches; a batch may straddle two windows."""
    carry: Rows | None = None
    for rows in windows:
        if carry is not None:
            pieces = [(r.dense, r.categorical, r.labels) for r in (carry, rows)]
            rows = _rows_from_pieces(pieces)
        n_full = len(rows) // batch_size * batch_size
        for a in range(0, n_full, batch_size):
            yield make_batch(rows, a, a + batch_size, local_rows)
        carry = _tail(rows, n_full)
    if carry is not None and len(carry) and not drop_last:
        yield make_batch(carry, 0, len(carry))


def _tail(rows: Rows, start: int) -> Rows | None:
    if start >= len(rows):
        return None
    return Rows(rows.dense[start:], rows.categorical[start:], rows.labels[start:])


def make_batch(rows: Rows, start: int, stop: int, local_rows=None) -> Batch:
    """A Batch of rows [start, stop): one lookup per table per sample."""
    b = stop - start
    t = rows.categorical.shape[1]
    offsets = np.arange(t, dtype=np.int64)[:, None] * b + np.arange(b + 1, dtype=np.int64)
    indices = np.ascontiguousarray(rows.categorical[start:stop].T, dtype=np.int64).ravel()
    return Batch(
        dense=np.ascontiguousarray(rows.dense[start:stop]),
        offsets=offsets,
        indices=indices,
        labels=np.ascontiguousarray(rows.labels[start:stop], dtype=np.float32),
        local_rows=local_rows,
    )
