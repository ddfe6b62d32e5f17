"""`numbadlrm predict` refuses what train --load-model refuses (issue 20): data whose
tables do not fit the model, and an --output that is one of its inputs (it would
overwrite the checkpoint or the data with text)."""

from __future__ import annotations

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.config import DLRMConfig
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.io.checkpoint import Checkpoint, save_checkpoint
from numbadlrm.model.dlrm import DLRM
from tests._criteo_files import quirky_lines, write_raw


@pytest.fixture
def files(tmp_path):
    raw = write_raw(tmp_path / "day_0", quirky_lines(np.random.default_rng(1), 200))
    processed = tmp_path / "proc"
    preprocess([raw], processed, PreprocessOptions(max_ind_range=100), progress=False)
    return tmp_path, raw, processed


def _model(path, rows: int) -> None:
    cfg = DLRMConfig.from_arch(4, "-".join([str(rows)] * 26), "13-8-4", "6-1")
    save_checkpoint(path, Checkpoint(cfg, DLRM(cfg).state_dict()))


def test_a_model_for_other_tables_is_refused(files, capsys):
    tmp_path, _, processed = files
    ckpt, out = tmp_path / "big.npz", tmp_path / "p.txt"
    _model(ckpt, 1000)
    argv = ["predict", "--load-model", str(ckpt), "--processed-data-file", str(processed)]
    assert main([*argv, "--output", str(out)]) == 2
    sizes, data = (1000,) * 26, (100,) * 26
    assert capsys.readouterr().err == (
        f"numbadlrm predict: error: checkpoint: {ckpt} was saved for another model than "
        f"{processed}'s data fits (embedding_sizes: checkpoint {sizes} vs data {data})\n"
    )
    assert not out.exists()
    _model(ckpt, 100)  # the model the data fits
    assert main([*argv, "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 20


@pytest.mark.parametrize("which", ["--load-model", "--raw-data-file", "--processed-data-file"])
def test_an_output_that_is_an_input_is_refused(files, capsys, which):
    tmp_path, raw, processed = files
    ckpt = tmp_path / "m.npz"
    _model(ckpt, 100)
    before = {p: p.read_bytes() for p in [ckpt, raw, *processed.rglob("*.*")] if p.is_file()}
    source = ["--raw-data-file", str(raw)] if which == "--raw-data-file" else [
        "--processed-data-file", str(processed)]  # fmt: skip
    output = {"--load-model": ckpt, "--raw-data-file": raw,
              "--processed-data-file": processed / "part-000.labels.u8"}[which]  # fmt: skip
    argv = ["predict", "--load-model", str(ckpt), *source, "--output", str(output)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"numbadlrm predict: error: predict: --output {output}: is the {which} input {output}\n"
    )
    assert all(p.read_bytes() == data for p, data in before.items())
