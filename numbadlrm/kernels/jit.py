"""Numerics flags for every Numba kernel, defined in one place.

``fastmath`` allows reassociation and FMA contraction (so reductions vectorise) but
keeps NaN/Inf semantics (``nnan``/``ninf`` are off), so a diverging run still shows
NaN instead of silently producing garbage. ``cache=True`` writes compiled kernels to disk,
so only the first run pays for compilation: under the ``numbadlrm`` command and the
benches to a per-user folder (runtime/pools.py sets NUMBA_CACHE_DIR unless you did),
otherwise Numba's default, ``__pycache__`` next to each module.

Set ``NUMBA_DISABLE_JIT=1`` to run every kernel as plain Python (slow, debuggable).
Your own kernels (numbadlrm/kernels/lab/) use the same decorators. The thread count is
set by :func:`numbadlrm.runtime.threads.set_num_threads`.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext

import numba
from numba.core import event

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Parallel kernels: loops written with prange run on Numba's thread pool.
jit_parallel = numba.njit(cache=True, fastmath=FASTMATH, parallel=True, nogil=True)
# Serial helpers (inlined into the parallel kernels or called on small data).
jit_serial = numba.njit(cache=True, fastmath=FASTMATH, nogil=True)
# The same for kernels that divide by data (Adagrad's g / (sqrt(s) + eps)): a division by
# zero gives Inf or NaN as in NumPy and torch instead of raising ZeroDivisionError (Numba's
# default "python" error model), and the division needs no zero test, so it vectorises.
jit_parallel_ieee = numba.njit(
    cache=True, fastmath=FASTMATH, parallel=True, nogil=True, error_model="numpy"
)
jit_serial_ieee = numba.njit(cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy")


# Below this many bytes of work the layers call a version's serial entry: a parallel
# launch costs more than the work (bench/RESULTS.md, "serial entries").
SERIAL_BELOW_BYTES = 1 << 20


def run_serial(nbytes: int) -> bool:
    """True if work moving nbytes should run on the calling thread alone."""
    return nbytes < SERIAL_BELOW_BYTES or numba.get_num_threads() == 1


class _CompileNotice(event.Listener):
    """Logs once, when Numba starts compiling: a cache miss (a cache hit sends no event)."""

    def __init__(self, log):
        self.log, self.started = log, None

    def on_start(self, ev) -> None:
        if self.started is None:  # under Numba's compiler lock: one thread at a time
            self.started = time.perf_counter()
            self.log("compiling kernels (once: they are cached on disk for later runs) ...")

    def on_end(self, ev) -> None:
        pass


# This process's notices: how many announce_compilation blocks are open (the command
# line's), and which of the Python API's first calls have run (announce_first_compilation).
_NOTICES = {"open": 0, "first_calls": set()}


@contextmanager
def announce_compilation(log=print):
    """Log "compiling kernels (once ...) ..." when Numba starts compiling inside the block,
    and on leaving it how long the block took from there; silent when every kernel it
    runs was compiled before (this process, or the disk cache)."""
    notice = _CompileNotice(log)
    _NOTICES["open"] += 1
    try:
        with event.install_listener("numba:compile", notice):
            yield
    finally:
        _NOTICES["open"] -= 1
    if notice.started is not None:
        log(f"compiled kernels in {time.perf_counter() - notice.started:.1f} s")


def _stderr(line: str) -> None:
    print(f"numbadlrm: {line}", file=sys.stderr, flush=True)


def announce_first_compilation(call: str):
    """The Python API's notice: announce_compilation to stderr during the first ``call``
    of this process ("train_step", "forward", "gradients": each compiles its own
    kernels), and a no-op after it (a listener costs ~10 us a call) or inside an open
    announce_compilation block (the command line's own notice)."""
    if _NOTICES["open"] or call in _NOTICES["first_calls"]:
        return nullcontext()
    _NOTICES["first_calls"].add(call)
    return announce_compilation(_stderr)
