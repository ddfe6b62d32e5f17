"""The thread count of a run: ``set_num_threads(n)`` (the ``--threads`` flag).

Every parallel kernel runs in Numba's thread pool; the GEMMs' blas backend calls a
single-threaded OpenBLAS from each of Numba's threads (numbadlrm/kernels/gemm/blas.py), and
NumPy's own BLAS (np.matmul in tests, evaluation helpers, user code) is limited to the
same count through threadpoolctl.
"""

from __future__ import annotations

import numba
from threadpoolctl import threadpool_limits

from ..kernels.gemm.blas import single_thread_blas

_blas_limit = None  # keeps threadpoolctl's limit in force for the rest of the process


def set_num_threads(n: int) -> None:
    """Use n threads in Numba and in the BLAS behind NumPy's matmul."""
    global _blas_limit
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= limit:
        raise ValueError(f"threads: must be between 1 and {limit}, got {n}")
    numba.set_num_threads(n)
    _blas_limit = threadpool_limits(limits=n, user_api="blas")
    single_thread_blas()  # the blas backend's OpenBLAS runs inside Numba's threads, 1 each
