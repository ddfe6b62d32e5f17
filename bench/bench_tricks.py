"""QR and MD tables (issue 22) beside the plain model: AUC and table bytes on real Criteo
rows, and table bytes and step time at config b's shapes.

    python bench/bench_tricks.py                       # both parts
    python bench/bench_tricks.py --part auc --seeds 5  # real rows only
    python bench/bench_tricks.py --part step --steps 3

Part "auc": ``numbadlrm preprocess`` of ../shared/data/criteo/cafpereira_4584.tsv (4,584
real rows of the Kaggle set; split 0.8/0.1/0.1, min-count 1), then ``numbadlrm train``
of the default architecture (D 16, 13-512-256-64-16, 512-256-1, SGD lr 0.1, batch 128,
3 epochs) plain, with --qr-flag (c 4, mult, threshold 200) and with --md-flag
(temperature 0.3, threshold 200), over several seeds: the test split's AUC (459 rows:
differences under ~0.02 are noise) and the tables' bytes. Part "step": config b
(bench/_e2e.py: 8 tables of 1M rows, D 64, B 2048, 100 lookups a bag); each model
validated against numbadlrm.reference on a small config first, warmed past JIT, then
the median of the timed steps.
"""

from __future__ import annotations

# isort: off
# isort: on
import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import header, set_threads
from _e2e import CONFIGS, LR, QUICK, batches

from numbadlrm.config import DLRMConfig
from numbadlrm.model.dlrm import DLRM
from numbadlrm.model.memory import estimate
from numbadlrm.reference import ReferenceDLRM
from numbadlrm.train.config import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo"
ROWS = "cafpereira_4584.tsv"
VARIANTS = {
    "plain": [],
    "QR c=4 mult": ["--qr-flag", "--qr-collisions", "4", "--qr-operation", "mult"],
    "MD T=0.3": ["--md-flag", "--md-temperature", "0.3"],
}
TRICKS = {"plain": {}, "QR c=4 mult": dict(qr_flag=True), "MD T=0.3": dict(md_flag=True)}


def _cli(*args: str) -> str:
    cmd = [sys.executable, "-m", "numbadlrm.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def auc_part(seeds: int, data: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cf"
        _cli("preprocess", str(data / ROWS), "--out-dir", str(out), "--min-count", "1",
             "--no-progress")  # fmt: skip
        sizes = tuple(json.loads((out / "metadata.json").read_text())["table_sizes"])
        print(f"\n## AUC on {ROWS} (test split), {seeds} seeds; tables {len(sizes)}, "
              f"{sum(sizes):,} rows")  # fmt: skip
        print("| model | table bytes | AUC mean | AUC min..max | logloss mean |")
        print("|---|---:|---:|---:|---:|")
        for name, flags in VARIANTS.items():
            cfg = TrainConfig(**{k.replace("-", "_"): v for k, v in _flag_dict(flags).items()})
            table_bytes = estimate(cfg.model_config(sizes)).table_bytes
            aucs, losses = [], []
            for seed in range(seeds):
                text = _cli("train", "--data-generation", "dataset", "--processed-data-file",
                            str(out), "--mini-batch-size", "128", "--nepochs", "3",
                            "--learning-rate", "0.1", "--seed", str(seed), "--no-progress",
                            *flags)  # fmt: skip
                found = re.findall(r"auc ([0-9.]+)\s+logloss ([0-9.]+)", text)[-1]
                aucs.append(float(found[0]))
                losses.append(float(found[1]))
            print(f"| {name} | {table_bytes:,} | {np.mean(aucs):.4f} | {min(aucs):.4f}.."
                  f"{max(aucs):.4f} | {np.mean(losses):.4f} |")  # fmt: skip


def _flag_dict(flags: list[str]) -> dict:
    out, i = {}, 0
    while i < len(flags):
        key = flags[i].lstrip("-")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            value = flags[i + 1]
            out[key] = float(value) if "." in value else int(value) if value.isdigit() else value
            i += 2
        else:
            out[key], i = True, i + 1
    return out


def _validate(tricks: dict) -> None:
    """5 SGD steps of a small config with these tricks against the NumPy reference."""
    base = DLRMConfig.from_arch(16, "300-1000-50-300-1000-50", "13-32-16", "16-1")
    small = dataclasses.replace(base, **tricks)
    model = DLRM(small, seed=0)
    ref = ReferenceDLRM(small, model.state_dict())
    for b in batches(dataclasses.replace(QUICK["q"], tables=6, dim=16), small, 5):
        got, want = model.train_step(b, LR), ref.train_step(b.dense, b.offsets, b.indices,
                                                            b.labels, LR)  # fmt: skip
        assert np.isclose(got, want, rtol=1e-4), (tricks, got, want)


def step_part(steps: int) -> None:
    setup = CONFIGS["b"]
    print(f"\n## config b: {setup.tables} tables x {setup.rows:,} rows, D {setup.dim}, "
          f"B {setup.batch}, {setup.lookups} lookups a bag; median of {steps} steps")  # fmt: skip
    print("| model | table bytes | step (s) | vs plain |")
    print("|---|---:|---:|---:|")
    base = None
    for name, tricks in TRICKS.items():
        _validate(tricks)
        cfg = dataclasses.replace(setup.config(), **tricks)
        model = DLRM(cfg, seed=0)
        data = batches(setup, cfg, 2)
        model.train_step(data[0], LR)  # JIT and first touch
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            model.train_step(data[i % 2], LR)
            times.append(time.perf_counter() - t0)
        step = float(np.median(times))
        base = base or step
        table_bytes = estimate(cfg).table_bytes
        print(f"| {name} | {table_bytes:,} | {step:.3f} | {step / base:.2f}x |")
        del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("auc", "step", "both"), default="both")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: every CPU")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if args.threads:
        set_threads(args.threads)
    print(header("bench_tricks: QR and MD tables beside the plain model"))
    if args.part in ("auc", "both"):
        auc_part(args.seeds, args.data)
    if args.part in ("step", "both"):
        step_part(args.steps)


if __name__ == "__main__":
    main()
