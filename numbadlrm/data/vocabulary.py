"""The frequency vocabulary of ``--min-count K``: per table, the sorted raw ids seen at
least K times. Row ids: 0 = empty (missing), 1 = rare, 2 + i = the i-th frequent id.

    vocabulary.npz    C1 .. C26: each table's frequent raw ids, int64, strictly increasing
    digest            sha256 of all keys and the table offsets (in metadata and markers)

A model trained on a dataset carries its vocabulary in its checkpoint, so predicting on
raw rows maps ids exactly as training did (numbadlrm.cli.tools.predict_to_file).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numbadlrm.io.files import atomic_file
from numbadlrm.kernels.parse import NUM_CATEGORICAL

VOCABULARY_FILE = "vocabulary.npz"


@dataclass
class Vocabulary:
    keys: np.ndarray  # all tables' frequent raw ids, sorted within each table
    offsets: np.ndarray  # (27,) table t's keys are keys[offsets[t]:offsets[t + 1]]
    digest: str  # sha256 of keys and offsets

    @classmethod
    def from_tables(cls, tables: list[np.ndarray]) -> Vocabulary:
        """From 26 per-table arrays of sorted distinct raw ids (ValueError otherwise)."""
        if len(tables) != NUM_CATEGORICAL:
            raise ValueError(f"vocabulary: expected {NUM_CATEGORICAL} tables, got {len(tables)}")
        for t, k in enumerate(tables):
            if (
                k.ndim != 1
                or k.dtype != np.int64
                or (k.size and (k[0] < 0 or (np.diff(k) <= 0).any()))
            ):
                raise ValueError(f"vocabulary: C{t + 1} is not sorted distinct int64 ids >= 0")
        offsets = np.concatenate([[0], np.cumsum([k.size for k in tables])]).astype(np.int64)
        keys = np.concatenate(tables).astype(np.int64)
        digest = hashlib.sha256(keys.tobytes() + offsets.tobytes()).hexdigest()
        return cls(keys, offsets, digest)

    @property
    def table_sizes(self) -> list[int]:
        return [2 + int(n) for n in np.diff(self.offsets)]

    def tables(self) -> dict[str, np.ndarray]:
        """{"C1": ids, ..., "C26": ids}, as in vocabulary.npz."""
        o = self.offsets
        return {f"C{t + 1}": self.keys[o[t] : o[t + 1]] for t in range(NUM_CATEGORICAL)}

    def save(self, directory: Path) -> None:
        with atomic_file(Path(directory) / VOCABULARY_FILE) as f:
            np.savez(f, **self.tables())


def load_vocabulary(directory: Path, digest: str) -> Vocabulary:
    """A processed directory's vocabulary.npz, checked against the digest in its metadata."""
    path = Path(directory) / VOCABULARY_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            vocab = Vocabulary.from_tables([z[f"C{t + 1}"] for t in range(NUM_CATEGORICAL)])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the vocabulary ({exc}); preprocess again") from None
    if vocab.digest != digest:
        raise ValueError(f"{path}: does not match its metadata.json (sha256); preprocess again")
    return vocab


def merge_counts(keys, counts, new_keys, new_counts):
    """Add sorted unique (new_keys, new_counts) into sorted (keys, counts)."""
    pos = np.searchsorted(keys, new_keys)
    found = pos < keys.size
    found[found] = keys[pos[found]] == new_keys[found]
    counts[pos[found]] += new_counts[found]
    if found.all():
        return keys, counts
    new = ~found
    return np.insert(keys, pos[new], new_keys[new]), np.insert(counts, pos[new], new_counts[new])


def build_vocabulary(out: Path, names: list[str], min_count: int) -> Vocabulary:
    """Merge every part's counts (counts/NAME.npz); keep ids seen at least min_count times."""
    per_table = []
    for t in range(NUM_CATEGORICAL):
        keys, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        for name in names:
            with np.load(out / "counts" / f"{name}.npz") as z:
                keys, counts = merge_counts(keys, counts, z[f"keys{t}"], z[f"counts{t}"])
        per_table.append(keys[counts >= min_count].astype(np.int64))
    vocab = Vocabulary.from_tables(per_table)
    vocab.save(out)
    return vocab
