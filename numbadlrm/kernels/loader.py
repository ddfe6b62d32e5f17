"""Where kernel modules come from: the built-in ones, numbadlrm/kernels/lab/, and files or
folders anywhere on disk.

A module outside the package (``--kernel-module PATH`` on ``train``, ``kernels`` and the
benches; or ``NUMBADLRM_KERNEL_MODULES=PATH[:PATH...]``, which a flag overrides) is
imported from its file, so it works with any install, editable or not: a file is one
module, a folder is every ``*.py`` in it whose name does not start with ``_``. Each file
is imported once per process however often it is named. Its kernels use the same
decorators as the package's (numbadlrm.kernels.jit) and are cached beside the others
(runtime/pools.py: NUMBA_CACHE_DIR).

Any failure to import becomes one :class:`KernelError` line naming the file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

ENVIRONMENT = "NUMBADLRM_KERNEL_MODULES"
_imported: dict[Path, str] = {}  # file -> its module name, for files outside the package


class KernelError(ValueError):
    """A kernel version that cannot be loaded or called as its op needs."""


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return text if len(text) <= 200 else text[:197] + "..."


def _why(exc: BaseException) -> str:
    syntax = isinstance(exc, SyntaxError)
    where = f"line {exc.lineno}: " if syntax and exc.lineno else ""
    return f"{where}{type(exc).__name__}: {exc.msg if syntax else first_line(exc)}"


def import_lab(package: str) -> None:
    """Import every module of the lab package whose name does not start with ``_``."""
    lab = importlib.import_module(package)
    for info in pkgutil.iter_modules(lab.__path__):
        if info.name.startswith("_"):
            continue
        path = Path(getattr(info.module_finder, "path", "")) / f"{info.name}.py"
        try:
            importlib.import_module(f"{package}.{info.name}")
        except Exception as exc:
            raise KernelError(
                f"kernels: the lab module {path} failed to import ({_why(exc)}); "
                f"fix it, or rename it to _{info.name}.py to skip it"
            ) from exc


def environment_paths() -> list[str]:
    """The paths named by $NUMBADLRM_KERNEL_MODULES (os.pathsep between them)."""
    return [p for p in os.environ.get(ENVIRONMENT, "").split(os.pathsep) if p.strip()]


def module_files(path: str | os.PathLike) -> list[Path]:
    """A .py file itself, or a folder's *.py files not starting with ``_``, sorted."""
    where = Path(path).expanduser()
    if where.is_dir():
        return sorted(p for p in where.glob("*.py") if not p.name.startswith("_"))
    if where.is_file() and where.suffix == ".py":
        return [where]
    what = "not a .py file" if where.exists() else "no such file or folder"
    raise KernelError(f"kernels: kernel module {str(path)!r}: {what}")


def import_paths(paths) -> list[str]:
    """Import the kernel modules of every path (files or folders); their module names."""
    return [import_file(f) for path in paths for f in module_files(path)]


def import_file(file: Path) -> str:
    """Import one kernel module from its file (once per process); its module name."""
    file = file.resolve()
    if file in _imported:
        return _imported[file]
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:8]
    name = f"numbadlrm_kernel_module_{file.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise KernelError(
            f"kernels: the kernel module {file} failed to import ({_why(exc)})"
        ) from exc
    _imported[file] = name
    return name
