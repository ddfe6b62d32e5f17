"""Train numbadlrm and the PyTorch DLRM the same way on real Criteo rows; compare test AUC.

Uses the few hundred real Kaggle rows in ../shared/data/criteo (see its PROVENANCE.md):
deepctr_200.tsv + paddlerec_train_100.txt to train, paddlerec_test_100.txt to test.
Both models start from the same weights, see the same batches in the same order and use
plain SGD with the same learning rate; only the implementations differ (hand-derived
backward + Numba kernels vs autograd + torch.nn.EmbeddingBag).

    python bench/compare_criteo_torch.py [--data-dir ../shared/data/criteo] [--epochs 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from numbadlrm import DLRM, DLRMConfig
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.data.dataset import ProcessedData
from numbadlrm.train.metrics import evaluate_predictions

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "criteo"


def load_split(files: list[Path], out: Path, max_ind_range: int):
    options = PreprocessOptions(
        split="fractions", split_fractions=(1.0, 0.0, 0.0), max_ind_range=max_ind_range
    )
    preprocess(files, out, options, progress=False)
    return ProcessedData(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--max-ind-range", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5, help="repeat over this many seeds")
    parser.add_argument("--quick", action="store_true", help="one seed, one epoch (CI smoke)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = 1, 1
    train_files = [args.data_dir / "deepctr_200.tsv", args.data_dir / "paddlerec_train_100.txt"]
    test_files = [args.data_dir / "paddlerec_test_100.txt"]
    if not all(f.is_file() for f in train_files + test_files):
        print(f"real Criteo rows not found in {args.data_dir}; nothing to compare")
        return 0
    try:
        import torch

        from numbadlrm.interop.torch_dlrm import TorchDLRM, torch_predict, torch_train_step
    except ImportError:
        print("PyTorch is not installed (pip install 'numbadlrm[torch]'); nothing to compare")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        train = load_split(train_files, Path(tmp) / "train", args.max_ind_range).split("train")
        test = load_split(test_files, Path(tmp) / "test", args.max_ind_range).split("train")
        cfg = DLRMConfig.from_arch(16, "-".join([str(args.max_ind_range)] * 26), "13-64-16", "64-1")
        print(f"train rows {len(train)}, test rows {len(test)}; model {cfg.arch_strings()}")
        print(
            f"{'seed':>4} {'numbadlrm auc':>14} {'torch auc':>10} {'numbadlrm logloss':>18} "
            f"{'torch logloss':>14} {'max |dp|':>9}"
        )
        rows = []
        for seed in range(args.seeds):
            model = DLRM(cfg, seed=seed)
            oracle = TorchDLRM.from_numbadlrm(cfg, model.state_dict())
            opt = torch.optim.SGD(oracle.parameters(), lr=args.learning_rate)
            for epoch in range(args.epochs):
                for batch in train.batches(args.batch_size, shuffle=True, seed=seed, epoch=epoch):
                    model.train_step(batch, args.learning_rate)
                    torch_train_step(oracle, opt, batch)
            labels, p_ours, p_torch = [], [], []
            for batch in test.batches(256, shuffle=False):
                labels.append(batch.labels)
                p_ours.append(model.predict(batch))
                p_torch.append(torch_predict(oracle, batch))
            y = np.concatenate(labels)
            ours = evaluate_predictions(y, np.concatenate(p_ours))
            theirs = evaluate_predictions(y, np.concatenate(p_torch))
            gap = float(np.abs(np.concatenate(p_ours) - np.concatenate(p_torch)).max())
            rows.append((ours["auc"], theirs["auc"]))
            print(
                f"{seed:>4} {ours['auc']:>14.4f} {theirs['auc']:>10.4f} "
                f"{ours['logloss']:>18.4f} {theirs['logloss']:>14.4f} {gap:>9.2e}"
            )
        a = np.array(rows)
        print(
            f"mean AUC: numbadlrm {a[:, 0].mean():.4f}, torch {a[:, 1].mean():.4f}, "
            f"max |difference| {np.abs(a[:, 0] - a[:, 1]).max():.2e}"
        )
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - t0:.1f} s)")
    sys.exit(code)
