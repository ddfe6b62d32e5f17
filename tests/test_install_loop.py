"""The kernel experimenter's loop with a non-editable install (issue 24): numbadlrm
installed with ``pip install .`` (into a folder: ``--target``, no dependencies, no build
isolation, so no network), run from a folder outside the checkout, with a kernel module
that lives there too: it is checked, timed and trained with, and Numba's cache lands in
the per-user cache folder, never inside the installed package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_kernel_modules import MODULE

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-batches", "2", "--test-num-batches", "1", "--test-mini-batch-size", "64",
        "--no-progress", "--arch-embedding-size", "50-50", "--arch-mlp-bot", "13-8-16"]  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """site-packages-like folder holding a ``pip install .`` of a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "src"  # a copy: pip's in-tree build writes build/ and *.egg-info
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc", "lab")
    shutil.copytree(ROOT / "numbadlrm", source / "numbadlrm", ignore=ignore)
    shutil.copytree(ROOT / "numbadlrm/kernels/lab", source / "numbadlrm/kernels/lab",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "numbadlrm/kernels/lab/__init__.py", source / "numbadlrm/kernels/lab")
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    site = tmp / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
           "--no-index", "--quiet", "--target", str(site), str(source)]  # fmt: skip
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=300, env=_env(None))
    if proc.returncode != 0:
        pytest.skip(f"pip install . failed here: {proc.stderr.strip()[-300:]}")
    return site


def _env(site: Path | None, cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    if site is not None:
        env["PYTHONPATH"] = str(site)  # the installed copy only, not the checkout
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    return env


@pytest.mark.slow
def test_the_loop_works_from_outside_the_checkout_with_pip_install(installed, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "mine.py").write_text(MODULE.format(name="mine", wrong=""))
    env = _env(installed, tmp_path / "cache")

    def numbadlrm(*args: str) -> str:
        argv = [sys.executable, "-m", "numbadlrm.cli.main", *args]
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    which = [sys.executable, "-c", "import numbadlrm; print(numbadlrm.__file__)"]
    where = subprocess.run(which, cwd=work, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(installed / "numbadlrm" / "__init__.py")
    assert "mine" in numbadlrm("kernels", "--kernel-module", "mine.py")
    out = numbadlrm("kernels", "--kernel-module", ".", "--check", "dot_interaction_forward=mine",
                    "--bench")  # fmt: skip
    assert "checked dot_interaction_forward=mine: parallel entry" in out
    assert "B 13, T 5, D 19, pairs" in out
    env["NUMBADLRM_KERNEL_MODULES"] = str(work / "mine.py")  # the variable, not the flag
    out = numbadlrm("train", "--kernels", "dot_interaction_forward=mine", *TINY)
    assert "kernels: dot_interaction_forward=mine" in out and "test at step 2: auc" in out
    assert list((tmp_path / "cache" / "numbadlrm" / "numba").rglob("*.nbi"))
    assert not list(installed.rglob("*.nbi")), "a Numba cache file inside the installed package"
