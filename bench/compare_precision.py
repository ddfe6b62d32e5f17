"""Accuracy of --precision bf16 against fp32: test AUC of the same runs in both precisions.

Two runs, each trained twice from the same initial weights on the same batches in the same
order, once in fp32 and once in bf16 (split-SGD-BF16: bf16 compute, exact fp32 SGD on
split master weights):

    real rows   the Criteo Kaggle rows in ../shared/data/criteo (see its PROVENANCE.md):
                deepctr_200.tsv + paddlerec_train_100.txt to train (300 rows),
                paddlerec_test_100.txt to test (100 rows), as bench/compare_criteo_torch.py,
                over --seeds seeds; with 100 test rows one pair of samples swapped in the
                ranking moves the AUC by 1 / (positives x negatives) = 1 / 2304 = 0.0004.
                A control measures how far a run moves when perturbed as much as one bf16
                rounding perturbs a value: fp32 from initial weights multiplied by
                (1 + 2^-8 u), u uniform in [-1, 1] (fp32's own rounding does not do: two
                fp32 runs on different GEMM backends end 1e-7 apart in every prediction)
    synthetic   the default `numbadlrm train` run (15,000 steps of batch 128 on the
                built-in learnable data; ~1 minute per precision at 2 cores), test AUC on
                its 16 x 4096 held-out samples

    python bench/compare_precision.py                 # both, 10 seeds of the real rows
    python bench/compare_precision.py --no-synthetic  # the real rows only
    python bench/compare_precision.py --quick         # 1 seed, 1 epoch; 300 steps (CI)
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # noqa: F401  first: the thread pools' environment, before numpy
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
from numbadlrm.kernels.gemm.dpbf16 import has_avx512_bf16
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import run_training
from numbadlrm.train.metrics import evaluate_predictions

PRECISIONS = ("fp32", "bf16")
RUNS = ("fp32", "bf16", "control")  # control: fp32 from weights perturbed by ~one bf16 rounding


def _model(cfg, seed: int, run: str) -> DLRM:
    model = DLRM(cfg, seed=seed, precision="bf16" if run == "bf16" else "fp32")
    if run == "control":
        rng = np.random.default_rng(1000 + seed)
        state = model.state_dict()
        for value in state.values():
            value *= 1 + np.float32(2.0**-8) * rng.uniform(-1, 1, value.shape).astype(np.float32)
        model.load_state_dict(state)
    return model


def real_rows(args) -> list[tuple[float, float, float]]:
    """[(fp32 AUC, bf16 AUC, control AUC)] per seed on the real Criteo rows."""
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
        print(
            f"{'seed':>4} {'fp32 auc':>9} {'bf16 auc':>9} {'bf16-fp32':>10} {'max |dp|':>9}"
            f" {'control':>8} {'ctrl-fp32':>10} {'max |dp|':>9}"
        )
        for seed in range(args.seeds):
            models = {run: _model(cfg, seed, run) for run in RUNS}
            for epoch in range(args.epochs):
                for batch in train.batches(args.batch_size, shuffle=True, seed=seed, epoch=epoch):
                    for model in models.values():
                        model.train_step(batch, args.learning_rate)
            labels, probs = [], {k: [] for k in RUNS}
            for batch in test.batches(256, shuffle=False):
                labels.append(batch.labels)
                for p, model in models.items():
                    probs[p].append(model.predict(batch))
            y = np.concatenate(labels)
            p = {k: np.concatenate(v) for k, v in probs.items()}
            auc = {k: evaluate_predictions(y, v)["auc"] for k, v in p.items()}
            gap = {k: float(np.abs(p[k] - p["fp32"]).max()) for k in ("bf16", "control")}
            rows.append((auc["fp32"], auc["bf16"], auc["control"]))
            print(
                f"{seed:>4} {auc['fp32']:>9.4f} {auc['bf16']:>9.4f} "
                f"{auc['bf16'] - auc['fp32']:>+10.4f} {gap['bf16']:>9.2e} {auc['control']:>8.4f} "
                f"{auc['control'] - auc['fp32']:>+10.4f} {gap['control']:>9.2e}"
            )
    a = np.array(rows)
    for k, name in ((1, "bf16"), (2, "control")):
        d = np.abs(a[:, k] - a[:, 0])
        print(
            f"mean AUC: fp32 {a[:, 0].mean():.4f}, {name} {a[:, k].mean():.4f} (difference of "
            f"the means {a[:, k].mean() - a[:, 0].mean():+.4f}); per seed |difference| mean "
            f"{d.mean():.4f}, max {d.max():.4f}"
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
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-synthetic", action="store_true", help="the real rows only")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 300 steps (CI)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 1
    set_threads(args.threads)
    print(header("compare_precision: test AUC, --precision bf16 against fp32"))
    if not has_avx512_bf16():
        print("this CPU has no AVX512-BF16: bf16 would run emulated (same results, slower): skip")
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
