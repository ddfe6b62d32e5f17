"""Malformed checkpoints: every field and array is checked before anything is read, and
the CheckpointError names the field or the array."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from numbadlrm import DLRM
from numbadlrm.cli.main import main
from numbadlrm.io.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from tests._helpers import small_config


@pytest.fixture
def good(tmp_path) -> Path:
    cfg = small_config()
    path = tmp_path / "good.npz"
    save_checkpoint(path, Checkpoint(cfg, DLRM(cfg).state_dict(), step=4, epoch=1))
    return path


def _npy(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, value, allow_pickle=False)
    return buf.getvalue()


def _header_only(shape: tuple, descr: str, data: bytes = b"\0" * 16) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + data


def _rewrite(src: Path, dst: Path, edit=None, members=None, meta_bytes=None) -> Path:
    """A copy of src with its __meta__ edited (edit(meta)) and members replaced/added."""
    with zipfile.ZipFile(src) as z:
        contents = {i.filename: z.read(i) for i in z.infolist()}
    with np.load(src) as data:
        meta = json.loads(str(data["__meta__"]))
    if edit is not None:
        edit(meta)
    contents["__meta__.npy"] = meta_bytes or _npy(np.array(json.dumps(meta)))
    for name, value in (members or {}).items():
        if value is None:
            contents.pop(name)
        else:
            contents[name] = value
    with zipfile.ZipFile(dst, "w") as z:
        for name, value in contents.items():
            z.writestr(name, value)
    return dst


def _set(key, value):
    def edit(meta):
        meta[key] = value

    return edit


def _set_config(key, value):
    def edit(meta):
        meta["config"][key] = value

    return edit


META_CASES = [
    (_set("step", "5"), "field 'step' must be int, got str '5'"),
    (_set("step", -1), "field 'step' is -1 < 0"),
    (_set("epoch", True), "field 'epoch' must be int, got bool True"),
    (_set("batch_in_epoch", 2.5), "field 'batch_in_epoch' must be int, got float 2.5"),
    (_set("names", "bottom_mlp.0.weight"), "field 'names' must be list, got str"),
    (_set("names", [1, 2]), "field 'names' must list distinct strings, got [1, 2]"),
    (_set("extra", [1]), "field 'extra' must be dict, got list [1]"),
    (_set("config", [1]), "field 'config' must be dict, got list"),
    (lambda m: m.pop("epoch"), "__meta__ lacks the field 'epoch'"),
    (_set("version", "1"), "has format version '1'"),
    (_set("format", "other"), "is not a numbadlrm checkpoint"),
    (_set_config("embedding_sizes", [7.5, 11, 5]), "invalid model config: embedding_sizes: 7.5"),
    (_set_config("sparse_feature_size", "4"), "invalid model config: sparse_feature_size"),
    (_set_config("interaction_itself", "yes"), "invalid model config: interaction_itself"),
    (_set_config("colour", "red"), "invalid model config: missing fields none, unknown fields"),
    (lambda m: m["config"].pop("top_sizes"), "missing fields ['top_sizes']"),
    (lambda m: m["names"].pop(), "do not fit its config: missing ['top_mlp.1.weight']"),
    (_set("preprocessing", {"max_ind_range": "5", "min_count": 0}),
     "field 'preprocessing' needs integers max_ind_range and min_count >= 0"),
    (_set("preprocessing", {"max_ind_range": 9, "min_count": 0}),
     "'preprocessing': max_ind_range 9, but the tables have [7, 11, 5] rows"),
    (_set("preprocessing", {"max_ind_range": 0, "min_count": 1}),
     "'preprocessing': a vocabulary needs 26 tables and its sha256"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), META_CASES)
def test_malformed_meta_is_refused_naming_the_field(good, tmp_path, edit, message):
    bad = _rewrite(good, tmp_path / "bad.npz", edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert message in str(err.value) and str(bad) in str(err.value)


def test_meta_that_is_not_a_json_object(good, tmp_path):
    for text, message in (("{nope", "__meta__ is not JSON"), ("[1]", "not a JSON object")):
        bad = _rewrite(good, tmp_path / "bad.npz", meta_bytes=_npy(np.array(text)))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(bad)


ARRAY_CASES = [
    (  # a header claiming 10^12 elements: np.load would allocate 4 TB first
        {"embeddings.0.weight.npy": _header_only((10**12,), "<f4")},
        "array 'embeddings.0.weight': its header says shape (1000000000000,) of float32, "
        "the member holds 16 bytes",
    ),
    (
        {"__meta__.npy": _header_only((10**12,), "<U10")},
        "array '__meta__': its header says shape (1000000000000,) of <U10",
    ),
    ({"__meta__.npy": _header_only((), "<U10**12")}, "'__meta__' has an unreadable npy header"),
    ({"top_mlp.0.bias.npy": b"\x93NUMPY\x09\x00"}, "'top_mlp.0.bias' has an unreadable npy"),
    (
        {"embeddings.0.weight.npy": _npy(np.zeros((3, 4), np.float32))},
        "array 'embeddings.0.weight' is (3, 4) float32, its config needs (7, 4) float32",
    ),
    (
        {"top_mlp.0.bias.npy": _npy(np.zeros(6, np.float64))},
        "array 'top_mlp.0.bias' is (6,) float64, its config needs (6,) float32",
    ),
    ({"embeddings.1.weight.npy": None}, "array 'embeddings.1.weight' is missing"),
    ({"stray.npy": _npy(np.zeros(2, np.float32))}, "unexpected arrays ['stray']"),
    ({"notes.txt": b"hi"}, "array 'notes.txt' is not an uncompressed .npy member"),
]


@pytest.mark.parametrize(("members", "message"), ARRAY_CASES)
def test_array_headers_are_checked_before_reading(good, tmp_path, members, message):
    meta_bytes = members.get("__meta__.npy")
    bad = _rewrite(good, tmp_path / "bad.npz", members=members, meta_bytes=meta_bytes)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert message in str(err.value)


def test_compressed_members_are_refused(good, tmp_path):
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    bad = tmp_path / "compressed.npz"
    np.savez_compressed(bad, **arrays)
    with pytest.raises(CheckpointError, match=r"is not an uncompressed \.npy member"):
        load_checkpoint(bad)


def test_cli_prints_one_line(good, tmp_path, capsys):
    bad = _rewrite(good, tmp_path / "bad.npz", _set("step", "5"))
    argv = ["predict", "--load-model", str(bad), "--processed-data-file", str(tmp_path)]
    assert main([*argv, "--output", str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "field 'step' must be int" in err


def test_a_good_checkpoint_still_loads(good):
    ckpt = load_checkpoint(good)
    assert (ckpt.step, ckpt.epoch, ckpt.batch_in_epoch) == (4, 1, 0)
    DLRM(ckpt.config).load_state_dict(ckpt.state)
