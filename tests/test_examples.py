"""The examples and the README's MPI commands run (they are documentation: must not rot)."""

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._criteo_files import REAL_DATA

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent  # where pip put mpiexec and numbadlrm: the README's .venv/bin
# appended to each documented command: a tiny model, two steps, one evaluation batch
TINY = "--num-batches 2 --test-num-batches 1 --test-mini-batch-size 256 --no-progress "
TINY += "--arch-embedding-size 100-100 --arch-mlp-bot 13-8-16"


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


def _need_mpi() -> None:
    pytest.importorskip("mpi4py")
    for name in ("mpiexec", "numbadlrm"):
        if not (BIN / name).exists():
            pytest.skip(f"no {name} next to {sys.executable}")


def readme_mpi_commands() -> list[str]:
    """The command lines of the README's MPI section, as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## MPI: hybrid-parallel training") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.mpi
def test_readme_mpi_commands_run_as_written(tmp_path):
    """After the README's install command `mpiexec` is in .venv/bin, not on PATH: the
    commands must say so (here .venv/bin/ is this interpreter's bin directory)."""
    _need_mpi()
    commands = readme_mpi_commands()
    assert len(commands) == 2 and all(c.startswith(".venv/bin/mpiexec ") for c in commands)
    for command in commands:
        argv = shlex.split(command.replace(".venv/bin/", f"{BIN}/")) + TINY.split()
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}: {proc.stderr[-3000:]}"
        assert "test at step 2: auc" in proc.stdout, proc.stdout


@pytest.mark.mpi
def test_mpi_example_script_runs(tmp_path):
    _need_mpi()
    argv = ["bash", str(EXAMPLES / "mpi.sh"), *TINY.split()]
    env = {**os.environ, "BIN": str(BIN)}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test at step 2: auc") == 2, proc.stdout


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
