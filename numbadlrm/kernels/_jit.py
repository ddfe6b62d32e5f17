"""Numerics flags for every Numba kernel, defined in one place.

``fastmath`` allows reassociation and FMA contraction (so reductions vectorise) but
keeps NaN/Inf semantics (``nnan``/``ninf`` are off), so a diverging run still shows
NaN instead of silently producing garbage. ``cache=True`` writes compiled kernels to
``__pycache__`` next to this package, so only the first run pays for compilation.

Set ``NUMBA_DISABLE_JIT=1`` to run every kernel as plain Python (slow, debuggable).
"""

from __future__ import annotations

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Parallel kernels: loops written with prange run on Numba's thread pool.
jit_parallel = numba.njit(cache=True, fastmath=FASTMATH, parallel=True, nogil=True)
# Serial helpers (inlined into the parallel kernels or called on small data).
jit_serial = numba.njit(cache=True, fastmath=FASTMATH, nogil=True)


_blas_limit = None  # keeps threadpoolctl's limit in force for the rest of the process


def set_num_threads(n: int) -> None:
    """Use n threads (``--threads``) in Numba and in the BLAS behind NumPy's matmul."""
    global _blas_limit
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"threads: must be between 1 and {limit}, got {n}")
    numba.set_num_threads(n)
    from threadpoolctl import threadpool_limits

    _blas_limit = threadpool_limits(limits=n, user_api="blas")
    from .blas import single_thread_blas

    single_thread_blas()  # the blas backend's OpenBLAS runs inside Numba's threads, 1 each


# Below this many bytes of work the layers call a kernel's serial entry point, which runs
# on the calling thread without a parallel launch. A launch costs ~1.5 us on Numba's
# OpenMP layer (~95 us on workqueue) and, where a worker has been descheduled, a
# scheduler slice (milliseconds), against a few microseconds of work at config a (B=128).
SERIAL_BELOW_BYTES = 1 << 20


def run_serial(nbytes: int) -> bool:
    """True if work moving nbytes should run on the calling thread alone."""
    return nbytes < SERIAL_BELOW_BYTES or numba.get_num_threads() == 1
