"""--data-sub-sample-rate (the reference's): label-0 lines dropped while preprocessing,
deterministically (one uniform draw per line, in file order, from a stream seeded by the
part's name), so both passes and any rerun or chunk size keep the same lines."""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm.data import criteo
from numbadlrm.data.criteo import PreprocessOptions, preprocess, preprocess_for_training
from tests._criteo_files import (
    all_rows,
    assert_matches_python,
    python_lines,
    python_parse_line,
    quirky_lines,
    write_raw,
)

RATE = 0.75


@pytest.fixture
def days(tmp_path):
    rng = np.random.default_rng(3)
    return [write_raw(tmp_path / f"day_{d}", quirky_lines(rng, 400)) for d in range(2)]


def _kept_lines(tmp_path, days) -> list:
    """The lines the reference's rule keeps: label 1, or a draw >= the rate."""
    kept = []
    for part, path in enumerate(days):
        lines = python_lines([path])
        draws = np.random.default_rng(list(f"part-{part:03d}".encode())).random(len(lines))
        keep = [ln for ln, u in zip(lines, draws, strict=True)
                if python_parse_line(ln)[0] == 1 or u >= RATE]  # fmt: skip
        kept.append(write_raw(tmp_path / f"kept_{part}", keep))
    return kept


@pytest.mark.parametrize("mode", [{"max_ind_range": 100}, {"min_count": 2}])
@pytest.mark.parametrize("chunk_bytes", [997, 1 << 20])
def test_drops_label_0_lines_as_the_reference(days, tmp_path, mode, chunk_bytes):
    options = PreprocessOptions(chunk_bytes=chunk_bytes, sub_sample_rate=RATE, **mode)
    meta = preprocess(days, tmp_path / "out", options, progress=False)
    kept = _kept_lines(tmp_path, days)
    assert_matches_python(tmp_path / "out", kept, **mode)  # vocabulary of the kept rows too
    _, labels, _, _ = all_rows(tmp_path / "out")
    parsed = [python_parse_line(ln) for ln in python_lines(days)]
    positives = sum(p[0] for p in parsed)
    assert labels.sum() == positives  # every positive kept
    kept_negatives = len(labels) - positives
    assert 0.15 * (len(parsed) - positives) < kept_negatives < 0.35 * (len(parsed) - positives)
    assert [p["lines"] for p in meta["parts"]] == [400, 400]  # lines read; rows: kept


def test_the_rate_is_part_of_the_output_key(days, tmp_path, monkeypatch):
    """A directory sub-sampled at one rate is not reused for another, nor for none."""
    out = tmp_path / "tb"
    preprocess_for_training("kaggle", days[0], out, 100, progress=False, sub_sample_rate=0.5)
    kept = len(all_rows(out)[1])
    preprocess_for_training("kaggle", days[0], out, 100, progress=False)
    assert len(all_rows(out)[1]) == 400 > kept
    monkeypatch.setattr(criteo, "preprocess", lambda *a, **k: pytest.fail("redone"))
    preprocess_for_training("kaggle", days[0], out, 100, progress=False)  # the same: reused
    with pytest.raises(ValueError, match=r"sub_sample_rate: must be in \[0, 1\), got 1.0"):
        PreprocessOptions(sub_sample_rate=1.0)
