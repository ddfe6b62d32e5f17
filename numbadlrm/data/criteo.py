"""Raw Criteo click logs (Kaggle ``train.txt``, Terabyte ``day_0..day_23``) -> binary arrays.

Input: one example per line, 40 tab-separated fields, plain or gzip:

    label  I1 .. I13                      C1 .. C26
    0/1    integers (may be <0 or empty)  hex ids, 8 digits (may be empty)

Missing trailing fields count as empty; ``\\r\\n`` line ends are accepted.

Transform (as the reference DLRM):

    dense[j]  = float32(log(max(I_j, 0) + 1))     empty -> 0 -> 0.0 (log computed in float64)
    raw id    = int(C_j, 16) as int64 (ids >= 2**31 are fine; at most 15 hex digits)
    --max-ind-range N (hashing, one pass):   id = raw % N,  empty -> 0 (as the reference)
        table size N for every table.
    --data-sub-sample-rate r (the reference's): each label-0 line is dropped with
        probability r, from one uniform draw per line in file order, seeded by the part
        (so both passes and any rerun drop the same lines); 0 keeps every line
    --min-count K (vocabulary, two passes: count, then map):
        id 0 = empty (missing), id 1 = rare (seen < K times), ids 2.. = frequent raw
        values in ascending order; table size 2 + (number of frequent values).
        Counts cover every input row, all splits, as the reference's dictionaries do.

Output directory layout (format version 1, all little-endian, C order, no headers):

    part-000.dense.f32         (N0, 13) float32     one "part" per input file, in the
    part-000.categorical.i32   (N0, 26) int32       order the inputs were given; row r of
    part-000.labels.u8         (N0,)    uint8 0/1   each array is line r of the input
    part-000.json              marker: part finished (source, rows, sha256, options)
    part-001.* ...                                  (bad lines skipped, if asked)
    counts/part-000.npz,.json  vocabulary mode: per-part counts (resumable pass 1)
    vocabulary.npz             vocabulary mode: C1..C26 sorted frequent raw ids
    metadata.json              written last: format, table_sizes, parts, splits, options

A split in metadata.json is a list of ``[part, start, stop]`` row ranges:

    kaggle    one file as 7 "days" (divmod(N, 7), remainder to the first days):
              days 0-5 train, day 6 halved (first half validation, rest test)
    days      e.g. Terabyte day_0..day_23: every file but the last train, the last
              halved into validation and test
    fractions --split-fractions 0.8,0.1,0.1 over all rows of all files, in order

Resuming: each part's arrays are written as ``*.tmp`` and renamed when complete, then
its marker is written; a rerun skips parts whose marker matches the source (path, size,
mtime_ns) and the options. ``sha256`` in the marker/metadata is of the source file's bytes
(compressed bytes for .gz), computed while streaming, so it costs no extra read.

Speed: the reader thread streams blocks of ``chunk_bytes`` cut at the last newline
(decompressing and hashing in the background); a parallel Numba kernel parses the lines
of a block, one output row per line. Memory is bounded by a few chunks.

This module holds the splits and the driver; the options are numbadlrm/data/criteo_options.py,
reading and parsing a raw file criteo_read.py, one pass over one file (write or count)
criteo_write.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from numbadlrm.data.criteo_options import SPLIT_MODES, PreprocessOptions
from numbadlrm.data.criteo_read import CriteoError, CriteoFormatError
from numbadlrm.data.criteo_write import (
    count_part,
    part_is_finished_pass,
    source_identity,
    write_part,
)
from numbadlrm.data.dataset import NUM_CATEGORICAL, NUM_DENSE
from numbadlrm.data.metadata import FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, read_metadata
from numbadlrm.data.vocabulary import Vocabulary, build_vocabulary
from numbadlrm.io.files import remove_stale, write_json_atomic

__all__ = ["SPLIT_MODES", "CriteoError", "CriteoFormatError", "PreprocessOptions", "preprocess",
           "preprocess_for_training", "split_ranges", "terabyte_sources"]  # fmt: skip


def _pass_bar(name: str, paths: list[Path], progress: bool) -> tqdm:
    """One bar per pass ("count", "write") over all inputs: total = their bytes."""
    total = sum(p.stat().st_size for p in paths)
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not progress, smoothing=0.05)  # fmt: skip


def _finish_part(out: Path, marker: dict) -> None:
    """Write the marker that makes a part count as finished (tests patch this to crash)."""
    write_json_atomic(out / f"{marker['name']}.json", marker)


def split_ranges(mode: str, part_rows: list[int], fractions=(0.8, 0.1, 0.1)) -> dict:
    """Global row ranges [start, stop) of train/validation/test over the parts' rows."""
    total = int(sum(part_rows))
    if mode == "kaggle":
        per_day, extra = divmod(total, 7)
        days = [per_day + (1 if d < extra else 0) for d in range(7)]
        last_start = sum(days[:6])
    elif mode == "days":
        last_start = total - part_rows[-1]
    else:
        a = round(total * fractions[0])
        b = min(total, a + round(total * fractions[1]))
        return {"train": (0, a), "validation": (a, b), "test": (b, total)}
    last = total - last_start
    half = last_start + last - last // 2  # np.array_split: the first half gets the extra row
    return {"train": (0, last_start), "validation": (last_start, half), "test": (half, total)}


def _segments(names: list[str], part_rows: list[int], start: int, stop: int) -> list:
    """Global row range -> [[part, start, stop], ...] within the parts."""
    segments = []
    offset = 0
    for name, rows in zip(names, part_rows, strict=True):
        lo, hi = max(start, offset), min(stop, offset + rows)
        if lo < hi:
            segments.append([name, lo - offset, hi - offset])
        offset += rows
    return segments


def _check_inputs(sources: list[Path], options: PreprocessOptions) -> None:
    if not sources:
        raise CriteoError("no input files given")
    for p in sources:
        if not p.exists():
            raise CriteoError(f"{p}: input file not found")
        if not p.is_file():
            raise CriteoError(f"{p}: not a regular file")
    if options.split == "kaggle" and len(sources) != 1:
        raise CriteoError(f"split 'kaggle' needs exactly one file (train.txt), got {len(sources)}")
    if options.split == "days" and len(sources) < 2:
        raise CriteoError("split 'days' needs at least two day files (the last is held out)")


# temporary files of a killed run (and the names older versions used), removed at start
STALE_TMP = ("part-*.tmp", "metadata.json.tmp", "vocabulary.npz.tmp", "vocabulary.tmp.npz",
             "counts/part-*.tmp", "counts/part-*.tmp.npz")  # fmt: skip


def _prepare_out_dir(out: Path) -> None:
    try:
        (out / "counts").mkdir(parents=True, exist_ok=True)
        remove_stale(out, STALE_TMP)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CriteoError(
            f"{out}: output directory is not writable ({exc.strerror or exc})"
        ) from None


def preprocess(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    options: PreprocessOptions | None = None,
    progress: bool = True,
    vocabulary: Vocabulary | None = None,
) -> dict:
    """Raw Criteo files -> a directory that :class:`ProcessedData` opens. Returns the metadata.

    Finished parts of an earlier (interrupted) run with the same sources and options are
    kept, not redone. ``vocabulary`` (vocabulary mode only): map ids with this one (e.g. a
    trained model's) instead of counting the inputs.
    """
    if vocabulary is not None and options is not None and options.hashing:
        raise ValueError("preprocess: a vocabulary is for --min-count mode, not hashing")
    options = options or PreprocessOptions()
    paths = [Path(s) for s in sources]
    if not str(out_dir).strip():  # Path("") would be the current directory
        raise CriteoError(f"out_dir: must name a directory, got {str(out_dir)!r}")
    out = Path(out_dir)
    _check_inputs(paths, options)
    _prepare_out_dir(out)
    (out / METADATA_FILE).unlink(missing_ok=True)  # the directory is incomplete until the end
    names = [f"part-{i:03d}" for i in range(len(paths))]
    key = options.output_key()
    vocab = vocabulary
    if vocab is not None:
        vocab.save(out)
    elif not options.hashing:
        with _pass_bar("count", paths, progress) as bar:
            _run_parts(out, names, paths, key, bar, counting=options)
        vocab = build_vocabulary(out, names, key["min_count"])
    if vocab is not None:
        key = {**key, "vocabulary_sha256": vocab.digest}
    with _pass_bar("write", paths, progress) as bar:
        markers = _run_parts(out, names, paths, key, bar, options=options, vocab=vocab)
    table_sizes = vocab.table_sizes if vocab else [options.max_ind_range] * NUM_CATEGORICAL
    metadata = _metadata(names, markers, table_sizes, options)
    write_json_atomic(out / METADATA_FILE, metadata)
    return metadata


def _run_parts(out, names, paths, key, bar, options=None, vocab=None, counting=None) -> list:
    """Run one pass over every part not already finished; returns the parts' markers."""
    markers = []
    for name, path in zip(names, paths, strict=True):
        identity = source_identity(path)
        marker_dir = out / "counts" if counting else out
        marker = part_is_finished_pass(marker_dir, out, name, identity, key, counting)
        if marker is None:
            if counting:
                info = count_part(out, name, path, counting, bar)
            else:
                info = write_part(out, name, path, options, vocab, bar)
            marker = {**info, **identity, "options": key}
            if counting:
                write_json_atomic(marker_dir / f"{name}.json", marker)
            else:
                _finish_part(out, marker)
        else:
            bar.update(path.stat().st_size)  # finished earlier: counts as read
        markers.append(marker)
    return markers


def _metadata(names: list[str], markers: list[dict], table_sizes: list[int], options) -> dict:
    part_rows = [m["rows"] for m in markers]
    if sum(part_rows) == 0:
        raise CriteoFormatError("no rows left to write (every line was bad)")
    ranges = split_ranges(options.split, part_rows, options.split_fractions)
    splits = {s: _segments(names, part_rows, a, b) for s, (a, b) in ranges.items()}
    parts = [
        {
            k: m[k]
            for k in (
                "name",
                "source",
                "size",
                "mtime_ns",
                "sha256",
                "rows",
                "lines",
                "bad_lines_skipped",
            )
        }
        for m in markers
    ]
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "num_dense": NUM_DENSE,
        "num_categorical": NUM_CATEGORICAL,
        "table_sizes": [int(s) for s in table_sizes],
        "rows": {s: b - a for s, (a, b) in ranges.items()},
        "splits": splits,
        "parts": parts,
        "bad_lines_skipped": sum(m["bad_lines_skipped"] for m in markers),
        "options": {**asdict(options), **markers[0]["options"]},
        "checksum": "sha256 of each source file's bytes, computed while streaming",
    }


def terabyte_sources(prefix: str | Path, days: int = 24) -> list[Path]:
    """``prefix_0 .. prefix_{days-1}``, each plain or with ``.gz`` (e.g. prefix /data/day)."""
    found, missing = [], []
    for d in range(days):
        plain = Path(f"{prefix}_{d}")
        gz = Path(f"{prefix}_{d}.gz")
        if plain.is_file() or gz.is_file():
            found.append(plain if plain.is_file() else gz)
        else:
            missing.append(plain.name)
    if missing:
        raise CriteoError(f"Terabyte day files not found next to {prefix}: {', '.join(missing)}")
    return found


def preprocess_for_training(
    data_set: str,
    raw_data_file: str | Path,
    out_dir: str | Path,
    max_ind_range: int = 0,
    min_count: int = 0,
    skip_bad_lines: bool = False,
    progress: bool = True,
    sub_sample_rate: float = 0.0,
) -> Path:
    """The reference's ``--data-set kaggle|terabyte --raw-data-file`` path.

    kaggle: raw_data_file is train.txt (7-day split). terabyte: raw_data_file is the
    prefix of day_0 .. day_23 (e.g. /data/day). Reuses out_dir when it already holds
    a finished preprocessing of the same sources with the same options.
    """
    if data_set == "kaggle":
        sources, split = [Path(raw_data_file)], "kaggle"
    elif data_set == "terabyte":
        sources, split = terabyte_sources(raw_data_file), "days"
    else:
        raise ValueError(f"data_set: must be 'kaggle' or 'terabyte', got {data_set!r}")
    options = PreprocessOptions(
        split=split,
        max_ind_range=max_ind_range,
        min_count=min_count,
        skip_bad_lines=skip_bad_lines,
        sub_sample_rate=sub_sample_rate,
    )
    out = Path(out_dir)
    if _finished_matches(out, sources, options):
        return out
    preprocess(sources, out, options, progress=progress)
    return out


def _finished_matches(out: Path, sources: list[Path], options: PreprocessOptions) -> bool:
    try:
        meta = read_metadata(out / METADATA_FILE)
    except (OSError, ValueError):  # missing, unfinished or malformed: preprocess again
        return False
    if len(meta["parts"]) != len(sources):
        return False
    used = meta.get("options", {})
    if any(used.get(k) != v for k, v in options.output_key().items()):
        return False
    if used.get("split") != options.split:
        return False
    if used.get("sub_sample_rate", 0.0) != options.sub_sample_rate:
        return False
    for part, src in zip(meta["parts"], sources, strict=True):
        if not src.is_file() or any(part.get(k) != v for k, v in source_identity(src).items()):
            return False
    return True
