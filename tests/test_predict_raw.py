"""predict on raw rows maps ids as training did, from what the checkpoint records
(the hashing range or the vocabulary): no repeated flag, and no silent mismatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from numbadlrm.cli.main import main
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.data.dataset import ProcessedData
from numbadlrm.io.checkpoint import CheckpointError, load_checkpoint
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import run_training
from tests._criteo_files import quirky_lines, write_raw
from tests.test_checkpoint import _npy, _rewrite

ARCH = ["--arch-sparse-feature-size", "4", "--arch-mlp-bot", "13-8-4", "--arch-mlp-top", "8-1"]


def _train(tmp_path: Path, raw: Path, *flags: str) -> Path:
    ckpt = tmp_path / "m.npz"
    argv = ["train", "--data-set", "kaggle", "--raw-data-file", str(raw), *ARCH, *flags]
    argv += ["--processed-data-file", str(tmp_path / "proc"), "--mini-batch-size", "32"]
    assert main([*argv, "--no-progress", "--save-model", str(ckpt)]) == 0
    return ckpt


def _predict(ckpt: Path, out: Path, *flags: str) -> int:
    return main(["predict", "--load-model", str(ckpt), *flags, "--output", str(out)])


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("raw")
    return write_raw(tmp / "train.txt", quirky_lines(np.random.default_rng(7), 700, vocab=25))


def _processed_predictions(tmp_path: Path, ckpt: Path) -> np.ndarray:
    """The model's predictions for every row of the training directory, in file order."""
    parts = []
    for split in ("train", "validation", "test"):
        out = tmp_path / f"{split}.txt"
        flags = ["--processed-data-file", str(tmp_path / "proc"), "--split", split]
        assert _predict(ckpt, out, *flags) == 0
        parts.append(np.loadtxt(out, ndmin=1))
    return np.concatenate(parts)


@pytest.mark.parametrize("mode", ["hashing", "vocabulary"])
def test_raw_rows_need_no_flag_and_match_training(tmp_path, raw, mode, capsys):
    flags = ["--max-ind-range", "53"] if mode == "hashing" else []
    ckpt = _train(tmp_path, raw, *flags)
    saved = load_checkpoint(ckpt)
    if mode == "hashing":
        assert saved.preprocessing == {"max_ind_range": 53, "min_count": 0}
        assert saved.vocabulary is None
    else:
        assert saved.preprocessing == {"max_ind_range": 0, "min_count": 1}
        _, vocab = ProcessedData(tmp_path / "proc").preprocessing()
        assert saved.vocabulary.digest == vocab.digest
        assert saved.vocabulary.table_sizes == list(saved.config.embedding_sizes)
    out = tmp_path / "p.txt"
    assert _predict(ckpt, out, "--raw-data-file", str(raw)) == 0, capsys.readouterr().err
    np.testing.assert_allclose(np.loadtxt(out), _processed_predictions(tmp_path, ckpt), atol=2e-6)
    if mode == "hashing":  # the same value is accepted, another refused
        assert _predict(ckpt, out, "--raw-data-file", str(raw), "--max-ind-range", "53") == 0
        assert _predict(ckpt, out, "--raw-data-file", str(raw), "--max-ind-range", "50") == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("--max-ind-range 50 differs from the 53 the model in "
                            f"{ckpt} was trained with; leave it out")  # fmt: skip
    else:
        assert _predict(ckpt, out, "--raw-data-file", str(raw), "--max-ind-range", "53") == 2
        err = capsys.readouterr().err
        assert "trained on a frequency vocabulary (--min-count 1)" in err
        assert "leave out --max-ind-range" in err


def test_a_checkpoint_without_preprocessing_asks_for_it(tmp_path, raw, capsys):
    ckpt = tmp_path / "synthetic.npz"
    cfg = TrainConfig(
        arch_sparse_feature_size=4, arch_embedding_size="-".join(["40"] * 26),
        arch_mlp_bot="13-8-4", arch_mlp_top="8-1", num_batches=2, test_num_batches=1,
        test_mini_batch_size=32, progress=False, save_model=str(ckpt),
    )  # fmt: skip
    run_training(cfg, log=lambda *_: None)
    assert load_checkpoint(ckpt).preprocessing is None
    out = tmp_path / "p.txt"
    assert _predict(ckpt, out, "--raw-data-file", str(raw)) == 2
    err = capsys.readouterr().err
    assert "does not record how its training data's ids were made" in err
    assert "give --max-ind-range N as used for training" in err
    assert _predict(ckpt, out, "--raw-data-file", str(raw), "--max-ind-range", "40") == 0
    assert len(out.read_text().splitlines()) == 700


def test_a_processed_directory_made_otherwise_is_refused(tmp_path, raw, capsys):
    ckpt = _train(tmp_path, raw, "--max-ind-range", "53")
    other = tmp_path / "other"
    preprocess([raw], other, PreprocessOptions(split="kaggle", max_ind_range=40), progress=False)
    assert _predict(ckpt, tmp_path / "p.txt", "--processed-data-file", str(other)) == 2
    err = capsys.readouterr().err
    assert f"{other} was preprocessed differently from the model's training data" in err
    assert "(--max-ind-range 40 vs --max-ind-range 53 in" in err


def test_resume_from_a_dataset_checkpoint_is_exact(tmp_path, raw):
    """A checkpoint with the vocabulary resumes bit-identically (2 epochs = 1 + 1)."""
    base = {
        "arch_sparse_feature_size": 4, "arch_mlp_bot": "13-8-4", "arch_mlp_top": "8-1",
        "data_set": "kaggle", "raw_data_file": str(raw), "mini_batch_size": 32,
        "processed_data_file": str(tmp_path / "proc"), "progress": False, "seed": 4,
    }  # fmt: skip
    quiet = lambda *_: None  # noqa: E731
    whole = run_training(TrainConfig(**base, nepochs=2), log=quiet)
    ckpt = tmp_path / "half.npz"
    run_training(TrainConfig(**base, nepochs=1, save_model=str(ckpt)), log=quiet)
    assert load_checkpoint(ckpt).vocabulary is not None
    again = run_training(TrainConfig(**base, nepochs=2, load_model=str(ckpt)), log=quiet)
    assert again["steps"] == whole["steps"] and again["auc"] == whole["auc"]
    for name, value in whole["model"].state_dict().items():
        np.testing.assert_array_equal(again["model"].state_dict()[name], value, err_msg=name)


def test_a_tampered_vocabulary_is_refused(tmp_path, raw):
    ckpt = _train(tmp_path, raw)
    c3 = load_checkpoint(ckpt).vocabulary.tables()["C3"]
    short = _rewrite(ckpt, tmp_path / "short.npz", members={"__vocab__.C3.npy": _npy(c3[:-1])})
    with pytest.raises(CheckpointError, match=r"array '__vocab__\.C3' is \(\d+,\) int64, its"):
        load_checkpoint(short)
    changed = _rewrite(ckpt, tmp_path / "changed.npz", members={"__vocab__.C3.npy": _npy(c3 + 1)})
    with pytest.raises(CheckpointError, match="the vocabulary does not match its sha256"):
        load_checkpoint(changed)
