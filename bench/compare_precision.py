"""Accuracy of --precision bf16 against fp32: test AUC of the same runs in both precisions.

Two runs, each trained twice from the same initial weights on the same batches in the same
order, once in fp32 and once in bf16 (split-SGD-BF16: bf16 compute, exact fp32 SGD on
split master weights):

    real rows   the Criteo Kaggle rows in ../shared/data/criteo (see its PROVENANCE.md):
                deepctr_200.tsv + paddlerec_train_100.txt to train (300 rows),
                paddlerec_test_100.txt to test (100 rows), as bench/compare_criteo_torch.py,
                over --seeds seeds; with 100 test rows one pair of samples swapped in the
                ranking moves the AUC by 1 / (positives x negatives) = 1 / 2304 = 0.0004
    synthetic   the default `numbadlrm train` run (15,000 steps of batch 128 on the
                built-in learnable data; ~1 minute per precision at 2 cores), test AUC on
                its 16 x 4096 held-out samples

    python bench/compare_precision.py                 # both, 5 seeds of the real rows
    python bench/compare_precision.py --no-synthetic  # the real rows only
    python bench/compare_precision.py --quick         # 1 seed, 1 epoch; 300 steps (CI)
"""

from __future__ import annotations

# isort: off
from numbadlrm import _pools  # noqa: F401  first: the thread pools' environment, before numpy
# isort: on

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import header, set_threads
from compare_criteo_torch import DEFAULT_DIR, load_split

from numbadlrm import DLRM, DLRMConfig
from numbadlrm.kernels.microkernel_bf16 import has_avx512_bf16
from numbadlrm.metrics import evaluate_predictions
from numbadlrm.train import TrainConfig, run_training

PRECISIONS = ("fp32", "bf16")


def real_rows(args) -> list[tuple[float, float]]:
    """[(fp32 AUC, bf16 AUC)] per seed on the real Criteo rows."""
    train_files = [args.data_dir / "deepctr_200.tsv", args.data_dir / "paddlerec_train_100.txt"]
    test_files = [args.data_dir / "paddlerec_test_100.txt"]
    if not all(f.is_file() for f in train_files + test_files):
        print(f"real Criteo rows not found in {args.data_dir}; skipped")
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train = load_split(train_files, Path(tmp) / "train", args.max_ind_range).split("train")
        test = load_split(test_files, Path(tmp) / "test", args.max_ind_range).split("train")
        sizes = "-".join([str(args.max_ind_range)] * 26)
        cfg = DLRMConfig.from_arch(16, sizes, "13-64-16", "64-1")
        print(f"\nreal rows: train {len(train)}, test {len(test)}; model {cfg.arch_strings()}")
        print(f"{'seed':>4} {'fp32 auc':>9} {'bf16 auc':>9} {'difference':>11} {'max |dp|':>9}")
        for seed in range(args.seeds):
            models = {p: DLRM(cfg, seed=seed, precision=p) for p in PRECISIONS}
            for epoch in range(args.epochs):
                for batch in train.batches(args.batch_size, shuffle=True, seed=seed, epoch=epoch):
                    for model in models.values():
                        model.train_step(batch, args.learning_rate)
            labels, probs = [], {p: [] for p in PRECISIONS}
            for batch in test.batches(256, shuffle=False):
                labels.append(batch.labels)
                for p, model in models.items():
                    probs[p].append(model.predict(batch))
            y = np.concatenate(labels)
            auc = {p: evaluate_predictions(y, np.concatenate(v))["auc"] for p, v in probs.items()}
            gap = float(np.abs(np.concatenate(probs["fp32"]) - np.concatenate(probs["bf16"])).max())
            rows.append((auc["fp32"], auc["bf16"]))
            diff = auc["bf16"] - auc["fp32"]
            print(f"{seed:>4} {auc['fp32']:>9.4f} {auc['bf16']:>9.4f} {diff:>+11.4f} {gap:>9.2e}")
    a = np.array(rows)
    print(
        f"mean AUC: fp32 {a[:, 0].mean():.4f}, bf16 {a[:, 1].mean():.4f}; mean |difference| "
        f"{np.abs(a[:, 1] - a[:, 0]).mean():.4f}, max {np.abs(a[:, 1] - a[:, 0]).max():.4f}"
    )
    return rows


def synthetic(args) -> dict[str, dict]:
    """The default `numbadlrm train` run's test metrics in each precision."""
    print(f"\nsynthetic: `numbadlrm train` defaults{', 300 steps' if args.quick else ''}")
    out = {}
    for p in PRECISIONS:
        quick = {"num_batches": 300, "test_num_batches": 2} if args.quick else {}
        cfg = TrainConfig(precision=p, progress=False, **quick)
        start = time.perf_counter()
        result = run_training(cfg, log=lambda *a: None)
        out[p] = result
        print(
            f"{p}: test auc {result['auc']:.4f}  logloss {result['logloss']:.4f}  "
            f"accuracy {result['accuracy']:.4f}  ({result['steps']} steps, "
            f"{time.perf_counter() - start:.0f} s)"
        )
    print(f"bf16 - fp32 test AUC: {out['bf16']['auc'] - out['fp32']['auc']:+.4f}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--max-ind-range", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-synthetic", action="store_true", help="the real rows only")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 300 steps (CI)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 1
    set_threads(args.threads)
    print(header("compare_precision: test AUC, --precision bf16 against fp32"))
    if not has_avx512_bf16():
        print("this CPU has no AVX512-BF16: --precision bf16 cannot run here; nothing to compare")
        return 0
    real_rows(args)
    if not args.no_synthetic:
        synthetic(args)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - t0:.1f} s)")
    sys.exit(code)
