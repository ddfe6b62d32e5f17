"""Reading raw Criteo files: blocks cut at newlines (plain or gzip, hashed while read),
parsed by a parallel Numba kernel into dense, raw ids and labels; the errors that name a
bad line's file, line, field and value. The format is in :mod:`numbadlrm.data.criteo`."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numbadlrm.data.background import prefetch
from numbadlrm.data.criteo_options import PreprocessOptions
from numbadlrm.data.dataset import NUM_CATEGORICAL, NUM_DENSE
from numbadlrm.kernels.parse import (
    ERR_FIELDS,
    ERR_HEX,
    ERR_INT,
    ERR_LABEL,
    ERR_OK,
    NUM_FIELDS,
    parse_lines,
)

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
