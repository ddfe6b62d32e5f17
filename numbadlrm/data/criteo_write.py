"""One pass over one raw file: ``write_part`` converts it into a part's three arrays,
``count_part`` counts its ids (vocabulary mode's first pass); the markers that say a
part is finished. The layout is in :mod:`numbadlrm.data.criteo`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from numbadlrm.data.criteo_options import PreprocessOptions
from numbadlrm.data.criteo_read import parsed_chunks
from numbadlrm.data.dataset import NUM_CATEGORICAL, PART_FILES, part_bytes, part_path
from numbadlrm.data.vocabulary import merge_counts
from numbadlrm.io.files import ArrayWriter, atomic_file
from numbadlrm.kernels.parse import hash_ids, map_vocabulary


def source_identity(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _part_is_finished(out: Path, name: str, identity: dict, key: dict) -> dict | None:
    """The marker of a finished part whose source and options still match, else None."""
    marker = read_marker(out / f"{name}.json")
    if marker is None or marker.get("options") != key:
        return None
    if any(marker.get(k) != v for k, v in identity.items()):
        return None
    for kind in PART_FILES:
        p = part_path(out, name, kind)
        if not p.is_file() or p.stat().st_size != part_bytes(marker["rows"], kind):
            return None
    return marker


def write_part(
    out: Path, name: str, path: Path, options: PreprocessOptions, vocab, bar: tqdm
) -> dict:
    """Convert one raw file into the part's three arrays (tmp files renamed at the end).

    Each file's size is checked against rows x columns x itemsize before any rename.
    """
    info: dict = {}
    rows = 0
    bar.set_description(f"write {path.name}")
    progress = _FileProgress(bar, path)
    with contextlib.ExitStack() as stack:
        files = {k: stack.enter_context(ArrayWriter(part_path(out, name, k))) for k in PART_FILES}
        chunks = stack.enter_context(contextlib.closing(parsed_chunks(path, options, info, name)))
        for parsed in chunks:
            cat = np.empty(parsed.raw.shape, np.int32)
            if options.hashing:
                hash_ids(cat, parsed.raw, options.max_ind_range)
            else:
                map_vocabulary(cat, parsed.raw, vocab.keys, vocab.offsets)
            files["dense"].write(parsed.dense)
            files["categorical"].write(cat)
            files["labels"].write(parsed.labels)
            rows += parsed.labels.size
            progress.to(parsed.consumed)
        progress.done()
        for kind, writer in files.items():
            writer.finish(part_bytes(rows, kind))
        for writer in files.values():
            writer.commit()
    return {"name": name, "rows": rows, **info}


class _FileProgress:
    """Moves a bytes bar (one pass over every input) along one file as it is read."""

    def __init__(self, bar: tqdm, path: Path):
        self.bar, self.size, self.seen = bar, path.stat().st_size, 0

    def to(self, consumed: int) -> None:
        consumed = min(consumed, self.size)
        self.bar.update(consumed - self.seen)
        self.seen = consumed

    def done(self) -> None:
        self.to(self.size)


# ---------------------------------------------------------------- vocabulary (min-count)


def count_part(out: Path, name: str, path: Path, options: PreprocessOptions, bar: tqdm) -> dict:
    """Pass 1 of vocabulary mode: count every raw id of one file, saved under counts/."""
    tables = [(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in range(NUM_CATEGORICAL)]
    info: dict = {}
    rows = 0
    bar.set_description(f"count {path.name}")
    progress = _FileProgress(bar, path)
    for parsed in parsed_chunks(path, options, info, name):
        for t in range(NUM_CATEGORICAL):
            col = parsed.raw[:, t]
            u, c = np.unique(col[col >= 0], return_counts=True)
            tables[t] = merge_counts(*tables[t], u, c)
        rows += parsed.labels.size
        progress.to(parsed.consumed)
    progress.done()
    arrays = {f"keys{t}": k for t, (k, _) in enumerate(tables)}
    arrays.update({f"counts{t}": c for t, (_, c) in enumerate(tables)})
    with atomic_file(out / "counts" / f"{name}.npz") as f:
        np.savez(f, **arrays)
    return {"name": name, "rows": rows, **info}


def part_is_finished_pass(marker_dir, out, name, identity, key, counting) -> dict | None:
    if not counting:
        return _part_is_finished(out, name, identity, key)
    marker = read_marker(marker_dir / f"{name}.json")
    ok = (
        marker is not None
        and marker.get("options") == key
        and all(marker.get(k) == v for k, v in identity.items())
        and (marker_dir / f"{name}.npz").is_file()
    )
    return marker if ok else None
