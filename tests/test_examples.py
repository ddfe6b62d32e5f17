"""The Python example runs and learns (it is documentation, so it must not rot)."""

import ast
import subprocess
import sys
from pathlib import Path

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
