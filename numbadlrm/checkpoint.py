"""Checkpoints: one ``.npz`` file holding the config, every parameter and the run's position.

Layout (NumPy's uncompressed .npz, readable with ``np.load``):
    __meta__            a JSON string: format version, model config, training position
                        (step, epoch, batch within the epoch), seeds, options used
    <param name>        one array per state_dict entry (bottom_mlp.0.weight, ...,
                        embeddings.{t}.weight), float32

The file is written under a temporary name in the same directory and renamed into place,
so a crash never leaves a file that looks complete. Loading checks the format, the config
and every array; any mismatch or corruption raises CheckpointError naming the problem.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DLRMConfig
from .files import remove_stale, write_error
from .model import state_dict_shapes

FORMAT = "numbadlrm-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class Checkpoint:
    config: DLRMConfig
    state: dict[str, np.ndarray]
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    extra: dict = field(default_factory=dict)  # seeds, options: informational


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write atomically: temporary file in the same directory, fsync, rename.

    Temporary files a killed earlier save of this path left behind are removed first;
    a failed write removes its own and raises a WriteError naming the path.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise CheckpointError(f"checkpoint: directory {path.parent} does not exist")
    remove_stale_tmp(path)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": ckpt.config.to_dict(),
        "step": ckpt.step,
        "epoch": ckpt.epoch,
        "batch_in_epoch": ckpt.batch_in_epoch,
        "extra": ckpt.extra,
        "names": sorted(ckpt.state),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __meta__=np.array(json.dumps(meta)), **ckpt.state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_tmp(path: str | os.PathLike) -> None:
    """Remove ``.NAME.XXXXXXXX.tmp`` files (save_checkpoint's temporary names for this
    path) left by a killed run; the 8 characters are mkstemp's, so no other name matches."""
    path = Path(path)
    remove_stale(path.parent, (f".{glob.escape(path.name)}.{'?' * 8}.tmp",))


def save_model_checkpoint(
    path: str | os.PathLike,
    model,
    step: int = 0,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    extra: dict | None = None,
) -> None:
    """Write ``model``'s checkpoint (DLRM, or the MPI layer's DistributedDLRM).

    With a communicator (``model.comm``) this is a collective: every rank calls it, the
    tables are gathered (``state_dict``), rank 0 writes the single-process format, and a
    failed write raises the same CheckpointError on every rank, so none is left waiting
    in a later collective.
    """
    state = model.state_dict()  # a collective under MPI
    comm = getattr(model, "comm", None)
    error = None
    if comm is None or comm.rank == 0:
        ckpt = Checkpoint(model.config, state, step, epoch, batch_in_epoch, extra or {})
        try:
            save_checkpoint(path, ckpt)
        except (OSError, ValueError) as exc:
            if comm is None:
                raise
            error = str(exc)
    if comm is not None:
        error = comm.bcast(error, root=0)
        if error is not None:
            raise CheckpointError(error)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint: the __meta__ schema, then every array's npy header
    (shape, dtype, size) against the config, before any array is read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            headers = _array_headers(archive, path)
            meta = _read_meta(archive, path, headers)
        config = _check_meta(meta, path)
        _check_arrays(headers, state_dict_shapes(config), meta["names"], path)
        with np.load(path, allow_pickle=False) as data:
            state = {name: data[name] for name in meta["names"]}
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint: {path} is corrupt or truncated ({exc})") from None
    return Checkpoint(
        config, state, meta["step"], meta["epoch"], meta["batch_in_epoch"], meta.get("extra", {})
    )


# __meta__ field -> type; "extra" may be absent
_META_FIELDS = {
    "format": str, "version": int, "config": dict, "step": int, "epoch": int,
    "batch_in_epoch": int, "names": list, "extra": dict,
}  # fmt: skip


def _array_headers(archive: zipfile.ZipFile, path: Path) -> dict[str, tuple]:
    """{array name: (shape, dtype)} from each member's npy header, after checking that
    the member holds exactly the bytes its header promises (so no read allocates more)."""
    size = path.stat().st_size
    headers = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        where = f"checkpoint: {path}: array {name!r}"
        if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{where} is not an uncompressed .npy member")
        if info.file_size > size:
            raise CheckpointError(f"{where} claims {info.file_size} bytes, more than the file")
        with archive.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}[version]  # fmt: skip
                shape, _, dtype = read(f)
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{where} has an unreadable npy header ({exc})") from None
            data_bytes = info.file_size - f.tell()
        if dtype.hasobject or int(np.prod(shape, dtype=object)) * dtype.itemsize != data_bytes:
            raise CheckpointError(
                f"{where}: its header says shape {shape} of {dtype}, the member holds "
                f"{data_bytes} bytes of data"
            )
        headers[name] = (tuple(shape), dtype)
    return headers


def _read_meta(archive: zipfile.ZipFile, path: Path, headers: dict) -> dict:
    shape, dtype = headers.get("__meta__", (None, None))
    if shape != () or dtype.kind != "U":
        raise CheckpointError(f"checkpoint: {path} has no __meta__ string (not a checkpoint?)")
    with archive.open("__meta__.npy") as f:
        text = str(np.lib.format.read_array(f, allow_pickle=False))
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint: {path}: __meta__ is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint: {path}: __meta__ is not a JSON object")
    return meta


def _check_meta(meta: dict, path: Path) -> DLRMConfig:
    """The __meta__ schema (format, version, field types, positions >= 0); the config."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {path} is not a numbadlrm checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint: {path} has format version {meta.get('version')!r}, "
            f"this numbadlrm reads version {VERSION}"
        )
    for key, kind in _META_FIELDS.items():
        if key not in meta:
            if key == "extra":
                continue
            raise CheckpointError(f"checkpoint: {path}: __meta__ lacks the field {key!r}")
        value = meta[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(
                f"checkpoint: {path}: __meta__ field {key!r} must be {kind.__name__}, "
                f"got {type(value).__name__} {_short(value)}"
            )
        if kind is int and value < 0:
            raise CheckpointError(f"checkpoint: {path}: __meta__ field {key!r} is {value} < 0")
    names = meta["names"]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise CheckpointError(
            f"checkpoint: {path}: __meta__ field 'names' must list distinct strings, "
            f"got {_short(names)}"
        )
    try:
        return DLRMConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {path} holds an invalid model config: {exc}") from None


def _check_arrays(headers: dict, shapes: dict, names: list, path: Path) -> None:
    """names = the config's parameters, each header float32 of the config's shape."""
    missing, unexpected = sorted(set(shapes) - set(names)), sorted(set(names) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint: {path}: its parameter names do not fit its config: missing "
            f"{missing or 'none'}, unexpected {unexpected or 'none'}"
        )
    stray = sorted(set(headers) - set(names) - {"__meta__"})
    if stray:
        raise CheckpointError(f"checkpoint: {path}: unexpected arrays {stray}")
    for name in names:
        if name not in headers:
            raise CheckpointError(f"checkpoint: {path}: array {name!r} is missing")
        shape, dtype = headers[name]
        if shape != tuple(shapes[name]) or dtype != np.float32:
            raise CheckpointError(
                f"checkpoint: {path}: array {name!r} is {shape} {dtype}, its config needs "
                f"{tuple(shapes[name])} float32"
            )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_compatible(ckpt: Checkpoint, config: DLRMConfig, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose model differs from the one asked for."""
    if ckpt.config != config:
        diffs = [
            f"{k}: checkpoint {v!r} vs requested {config.to_dict()[k]!r}"
            for k, v in ckpt.config.to_dict().items()
            if config.to_dict()[k] != v
        ]
        raise CheckpointError(
            f"checkpoint: {path} was saved for another model ({'; '.join(diffs)})"
        )
