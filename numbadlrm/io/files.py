"""Writing output files so that nothing is lost and nothing is half-written.

Every file numbadlrm writes (preprocessed arrays, markers, metadata, vocabulary counts,
checkpoints, predictions) goes to a temporary name next to its final path, is checked,
flushed to disk (fsync) and renamed into place; on any failure the temporary file is
removed. A rerun after a kill removes the temporary files the killed run left behind
(:func:`remove_stale`). A full disk becomes a :class:`WriteError` naming the path.

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
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TMP_SUFFIX = ".tmp"
_DISK_FULL = {errno.ENOSPC: "the disk is full (no space left on device)"}
if hasattr(errno, "EDQUOT"):
    _DISK_FULL[errno.EDQUOT] = "the disk quota is exceeded"
_write = os.write  # the one low-level write (tests replace it to simulate a full disk)


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
    try:
        with open(tmp, mode) as f:
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
