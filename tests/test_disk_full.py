"""A full disk while writing: a one-line error naming the path, nothing half-written.

Simulated by replacing numbadlrm.files._write (every output byte goes through it), and
for real on a tiny tmpfs where mounting is permitted (root).
"""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from numbadlrm import files
from numbadlrm.data import preprocess_cli
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.files import WriteError
from tests._criteo_files import all_rows, quirky_lines, write_raw


@pytest.fixture
def raw_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    return [write_raw(tmp_path / f"day_{d}", quirky_lines(rng, 60)) for d in range(3)]


def _target(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="numbadlrm")
    preprocess_cli.add_parser(parser.add_subparsers(dest="command"))
    return preprocess_cli.run(parser.parse_args(argv))


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*") if ".tmp" in p.name)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_full_disk_on_one_array_names_it_and_writes_nothing(raw_files, tmp_path, monkeypatch):
    real_write = files._write

    def full_on_labels(fd, data):
        if _target(fd).endswith("part-001.labels.u8.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(files, "_write", full_on_labels)
    out = tmp_path / "out"
    argv = ["preprocess", *map(str, raw_files), "--out-dir", str(out), "--max-ind-range", "50"]
    assert _cli([*argv, "--no-progress"]) == 2
    with pytest.raises(WriteError, match=r"part-001\.labels\.u8: cannot write: the disk is full"):
        preprocess(raw_files, out, PreprocessOptions(max_ind_range=50), progress=False)
    assert not (out / "metadata.json").exists()
    assert not list(out.glob("part-001*")) and _leftovers(out) == []
    assert (out / "part-000.json").exists()  # the finished part is kept for the rerun


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_silently_dropped_bytes_are_caught_before_the_rename(raw_files, tmp_path, monkeypatch):
    """A write that reports success but stores nothing (what tofile's ignored fclose
    error amounts to) is caught by the size check."""
    real_write = files._write

    def drop_labels(fd, data):
        if _target(fd).endswith(".labels.u8.tmp"):
            return len(data)
        return real_write(fd, data)

    monkeypatch.setattr(files, "_write", drop_labels)
    out = tmp_path / "out"
    with pytest.raises(WriteError, match=r"part-000\.labels\.u8: cannot write: 0 of 60 bytes"):
        preprocess(raw_files, out, PreprocessOptions(max_ind_range=50), progress=False)
    assert not list(out.glob("part-*")) and _leftovers(out) == []


def test_cli_message_is_one_line(raw_files, tmp_path, monkeypatch, capsys):
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files, "_write", full)
    out = tmp_path / "out"
    argv = ["preprocess", *map(str, raw_files), "--out-dir", str(out), "--max-ind-range", "50"]
    assert _cli([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"numbadlrm preprocess: error: {out / 'part-000.dense.f32'}: ")
    assert "the disk is full" in err and "rerun the same command to resume" in err


# ------------------------------------------------------------------ a real tiny disk


@pytest.fixture
def tiny_disk(tmp_path):
    """mount(size) -> a fresh tmpfs of that size; skips where mounting is not permitted."""
    mounts = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)]
        try:
            proc = subprocess.run(command, capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pytest.skip("cannot run mount here")
        if proc.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.decode()[:80]}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], capture_output=True, timeout=20)


@pytest.mark.parametrize("mode", [{"max_ind_range": 50}])
def test_a_real_full_disk_at_every_stage(raw_files, tmp_path, tiny_disk, mode, capsys):
    """Disks that fill up at different points (arrays, markers, counts, metadata): each
    run fails with the message and leaves only complete files; with room, the rerun
    finishes and equals a clean run."""
    clean = tmp_path / "clean"
    preprocess(raw_files, clean, PreprocessOptions(**mode), progress=False)
    _, *expected = all_rows(clean)
    flags = ["--max-ind-range", "50"] if "max_ind_range" in mode else ["--min-count", "2"]
    failures = 0
    for size in ("8k", "16k", "24k", "36k", "48k"):
        out = tiny_disk(size) / "out"
        argv = ["preprocess", *map(str, raw_files), "--out-dir", str(out), *flags]
        code = _cli([*argv, "--no-progress"])
        err = capsys.readouterr().err
        assert _leftovers(out) == [], size
        if code == 0:
            continue
        failures += 1
        assert "the disk is full" in err and "\n" not in err.strip(), err
        assert not (out / "metadata.json").exists()
        subprocess.run(["mount", "-o", "remount,size=1m", str(out.parent)], check=True)
        assert _cli([*argv, "--no-progress"]) == 0, capsys.readouterr().err
        _, *got = all_rows(out)
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
    assert failures >= 3
