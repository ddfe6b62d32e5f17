"""Checkpoints: one ``.npz`` file holding the config, every parameter and the run's position.

Layout (NumPy's uncompressed .npz, readable with ``np.load``):
    __meta__            a JSON string: format version, model config, training position
                        (step, epoch, batch within the epoch), seeds, options used and
                        the precision trained in (extra.precision, informational)
    <param name>        one array per state_dict entry (bottom_mlp.0.weight, ...,
                        embeddings.{t}.weight), float32 (a bf16 model's master weights, merged)
    __vocab__.C1 ..     trained on a --min-count dataset: its vocabulary (each table's
                        frequent raw ids, int64), so predict maps raw ids as training did;
                        __meta__'s "preprocessing" holds max_ind_range / min_count
    __optim__.<name>    with Adagrad or row-wise Adagrad: each parameter's optimizer state
                        (float32, the parameter's shape; (rows,) for a row-wise table);
                        __meta__'s "optimizer" holds the optimizer's name, settings and
                        step count (written for SGD too, with no arrays)

The file is written under a temporary name in the same directory and renamed into place,
so a crash never leaves a file that looks complete. Loading checks the format, the config
and every array; any mismatch or corruption raises CheckpointError naming the problem.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import DLRMConfig
from ..data.vocabulary import Vocabulary
from ..kernels.parse import NUM_CATEGORICAL
from ..model.state import optimizer_state_shapes, state_dict_shapes
from ..optim.optimizers import OptimizerConfig
from .files import atomic_output, remove_dead_writers_tmp

FORMAT = "numbadlrm-checkpoint"
VERSION = 1
VOCAB = "__vocab__."  # prefix of the vocabulary arrays
OPTIM = "__optim__."  # prefix of the optimizer state arrays


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
    # how the training data's ids were made: {"max_ind_range": N, "min_count": K}, and
    # with min_count (max_ind_range 0) the vocabulary; None when not trained on a dataset
    preprocessing: dict | None = None
    vocabulary: Vocabulary | None = None
    # the optimizer that trained it, its step count and state ({parameter name: array},
    # empty for SGD); None: not recorded (converted, or saved by an older numbadlrm)
    optimizer: OptimizerConfig | None = None
    optimizer_steps: int = 0
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Write atomically: a temporary file unique to this process in the same directory,
    fsync, rename (io.files.atomic_output: the later of two concurrent saves wins).

    Temporary files that killed earlier saves of this path left behind are removed
    first; a failed write removes its own and raises a WriteError naming the path.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"checkpoint: directory {path.parent} does not exist")
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
    arrays = dict(ckpt.state)
    if ckpt.preprocessing is not None:
        prep = {k: int(ckpt.preprocessing[k]) for k in ("max_ind_range", "min_count")}
        if ckpt.vocabulary is not None:
            prep["vocabulary_sha256"] = ckpt.vocabulary.digest
            arrays.update({VOCAB + k: v for k, v in ckpt.vocabulary.tables().items()})
        meta["preprocessing"] = prep
    if ckpt.optimizer is not None:
        meta["optimizer"] = {**ckpt.optimizer.to_dict(), "steps": ckpt.optimizer_steps}
        arrays.update({OPTIM + k: v for k, v in ckpt.optimizer_state.items()})
    with atomic_output(path) as f:
        np.savez(f, __meta__=np.array(json.dumps(meta)), **arrays)


def remove_stale_tmp(path: str | os.PathLike) -> None:
    """Remove the temporary files of saves of ``path`` whose process no longer runs
    (a killed run's half-written checkpoints); a live writer's are kept."""
    remove_dead_writers_tmp(path)


def save_model_checkpoint(
    path: str | os.PathLike,
    model,
    step: int = 0,
    epoch: int = 0,
    batch_in_epoch: int = 0,
    extra: dict | None = None,
    preprocessing: dict | None = None,
    vocabulary: Vocabulary | None = None,
) -> None:
    """Write ``model``'s checkpoint (DLRM, or the MPI layer's DistributedDLRM).

    preprocessing, vocabulary: see :class:`Checkpoint` (only rank 0's are used).

    With a communicator (``model.comm``) this is a collective: every rank calls it, the
    tables are gathered (``state_dict``), rank 0 writes the single-process format, and a
    failed write raises the same CheckpointError on every rank, so none is left waiting
    in a later collective.
    """
    state = model.state_dict()  # a collective under MPI (fp32 values in any precision)
    optimizer_state = model.optimizer_state_dict()  # a collective too
    extra = {**(extra or {}), "precision": getattr(model, "precision", "fp32")}
    comm = getattr(model, "comm", None)
    error = None
    if comm is None or comm.rank == 0:
        ckpt = Checkpoint(
            model.config, state, step, epoch, batch_in_epoch, extra, preprocessing,
            vocabulary, model.optimizer.config, model.optimizer.steps, optimizer_state,
        )  # fmt: skip
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
        shapes = {n: (s, np.float32) for n, s in state_dict_shapes(config).items()}
        vocab_shapes = _check_preprocessing(meta.get("preprocessing"), config, path)
        optimizer, steps = _check_optimizer(meta.get("optimizer"), path)
        optim_shapes = {}
        if optimizer is not None:
            optim_shapes = {
                OPTIM + n: (s, np.float32)
                for n, s in optimizer_state_shapes(config, optimizer).items()
            }
        _check_arrays(headers, shapes, meta["names"], {**vocab_shapes, **optim_shapes}, path)
        with np.load(path, allow_pickle=False) as data:
            state = {name: data[name] for name in meta["names"]}
            vocab = [data[name] for name in vocab_shapes]
            optimizer_state = {name.removeprefix(OPTIM): data[name] for name in optim_shapes}
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint: {path} is corrupt or truncated ({exc})") from None
    _check_optimizer_values(optimizer_state, path)
    prep = meta.get("preprocessing")
    vocabulary = _vocabulary(vocab, prep, path) if vocab else None
    if prep is not None:
        prep = {k: prep[k] for k in ("max_ind_range", "min_count")}
    position = (meta["step"], meta["epoch"], meta["batch_in_epoch"])
    return Checkpoint(
        config, state, *position, meta.get("extra", {}), prep, vocabulary, optimizer, steps,
        optimizer_state,
    )  # fmt: skip


def _check_optimizer_values(state: dict[str, np.ndarray], path: Path) -> None:
    """Adagrad's state is a sum of squares: finite and >= 0 (min and max: no temporaries)."""
    for name, value in state.items():
        if value.size and not (value.min() >= 0 and value.max() < np.inf):
            raise CheckpointError(
                f"checkpoint: {path}: array {OPTIM + name!r} holds a negative or non-finite "
                "value; an optimizer's state is a sum of squares (finite, >= 0)"
            )


def _check_optimizer(value, path: Path) -> tuple[OptimizerConfig | None, int]:
    """__meta__'s "optimizer" (absent in older checkpoints): (its config, its step count)."""
    if value is None:
        return None, 0
    where = f"checkpoint: {path}: __meta__ field 'optimizer'"
    fields = set(OptimizerConfig.__dataclass_fields__) | {"steps"}
    if not isinstance(value, dict) or set(value) != fields:
        raise CheckpointError(
            f"{where} needs exactly the keys {sorted(fields)}, got {_short(value)}"
        )
    steps = value["steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise CheckpointError(f"{where}: steps must be an integer >= 0, got {steps!r}")
    try:
        config = OptimizerConfig(**{k: v for k, v in value.items() if k != "steps"})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    return config, steps


def _check_preprocessing(prep, config: DLRMConfig, path: Path) -> dict[str, tuple]:
    """Check __meta__'s "preprocessing" against the config; {vocab array: (shape, dtype)}."""
    if prep is None:
        return {}
    where = f"checkpoint: {path}: __meta__ field 'preprocessing'"
    ok = isinstance(prep, dict) and all(
        isinstance(prep.get(k), int) and not isinstance(prep.get(k), bool) and prep[k] >= 0
        for k in ("max_ind_range", "min_count")
    )
    if not ok:
        raise CheckpointError(
            f"{where} needs integers max_ind_range and min_count >= 0, got {_short(prep)}"
        )
    sizes = config.embedding_sizes
    if prep["max_ind_range"] > 0:
        if any(n != prep["max_ind_range"] for n in sizes):
            raise CheckpointError(
                f"{where}: max_ind_range {prep['max_ind_range']}, but the tables have "
                f"{list(sizes)} rows"
            )
        return {}
    if len(sizes) != NUM_CATEGORICAL or not isinstance(prep.get("vocabulary_sha256"), str):
        raise CheckpointError(
            f"{where}: a vocabulary needs {NUM_CATEGORICAL} tables and its sha256"
        )
    return {f"{VOCAB}C{t + 1}": ((n - 2,), np.int64) for t, n in enumerate(sizes)}


def _vocabulary(tables: list[np.ndarray], prep: dict, path: Path) -> Vocabulary:
    try:
        vocab = Vocabulary.from_tables(tables)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint: {path}: {exc}") from None
    if vocab.digest != prep["vocabulary_sha256"]:
        raise CheckpointError(f"checkpoint: {path}: the vocabulary does not match its sha256")
    return vocab


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


def _check_arrays(headers: dict, shapes: dict, names: list, others: dict, path: Path) -> None:
    """names = the config's parameters; every header (parameters and ``others``) has the
    shape and dtype the config gives it; no other arrays."""
    missing, unexpected = sorted(set(shapes) - set(names)), sorted(set(names) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint: {path}: its parameter names do not fit its config: missing "
            f"{missing or 'none'}, unexpected {unexpected or 'none'}"
        )
    expected = {**shapes, **others}
    stray = sorted(set(headers) - set(expected) - {"__meta__"})
    if stray:
        raise CheckpointError(f"checkpoint: {path}: unexpected arrays {stray}")
    for name, (shape, dtype) in expected.items():
        if name not in headers:
            raise CheckpointError(f"checkpoint: {path}: array {name!r} is missing")
        got_shape, got_dtype = headers[name]
        if got_shape != tuple(shape) or got_dtype != dtype:
            raise CheckpointError(
                f"checkpoint: {path}: array {name!r} is {got_shape} {got_dtype}, its config "
                f"needs {tuple(shape)} {np.dtype(dtype)}"
            )


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def optimizer_to_resume(
    ckpt: Checkpoint, config: OptimizerConfig, path: str | os.PathLike
) -> tuple[bool, str | None]:
    """(whether to load the checkpoint's optimizer state and step count, a note to log).

    The same optimizer resumes its state exactly; its settings are this run's (a note
    names those that differ). Another optimizer, or a checkpoint that records none
    (converted, or saved by an older numbadlrm), starts this run's state fresh.
    """
    saved = ckpt.optimizer
    if saved is None:
        if not config.stateful:
            return False, None
        return False, f"note: {path} holds no optimizer state: {config.name} starts fresh"
    if saved.name != config.name:
        return False, (
            f"note: {path} was trained with --optimizer {saved.name}; this run's "
            f"{config.name} starts fresh"
        )
    diffs = config.differences(saved)
    if diffs:
        return True, (
            f"note: resuming {path}'s {config.name} state with this run's settings "
            f"(this run vs checkpoint: {'; '.join(diffs)})"
        )
    return True, None


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
