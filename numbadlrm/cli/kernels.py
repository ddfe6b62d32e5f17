"""``numbadlrm kernels``: list every op's versions; ``--check op=version`` runs the
packaged checks (numbadlrm/kernels/checks, no pytest or repository needed) and
``--bench`` times the version beside the op's default on the checks' own cases.

    numbadlrm kernels --kernel-module mine.py --check embedding_update=mine --bench
"""

from __future__ import annotations

import time

import numba
import numpy as np

from ..kernels import registry
from ..kernels.checks.ops import case_calls, entries, validate
from ..kernels.registry import KernelError


def check(choice: str, bench: bool = False, log=print) -> None:
    """Check each ``op=version`` of ``choice`` against the reference, with every entry it
    has at 1 thread and at all threads; KernelError (one line) on the first failure."""
    chosen = registry.parse_choice(choice)
    if not chosen:
        raise ValueError("kernels --check: give op=version[,op=version...]")
    for op, name in chosen.items():
        version = registry.get(op, name)
        registry.check_signature(version)
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            for serial in entries(version):
                _validate(op, name, serial, threads)
                entry = "serial" if serial else "parallel"
                log(f"checked {op}={name}: {entry} entry, {threads} thread(s): as the reference")
        if bench:
            log(timing_table(op, name))


def _validate(op: str, name: str, serial: bool, threads: int) -> None:
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        validate(op, name, serial)
    except AssertionError as exc:
        raise KernelError(f"kernels: {exc} ({threads} thread(s))".replace("\n", " ")) from None
    finally:
        numba.set_num_threads(old)


def median_us(kernel, args, repeat: int = 20) -> float:
    """Median microseconds of ``kernel(*args)`` after one warm-up call (compilation)."""
    kernel(*args)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        kernel(*args)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def timing_table(op: str, name: str) -> str:
    """The version beside the op's default, each check case timed (median us, parallel
    entries, all threads), the two versions alternating case by case."""
    names = list(dict.fromkeys([name, registry.default(op)]))
    calls = {n: case_calls(op, n) for n in names}
    width = max(len(label) for label, _ in calls[name])
    cols = [f"{n} (default)" if n == registry.default(op) else n for n in names]
    lines = [f"{op}: median us per call, {numba.get_num_threads()} thread(s)"]
    lines.append(f"  {'case':{width}}  " + "  ".join(f"{c:>{len(c) + 2}}" for c in cols))
    for i, (label, _) in enumerate(calls[name]):
        times = [median_us(registry.get(op, n).parallel, calls[n][i][1]) for n in names]
        cells = [f"{t:>{len(c) + 2}.1f}" for t, c in zip(times, cols, strict=True)]
        lines.append(f"  {label:{width}}  " + "  ".join(cells))
    return "\n".join(lines)
