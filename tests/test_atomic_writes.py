"""Nothing lost, nothing half-written: a full disk gives a one-line error naming the
path; a failed or killed write leaves no temporary file (or the next run removes it).

A full disk is simulated by replacing numbadlrm.io.files._write (every array byte goes
through it) or np.savez, and made for real on a tiny tmpfs where mounting is permitted.
"""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from numbadlrm import DLRMConfig
from numbadlrm.cli import preprocess as preprocess_cli
from numbadlrm.cli.main import main
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.io import files
from numbadlrm.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from numbadlrm.io.files import WriteError
from numbadlrm.model.dlrm import DLRM
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import run_training
from tests._criteo_files import all_rows, quirky_lines, write_raw
from tests._helpers import small_config


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


@pytest.mark.parametrize("mode", [{"max_ind_range": 50}, {"min_count": 2}])
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


# ------------------------------------------------------------------ temporary files


def _savez_full_on(suffix: str, monkeypatch) -> None:
    """np.savez into a file whose name ends with ``suffix`` writes a little, then ENOSPC."""
    real_savez = np.savez

    def savez(file, *args, **kwargs):
        name = getattr(file, "name", file)
        if isinstance(name, int):  # os.fdopen: the file behind the descriptor
            name = _target(name)
        if str(name).endswith(suffix):
            file.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(file, *args, **kwargs)

    monkeypatch.setattr(np, "savez", savez)


@pytest.mark.parametrize("suffix", ["part-001.npz.tmp", "vocabulary.npz.tmp"])
def test_failed_vocabulary_writes_leave_no_tmp(raw_files, tmp_path, monkeypatch, suffix):
    _savez_full_on(suffix, monkeypatch)
    out = tmp_path / "out"
    name = suffix.removesuffix(".tmp")
    with pytest.raises(WriteError, match=rf"{name}: cannot write: the disk is full"):
        preprocess(raw_files, out, PreprocessOptions(min_count=2), progress=False)
    assert _leftovers(out) == [] and not (out / "metadata.json").exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_failed_metadata_write_leaves_no_tmp(raw_files, tmp_path, monkeypatch):
    real_write = files._write

    def full_on_metadata(fd, data):
        if _target(fd).endswith("metadata.json.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(files, "_write", full_on_metadata)
    out = tmp_path / "out"
    with pytest.raises(WriteError, match=r"metadata\.json: cannot write: the disk is full"):
        preprocess(raw_files, out, PreprocessOptions(max_ind_range=9), progress=False)
    assert _leftovers(out) == [] and not (out / "metadata.json").exists()


def test_preprocess_removes_a_killed_runs_tmp_files(raw_files, tmp_path):
    out = tmp_path / "out"
    stale = [
        "part-000.dense.f32.tmp", "part-001.json.tmp", "metadata.json.tmp",
        "vocabulary.npz.tmp", "vocabulary.tmp.npz", "counts/part-000.npz.tmp",
        "counts/part-002.json.tmp", "counts/part-001.tmp.npz",
    ]  # fmt: skip
    (out / "counts").mkdir(parents=True)
    for name in stale:
        (out / name).write_bytes(b"half")
    (out / "notes.tmp").write_text("the user's")  # not a name preprocessing writes
    preprocess(raw_files, out, PreprocessOptions(min_count=2), progress=False)
    assert _leftovers(out) == ["notes.tmp"]


def test_checkpoint_write_errors_and_stale_tmp(tmp_path, monkeypatch):
    cfg = small_config()
    ckpt = Checkpoint(cfg, DLRM(cfg).state_dict(), step=3)
    path = tmp_path / "m.npz"
    killed = [tmp_path / ".m.npz.ab_d1234.tmp", tmp_path / ".m.npz.zzzzzzzz.tmp"]
    others = [tmp_path / ".m.npz.x.ab_d1234.tmp", tmp_path / ".mm.npz.ab_d1234.tmp"]
    for p in killed + others:
        p.write_bytes(b"half")
    save_checkpoint(path, ckpt)
    assert load_checkpoint(path).step == 3
    assert [p.exists() for p in killed + others] == [False, False, True, True]
    _savez_full_on(".tmp", monkeypatch)
    with pytest.raises(WriteError, match=r"m\.npz: cannot write: the disk is full"):
        save_checkpoint(path, ckpt)
    assert sorted(p.name for p in tmp_path.glob(".m.npz.*")) == [others[0].name]
    assert load_checkpoint(path).step == 3  # the previous checkpoint is intact


def test_training_start_removes_stale_checkpoint_tmp(tmp_path):
    path = tmp_path / "m.npz"
    stale = tmp_path / ".m.npz.k1ll3d00.tmp"
    stale.write_bytes(b"half")
    cfg = TrainConfig(
        arch_embedding_size="20-10", arch_mlp_bot="13-4", arch_sparse_feature_size=4,
        arch_mlp_top="4-1", num_batches=2, test_num_batches=1, test_mini_batch_size=32,
        progress=False, save_model=str(path),
    )  # fmt: skip
    run_training(cfg, log=lambda *_: None)
    assert not stale.exists() and path.exists()


def test_failed_predict_leaves_no_output_and_no_tmp(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    raw = write_raw(tmp_path / "day_0", quirky_lines(rng, 300))
    processed = tmp_path / "proc"
    preprocess([raw], processed, PreprocessOptions(max_ind_range=20), progress=False)
    cfg = DLRMConfig.from_arch(4, "-".join(["20"] * 26), "13-8-4", "6-1")
    ckpt = tmp_path / "m.npz"
    save_checkpoint(ckpt, Checkpoint(cfg, DLRM(cfg).state_dict()))
    output = tmp_path / "p.txt"
    (tmp_path / "p.txt.tmp").write_text("stale")
    (tmp_path / ".p.txt.tmp").write_text("stale, older name")
    calls = {"n": 0}
    real_predict = DLRM.predict

    def fail_second(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_predict(self, batch)

    monkeypatch.setattr(DLRM, "predict", fail_second)
    argv = ["predict", "--load-model", str(ckpt), "--processed-data-file", str(processed)]
    argv += ["--split", "train", "--test-mini-batch-size", "64", "--output", str(output)]
    assert main(argv) == 2
    assert "p.txt: cannot write: the disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("*p.txt*")) == []
    monkeypatch.setattr(DLRM, "predict", real_predict)
    assert main(argv) == 0 and len(output.read_text().splitlines()) == 240
