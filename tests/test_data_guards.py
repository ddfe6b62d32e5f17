"""Data problems in one line (issue 20): a memory-mapped part truncated while a run reads
it names the file (it killed the process with SIGBUS, rc 135, no message: so the run is
a child process); preprocess refuses --out-dir "" and --split-fractions with a NaN."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from tests._criteo_files import quirky_lines, write_raw

ROOT = Path(__file__).resolve().parents[1]

_TRUNCATE_DURING_TRAINING = """
import os, sys
from numbadlrm.cli.main import main
from numbadlrm.model.dlrm import DLRM

directory = sys.argv[1]
real = DLRM.train_step

def step_then_truncate(self, batch, lr):
    loss = real(self, batch, lr)
    os.truncate(os.path.join(directory, "part-000.categorical.i32"), 0)
    return loss

DLRM.train_step = step_then_truncate
sys.exit(main(["train", "--data-generation", "dataset", "--processed-data-file", directory,
               "--arch-sparse-feature-size", "4", "--arch-mlp-bot", "13-8-4",
               "--arch-mlp-top", "8-1", "--mini-batch-size", "16", "--nepochs", "2",
               "--test-mini-batch-size", "64", "--no-progress"]))
"""


def test_a_part_truncated_during_training_is_named_not_a_bus_error(tmp_path):
    raw = write_raw(tmp_path / "day_0", quirky_lines(np.random.default_rng(0), 300))
    out = tmp_path / "proc"
    preprocess([raw], out, PreprocessOptions(max_ind_range=50), progress=False)
    proc = subprocess.run(
        [sys.executable, "-c", _TRUNCATE_DURING_TRAINING, str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        f"numbadlrm train: error: {out}/part-000.categorical.i32: the file shrank to 0 of "
        "31200 bytes while in use (truncated or overwritten?); preprocess again"
    )
    assert "Traceback" not in proc.stderr


def test_a_part_truncated_before_opening_is_named(tmp_path):
    from numbadlrm.data.dataset import ProcessedData

    raw = write_raw(tmp_path / "day_0", quirky_lines(np.random.default_rng(0), 50))
    out = tmp_path / "proc"
    preprocess([raw], out, PreprocessOptions(max_ind_range=50), progress=False)
    (out / "part-000.labels.u8").write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"part-000\.labels\.u8: missing or not 50 bytes"):
        ProcessedData(out)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--out-dir", ""], "--out-dir: must name a directory, got ''"),
        (
            ["--out-dir", "o", "--split-fractions", "nan,0,1"],
            "split_fractions: need three fractions in [0, 1] summing to 1, got (nan, 0.0, 1.0)",
        ),
    ],
)
def test_preprocess_flags_are_refused_in_one_line(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    raw = write_raw(tmp_path / "day_0", quirky_lines(np.random.default_rng(0), 20))
    assert main(["preprocess", str(raw), "--max-ind-range", "10", "--no-progress", *flags]) == 2
    assert capsys.readouterr().err == f"numbadlrm preprocess: error: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day_0"]  # nothing written


def test_preprocess_api_refuses_an_empty_out_dir(tmp_path):
    raw = write_raw(tmp_path / "day_0", quirky_lines(np.random.default_rng(0), 20))
    with pytest.raises(ValueError, match="out_dir: must name a directory, got ''"):
        preprocess([raw], "", PreprocessOptions(max_ind_range=10), progress=False)
