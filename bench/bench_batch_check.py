"""The per-step batch check against the embedding kernels and the whole step it guards.

Every train_step, loss and predict re-checks its batch (Batch.check_against): the arrays'
dtypes, shapes and layout, then every table's offsets and indices in one pass of
kernels/embedding/lookups.py. This times, round-robin in one process at configs a, b, c of
bench_e2e (random data, fixed bags):

    check        Batch.check_against, all of it (what a step pays)
    kernel       the lookups kernel alone (its serial or parallel entry, as the check picks)
    emb fwd      the embedding forward layer (the gather the check guards)
    emb update   the fused embedding backward + SGD update layer
    step         DLRM.train_step (which includes one check)

and prints the check as a share of the embedding passes and of the step. Validates first
that the kernel flags exactly the tables the NumPy wording finds at fault.

    python bench/bench_batch_check.py --threads 2
    python bench/bench_batch_check.py --quick                 # tiny shapes (CI smoke)
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
import os
import sys

import numba
import numpy as np
from _common import header, median_times, set_threads
from _e2e import CONFIGS, QUICK, batches

from numbadlrm.batch import lookup_problem
from numbadlrm.kernels.embedding.lookups import check_lookups, check_lookups_serial
from numbadlrm.kernels.jit import run_serial
from numbadlrm.layers.embedding_bag import embedding_backward_sgd, embedding_forward
from numbadlrm.model.dlrm import DLRM

LR = 0.01


def validate() -> None:
    """Abort unless both kernel entries agree with the NumPy wording on broken batches."""
    setup = QUICK["q"]
    cfg = setup.config()
    rows = np.asarray(cfg.embedding_sizes, np.int64)
    rng = np.random.default_rng(0)
    for trial, b in enumerate(batches(setup, cfg, 40)):
        if trial % 2:
            b.indices[rng.integers(b.indices.size)] = rng.choice([-1, setup.rows])
        if trial % 3 == 0:
            b.offsets[rng.integers(setup.tables), rng.integers(setup.batch)] += 1000
        for kernel in (check_lookups, check_lookups_serial):
            bad = np.empty(setup.tables, np.uint8)
            kernel(bad, b.offsets, b.indices, rows)
            for t in range(setup.tables):
                found = lookup_problem(b.offsets[t : t + 1], b.indices, rows[t : t + 1])
                if bool(bad[t]) != (found is not None):
                    sys.exit(f"validation failed: {kernel.__name__} table {t}: {found}")


def measure(name: str, repeat: int) -> dict[str, float]:
    """Median seconds of the check, its kernel, the embedding passes and a step."""
    setup = CONFIGS.get(name) or QUICK[name]
    cfg = setup.config()
    model = DLRM(cfg, seed=0)
    b = batches(setup, cfg, 1)[0]
    ws = model.workspace(b.batch_size)
    rows = np.asarray(cfg.embedding_sizes, np.int64)
    bad = np.empty(cfg.num_tables, np.uint8)
    serial = run_serial(b.indices.nbytes + b.offsets.nbytes)
    kernel = check_lookups_serial if serial else check_lookups
    return median_times(
        {
            "check": lambda: b.check_against(cfg.num_dense, cfg.embedding_sizes),
            "kernel": lambda: kernel(bad, b.offsets, b.indices, rows),
            "emb fwd": lambda: embedding_forward(
                ws.emb, model.weights, model.row_start, b.offsets, b.indices
            ),
            "emb update": lambda: embedding_backward_sgd(
                model.weights, model.row_start, b.offsets, b.indices, ws.demb, LR
            ),
            "step": lambda: model.train_step(b, LR),
        },
        repeat=repeat,
    ) | {"serial": float(serial), "lookups": float(b.indices.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--configs", default="abc", help="any of a, b, c")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats")
    args = parser.parse_args()
    set_threads(args.threads)
    print(header("bench_batch_check: the per-step batch check"))
    print(_pools.describe())
    validate()
    print("validation: kernel agrees with the NumPy wording (serial and parallel entries)")
    names = ["q"] if args.quick else list(args.configs)
    repeat = 3 if args.quick else args.repeat
    print(
        f"{'config':>6} {'lookups':>9} {'entry':>8} {'check us':>9} {'kernel us':>9} "
        f"{'emb fwd us':>10} {'emb upd us':>10} {'step ms':>8} {'/ emb':>6} {'/ step':>7}"
    )
    for name in names:
        t = measure(name, repeat)
        emb = t["emb fwd"] + t["emb update"]
        print(
            f"{name:>6} {int(t['lookups']):>9,} {'serial' if t['serial'] else 'parallel':>8} "
            f"{t['check'] * 1e6:>9.1f} {t['kernel'] * 1e6:>9.1f} {t['emb fwd'] * 1e6:>10.1f} "
            f"{t['emb update'] * 1e6:>10.1f} {t['step'] * 1e3:>8.2f} "
            f"{t['check'] / emb:>6.1%} {t['check'] / t['step']:>7.2%}"
        )
    print(f"numba threads {numba.get_num_threads()}; medians of {repeat} calls, round-robin")


if __name__ == "__main__":
    main()
