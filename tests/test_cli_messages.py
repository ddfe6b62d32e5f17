"""What the commands tell the user: a missing extra is named; preprocessing shows a bar
per pass (count, write) with a total in bytes and a percentage."""

from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

from numbadlrm.cli.main import main
from numbadlrm.data import criteo
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from tests._criteo_files import quirky_lines, write_raw


def test_convert_without_torch_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    npz, pt = str(tmp_path / "m.npz"), str(tmp_path / "m.pt")
    for argv in ([npz, "--to-torch", pt], [pt, "--from-torch", npz]):
        assert main(["convert", *argv]) == 2
        err = capsys.readouterr().err
        assert err == (
            "numbadlrm convert: error: convert needs PyTorch: pip install 'numbadlrm[torch]'\n"
        )


def _bar_lines(err: str) -> list[str]:
    return [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]


class _EveryUpdate(tqdm):
    """A bar that prints every update (tqdm skips those within 0.1 s of the last)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, mininterval=0, miniters=1, **kwargs)


def test_preprocess_bar_shows_each_pass_with_total_and_percent(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(criteo, "tqdm", _EveryUpdate)
    rng = np.random.default_rng(0)
    paths = [write_raw(tmp_path / f"day_{d}", quirky_lines(rng, 80)) for d in range(2)]
    total = sum(p.stat().st_size for p in paths)
    options = PreprocessOptions(min_count=2, chunk_bytes=997)
    preprocess(paths, tmp_path / "out", options, progress=True)
    lines = _bar_lines(capsys.readouterr().err)
    shown = f"{total / 1024:.1f}k/{total / 1024:.1f}k"
    assert any(ln.startswith("count day_1: 100%") and shown in ln for ln in lines), lines
    assert any(ln.startswith("write day_1: 100%") and shown in ln for ln in lines), lines
    halfway = [ln for ln in lines if ln.startswith("write day_0:") and "%|" in ln]
    assert any(0 < int(ln.split(":")[1].split("%")[0]) < 50 for ln in halfway), halfway
    # a rerun finds both parts finished: the write bar still reaches 100%
    preprocess(paths, tmp_path / "out", options, progress=True)
    assert any(ln.startswith("write: 100%") for ln in _bar_lines(capsys.readouterr().err))
