"""Thread pools: one for numbadlrm's kernels. Import before numpy and numba.

The command line (numbadlrm/cli/main.py) and the benches import this first; the library itself
never changes the process environment.

Every parallel kernel of a training step, the linear layers' GEMMs included, runs in
Numba's thread pool: the "blas" backend calls a single-threaded OpenBLAS sgemm from each
of Numba's threads (numbadlrm/kernels/gemm/blas.py) instead of letting OpenBLAS thread its own
GEMMs. So one pool serves the step, and what matters is how fast it starts a parallel
loop: ~70x faster on the OpenMP layer than on workqueue (bench/RESULTS.md, "Thread pools").

- NUMBA_THREADING_LAYER_PRIORITY="omp tbb workqueue": OpenMP where Numba has it (it
  ships with GNU libgomp on Linux), else TBB, else workqueue.
- OPENBLAS_THREAD_TIMEOUT=4: NumPy's OpenBLAS workers, when np.matmul does run (tests,
  evaluation helpers, user code), sleep after 2^4 cycles instead of spinning for ~70 ms
  on the cores Numba's threads need (read when numpy loads OpenBLAS).

(Two pools, OpenBLAS's beside Numba's, were measured and dropped: RESULTS.md.)

- NUMBA_CACHE_DIR=$XDG_CACHE_HOME/numbadlrm/numba (~/.cache/numbadlrm/numba): compiled
  kernels are cached per user, not in ``__pycache__`` folders inside the installed
  package, where files left by an uninstall made a namespace package that shadowed a
  later editable install (issue 24); kernel modules from outside the package
  (``--kernel-module``) are cached there too.

Settings already in the environment are kept, and nothing is set once numpy or numba is
loaded (too late to take effect, and a library user's process is theirs to configure).
"""

import os
import sys


def cache_dir() -> str:
    """The per-user folder for Numba's cache of numbadlrm's kernels."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "numbadlrm", "numba")


SETTINGS = {
    "OPENBLAS_THREAD_TIMEOUT": "4",
    "NUMBA_THREADING_LAYER_PRIORITY": "omp tbb workqueue",
    "NUMBA_CACHE_DIR": cache_dir(),
}
if "numpy" not in sys.modules and "numba" not in sys.modules:
    for _name, _value in SETTINGS.items():
        os.environ.setdefault(_name, _value)


def describe() -> str:
    return "pools:    " + ", ".join(f"{k}={os.environ.get(k)}" for k in SETTINGS)
