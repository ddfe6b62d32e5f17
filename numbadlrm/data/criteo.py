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
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from numbadlrm.data.background import prefetch
from numbadlrm.data.dataset import (
    NUM_CATEGORICAL,
    NUM_DENSE,
    PART_FILES,
    part_bytes,
    part_path,
)
from numbadlrm.data.metadata import FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, read_metadata
from numbadlrm.data.vocabulary import Vocabulary, build_vocabulary, merge_counts
from numbadlrm.io.files import ArrayWriter, atomic_file, remove_stale, write_json_atomic
from numbadlrm.kernels.parse import (
    ERR_FIELDS,
    ERR_HEX,
    ERR_INT,
    ERR_LABEL,
    ERR_OK,
    NUM_FIELDS,
    hash_ids,
    map_vocabulary,
    parse_lines,
)

SPLIT_MODES = ("kaggle", "days", "fractions")
_ERR_TEXT = {
    ERR_FIELDS: f"too many fields (a Criteo line has {NUM_FIELDS}), extra value",
    ERR_INT: "not an integer",
    ERR_HEX: "not a hex id (at most 15 hex digits)",
    ERR_LABEL: "label must be 0 or 1, got",
}


class CriteoError(ValueError):
    """A problem with the raw inputs or the output directory; the CLI prints it."""


class CriteoFormatError(CriteoError):
    """A malformed line or file: the message names file, line, field and value."""


@dataclass(frozen=True)
class PreprocessOptions:
    """How to turn raw files into arrays. ``max_ind_range > 0`` hashes, else vocabulary."""

    split: str = "fractions"  # "kaggle" | "days" | "fractions"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_ind_range: int = 0
    min_count: int = 0  # vocabulary mode threshold; 0 means 1 (keep every seen value)
    skip_bad_lines: bool = False
    chunk_bytes: int = 8 << 20
    sub_sample_rate: float = 0.0  # drop each label-0 line with this probability

    def __post_init__(self) -> None:
        if self.split not in SPLIT_MODES:
            raise ValueError(f"split: must be one of {SPLIT_MODES}, got {self.split!r}")
        fr = tuple(float(f) for f in self.split_fractions)
        object.__setattr__(self, "split_fractions", fr)
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(
                f"split_fractions: need three non-negative fractions summing to 1, got {fr}"
            )
        if not 0 <= self.max_ind_range <= 2**31 - 1:
            raise ValueError(f"max_ind_range: must be in [0, 2**31 - 1], got {self.max_ind_range}")
        if self.min_count < 0:
            raise ValueError(f"min_count: must be >= 0, got {self.min_count}")
        if self.max_ind_range > 0 and self.min_count > 0:
            raise ValueError("choose one of max_ind_range (hashing) and min_count (vocabulary)")
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes: must be >= 1, got {self.chunk_bytes}")
        if not 0.0 <= self.sub_sample_rate < 1.0:
            raise ValueError(f"sub_sample_rate: must be in [0, 1), got {self.sub_sample_rate}")

    @property
    def hashing(self) -> bool:
        return self.max_ind_range > 0

    def output_key(self) -> dict:
        """The options that change the output arrays (part markers must match them)."""
        key = {
            "format_version": FORMAT_VERSION,
            "max_ind_range": self.max_ind_range,
            "min_count": 0 if self.hashing else max(self.min_count, 1),
            "skip_bad_lines": self.skip_bad_lines,
        }
        if self.sub_sample_rate:  # absent when 0: earlier outputs stay valid
            key["sub_sample_rate"] = self.sub_sample_rate
        return key


def field_name(field: int) -> str:
    """0 -> "label", 1..13 -> "I1".."I13", 14..39 -> "C1".."C26", 40+ -> "field 41"."""
    if field == 0:
        return "label"
    if field <= NUM_DENSE:
        return f"I{field}"
    if field < NUM_FIELDS:
        return f"C{field - NUM_DENSE}"
    return f"field {field + 1}"


def line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop (exclusive, without ``\\n`` or ``\\r\\n``) of every line in buf."""
    newlines = np.flatnonzero(buf == 10)
    ends = newlines if buf.size and buf[-1] == 10 else np.append(newlines, buf.size)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = newlines[: ends.size - 1] + 1
    cr = ends > starts
    cr[cr] = buf[ends[cr] - 1] == 13
    return starts, ends - cr


# ---------------------------------------------------------------- reading raw files


class _HashingReader:
    """A binary file whose bytes are fed to sha256 as they are read."""

    def __init__(self, f) -> None:
        self.f = f
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.sha256.update(data)
        return data


@dataclass
class _Chunk:
    data: bytes | None  # complete lines (the last may lack its newline); None at the end
    length: int = 0  # bytes of data that belong to this chunk
    sha256: str = ""  # set on the final item
    raw_bytes: int = 0  # decompressed bytes read, set on the final item
    consumed: int = 0  # bytes of the file (compressed, for .gz) read so far: the progress


def read_chunks(path: Path, chunk_bytes: int) -> Iterator[_Chunk]:
    """Stream ``path`` (plain or .gz) as blocks cut at the last newline, hashing the file."""
    with open(path, "rb") as f:
        hashing = _HashingReader(f)
        stream = gzip.GzipFile(fileobj=hashing, mode="rb") if _is_gzip(path) else hashing
        leftover = b""
        total = 0
        try:
            while block := stream.read(chunk_bytes):
                total += len(block)
                data = leftover + block if leftover else block
                cut = data.rfind(b"\n") + 1
                if cut:
                    yield _Chunk(data, cut, consumed=f.tell())
                leftover = data[cut:]
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise CriteoFormatError(f"{path}: truncated or corrupt gzip file ({exc})") from None
        except OSError as exc:
            raise CriteoError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if leftover:  # no final newline
            yield _Chunk(leftover, len(leftover), consumed=f.tell())
        while f.read(1 << 20):  # hash any bytes the decompressor did not need
            pass
        yield _Chunk(None, sha256=hashing.sha256.hexdigest(), raw_bytes=total)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


@dataclass
class ParsedChunk:
    dense: np.ndarray  # (L, 13) float32
    raw: np.ndarray  # (L, 26) int64, -1 = empty
    labels: np.ndarray  # (L,) uint8
    skipped: int  # bad lines dropped
    consumed: int = 0  # bytes of the file read up to this chunk (for the progress bar)


def parse_chunk(
    chunk: _Chunk, path: Path, first_line: int, skip_bad_lines: bool
) -> tuple[ParsedChunk, int]:
    """Parse a chunk's lines; returns the rows and the number of lines it held."""
    buf = np.frombuffer(chunk.data, dtype=np.uint8, count=chunk.length)
    starts, ends = line_bounds(buf)
    n = starts.size
    dense = np.empty((n, NUM_DENSE), np.float32)
    raw = np.empty((n, NUM_CATEGORICAL), np.int64)
    labels = np.empty(n, np.uint8)
    errors = np.empty((n, 4), np.int64)
    parse_lines(dense, raw, labels, errors, buf, starts, ends)
    bad = np.flatnonzero(errors[:, 0])
    if bad.size == 0:
        return ParsedChunk(dense, raw, labels, 0), n
    if not skip_bad_lines:
        raise CriteoFormatError(_bad_line_message(path, first_line, bad[0], errors, buf))
    keep = errors[:, 0] == ERR_OK
    return ParsedChunk(dense[keep], raw[keep], labels[keep], int(bad.size)), n


def _bad_line_message(path: Path, first_line: int, i: int, errors: np.ndarray, buf) -> str:
    code, field, a, b = (int(x) for x in errors[i])
    value = bytes(buf[a:b]).decode("utf-8", errors="replace")
    if len(value) > 60:
        value = value[:57] + "..."
    return (
        f"{path}: line {first_line + i + 1}, field {field_name(field)}: "
        f"{_ERR_TEXT[code]} {value!r} (use --skip-bad-lines to skip such lines)"
    )


def parsed_chunks(
    path: Path, options: PreprocessOptions, info: dict, part: str = ""
) -> Iterator[ParsedChunk]:
    """Every chunk of ``path`` parsed; fills info with sha256, lines and bad_lines_skipped.

    With options.sub_sample_rate, label-0 rows are dropped (see the module docstring),
    from a stream seeded by the part's name.
    """
    chunks = prefetch(read_chunks(path, options.chunk_bytes), depth=1)
    rng = np.random.default_rng(list(part.encode()) or 0)
    with contextlib.closing(chunks):  # stops the reader thread at once on an error
        for parsed in _parse_all(chunks, path, options, info):
            yield sub_sample(parsed, options.sub_sample_rate, rng)


def sub_sample(parsed: ParsedChunk, rate: float, rng: np.random.Generator) -> ParsedChunk:
    """Drop each label-0 row when its uniform draw is below rate (the reference: "if target
    == 0 and rand_u < sub_sample_rate: continue"); one draw per row, in order."""
    if rate == 0:
        return parsed
    keep = (parsed.labels != 0) | (rng.random(parsed.labels.size) >= rate)
    return ParsedChunk(
        parsed.dense[keep], parsed.raw[keep], parsed.labels[keep], parsed.skipped, parsed.consumed
    )


def _parse_all(chunks, path: Path, options: PreprocessOptions, info: dict):
    lines = skipped = 0
    for chunk in chunks:
        if chunk.data is None:
            if chunk.raw_bytes == 0:
                raise CriteoFormatError(f"{path}: file is empty (no rows)")
            info.update(sha256=chunk.sha256, lines=lines, bad_lines_skipped=skipped)
            return
        parsed, n = parse_chunk(chunk, path, lines, options.skip_bad_lines)
        parsed.consumed = chunk.consumed
        lines += n
        skipped += parsed.skipped
        yield parsed


# ---------------------------------------------------------------- writing parts


def _source_identity(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _part_is_finished(out: Path, name: str, identity: dict, key: dict) -> dict | None:
    """The marker of a finished part whose source and options still match, else None."""
    marker = _read_marker(out / f"{name}.json")
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


def _pass_bar(name: str, paths: list[Path], progress: bool) -> tqdm:
    """One bar per pass ("count", "write") over all inputs: total = their bytes."""
    total = sum(p.stat().st_size for p in paths)
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not progress, smoothing=0.05)  # fmt: skip


def _finish_part(out: Path, marker: dict) -> None:
    """Write the marker that makes a part count as finished (tests patch this to crash)."""
    write_json_atomic(out / f"{marker['name']}.json", marker)


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


# ---------------------------------------------------------------- splits and driver


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
        identity = _source_identity(path)
        marker_dir = out / "counts" if counting else out
        marker = _part_is_finished_pass(marker_dir, out, name, identity, key, counting)
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


def _part_is_finished_pass(marker_dir, out, name, identity, key, counting) -> dict | None:
    if not counting:
        return _part_is_finished(out, name, identity, key)
    marker = _read_marker(marker_dir / f"{name}.json")
    ok = (
        marker is not None
        and marker.get("options") == key
        and all(marker.get(k) == v for k, v in identity.items())
        and (marker_dir / f"{name}.npz").is_file()
    )
    return marker if ok else None


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
        if not src.is_file() or any(part.get(k) != v for k, v in _source_identity(src).items()):
            return False
    return True
