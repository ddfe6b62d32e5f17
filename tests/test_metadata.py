"""A processed directory's metadata.json is checked on open: missing keys, wrong types and
split ranges outside the data give a ValueError naming the file, the key and the value."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.data.dataset import ProcessedData
from tests._criteo_files import quirky_lines, write_raw


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("meta")
    rng = np.random.default_rng(2)
    raw = [write_raw(tmp / f"day_{d}", quirky_lines(rng, 50)) for d in range(2)]
    preprocess(raw, tmp / "out", PreprocessOptions(max_ind_range=30), progress=False)
    return tmp / "out"


def _broken(processed: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(processed, out)
    meta = json.loads((out / "metadata.json").read_text())
    edit(meta)
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


def _pop(*keys):
    def edit(meta):
        target = meta
        for k in keys[:-1]:
            target = target[k]
        target.pop(keys[-1])

    return edit


def _put(value, *keys):
    def edit(meta):
        target = meta
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return edit


CASES = [
    (_pop("splits"), "missing key 'splits'"),
    (_pop("table_sizes"), "missing key 'table_sizes'"),
    (_pop("splits", "test"), "key 'splits' = [\"train\", \"validation\"]: expected the keys"),
    (_put([["part-001", -5, 10]], "splits", "validation"),
     "key 'splits.validation[0]' = [\"part-001\", -5, 10]: need 0 <= start <= stop <= 50"),
    (_put([["part-000", 0, 51]], "splits", "train"),
     "key 'splits.train[0]' = [\"part-000\", 0, 51]: need 0 <= start <= stop <= 50"),
    (_put([["part-000", 9, 3]], "splits", "test"), "need 0 <= start <= stop <= 50"),
    (_put([["part-009", 0, 3]], "splits", "test"), "unknown part 'part-009'"),
    (_put([["part-000", "0", 3]], "splits", "test"), "start and stop must be integers"),
    (_put([["part-000", 0]], "splits", "test"), "expected [part, start, stop]"),
    (_put("abc", "splits", "train"), "key 'splits.train' = \"abc\": expected a list"),
    (_put("30", "table_sizes"), "key 'table_sizes' = \"30\": expected a list"),
    (_put([30] * 25, "table_sizes"), "expected 26 positive integers"),
    (_put([0] + [30] * 25, "table_sizes"), "expected 26 positive integers"),
    (_put(12, "num_dense"), "key 'num_dense' = 12: expected 13"),
    (_put(-1, "parts", 0, "rows"), "key 'parts[0].rows' = -1: expected a row count >= 0"),
    (_put("../../x", "parts", 0, "name"), "key 'parts[0].name' = \"../../x\": expected a"),
    (_put("part-000", "parts", 1, "name"), "key 'parts[1].name' = \"part-000\": expected a"),
    (_put({}, "parts"), "key 'parts' = {}: expected a list"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), CASES)
def test_malformed_metadata_names_file_key_and_value(processed, tmp_path, edit, message):
    out = _broken(processed, tmp_path, edit)
    with pytest.raises(ValueError) as err:
        ProcessedData(out)
    assert str(err.value).startswith(f"{out / 'metadata.json'}: ")
    assert message in str(err.value)


def test_not_json(processed, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(processed, out)
    (out / "metadata.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"metadata\.json: not valid JSON"):
        ProcessedData(out)


def test_training_on_it_prints_one_line(processed, tmp_path, capsys):
    out = _broken(processed, tmp_path, _put([["part-000", -5, 10]], "splits", "test"))
    argv = ["train", "--data-generation", "dataset", "--processed-data-file", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "key 'splits.test[0]'" in err


def test_valid_metadata_opens(processed):
    data = ProcessedData(processed)
    assert sum(len(data.split(s)) for s in ("train", "validation", "test")) == 100
