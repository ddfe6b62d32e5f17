"""End-to-end MPI training step: time per iteration split into compute, MPI calls, waiting.

The driver launches ``mpiexec -n R`` for R = 1, 2, 4 on a reduced config, strong scaling
(global batch fixed) and weak scaling (B = B0 R): R = 1 with all cores and with one
thread, then R ranks of one thread each; "vs 1x1" is throughput over one rank with one
thread. A run with more ranks x threads than cores is flagged "oversubscribed"
(its times measure the machine's time slicing, not the method). Each worker first checks
two distributed steps against a single-process DLRM (losses to 1e-5), warms up, then times
steps on pre-generated global batches:

    step      wall time of train_step (slowest rank's median)
    compute   step - mpi - wait       (kernels, routing, packing)
    mpi       inside MPI calls that start or test the non-blocking collectives
    wait      blocked in Wait: communication the overlap did not hide
    comm      the same alltoallv (both directions) and allreduce run alone, blocking

    python bench/bench_mpi.py            # reduced config, R = 1, 2, 4
    python bench/bench_mpi.py --quick    # tiny config, seconds (CI smoke)
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # noqa: F401  first: pool settings, inherited by the ranks
# isort: on

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = {  # (tables, rows, D, lookups, bottom, top, B0, steps)
    "reduced": (8, 100_000, 64, 20, "256-256-64", "512-256-1", 1024, 10),
    "quick": (4, 1000, 8, 2, "13-16-8", "16-1", 64, 3),
}


def worker(args) -> None:
    from mpi4py import MPI

    from numbadlrm import DLRM, DLRMConfig
    from numbadlrm.data.synthetic import random_batch
    from numbadlrm.parallel.distributed import DistributedDLRM
    from numbadlrm.parallel.train_mpi import abort_on_error
    from numbadlrm.runtime.threads import set_num_threads

    comm = MPI.COMM_WORLD
    with abort_on_error(comm):
        set_num_threads(args.threads)  # Numba and BLAS: one rank's pools stay on its cores
        tables, rows, dim, lookups, bottom, top, _, steps = CONFIGS[args.config]
        cfg = DLRMConfig.from_arch(dim, "-".join([str(rows)] * tables), bottom, top)
        rng = np.random.default_rng(0)  # the same global batches on every rank
        batches = [random_batch(rng, cfg, args.batch, lookups, False) for _ in range(4)]
        model = DistributedDLRM(cfg, comm, seed=0, precision=args.precision)
        losses = [model.train_step(b, 0.01) for b in batches[:2]]
        if comm.rank == 0:  # tolerances: tests/mpi_cases.py (fp32, and bf16's derivation)
            reference = DLRM(cfg, seed=0, precision=args.precision)
            expected = [reference.train_step(b, 0.01) for b in batches[:2]]
            rtol = 2.0**-6 if args.precision == "bf16" else 1e-5
            np.testing.assert_allclose(losses, expected, rtol=rtol)
            del reference
        for b in batches:  # warm-up past JIT and first touch
            model.train_step(b, 0.01)
        samples = []
        for i in range(steps):
            before = dict(model.mpi_seconds)
            comm.Barrier()
            start = time.perf_counter()
            model.train_step(batches[i % len(batches)], 0.01)
            total = time.perf_counter() - start
            mpi = model.mpi_seconds["start"] - before["start"]
            wait = model.mpi_seconds["wait"] - before["wait"]
            samples.append((total, total - mpi - wait, mpi, wait))
        comm_alone = _comm_alone(model, args.batch, comm)
        mine = [*np.median(np.asarray(samples), axis=0).tolist(), comm_alone]
        everyone = comm.gather(mine, root=0)
        if comm.rank == 0:
            slowest = max(everyone, key=lambda m: m[0])
            keys = ("step", "compute", "mpi", "wait", "comm")
            print("RESULT " + json.dumps(dict(zip(keys, slowest, strict=True))), flush=True)


def _comm_alone(model, batch: int, comm, repeat: int = 5) -> float:
    """Median seconds of the step's collectives run alone and blocking."""
    plan = model.exchange(batch)
    times = []
    for _ in range(repeat):
        comm.Barrier()
        start = time.perf_counter()
        plan.start_forward().Wait()
        plan.start_backward().Wait()
        for i in range(len(model.allreduce.views)):
            model.allreduce.start(i)
        model.allreduce.wait()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def launch(config: str, ranks: int, batch: int, threads: int, precision: str = "fp32") -> dict:
    mpiexec = Path(sys.executable).with_name("mpiexec")
    command = [
        str(mpiexec),
        "-n",
        str(ranks),
        sys.executable,
        __file__,
        "--worker",
        "--config",
        config,
        "--batch",
        str(batch),
        "--threads",
        str(threads),
        "--precision",
        precision,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny config, 1 and 2 ranks")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="reduced", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16"), help="the model's precision"
    )
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    from _common import header

    from numbadlrm.kernels.gemm.dpbf16 import has_avx512_bf16

    config = "quick" if args.quick else "reduced"
    tables, rows, dim, lookups, bottom, top, batch0, steps = CONFIGS[config]
    cores = os.cpu_count() or 1
    print(header("bench/bench_mpi.py"))
    print(
        f"config {config}: T={tables} x {rows:,} rows, D={dim}, <= {lookups} lookups/table,"
        f" bottom {bottom}, top {top}; {steps} timed steps; {cores} cores; times in ms,"
        f" slowest rank's medians"
    )
    print(
        f"{'scaling':<7} {'R':>2} {'thr':>3} {'B':>6} {'step':>8} {'compute':>8} {'mpi':>7}"
        f" {'wait':>7} {'comm':>7} {'samples/s':>10} {'vs 1x1':>7}"
    )
    runs = [(1, cores), (1, 1), (2, 1)] if args.quick else [(1, cores), (1, 1), (2, 1), (4, 1)]
    print(f"precision {args.precision}")
    for scaling in ("strong", "weak"):
        base = None
        for ranks, threads in runs:
            batch = batch0 * ranks if scaling == "weak" else batch0
            r = launch(config, ranks, batch, threads, args.precision)
            rate = batch / r["step"]
            if (ranks, threads) == (1, 1):
                base = rate
            vs = f"{rate / base:>7.2f}" if base else f"{'':>7}"
            flag = "  oversubscribed" if ranks * threads > cores else ""
            print(
                f"{scaling:<7} {ranks:>2} {threads:>3} {batch:>6} {r['step'] * 1e3:>8.2f} "
                f"{r['compute'] * 1e3:>8.2f} {r['mpi'] * 1e3:>7.2f} {r['wait'] * 1e3:>7.2f} "
                f"{r['comm'] * 1e3:>7.2f} {rate:>10,.0f} {vs}{flag}"
            )
    if args.quick and args.precision == "fp32" and has_avx512_bf16():  # CI covers bf16 too
        r = launch(config, 2, batch0, 1, "bf16")
        print(f"bf16 2 ranks x 1 thread, B {batch0}: step {r['step'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
