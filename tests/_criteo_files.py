"""Raw Criteo test files with every quirk, and a slow plain-Python preprocessing oracle."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from numbadlrm.data.dataset import ProcessedData

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo"


# ------------------------------------------------------------------ the oracle (str.split)


def python_parse_line(line: str) -> tuple[int, list[float], list[int | None]]:
    """label, dense (float64 log(max(x, 0) + 1)), raw ids (None = empty)."""
    fields = line.rstrip("\n").rstrip("\r").split("\t")
    assert len(fields) <= 40
    fields += [""] * (40 - len(fields))
    label = int(fields[0])
    assert label in (0, 1)
    dense = [math.log(max(int(x), 0) + 1) if x != "" else 0.0 for x in fields[1:14]]
    raw = [int(x, 16) if x != "" else None for x in fields[14:40]]
    return label, dense, raw


def python_lines(paths: list[Path]) -> list[str]:
    lines = []
    for p in paths:
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", newline="") as f:
            lines.extend(ln for ln in f.read().split("\n") if ln != "")
    return lines


def python_preprocess(paths: list[Path], max_ind_range: int = 0, min_count: int = 0):
    """All rows of all files: (labels, dense, categorical, table_sizes), the slow way."""
    parsed = [python_parse_line(ln) for ln in python_lines(paths)]
    labels = [p[0] for p in parsed]
    dense = [p[1] for p in parsed]
    if max_ind_range:
        cat = [[0 if v is None else v % max_ind_range for v in p[2]] for p in parsed]
        return labels, dense, cat, [max_ind_range] * 26
    k = max(min_count, 1)
    vocab = []
    for t in range(26):
        counts: dict[int, int] = {}
        for p in parsed:
            if p[2][t] is not None:
                counts[p[2][t]] = counts.get(p[2][t], 0) + 1
        frequent = sorted(v for v, c in counts.items() if c >= k)
        vocab.append({v: 2 + i for i, v in enumerate(frequent)})
    cat = [[0 if v is None else vocab[t].get(v, 1) for t, v in enumerate(p[2])] for p in parsed]
    return labels, dense, cat, [2 + len(v) for v in vocab]


def all_rows(out: Path):
    """Every row of a processed directory in part order (all splits)."""
    data = ProcessedData(out)
    rows = [
        data.split(s).rows_slice(0, len(data.split(s))) for s in ("train", "validation", "test")
    ]
    labels = np.concatenate([r.labels for r in rows])
    dense = np.concatenate([r.dense for r in rows])
    cat = np.concatenate([r.categorical for r in rows])
    return data, labels, dense, cat


def assert_matches_python(out: Path, paths: list[Path], max_ind_range=0, min_count=0) -> None:
    labels, dense, cat, sizes = python_preprocess(paths, max_ind_range, min_count)
    data, got_labels, got_dense, got_cat = all_rows(out)
    assert list(data.table_sizes) == sizes
    assert got_labels.shape[0] == len(labels)
    for i in range(len(labels)):
        assert got_labels[i] == labels[i], f"row {i} label"
        np.testing.assert_allclose(got_dense[i], dense[i], rtol=1e-6, atol=0, err_msg=f"row {i}")
        assert got_cat[i].tolist() == cat[i], f"row {i} categorical"


# ------------------------------------------------------------------ quirky raw files


def quirky_lines(rng: np.random.Generator, n: int, vocab: int = 40) -> list[str]:
    """Lines with empty fields, negatives, missing trailing fields, ids >= 2**31, CRLF."""
    big = [0xFFFFFFFF, 0x80000000, 0xDEADBEEF, 0x7FFFFFFF]
    lines = []
    for i in range(n):
        ints = [str(int(rng.integers(-3, 5000))) if rng.random() > 0.2 else "" for _ in range(13)]
        ints[1] = str(-int(rng.integers(1, 4))) if i % 5 == 0 else ints[1]  # negatives
        cats = []
        for _ in range(26):
            r = rng.random()
            if r < 0.15:
                cats.append("")
            elif r < 0.25:
                cats.append(f"{big[int(rng.integers(0, 4))]:08x}")
            else:
                cats.append(f"{int(rng.integers(0, vocab)) * 2654435761 % 2**32:08x}")
        if i % 7 == 0:
            cats[3] = cats[3].upper()
        fields = [str(int(rng.random() < 0.3)), *ints, *cats]
        if i % 4 == 1:  # trailing empty fields dropped
            fields = fields[: 40 - int(rng.integers(1, 6))]
            fields[-1] = fields[-1] or "1"
        line = "\t".join(fields)
        lines.append(line + ("\r" if i % 11 == 3 else ""))
    return lines


def write_raw(path: Path, lines: list[str], final_newline: bool = True) -> Path:
    text = "\n".join(lines) + ("\n" if final_newline else "")
    if path.suffix == ".gz":
        with gzip.open(path, "wt", newline="") as f:
            f.write(text)
    else:
        path.write_text(text, newline="")
    return path
