"""bench_e2e --kernels A --versus B: both kernel sets timed in one run, side by side."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_e2e.py"

pytestmark = pytest.mark.skipif(not BENCH.exists(), reason="bench/ is not in this checkout")


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    cmd = [sys.executable, str(BENCH), "--quick", "--threads", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def test_versus_times_both_kernel_sets_in_one_run():
    out = _bench("--precision", "fp32", "--kernels", "linear_forward=blas",
                 "--versus", "linear_forward=v1")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    kernels = re.search(r"^kernels:\s+(.*)$", text, re.M)
    versus = re.search(r"^versus:\s+(.*)$", text, re.M)
    assert kernels and "linear_forward=blas" in kernels.group(1).replace(" ", "")
    assert versus and "linear_forward=v1" in versus.group(1).replace(" ", "")
    header = next(line for line in text.splitlines() if line.startswith("cfg"))
    assert "numbadlrm/s" in header and "versus/s" in header and "kernels/versus" in header
    row = next(line for line in text.splitlines() if line.startswith("q "))
    rates_and_ratio = re.findall(r"(\d+(?:\.\d+)?)x?", row.split(maxsplit=2)[2])
    rates = [float(v) for v in rates_and_ratio]
    assert len(rates) >= 3 and all(v > 0 for v in rates)  # fp32, versus, ..., their ratio


def test_versus_with_an_unknown_version_is_refused_in_one_line():
    out = _bench("--precision", "fp32", "--versus", "linear_forward=nosuch")
    assert out.returncode != 0
    assert "nosuch" in out.stderr and "Traceback" not in out.stderr
