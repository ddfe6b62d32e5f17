"""Whole training steps with each optimizer: what Adagrad and row-wise Adagrad cost over SGD.

For each config (a, b, c: bench/_e2e.py) one DLRM per candidate on the same random
batches (fixed bag sizes), timed round-robin in one process (_common.median_times):

    sgd          the fused SGD step (the default)
    adagrad      Adagrad: each MLP layer forms dW, db, then updates its own slice of
                 the flat buffer at once (what DLRM does); fused sparse table update
    adagrad-end  the same math, the MLPs' Adagrad applied once over the whole flat buffer
                 after the backward (the alternative the per-layer update was measured
                 against: bit-identical results, checked)
    rwsadagrad   the reference's row-wise Adagrad (one float of state per table row)

It reports the median ms per step, each candidate's ratio to SGD, and the per-op medians
from the model's own timer (DLRM.op_times): "top bwd"/"bottom bwd" include each
candidate's dense update, "embedding update" its table update. Before timing, every
optimizer's 3 steps are checked against TorchDLRM + torch.optim.Adagrad / the reference's
RWSAdagrad (loss rtol 1e-4; skipped without torch) and adagrad-end against adagrad (equal).

    python bench/bench_optimizers.py --threads 2             # configs a, b, c
    python bench/bench_optimizers.py --configs a --threads 1
    python bench/bench_optimizers.py --quick                 # tiny config (CI smoke)

Config b holds its 2 GB of tables once per candidate, plus Adagrad's 2 GB of state: ~9 GB.
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # noqa: F401  first: the thread pools' environment
# isort: on

import argparse
import sys

import numpy as np
from _common import add_kernel_module_option, header, median_times, set_threads, use_kernel_modules
from _e2e import CONFIGS, LR, QUICK, batches, torch

from numbadlrm.model.dlrm import DLRM
from numbadlrm.runtime.profiling import OpTimes, timed

CANDIDATES = ("sgd", "adagrad", "adagrad-end", "rwsadagrad")


class EndUpdateDLRM(DLRM):
    """DLRM with the MLPs' Adagrad applied once, over the whole flat buffer, after the
    backward instead of per layer (the tables' update unchanged)."""

    def _backward_and_update(self, batch, ws, lr):
        update = self.optimizer.layer_update(self.params, self.grads, lr, self.kernels)
        self.tower.top_backward(ws)  # grads only
        self.tower.interaction_backward(ws)
        lookups = (self.row_start, batch.offsets, batch.indices, ws.demb)
        with timed(self.op_times, "embedding update"):
            self.optimizer.tables.update(self.weights, *lookups, lr, self.kernels)
        self.tower.bottom_backward(ws)
        with timed(self.op_times, "dense update"):
            update(0, self.params.shape[0])


def make(name: str, cfg):
    if name == "adagrad-end":
        return EndUpdateDLRM(cfg, seed=0, optimizer="adagrad")
    return DLRM(cfg, seed=0, optimizer=name)


def validate() -> None:
    """Each optimizer's 3 steps against PyTorch; adagrad-end equal to adagrad."""
    setup = QUICK["q"]
    cfg = setup.config()
    data = batches(setup, cfg, 3)
    models = {name: make(name, cfg) for name in CANDIDATES}
    for b in data:
        losses = {name: m.train_step(b, 0.05) for name, m in models.items()}
        if losses["adagrad"] != losses["adagrad-end"]:
            sys.exit("validation failed: adagrad-end differs from adagrad")
    for name, value in models["adagrad"].state_dict().items():
        if not np.array_equal(value, models["adagrad-end"].state_dict()[name]):
            sys.exit(f"validation failed: adagrad-end's {name} differs from adagrad's")
    if torch is None:
        return
    from numbadlrm.interop.torch_dlrm import TorchDLRM, torch_train_step
    from numbadlrm.interop.torch_optim import RowWiseSparseAdagrad

    torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default, no warning

    for name in ("adagrad", "rwsadagrad"):
        model = DLRM(cfg, seed=1, optimizer=name)
        oracle = TorchDLRM.from_numbadlrm(cfg, model.state_dict())
        cls = torch.optim.Adagrad if name == "adagrad" else RowWiseSparseAdagrad
        opt = cls(oracle.parameters(), lr=0.05)
        for b in data:
            ours, theirs = model.train_step(b, 0.05), torch_train_step(oracle, opt, b)
            if not np.isclose(ours, theirs, rtol=1e-4):
                sys.exit(f"validation failed: {name} loss {ours} torch {theirs}")


def run_config(key: str, setup, repeat: int) -> None:
    cfg = setup.config()
    data = batches(setup, cfg, 4)
    models = {name: make(name, cfg) for name in CANDIDATES}
    steps = {name: 0 for name in CANDIDATES}

    def stepper(name):
        def step():
            models[name].train_step(data[steps[name] % len(data)], LR)
            steps[name] += 1

        return step

    times = median_times({n: stepper(n) for n in CANDIDATES}, repeat=repeat, warmup=2)
    print(f"\nconfig {key}: B={setup.batch}, {setup.tables} x {setup.rows:,} rows, D={setup.dim}")
    print(f"{'optimizer':12} {'ms/step':>9} {'vs sgd':>7}")
    for name in CANDIDATES:
        print(f"{name:12} {times[name] * 1e3:9.2f} {times[name] / times['sgd']:6.2f}x")
    breakdown = {}
    for name in CANDIDATES:
        model, op_times = models[name], OpTimes()
        model.op_times = op_times
        for k in range(max(3, repeat // 2)):
            model.train_step(data[k % len(data)], LR)
        model.op_times = None
        breakdown[name] = op_times.medians()
    ops = list(dict.fromkeys(op for n in CANDIDATES for op in breakdown[n]))
    print(f"{'op (median ms)':18}" + "".join(f"{n:>12}" for n in CANDIDATES))
    for op in ops:
        print(f"{op:18}" + "".join(f"{breakdown[n].get(op, 0) * 1e3:12.3f}" for n in CANDIDATES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="a,b,c", help="comma-separated: a, b, c")
    parser.add_argument("--threads", type=int, default=2, help="Numba and BLAS threads")
    parser.add_argument("--repeat", type=int, default=0, help="timed steps per candidate")
    parser.add_argument("--quick", action="store_true", help="a tiny config only (CI)")
    add_kernel_module_option(parser)
    args = parser.parse_args()
    use_kernel_modules(args)
    set_threads(args.threads)
    print(header("bench_optimizers: whole steps with SGD, Adagrad, row-wise Adagrad"))
    validate()
    print("validated: each optimizer against PyTorch, adagrad-end equal to adagrad")
    chosen = QUICK if args.quick else {k: CONFIGS[k] for k in args.configs.split(",")}
    for key, setup in chosen.items():
        run_config(key, setup, args.repeat or max(setup.steps, 6))


if __name__ == "__main__":
    main()
