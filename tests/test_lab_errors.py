"""Kernel versions that are broken say so in one line (issue 20): a lab module that fails
to import names its file and how to skip it (every command loaded it, even plain
`train`, and printed a traceback); a chosen version whose entries take other arguments
than its op is refused when chosen; a chosen version's first call names the op and the
version in its error."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.kernels import lab, registry
from numbadlrm.model.dlrm import DLRM
from tests._helpers import random_batch, small_config

BROKEN = {
    "syntax": ("def oops(:\n", "line 1: SyntaxError: invalid syntax"),
    "raises": ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
}


@pytest.fixture
def lab_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(lab, "__path__", [*lab.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_loaded", False)
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("numbadlrm.kernels.lab.mine"):
            del sys.modules[name]


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_lab_module_is_named_with_how_to_skip_it(lab_dir, capsys, kind):
    source, why = BROKEN[kind]
    path = lab_dir / "mine.py"
    path.write_text(source)
    assert main(["kernels"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"numbadlrm kernels: error: kernels: the lab module {path} failed to import ({why}); "
        "fix it, or rename it to _mine.py to skip it\n"
    )
    path.rename(lab_dir / "_mine.py")
    assert main(["kernels"]) == 0


WRONG_ARITY = """
from numbadlrm.kernels.registry import register

def update(weights, row_start, offsets, indices, dpooled):  # no lr
    pass

register("embedding_update", "mine", update)
"""

RAISES = """
from numbadlrm.kernels.registry import register

def update(weights, row_start, offsets, indices, dpooled, lr):
    raise TypeError("No implementation of function for argument types (array(float32))")

register("embedding_update", "mine", update, update)
"""


def test_a_wrong_signature_is_refused_when_chosen(lab_dir, capsys):
    (lab_dir / "mine_arity.py").write_text(WRONG_ARITY)
    try:
        assert main(["train", "--kernels", "embedding_update=mine"]) == 2
        assert capsys.readouterr().err == (
            "numbadlrm train: error: kernels: embedding_update=mine: its parallel entry takes "
            "(weights, row_start, offsets, indices, dpooled), the op passes 6 arguments "
            "(weights, row_start, offsets, indices, dpooled, lr)\n"
        )
    finally:
        registry.unregister("embedding_update", "mine")


def test_a_chosen_versions_first_call_names_it(lab_dir):
    (lab_dir / "mine_raises.py").write_text(RAISES)
    try:
        cfg = small_config()
        model = DLRM(cfg, kernels="embedding_update=mine")
        batch = random_batch(np.random.default_rng(0), cfg, 4)
        with pytest.raises(registry.KernelError) as err:
            model.train_step(batch, 0.1)
        assert str(err.value).startswith(
            "kernels: embedding_update=mine (serial entry) failed on its first call: TypeError: "
            "No implementation of function for argument types (array(float32)) (the op's "
            "arguments: (weights, row_start, offsets, indices, dpooled, lr))"
        )
    finally:
        registry.unregister("embedding_update", "mine")
