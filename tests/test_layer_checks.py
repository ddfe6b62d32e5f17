"""Every layer checks dtype, shape and layout of its arrays before a kernel runs.

The calls run in a child process (tests/_bad_layer_args.py): without the checks some of
them write outside their arrays, which could crash the interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm.layers.embedding_bag import embedding_forward
from numbadlrm.layers.interaction import Interaction

from . import _bad_layer_args
from ._helpers import run_child_cases

CASES = {name: argument for name, argument, _ in _bad_layer_args.cases()}


@pytest.fixture(scope="module")
def child_results() -> tuple[dict, str]:
    lines, where = run_child_cases("tests._bad_layer_args")
    return {x["case"]: x["error"] for x in lines}, where


@pytest.mark.parametrize("case", list(CASES))
def test_bad_argument_is_named_before_any_kernel(child_results, case):
    results, where = child_results
    assert case in results, f"{case} never reported: {where}"
    assert results[case].startswith(f"ValueError: {CASES[case]}"), results[case]


def test_messages_say_what_was_expected():
    layer = Interaction("dot", False, 3)
    x = np.ones((5, 4), np.float32)
    emb = np.ones((3, 5, 4), np.float32)
    with pytest.raises(ValueError) as info:
        layer.forward(np.ones((5, 9), np.float32), x, emb)
    assert str(info.value) == (
        "out: expected a C-contiguous float32 array of shape (5, 10), "
        "got float32 (5, 9) (C-contiguous: True)"
    )
    row_start = np.array([0, 7, 99, 21], np.int64)
    offsets = np.zeros((3, 6), np.int64)
    with pytest.raises(ValueError, match=r"row_start: every table must start in \[0, 21\]"):
        embedding_forward(emb[:, :5], np.ones((21, 4), np.float32), row_start, offsets, offsets[0])
