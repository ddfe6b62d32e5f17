"""Per-op wall time of a model's steps: the public timing hook.

    times = OpTimes()
    model.op_times = times          # DLRM or DistributedDLRM
    for batch in batches:
        model.train_step(batch, lr)
    print(times.table())            # median ms per op, in step order
    model.op_times = None           # back to untimed (no overhead)

Each op of the forward and backward (``OPS``; the MLP passes include their fused
parameter updates) is timed by the model itself, around the very calls train_step
makes, so a benchmark never replays the model's internals.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import AbstractContextManager, contextmanager, nullcontext

import numpy as np

OPS = (
    "bottom fwd",
    "embedding fwd",
    "interaction fwd",
    "top fwd",
    "loss",
    "top bwd",
    "interaction bwd",
    "embedding update",
    "bottom bwd",
)
_UNTIMED = nullcontext()


class OpTimes:
    """Seconds of every timed call, by op name."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def time(self, op: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[op].append(time.perf_counter() - start)

    def medians(self) -> dict[str, float]:
        """{op: median seconds}, ops in step order (other names after them)."""
        order = [op for op in OPS if op in self.seconds]
        order += [op for op in self.seconds if op not in OPS]
        return {op: float(np.median(self.seconds[op])) for op in order}

    def table(self) -> str:
        """One line per op: calls, median and total ms, share of the summed medians."""
        medians = self.medians()
        total = sum(medians.values()) or 1.0
        lines = [f"{'op':18} {'calls':>6} {'median ms':>10} {'total ms':>10} {'share':>6}"]
        for op, median in medians.items():
            calls = len(self.seconds[op])
            lines.append(
                f"{op:18} {calls:6d} {median * 1e3:10.3f} "
                f"{sum(self.seconds[op]) * 1e3:10.1f} {median / total:6.1%}"
            )
        lines.append(f"{'sum of medians':18} {'':6} {total * 1e3:10.3f}")
        return "\n".join(lines)


def timed(op_times: OpTimes | None, op: str) -> AbstractContextManager:
    """A context timing ``op`` into op_times, or one that does nothing when it is None."""
    return _UNTIMED if op_times is None else op_times.time(op)
