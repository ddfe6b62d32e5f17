"""Writing output files so that nothing is lost and nothing is half-written.

Every file numbadlrm writes (preprocessed arrays, markers, metadata, vocabulary counts,
checkpoints, predictions) goes to a temporary name next to its final path, is checked,
flushed to disk (fsync) and renamed into place; on any failure the temporary file is
removed. A rerun after a kill removes the temporary files the killed run left behind
(:func:`remove_stale`). A full disk becomes a :class:`WriteError` naming the path.

Outputs that several processes may write at once (checkpoints, predictions, converted
models: :func:`atomic_output`) go to a temporary name unique to the writer,
``.NAME.<pid>.XXXXXXXX.tmp``; a writer sweeps only the temporary files of writers that
no longer run (:func:`remove_dead_writers_tmp`), so the later complete write wins and
none fails because another removed its file. :func:`check_output_path` refuses an
output whose directory is missing or not writable before any work is done.

Why arrays are not written with ``ndarray.tofile``: it writes through C stdio on a
duplicate of the file descriptor and ignores a failing ``fclose``, so on a full disk
the last buffered kilobytes can be dropped without an error (a 0-byte labels file from
a run that said "wrote ..."). :class:`ArrayWriter` calls ``os.write`` until every byte
is written, raises on any error, and compares the file's size with the bytes expected
before the rename.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TMP_SUFFIX = ".tmp"
_DISK_FULL = {errno.ENOSPC: "the disk is full (no space left on device)"}
if hasattr(errno, "EDQUOT"):
    _DISK_FULL[errno.EDQUOT] = "the disk quota is exceeded"
_write = os.write  # the one low-level write (tests replace it to simulate a full disk)
_UMASK = os.umask(0o022)  # read once (setting is the only way to read it), then restored
os.umask(_UMASK)


class WriteError(OSError):
    """A file could not be written completely; the message names the path and the cause."""


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """A one-line WriteError for ``exc`` raised while writing ``path``."""
    if isinstance(exc, WriteError):
        return exc
    why = _DISK_FULL.get(exc.errno) or exc.strerror or str(exc)
    err = WriteError(f"{path}: cannot write: {why}")
    err.errno = exc.errno
    return err


def tmp_path(path: str | os.PathLike) -> Path:
    """The temporary name ``path`` is written under: ``NAME.tmp`` in the same directory."""
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


class ArrayWriter:
    """Appends arrays' bytes to ``path``'s temporary file; use as a context manager.

    with ArrayWriter(path) as w:
        w.write(a); w.write(b)
        w.finish(expected_bytes)     # size check, fsync, close
        w.commit()                   # rename into place
    # leaving the block without commit() (an exception) removes the temporary file
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = tmp_path(self.path)
        self._fd: int | None = None
        self._committed = False
        try:
            self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def __enter__(self) -> ArrayWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._committed:
            self.discard()

    def write(self, data: np.ndarray | bytes) -> None:
        """Append the bytes of ``data`` (a C-contiguous copy of it if it is an array)."""
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        view = memoryview(data)
        try:
            while view:
                n = _write(self._fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def finish(self, expected_bytes: int) -> None:
        """Check the file holds ``expected_bytes``, flush it to disk and close it."""
        try:
            size = os.fstat(self._fd).st_size
            if size != expected_bytes:
                raise WriteError(
                    f"{self.path}: cannot write: {size} of {expected_bytes} bytes reached the "
                    "file (is the disk full?)"
                )
            os.fsync(self._fd)
            fd, self._fd = self._fd, None
            os.close(fd)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def commit(self) -> None:
        """Rename the finished temporary file into place."""
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self._committed = True

    def discard(self) -> None:
        """Close (ignoring errors) and remove the temporary file."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self.tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, size check, fsync, rename)."""
    with ArrayWriter(path) as w:
        w.write(data)
        w.finish(len(data))
        w.commit()


def write_json_atomic(path: str | os.PathLike, value: dict) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=1) + "\n").encode())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """An open file under ``path``'s temporary name, renamed into place (after a flush
    and fsync) when the block ends normally, removed when it raises.

    For writers that need a file object (np.savez); OSErrors become WriteErrors.
    """
    path = Path(path)
    tmp = tmp_path(path)
    with _renamed_into_place(tmp, path, lambda: open(tmp, mode)) as f:
        yield f


@contextlib.contextmanager
def _renamed_into_place(tmp: Path, path: Path, opener) -> Iterator:
    """The file ``opener()`` opens at ``tmp``, flushed, fsynced and renamed onto ``path``
    when the block ends normally; ``tmp`` removed when it raises (OSErrors become
    WriteErrors naming ``path``)."""
    try:
        with opener() as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale(directory: str | os.PathLike, patterns: tuple[str, ...]) -> list[Path]:
    """Remove the temporary files matching ``patterns`` (globs) that a killed run left."""
    removed = []
    for pattern in patterns:
        for p in Path(directory).glob(pattern):
            if p.is_file() or p.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed


def check_output_path(path: str | os.PathLike, flag: str) -> None:
    """Refuse, before any work, an output ``path`` that cannot be written: a directory,
    or in a directory that does not exist or where no file can be created (ValueError
    naming the flag and the path)."""
    path = Path(path)
    if str(path) in ("", ".") or path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: directory {parent} does not exist")
    try:  # a probe: permissions, read-only and special file systems (/proc) alike
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                     dir=parent)  # fmt: skip
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(
            f"{flag} {path}: cannot create a file in {parent} ({exc.strerror or exc})"
        ) from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """An open file under a temporary name unique to this writer (``.NAME.<pid>.XXXXXXXX
    .tmp``), renamed onto ``path`` after a flush and fsync when the block ends normally,
    removed when it raises; created with the mode a plain open() gives (0644 under the
    usual umask). Temporary files of writers that no longer run are swept first."""
    path = Path(path)
    if not path.parent.is_dir():
        raise WriteError(f"{path}: cannot write: directory {path.parent} does not exist")
    remove_dead_writers_tmp(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                    dir=path.parent)  # fmt: skip
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = Path(name)

    def opener():
        os.fchmod(fd, 0o666 & ~_UMASK)
        return os.fdopen(fd, mode)

    with _renamed_into_place(tmp, path, opener) as f:
        yield f


def remove_dead_writers_tmp(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` whose writer no longer runs:
    ``.NAME.<pid>.XXXXXXXX.tmp`` of a dead pid, and the ``.NAME.XXXXXXXX.tmp``,
    ``NAME.tmp`` and ``.NAME.tmp`` names of older versions (which recorded no writer).
    A live writer's file, this process's included, is kept."""
    path = Path(path)
    removed = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        middle = p.name[len(path.name) + 2 : -len(TMP_SUFFIX)]  # "<pid>.XXXXXXXX" or "XXXXXXXX"
        pid, dot, rest = middle.rpartition(".")
        dead = (not dot and len(middle) == 8) or (
            dot and pid.isdigit() and len(rest) == 8 and not _running(int(pid))
        )
        if dead and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    legacy = (glob.escape(tmp_path(path).name), f".{glob.escape(path.name)}{TMP_SUFFIX}")
    return removed + remove_stale(path.parent, legacy)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (this one always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by another user
        return True
    return True
