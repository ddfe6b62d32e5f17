"""Kernels from anywhere (issue 24): ``--kernel-module PATH`` (a file or a folder, or
$NUMBADLRM_KERNEL_MODULES) registers versions from outside the package, and ``numbadlrm
kernels --check op=version [--bench]`` checks and times them without pytest; a failing
case is named by its fields."""

from __future__ import annotations

import pytest

from numbadlrm.cli.main import main
from numbadlrm.kernels import loader, registry

MODULE = """
import numpy as np
from numbadlrm.kernels.jit import jit_serial
from numbadlrm.kernels.registry import register


@jit_serial
def forward(out, x, emb, li, lj):
    B, D = x.shape
    for b in range(B):
        for d in range(D):
            out[b, d] = x[b, d]
        for p in range(li.shape[0]):
            i, j = li[p], lj[p]
            u = x[b] if i == 0 else emb[i - 1, b]
            v = x[b] if j == 0 else emb[j - 1, b]
            out[b, D + p] = {wrong}np.dot(u, v)


register("dot_interaction_forward", "{name}", forward, description="a test's kernel")
"""


@pytest.fixture
def outside(tmp_path):
    """A folder outside the checkout; the versions it registers are removed afterwards."""
    yield tmp_path
    for name in ("mine", "wrong", "env"):
        registry.unregister("dot_interaction_forward", name)


def test_a_file_from_anywhere_is_checked_and_timed_beside_the_default(outside, capsys):
    path = outside / "mine.py"
    path.write_text(MODULE.format(name="mine", wrong=""))
    argv = ["kernels", "--kernel-module", str(path), "--check", "dot_interaction_forward=mine"]
    assert main([*argv, "--bench"]) == 0
    out = capsys.readouterr().out
    assert "checked dot_interaction_forward=mine: parallel entry, 1 thread(s)" in out
    default = registry.default("dot_interaction_forward")
    assert f"mine    {default} (default)" in out
    assert "\n  B 13, T 5, D 19, itself  " in out  # cases named by their fields


def test_a_wrong_kernel_fails_its_check_in_one_line_naming_the_case(outside, capsys):
    (outside / "wrong.py").write_text(MODULE.format(name="wrong", wrong="1.5 * "))
    argv = ["kernels", "--kernel-module", str(outside), "--check", "dot_interaction_forward=wrong"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        "numbadlrm kernels: error: kernels: dot_interaction_forward/wrong (parallel entry), "
        "case B 1, T 5, D 19, pairs: "
    )


def test_the_environment_names_modules_and_a_flag_overrides_it(outside, monkeypatch):
    path = outside / "env.py"
    path.write_text(MODULE.format(name="env", wrong=""))
    monkeypatch.setenv(loader.ENVIRONMENT, str(path))
    monkeypatch.setattr(registry, "_loaded", False)
    registry.load_all([])  # a flag given (none): the environment is not read
    assert "env" not in registry.versions("dot_interaction_forward")
    monkeypatch.setattr(registry, "_loaded", False)
    registry.load_all()
    assert "env" in registry.versions("dot_interaction_forward")


@pytest.mark.parametrize(
    ("name", "why"), [("missing.py", "no such file or folder"), ("notes.txt", "not a .py file")]
)
def test_a_path_that_is_not_a_module_is_refused_in_one_line(tmp_path, capsys, name, why):
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("")
    assert main(["kernels", "--kernel-module", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"numbadlrm kernels: error: kernels: kernel module {str(path)!r}: {why}\n"


def test_a_module_that_fails_to_import_is_named(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('no GPU here')\n")
    assert main(["kernels", "--kernel-module", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"numbadlrm kernels: error: kernels: the kernel module {path} failed to import "
        "(RuntimeError: no GPU here)\n"
    )


def test_bench_needs_check(capsys):
    assert main(["kernels", "--bench"]) == 2
    assert "--check op=version" in capsys.readouterr().err
