"""The Python example runs and learns (it is documentation, so it must not rot)."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._criteo_files import REAL_DATA

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_train_python_api_example_learns():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_python_api.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    metrics = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert metrics["auc"] > 0.65, proc.stdout


def test_swap_kernel_example_runs_its_kernel_in_every_step():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "swap_kernel.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "checked: 'mine' matches numbadlrm.reference" in proc.stdout
    assert "'mine' ran 200 times in 200 training steps" in proc.stdout, proc.stdout


def test_criteo_example_runs_on_real_rows(tmp_path):
    """examples/criteo.sh as written, on 200 real Criteo rows: tables follow the data."""
    raw = REAL_DATA / "deepctr_200.tsv"
    if not raw.is_file():
        pytest.skip(f"real Criteo rows not found under {REAL_DATA}")
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    env = {**os.environ, "OUT": str(tmp_path / "kaggle.numbadlrm")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "criteo.sh"), str(raw)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train 172, validation 14, test 14 rows" in proc.stdout
    assert "embedding tables: 2,318 rows, 148.4 kB at D=16" in proc.stdout
    assert "test at step 1: auc" in proc.stdout
    assert (tmp_path / "kaggle.npz").is_file() and (tmp_path / "kaggle.jsonl").is_file()
