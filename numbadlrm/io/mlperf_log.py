"""MLPerf-style log lines (``--mlperf-logging``), as the reference writes them.

The reference logs through the mlperf_logging package (its mlperf_logger.py); each event
is one line

    :::MLLOG {"namespace": "", "time_ms": 1700000000000, "event_type": "POINT_IN_TIME",
              "key": "eval_accuracy", "value": 0.79, "metadata": {"file": ..., "lineno": ...,
              "epoch_num": 1.5}}

with event_type INTERVAL_START (``start``), INTERVAL_END (``end``) or POINT_IN_TIME
(``event``). The keys numbadlrm writes are the reference's: cache_clear, init_start,
submission_*, global_batch_size, opt_base_learning_rate, opt_learning_rate_warmup_steps,
sgd_opt_base_learning_rate, lr_decay_start_steps, sgd_opt_learning_rate_decay_steps,
sgd_opt_learning_rate_decay_poly_power, init_stop, run_start, block_start, epoch_start,
eval_start, eval_accuracy (the AUC), eval_stop, epoch_stop, block_stop, run_stop (status
success when --mlperf-auc-threshold or --mlperf-acc-threshold was reached, else aborted),
and train_samples / eval_samples. Lines go to the run's log (rank 0 under MPI); the
mlperf_logging package is not needed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SUBMISSION = {
    "submission_benchmark": "dlrm",
    "submission_org": "numbadlrm",
    "submission_division": "closed",
    "submission_status": "research",
    "submission_platform": "cpu",
}


class MLPerfLog:
    """Writes MLLOG lines through ``log``; does nothing when ``log`` is None."""

    def __init__(self, log=None, clock=time.time):
        self.log, self.clock = log, clock

    @property
    def enabled(self) -> bool:
        return self.log is not None

    def event(self, key: str, value=None, **metadata) -> None:
        self._line("POINT_IN_TIME", key, value, metadata)

    def start(self, key: str, value=None, **metadata) -> None:
        self._line("INTERVAL_START", key, value, metadata)

    def end(self, key: str, value=None, **metadata) -> None:
        self._line("INTERVAL_END", key, value, metadata)

    def _line(self, event_type: str, key: str, value, metadata: dict) -> None:
        if self.log is None:
            return
        caller = sys._getframe(2)  # who called event/start/end
        where = {"file": Path(caller.f_code.co_filename).name, "lineno": caller.f_lineno}
        record = {
            "namespace": "",
            "time_ms": int(self.clock() * 1000),
            "event_type": event_type,
            "key": key,
            "value": value,
            "metadata": {**where, **metadata},
        }
        self.log(":::MLLOG " + json.dumps(record))

    def run_header(self, batch_size: int, lr: float, warmup: int, decay_start: int,
                   decay_steps: int, seed: int) -> None:  # fmt: skip
        """What the reference logs before training: submission info and hyperparameters."""
        self.event("cache_clear", True)
        self.start("init_start")
        for key, value in SUBMISSION.items():
            self.event(key, value)
        self.event("seed", seed)
        self.event("global_batch_size", batch_size)
        self.event("opt_base_learning_rate", lr)
        self.event("opt_learning_rate_warmup_steps", warmup)
        self.event("sgd_opt_base_learning_rate", lr)
        self.event("lr_decay_start_steps", decay_start)
        self.event("sgd_opt_learning_rate_decay_steps", decay_steps)
        self.event("sgd_opt_learning_rate_decay_poly_power", 2)
        self.end("init_stop")
        self.start("run_start")
