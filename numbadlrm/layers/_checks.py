"""Argument checks shared by the layers, run before any kernel sees an array.

The kernels index without bounds checks, and some compute raw addresses (the dot
interaction's v3 reads ``x.ctypes.data``, GEMM v4's tile and kernels/gemm/blas.py pass
pointers), so a wrong shape, dtype or memory layout must stop here with a ValueError
that names the argument.
"""

from __future__ import annotations

import numpy as np


def check_array(name: str, a: object, shape: tuple[int, ...], dtype: type = np.float32) -> None:
    """ValueError unless ``a`` is a C-contiguous ndarray of this dtype and shape."""
    if (
        isinstance(a, np.ndarray)
        and a.dtype == dtype
        and a.flags.c_contiguous
        and a.shape == tuple(shape)
    ):
        return
    if isinstance(a, np.ndarray):
        got = f"{a.dtype} {a.shape} (C-contiguous: {a.flags.c_contiguous})"
    else:
        got = type(a).__name__
    raise ValueError(
        f"{name}: expected a C-contiguous {np.dtype(dtype).name} array of shape "
        f"{tuple(shape)}, got {got}"
    )


def array_shape(name: str, a: object, ndim: int) -> tuple[int, ...]:
    """The shape of ``a``, once it is known to be an ndarray with ``ndim`` dimensions
    (the other arguments' shapes are derived from it, then checked by check_array)."""
    if not isinstance(a, np.ndarray) or a.ndim != ndim:
        got = f"shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{name}: expected a {ndim}-D array, got {got}")
    return a.shape
