"""numbadlrm: autograd-free DLRM training on CPUs with Numba kernels and MPI.

    from numbadlrm import DLRMConfig, DLRM, Batch

The names are loaded on first use, so ``import numbadlrm.runtime.pools`` can still set the
thread pools' environment before numpy and numba load (see numbadlrm/cli/main.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["DLRM", "Batch", "DLRMConfig"]
__version__ = "0.1.0"

_WHERE = {"DLRM": ".model.dlrm", "Batch": ".batch", "DLRMConfig": ".config"}

if TYPE_CHECKING:
    from .batch import Batch
    from .config import DLRMConfig
    from .model.dlrm import DLRM


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'numbadlrm' has no attribute {name!r}")
