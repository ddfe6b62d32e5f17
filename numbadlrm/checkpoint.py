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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"checkpoint: {path} is not a numbadlrm checkpoint")
            if meta.get("version") != VERSION:
                raise CheckpointError(
                    f"checkpoint: {path} has format version {meta.get('version')}, "
                    f"this numbadlrm reads version {VERSION}"
                )
            state = {name: data[name] for name in meta["names"]}
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint: {path} is corrupt or truncated ({exc})") from None
    try:
        config = DLRMConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint: {path} holds an invalid model config: {exc}") from None
    return Checkpoint(
        config, state, meta["step"], meta["epoch"], meta["batch_in_epoch"], meta.get("extra", {})
    )


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
