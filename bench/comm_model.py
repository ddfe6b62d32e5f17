"""Communication model of hybrid-parallel DLRM: bytes per rank and projected scaling.

R ranks, global batch B (Bl = B / R per rank), T tables of dimension D spread evenly
(T / R per rank), N dense parameters, float32 (4 bytes). Per rank per iteration:

    embedding alltoall, each direction  sends = receives = 4 T D B (R-1) / R^2
        (its T/R tables' pooled vectors for the other ranks' B (R-1)/R samples; the
         backward moves the same volume of gradients the other way; for R > T the
         tables are row-split into ceil(R/T) pieces, each sending partial sums: T
         becomes T ceil(R/T))
    gradient allreduce (ring)           sends = receives = 2 (R-1)/R * 4 N

Time on a link of bandwidth W (bytes/s) and per-message latency a:
    alltoall   (R-1) a + bytes / W         allreduce   2 (R-1) a + bytes / W
Compute measured on one rank, t1(B), scales as t1(B) / R (strong scaling: every rank
pools its T/R tables for B samples and runs the MLPs on B/R samples) or stays t1(B0)
with B = R B0 (weak scaling); the index routing and the partial sums of row-split
pieces are not modelled. Projected iteration time, without and with overlap:
    serial   t = t_comp + t_comm          overlapped  t = max(t_comp, t_comm)
and efficiency E(R) = t(1) / (R t(R)) (strong) or t(1) / t(R) (weak).

    python bench/comm_model.py                    # measures t1 on this machine (2 steps)
    python bench/comm_model.py --compute-ms b=420,c=380 --bandwidth-gbit 100
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from _common import header, set_threads

from numbadlrm import DLRM, DLRMConfig
from numbadlrm.data.synthetic import random_batch
from numbadlrm.model.tower import dense_layout

RANKS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Shape:
    name: str
    tables: int  # T
    rows: int
    dim: int  # D
    lookups: int  # per table per sample
    mlp_bot: str
    mlp_top: str
    batch: int  # B

    def config(self, rows: int | None = None) -> DLRMConfig:
        sizes = "-".join([str(rows or self.rows)] * self.tables)
        return DLRMConfig.from_arch(self.dim, sizes, self.mlp_bot, self.mlp_top)

    @property
    def dense_params(self) -> int:  # N
        return dense_layout(self.config(rows=1))[2]


PAPER_CONFIGS = {
    "b": Shape("b", 8, 1_000_000, 64, 100, "512-512-64", "1024-1024-1024-1", 2048),
    "c": Shape("c", 26, 100_000, 128, 1, "13-512-256-128", "1024-1024-512-256-1", 2048),
}


def alltoall_bytes(batch: int, tables: int, dim: int, ranks: int) -> float:
    """Bytes one rank sends (= receives, on average) in one direction of the exchange.

    With R > T the placement splits each of the T equal tables into k = ceil(R / T) row
    pieces, and every piece sends a partial sum per sample: T k pieces in all.
    """
    pieces = tables * -(-ranks // tables)  # T * ceil(R / T)
    return 4.0 * pieces * dim * batch * (ranks - 1) / ranks**2


def allreduce_bytes(params: int, ranks: int) -> float:
    """Bytes one rank sends (= receives) in a ring allreduce of the dense gradients."""
    return 2.0 * (ranks - 1) / ranks * 4 * params


def comm_seconds(shape: Shape, batch: int, ranks: int, bandwidth: float, latency: float):
    """(alltoall forward + backward, allreduce) seconds per iteration."""
    if ranks == 1:
        return 0.0, 0.0
    a2a = 2 * (
        (ranks - 1) * latency + alltoall_bytes(batch, shape.tables, shape.dim, ranks) / bandwidth
    )
    ar = 2 * (ranks - 1) * latency + allreduce_bytes(shape.dense_params, ranks) / bandwidth
    return a2a, ar


def projection(shape: Shape, t1: float, bandwidth: float, latency: float, weak: bool):
    """Rows of (R, B, bytes, times, efficiencies) for RANKS."""
    rows = []
    for ranks in RANKS:
        batch = shape.batch * ranks if weak else shape.batch
        comp = t1 if weak else t1 / ranks
        a2a, ar = comm_seconds(shape, batch, ranks, bandwidth, latency)
        serial, overlapped = comp + a2a + ar, max(comp, a2a + ar)
        ideal = t1 if weak else t1 / ranks
        rows.append(
            {
                "R": ranks,
                "B": batch,
                "a2a_MB": 2 * alltoall_bytes(batch, shape.tables, shape.dim, ranks) / 1e6,
                "ar_MB": allreduce_bytes(shape.dense_params, ranks) / 1e6,
                "comp_ms": comp * 1e3,
                "comm_ms": (a2a + ar) * 1e3,
                "serial_ms": serial * 1e3,
                "overlap_ms": overlapped * 1e3,
                "eff_serial": ideal / serial,
                "eff_overlap": ideal / overlapped,
            }
        )
    return rows


def measure_compute(shape: Shape, rows_cap: int, steps: int) -> float:
    """Median seconds of one single-rank train_step at batch B (tables capped in rows)."""
    cfg = shape.config(rows=min(shape.rows, rows_cap))
    model = DLRM(cfg, seed=0)
    rng = np.random.default_rng(0)
    batch = random_batch(rng, cfg, shape.batch, shape.lookups, fixed=True)
    model.train_step(batch, 0.01)  # JIT, first touch
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_step(batch, 0.01)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def print_table(shape: Shape, t1: float, bandwidth: float, latency: float) -> None:
    print(
        f"\nconfig {shape.name}: T={shape.tables} x {shape.rows:,} rows, D={shape.dim}, "
        f"{shape.lookups} lookups/table, bottom {shape.mlp_bot}, top {shape.mlp_top}, "
        f"B={shape.batch}; N={shape.dense_params:,} dense params; t1={t1 * 1e3:.0f} ms"
    )
    for weak in (False, True):
        print(f"  {'weak (B = ' + str(shape.batch) + ' R)' if weak else 'strong (B fixed)'}")
        print(
            f"  {'R':>3} {'B':>7} {'a2a MB':>8} {'ar MB':>7} {'comp ms':>8} {'comm ms':>8}"
            f" {'serial':>8} {'overlap':>8} {'E ser':>6} {'E ovl':>6}"
        )
        for r in projection(shape, t1, bandwidth, latency, weak):
            print(
                f"  {r['R']:>3} {r['B']:>7} {r['a2a_MB']:>8.1f} {r['ar_MB']:>7.1f} "
                f"{r['comp_ms']:>8.1f} {r['comm_ms']:>8.2f} {r['serial_ms']:>8.1f} "
                f"{r['overlap_ms']:>8.1f} {r['eff_serial']:>6.2f} {r['eff_overlap']:>6.2f}"
            )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bandwidth-gbit", type=float, default=100.0, help="link Gbit/s per rank")
    p.add_argument("--latency-us", type=float, default=2.0, help="per-message latency")
    p.add_argument(
        "--compute-ms",
        default="",
        help="single-rank step times, e.g. b=420,c=380 (default: measure them here)",
    )
    p.add_argument(
        "--rows-cap",
        type=int,
        default=200_000,
        help="rows per table when measuring (memory); lookups stay random",
    )
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="threads for the measurement")
    p.add_argument("--quick", action="store_true", help="model only (b=400,c=400 ms), for CI")
    args = p.parse_args(argv)
    if args.quick and not args.compute_ms:
        args.compute_ms = "b=400,c=400"
    set_threads(args.threads)
    print(header("bench/comm_model.py"))
    given = dict(item.split("=") for item in args.compute_ms.split(",") if item)
    bandwidth, latency = args.bandwidth_gbit * 1e9 / 8, args.latency_us * 1e-6
    print(
        f"# communication model: {args.bandwidth_gbit:g} Gbit/s per rank, "
        f"{args.latency_us:g} us latency, float32; MB = 1e6 bytes sent per rank per step"
    )
    for name, shape in PAPER_CONFIGS.items():
        if name in given:
            t1 = float(given[name]) / 1e3
        else:
            t1 = measure_compute(shape, args.rows_cap, args.steps)
            print(
                f"measured t1 for {name} on this machine (tables capped at "
                f"{min(shape.rows, args.rows_cap):,} rows): {t1 * 1e3:.0f} ms"
            )
        print_table(shape, t1, bandwidth, latency)


if __name__ == "__main__":
    main()
