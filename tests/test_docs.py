"""The docs run (issue 24): every ```python block of README.md and LEARN.md is executed,
a file's blocks in order in one namespace, in a fresh process; every ```bash / ```sh
block is either run here (at tiny size, as written) or marked as an example of a large
run by a first line ``# example: ...``, and an unmarked block that fails fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "LEARN.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
EXAMPLE = "# example:"


def blocks(doc: str | Path) -> list[tuple[str, int, str]]:
    """(language, line number, text) of every fenced block of a doc."""
    text = (ROOT / doc).read_text()
    return [
        (m.group(1), text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text)
    ]


def is_example(block: str) -> bool:
    return block.lstrip().startswith(EXAMPLE)


def shell_blocks() -> list:
    return [
        pytest.param(doc, line, text, id=f"{doc}:{line}")
        for doc in DOCS
        for lang, line, text in blocks(doc)
        if lang in ("bash", "sh") and not is_example(text)
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _workdir(tmp_path: Path) -> Path:
    """A scratch folder where the docs' relative paths (examples/, bench/) resolve."""
    for name in ("examples", "bench", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_block_runs(doc, tmp_path):
    code = [(line, text) for lang, line, text in blocks(doc) if lang == "python"]
    assert code, f"{doc}: no python block"
    driver = "\n".join(
        f"exec(compile({text!r}, {f'{doc}, the python block at line {line}'!r}, 'exec'), ns)"
        for line, text in code
    )
    proc = subprocess.run(
        [sys.executable, "-c", "ns = {'__name__': '__main__'}\n" + driver],
        cwd=_workdir(tmp_path), env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(("doc", "line", "text"), shell_blocks())
def test_every_unmarked_shell_block_runs(doc, line, text, tmp_path):
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", text],
        cwd=_workdir(tmp_path), env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"{doc}, the shell block at line {line} failed (mark a large run's block with a first "
        f"line '{EXAMPLE} ...'):\n{proc.stderr[-3000:]}"
    )


def test_both_kinds_of_shell_block_exist():
    """Blocks are run unless marked (the test above): some are run, some marked."""
    shells = [text for doc in DOCS for lang, _, text in blocks(doc) if lang in ("bash", "sh")]
    assert any(not is_example(t) for t in shells), "no shell block runs"
    assert any(is_example(t) for t in shells)


def test_only_the_first_line_marks_an_example(tmp_path):
    (tmp_path / "X.md").write_text(
        "```bash\n# example: big\nexit 1\n```\n```bash\ntrue  # example: no\n```\n"
    )
    found = [(lang, is_example(text)) for lang, _, text in blocks(tmp_path / "X.md")]
    assert found == [("bash", True), ("bash", False)]
