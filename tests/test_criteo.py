"""Criteo preprocessing vs a plain-Python oracle: values, modes, splits, resume, bad input."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from numbadlrm.cli import preprocess as preprocess_cli
from numbadlrm.data import criteo
from numbadlrm.data.criteo import (
    CriteoError,
    CriteoFormatError,
    PreprocessOptions,
    preprocess,
    preprocess_for_training,
    split_ranges,
)
from numbadlrm.data.dataset import ProcessedData
from tests._criteo_files import (
    REAL_DATA,
    all_rows,
    assert_matches_python,
    python_preprocess,
    quirky_lines,
    write_raw,
)

SMALL_CHUNK = 997  # bytes: forces many chunk boundaries, lines cut mid-way


@pytest.fixture
def quirky_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    a = write_raw(tmp_path / "day_0", quirky_lines(rng, 150))
    b = write_raw(tmp_path / "day_1.gz", quirky_lines(rng, 120))
    c = write_raw(tmp_path / "day_2", quirky_lines(rng, 90), final_newline=False)
    return [a, b, c]


def run(paths, out, progress=False, **kw) -> dict:
    kw.setdefault("chunk_bytes", SMALL_CHUNK)
    return preprocess(paths, out, PreprocessOptions(**kw), progress=progress)


@pytest.mark.parametrize("chunk_bytes", [SMALL_CHUNK, 1 << 20])
def test_hashing_matches_python(quirky_files, tmp_path, chunk_bytes):
    meta = run(quirky_files, tmp_path / "out", max_ind_range=1000, chunk_bytes=chunk_bytes)
    assert_matches_python(tmp_path / "out", quirky_files, max_ind_range=1000)
    assert [p["rows"] for p in meta["parts"]] == [150, 120, 90]


def test_hashing_keeps_ids_above_2_pow_31(tmp_path):
    fields = ["1"] + [""] * 13 + ["ffffffff", "80000001"] + ["0"] * 24
    path = write_raw(tmp_path / "big.txt", ["\t".join(fields)])
    run([path], tmp_path / "out", max_ind_range=2**31 - 1)
    _, _, _, cat = all_rows(tmp_path / "out")
    assert cat[0, :2].tolist() == [0xFFFFFFFF % (2**31 - 1), 0x80000001 % (2**31 - 1)]


@pytest.mark.parametrize("min_count", [0, 2, 4])
def test_vocabulary_matches_python(quirky_files, tmp_path, min_count):
    run(quirky_files, tmp_path / "out", min_count=min_count)
    assert_matches_python(tmp_path / "out", quirky_files, min_count=min_count)
    vocab = np.load(tmp_path / "out" / "vocabulary.npz")
    assert np.all(np.diff(vocab["C1"]) > 0)


def test_source_checksums_and_metadata(quirky_files, tmp_path):
    meta = run(quirky_files, tmp_path / "out", max_ind_range=50)
    for part, src in zip(meta["parts"], quirky_files, strict=True):
        assert part["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        assert part["size"] == src.stat().st_size
    on_disk = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert on_disk["format_version"] == 1 and on_disk["table_sizes"] == [50] * 26
    assert on_disk["options"]["max_ind_range"] == 50


# ------------------------------------------------------------------ splits


def test_split_ranges_rules():
    # kaggle: divmod(100, 7) = 14 r 2 -> days 15,15,14,14,14,14,14; day 6 = rows 86..99
    assert split_ranges("kaggle", [100]) == {
        "train": (0, 86), "validation": (86, 93), "test": (93, 100),
    }  # fmt: skip
    assert split_ranges("days", [10, 10, 5]) == {
        "train": (0, 20), "validation": (20, 23), "test": (23, 25),
    }  # fmt: skip
    r = split_ranges("fractions", [50, 50], (0.8, 0.1, 0.1))
    assert r == {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}


@pytest.mark.parametrize("mode", ["kaggle", "days", "fractions"])
def test_split_rows_come_from_the_right_lines(quirky_files, tmp_path, mode):
    paths = quirky_files[:1] if mode == "kaggle" else quirky_files
    meta = run(paths, tmp_path / "out", max_ind_range=97, split=mode)
    labels, _, cat, _ = python_preprocess(paths, max_ind_range=97)
    ranges = split_ranges(mode, [p["rows"] for p in meta["parts"]])
    data = ProcessedData(tmp_path / "out")
    for name, (a, b) in ranges.items():
        split = data.split(name)
        assert len(split) == b - a == meta["rows"][name]
        got = split.rows_slice(0, len(split))
        assert got.categorical.tolist() == cat[a:b]
        assert got.labels.tolist() == labels[a:b]


# ------------------------------------------------------------------ resume


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*")) if p.suffix != ".json"}


@pytest.mark.parametrize("mode", [{"max_ind_range": 1000}, {"min_count": 2}])
def test_resume_after_crash_redoes_only_unfinished_parts(quirky_files, tmp_path, monkeypatch, mode):
    clean = tmp_path / "clean"
    run(quirky_files, clean, split="days", **mode)
    out = tmp_path / "out"
    real_finish = criteo._finish_part
    calls = []

    def crash_after_first(out_dir, marker):
        calls.append(marker["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        real_finish(out_dir, marker)

    monkeypatch.setattr(criteo, "_finish_part", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        run(quirky_files, out, split="days", **mode)
    assert not (out / "metadata.json").exists()
    assert (out / "part-000.json").exists() and not (out / "part-001.json").exists()
    monkeypatch.setattr(criteo, "_finish_part", real_finish)
    mtime_0 = (out / "part-000.dense.f32").stat().st_mtime_ns

    written, real_write = [], criteo.write_part
    monkeypatch.setattr(criteo, "write_part", lambda o, name, *a: written.append(name) or
                        real_write(o, name, *a))  # fmt: skip
    counted, real_count = [], criteo.count_part
    monkeypatch.setattr(criteo, "count_part", lambda o, name, *a: counted.append(name) or
                        real_count(o, name, *a))  # fmt: skip
    run(quirky_files, out, split="days", **mode)
    assert written == ["part-001", "part-002"]
    assert counted == []  # vocabulary counts of the first run were kept
    assert (out / "part-000.dense.f32").stat().st_mtime_ns == mtime_0
    assert _files(out) == _files(clean)
    meta, meta_clean = (json.loads((d / "metadata.json").read_text()) for d in (out, clean))
    assert (
        meta["splits"] == meta_clean["splits"] and meta["table_sizes"] == meta_clean["table_sizes"]
    )

    written.clear()
    run(quirky_files, out, split="days", **mode)
    assert written == []  # everything finished: nothing redone


def test_changed_source_is_redone(quirky_files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run(quirky_files, out, max_ind_range=100, split="days")
    write_raw(quirky_files[1], quirky_lines(np.random.default_rng(5), 30))
    written, real_write = [], criteo.write_part
    monkeypatch.setattr(criteo, "write_part", lambda o, name, *a: written.append(name) or
                        real_write(o, name, *a))  # fmt: skip
    run(quirky_files, out, max_ind_range=100, split="days")
    assert written == ["part-001"]
    assert_matches_python(out, quirky_files, max_ind_range=100)


def test_preprocess_for_training_reuses_finished_directory(quirky_files, tmp_path, monkeypatch):
    out = tmp_path / "kaggle"
    got = preprocess_for_training("kaggle", quirky_files[0], out, 1000, progress=False)
    assert got == out and (out / "metadata.json").exists()
    monkeypatch.setattr(criteo, "preprocess", lambda *a, **k: pytest.fail("redone"))
    assert preprocess_for_training("kaggle", quirky_files[0], out, 1000, progress=False) == out


def test_preprocess_for_training_terabyte_days(tmp_path):
    rng = np.random.default_rng(3)
    for d in range(24):
        write_raw(tmp_path / (f"day_{d}.gz" if d % 2 else f"day_{d}"), quirky_lines(rng, 4))
    out = preprocess_for_training("terabyte", tmp_path / "day", tmp_path / "tb", 64, progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["rows"] == {"train": 92, "validation": 2, "test": 2}
    with pytest.raises(CriteoError, match="day_7"):
        (tmp_path / "day_7.gz").unlink()
        preprocess_for_training("terabyte", tmp_path / "day", tmp_path / "tb2", 64)


# ------------------------------------------------------------------ bad input

GOOD = ["0", *["1"] * 13, *["0a0b0c0d"] * 26]


def _with(field: int, value: str) -> str:
    fields = list(GOOD)
    fields[field] = value
    return "\t".join(fields)


BAD_LINES = [
    ("\t".join([*GOOD, "extra"]), "field 41", "extra"),
    (_with(3, "4x"), "field I3", "4x"),
    (_with(5, "1.5"), "field I5", "1.5"),
    (_with(2, "-"), "field I2", "-"),
    (_with(14 + 11, "0a0g0c0d"), "field C12", "0a0g0c0d"),
    (_with(14, "1234567890abcdef0"), "field C1", "1234567890abcdef0"),
    (_with(0, "2"), "field label", "2"),
    (_with(0, ""), "field label", ""),
]


@pytest.mark.parametrize("chunk_bytes", [SMALL_CHUNK, 1 << 20])
@pytest.mark.parametrize(("bad", "field", "value"), BAD_LINES)
def test_bad_line_names_file_line_field_value(tmp_path, bad, field, value, chunk_bytes):
    good = "\t".join(GOOD)
    path = write_raw(tmp_path / "train.txt", [good] * 20 + [bad] + [good] * 5)
    with pytest.raises(CriteoFormatError) as err:
        run([path], tmp_path / "out", max_ind_range=10, chunk_bytes=chunk_bytes)
    msg = str(err.value)
    assert str(path) in msg and "line 21," in msg and f"{field}:" in msg and repr(value) in msg
    assert not (tmp_path / "out" / "metadata.json").exists()
    assert not list((tmp_path / "out").glob("part-000.*"))  # no half-written part


def test_skip_bad_lines_counts_and_drops_them(tmp_path):
    good = "\t".join(GOOD)
    lines = [good] * 10 + [b[0] for b in BAD_LINES] + [good] * 3
    path = write_raw(tmp_path / "train.txt", lines)
    meta = run([path], tmp_path / "out", max_ind_range=10, skip_bad_lines=True)
    assert meta["bad_lines_skipped"] == len(BAD_LINES)
    assert meta["parts"][0]["rows"] == 13 and meta["parts"][0]["lines"] == len(lines)


def test_empty_file(tmp_path):
    path = write_raw(tmp_path / "empty.txt", [], final_newline=False)
    with pytest.raises(CriteoFormatError, match=r"empty\.txt: file is empty"):
        run([path], tmp_path / "out", max_ind_range=10)


def test_truncated_gzip(tmp_path, quirky_files):
    data = gzip.compress(quirky_files[0].read_bytes())
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CriteoFormatError, match=r"cut\.gz: truncated or corrupt gzip"):
        run([path], tmp_path / "out", max_ind_range=10)
    assert not list((tmp_path / "out").glob("part-000*"))


def test_missing_file_and_unwritable_output(tmp_path, quirky_files):
    with pytest.raises(CriteoError, match=r"nope\.txt: input file not found"):
        run([tmp_path / "nope.txt"], tmp_path / "out", max_ind_range=10)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CriteoError, match="output directory is not writable"):
        run(quirky_files, blocker / "out", max_ind_range=10)


def test_options_are_validated():
    with pytest.raises(ValueError, match="choose one"):
        PreprocessOptions(max_ind_range=10, min_count=2)
    with pytest.raises(ValueError, match="split_fractions"):
        PreprocessOptions(split_fractions=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="split"):
        PreprocessOptions(split="weekly")


# ------------------------------------------------------------------ command line


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="numbadlrm")
    preprocess_cli.add_parser(parser.add_subparsers(dest="command"))
    return preprocess_cli.run(parser.parse_args(argv))


def test_cli_success_and_clean_error(tmp_path, quirky_files, capsys):
    out = tmp_path / "out"
    argv = ["preprocess", *map(str, quirky_files), "--out-dir", str(out)]
    assert _cli([*argv, "--max-ind-range", "100", "--no-progress"]) == 0
    assert (out / "metadata.json").exists()
    bad = write_raw(tmp_path / "bad.txt", [_with(7, "x")])
    code = _cli(["preprocess", str(bad), "--out-dir", str(tmp_path / "o2"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "line 1, field I7: not an integer 'x'" in err
    assert "Traceback" not in err


def test_cli_reports_skipped_lines(tmp_path, capsys):
    path = write_raw(tmp_path / "t.txt", ["\t".join(GOOD), _with(0, "7"), "\t".join(GOOD)])
    argv = ["preprocess", str(path), "--out-dir", str(tmp_path / "o"), "--skip-bad-lines"]
    assert _cli([*argv, "--no-progress", "--split-fractions", "0.5,0.5,0"]) == 0
    assert "skipped 1 bad line" in capsys.readouterr().out


# ------------------------------------------------------------------ real Criteo rows


@pytest.mark.parametrize("mode", [{"max_ind_range": 10_000_000}, {"min_count": 2}])
def test_real_criteo_rows(tmp_path, mode):
    names = ["paddlerec_train_100.txt", "paddlerec_test_100.txt", "deepctr_200.tsv"]
    paths = [REAL_DATA / n for n in names]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"real Criteo rows not found under {REAL_DATA}")
    meta = run(paths, tmp_path / "out", split="days", **mode)
    assert [p["rows"] for p in meta["parts"]] == [100, 100, 200]
    assert_matches_python(tmp_path / "out", paths, **mode)
