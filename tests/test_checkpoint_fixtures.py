"""Checkpoints saved by an earlier main still load, predict the same and resume.

The files in tests/fixtures/checkpoints were written before the package was regrouped
(see the README there): a layout or format change that breaks them fails here.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from numbadlrm import DLRM, Batch
from numbadlrm.batch import batch_from_lists
from numbadlrm.io.checkpoint import load_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
NAMES = ["fp32_sgd", "fp32_adagrad", "fp32_rwsadagrad", "bf16_sgd"]


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "expected.npz") as f:
        return {k: f[k] for k in f.files}


def _batch(expected) -> Batch:
    """The fixed batch, its bags as that main read them. Its offsets do not chain (each
    table's start at 0, table 1's first bag overlaps table 0's lookups), which Batch now
    refuses (issue 20), so the same bags are rebuilt in the chained layout: the same
    lookups, the same predictions."""
    offsets, indices = expected["offsets"], expected["indices"]
    bags = [[indices[a:b].tolist() for a, b in pairwise(row)]
            for row in offsets]  # fmt: skip
    return batch_from_lists(expected["dense"], bags, expected["labels"])


@pytest.mark.parametrize("name", NAMES)
def test_old_checkpoint_loads_predicts_and_resumes(name, expected):
    ckpt = load_checkpoint(FIXTURES / f"{name}.npz")
    precision, optimizer = name.split("_")
    assert (ckpt.step, ckpt.epoch, ckpt.batch_in_epoch) == (6, 1, 0)
    assert ckpt.extra["precision"] == precision
    assert ckpt.optimizer.name == optimizer and ckpt.optimizer_steps == 6
    assert set(ckpt.optimizer_state) == (set() if optimizer == "sgd" else set(ckpt.state))
    model = DLRM(ckpt.config, optimizer=ckpt.optimizer, precision=precision)
    model.load_state_dict(ckpt.state)
    model.load_optimizer_state_dict(ckpt.optimizer_state, ckpt.optimizer_steps)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, ckpt.state[key], err_msg=key)
    for key, value in model.optimizer_state_dict().items():
        np.testing.assert_array_equal(value, ckpt.optimizer_state[key], err_msg=key)
    batch = _batch(expected)
    np.testing.assert_allclose(model.predict(batch), expected[f"{name}.predict"], rtol=0, atol=2e-6)
    loss = model.train_step(batch, 0.1)
    assert np.isfinite(loss) and model.optimizer.steps == 7
    assert not np.array_equal(model.predict(batch), expected[f"{name}.predict"])
