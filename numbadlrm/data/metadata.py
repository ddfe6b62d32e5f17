"""metadata.json of a processed Criteo directory: its schema, checked when it is opened.

    format, format_version    "numbadlrm-criteo", 1
    num_dense, num_categorical 13, 26
    table_sizes               26 positive ints (rows of each embedding table)
    parts                     [{"name": "part-000", "rows": N, ...}, ...]  distinct names
    splits                    {"train": [[part, start, stop], ...], "validation": ..., "test": ...}
                              0 <= start <= stop <= the part's rows

Anything else (sources, checksums, options) is informational. A file that breaks the
schema raises ValueError naming the file, the key and the value: a negative start would
otherwise wrap around to the end of a part, a stop past the rows read other memory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from numbadlrm.kernels.parse import NUM_CATEGORICAL, NUM_DENSE

FORMAT_NAME = "numbadlrm-criteo"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
SPLITS = ("train", "validation", "test")
_PART_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # a file name, no directories


def read_metadata(path: Path) -> dict:
    """Load and check ``path`` (a metadata.json); returns the parsed dict."""
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); preprocess again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a {FORMAT_NAME} metadata file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version}, this numbadlrm reads {FORMAT_VERSION}; "
            "preprocess the raw files again"
        )
    check = _Checker(path, meta)
    check.equals("num_dense", NUM_DENSE)
    check.equals("num_categorical", NUM_CATEGORICAL)
    sizes = check.get("table_sizes", list)
    if len(sizes) != NUM_CATEGORICAL or not all(_is_int(s) and s >= 1 for s in sizes):
        check.fail("table_sizes", sizes, f"expected {NUM_CATEGORICAL} positive integers")
    rows = _check_parts(check, check.get("parts", list))
    splits = check.get("splits", dict)
    if sorted(splits) != sorted(SPLITS):
        check.fail("splits", sorted(splits), f"expected the keys {list(SPLITS)}")
    for name in SPLITS:
        for i, segment in enumerate(check.get(f"splits.{name}", list, splits[name])):
            _check_segment(check, f"splits.{name}[{i}]", segment, rows)
    return meta


class _Checker:
    def __init__(self, path: Path, meta: dict):
        self.path, self.meta = path, meta

    def fail(self, key: str, value, problem: str):
        text = json.dumps(value)
        text = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"{self.path}: key '{key}' = {text}: {problem}; preprocess again")

    def get(self, key: str, kind: type, value=None):
        if value is None:
            if key not in self.meta:
                raise ValueError(f"{self.path}: missing key '{key}'; preprocess again")
            value = self.meta[key]
        if not isinstance(value, kind):
            self.fail(key, value, f"expected a {'list' if kind is list else 'JSON object'}")
        return value

    def equals(self, key: str, expected: int) -> None:
        if key not in self.meta:
            raise ValueError(f"{self.path}: missing key '{key}'; preprocess again")
        if not _is_int(self.meta[key]) or self.meta[key] != expected:
            self.fail(key, self.meta[key], f"expected {expected}")


def _check_parts(check: _Checker, parts: list) -> dict[str, int]:
    """{part name: rows}; names are file names (no directories), distinct."""
    rows: dict[str, int] = {}
    if not parts:
        check.fail("parts", parts, "expected at least one part")
    for i, part in enumerate(parts):
        key = f"parts[{i}]"
        if not isinstance(part, dict) or not {"name", "rows"} <= set(part):
            check.fail(key, part, "expected an object with 'name' and 'rows'")
        name, n = part["name"], part["rows"]
        if not isinstance(name, str) or not _PART_NAME.fullmatch(name) or name in rows:
            check.fail(f"{key}.name", name, "expected a distinct file name (no directories)")
        if not _is_int(n) or n < 0:
            check.fail(f"{key}.rows", n, "expected a row count >= 0")
        rows[name] = n
    return rows


def _check_segment(check: _Checker, key: str, segment, rows: dict[str, int]) -> None:
    if not (isinstance(segment, list) and len(segment) == 3):
        check.fail(key, segment, "expected [part, start, stop]")
    part, start, stop = segment
    if part not in rows:
        check.fail(key, segment, f"unknown part {part!r} (parts: {', '.join(rows)})")
    if not (_is_int(start) and _is_int(stop)):
        check.fail(key, segment, "start and stop must be integers")
    if not 0 <= start <= stop <= rows[part]:
        check.fail(key, segment, f"need 0 <= start <= stop <= {rows[part]} (the rows of {part})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
