"""End to end: training samples/s of numbadlrm against the PyTorch DLRM, and per-op time.

For each config and thread count, numbadlrm's DLRM.train_step and TorchDLRM + plain
torch.optim.SGD (the reference's semantics: EmbeddingBag sum with sparse gradients) run
on the same batches (random data, fixed bag sizes), each in its own subprocess (so one's
idle thread pool cannot slow the other), alternating for --rounds rounds; the median
step over all rounds gives samples/s and their ratio. Then numbadlrm's step is split per
op by the model's own timing hook (DLRM.op_times, numbadlrm.runtime.profiling), each op beside its
limit (its flops at the sgemm rate or its bytes, by op_costs' byte model, at the
STREAM-copy rate, both measured in that process); torch's step over the summed limits is
the best ratio an implementation of the same fp32 semantics could reach. Peak memory is
bench_memory.py's. ``--kernels op=version,...`` runs numbadlrm with those kernel versions
(``numbadlrm kernels`` lists them; yours in numbadlrm/kernels/lab/ too).

``--precision fp32,bf16`` adds numbadlrm's --precision bf16 (split-SGD-BF16) and, as its
second baseline, the same PyTorch DLRM under CPU bf16 autocast (its Linear and bmm in
bf16 on oneDNN), all alternating in the same rounds; bf16's per-op limits charge the
MLPs at this machine's bf16 GEMM rate (the faster of numbadlrm's vdpbf16ps kernel and
torch's bf16 matmul on 2048^3) and the memory-bound ops bf16's bytes (op_costs).

Configs: bench/_e2e.py (a, b, c as in bench/README.md). Config b's tables are 2 GB per
framework.

    python bench/bench_e2e.py                                   # a, b, c at 1 and 2 threads
    python bench/bench_e2e.py --configs c --threads 2 --steps 20
    python bench/bench_e2e.py --configs a --kernels embedding_update=v1
    python bench/bench_e2e.py --configs c --kernels embedding_update=v1 --versus ''
    python bench/bench_e2e.py --configs b,c --threads 2 --precision fp32,bf16
    python bench/bench_e2e.py --quick                            # tiny config (CI smoke)
PyTorch is optional: without it numbadlrm runs alone.
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
import json
import os
import subprocess
import sys
import time
from itertools import pairwise

import numpy as np
from _common import (
    add_kernel_module_option,
    bf16_gemm_gflops,
    blas_sgemm_gflops,
    header,
    set_threads,
    stream_copy_gbs,
    use_kernel_modules,
)
from _e2e import CONFIGS, LR, QUICK, STEPPERS, Cycle, Setup, batches, torch

from numbadlrm import DLRMConfig, reference
from numbadlrm.kernels.gemm.dpbf16 import has_avx512_bf16
from numbadlrm.model.dlrm import DLRM
from numbadlrm.runtime.profiling import OPS, OpTimes

if torch is not None:
    from numbadlrm.interop.torch_dlrm import TorchDLRM, torch_train_step


# a bf16 step's loss is within a few bf16 roundings (2^-8) of the exact one
# (tests/test_model_bf16.py derives the tolerance op by op); fp32's within fp32 rounding
LOSS_RTOL = {"fp32": 1e-4, "bf16": 2.0**-5}


def validate(kernels: str, precisions: list[str]) -> None:
    """Abort unless 3 steps of numbadlrm (each precision) and PyTorch match the float64
    reference in loss."""
    setup = QUICK["q"]
    cfg = setup.config()
    for precision in precisions:
        model = DLRM(cfg, seed=3, kernels=kernels, precision=precision)
        ref = reference.ReferenceDLRM(cfg, model.state_dict())
        oracle = TorchDLRM.from_numbadlrm(cfg, model.state_dict()) if torch else None
        opt = torch.optim.SGD(oracle.parameters(), lr=0.2) if torch else None
        for b in batches(setup, cfg, 3):
            loss = model.train_step(b, 0.2)
            want = ref.train_step(b.dense, b.offsets, b.indices, b.labels, 0.2)
            got_torch = torch_train_step(oracle, opt, b) if torch else want
            ok = np.isclose(loss, want, rtol=LOSS_RTOL[precision])
            if not (ok and np.isclose(got_torch, want, rtol=1e-4)):
                sys.exit(
                    f"validation failed ({precision}): loss {loss} reference {want} "
                    f"torch {got_torch}"
                )


def step_breakdown(model: DLRM, data, steps: int) -> dict[str, float]:
    """Median seconds per op of `steps` train_steps, by the model's own timing hook."""
    times = OpTimes()
    model.op_times = times
    for k in range(steps):
        model.train_step(data[k % len(data)], LR)
    model.op_times = None
    return times.medians()


def op_costs(setup: Setup, cfg: DLRMConfig, precision: str = "fp32") -> dict[str, tuple]:
    """{op: (flops, bytes)} of one training step, the bytes by a byte model of what each
    memory-bound op must read and write at least (float32 rows, int64 indices):

        embedding fwd     B T L rows read + B T pooled rows written + indices
        embedding update  B T pooled gradients read + B T L rows read and written + indices
        interaction fwd   B F rows read + B (D + P) written;        2 B P D flops
        interaction bwd   B (D + P) + B F rows read + B F written;  4 B P D flops
        loss              3 B floats
        MLP ops           2 B I O flops per layer and pass (no dx for the first bottom
                          layer); their bytes (activations, W) are left out: each GEMM
                          here is compute-bound

    with F = T + 1 features of D floats, P = F (F - 1) / 2 pairs, L lookups per bag.

    bf16 (split tables, bf16 activations): the forward reads a row's bf16 half (D 2
    bytes) and writes bf16 pooled vectors; the exact fp32 update reads and writes both
    halves of each row (D 4 bytes each way, as fp32) and reads bf16 gradients; the
    interaction reads and writes bf16 (2 bytes a value):

        embedding fwd     B T L (D 2 + 8) + B T D 2
        embedding update  B T D 2 + B T L (2 D 4 + 8)
        interaction fwd   B F D 2 + B (D + P) 2
        interaction bwd   B (D + P) 2 + 2 B F D 2
    """
    B, T, D, L = setup.batch, setup.tables, setup.dim, setup.lookups
    F = T + 1
    P = F * (F - 1) // 2
    v = 2 if precision == "bf16" else 4  # bytes of an activation or gradient value
    row, half = D * 4, D * v  # a table row's fp32 master; what the forward reads of it

    def mlp(sizes: tuple[int, ...], first_dx: bool) -> tuple[float, float]:
        layers = list(pairwise(sizes))
        fwd = sum(2.0 * B * i * o for i, o in layers)
        first = 2.0 * B * layers[0][0] * layers[0][1]
        return fwd, 2 * fwd - (0.0 if first_dx else first)

    bottom_fwd, bottom_bwd = mlp(cfg.bottom_sizes, False)
    top_fwd, top_bwd = mlp(cfg.top_sizes, True)
    return {
        "bottom fwd": (bottom_fwd, 0.0),
        "embedding fwd": (0.0, B * T * L * (half + 8) + B * T * D * v),
        "interaction fwd": (2.0 * B * P * D, B * F * D * v + B * (D + P) * v),
        "top fwd": (top_fwd, 0.0),
        "loss": (0.0, 3 * B * 4),
        "top bwd": (top_bwd, 0.0),
        "interaction bwd": (4.0 * B * P * D, B * (D + P) * v + 2 * B * F * D * v),
        "embedding update": (0.0, B * T * D * v + B * T * L * (2 * row + 8)),
        "bottom bwd": (bottom_bwd, 0.0),
    }


def op_limits(setup: Setup, gflops: float, gbs: float, precision: str = "fp32") -> dict:
    """Seconds per op at this machine's limits: its flops at the GEMM rate (sgemm, or bf16
    GEMM for bf16) or its bytes at the STREAM-copy rate, whichever takes longer (rates
    measured in the same process)."""
    costs = op_costs(setup, setup.config(), precision)
    return {op: max(f / (gflops * 1e9), b / (gbs * 1e9)) for op, (f, b) in costs.items()}


def time_child(framework: str, name: str, threads: int, steps: int, kernels: str) -> None:
    """In a subprocess: seconds of each of `steps` training steps after a warm-up. Prints JSON.

    Each framework runs alone in its process, so neither pays for the other's idle
    threads: PyTorch's OpenMP workers spin for milliseconds after each op by default, and
    in one process they would steal the second core from the next numbadlrm step.
    """
    set_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    setup = (QUICK | CONFIGS)[name]
    cfg = setup.config()
    step = Cycle(STEPPERS[framework](cfg, kernels), batches(setup, cfg))
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(json.dumps(times))


def breakdown_child(name: str, threads: int, steps: int, kernels: str, precision: str) -> None:
    """In a subprocess, alone like the timed runs: step_breakdown after a warm-up. Prints JSON."""
    set_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    setup = (QUICK | CONFIGS)[name]
    cfg = setup.config()
    model = DLRM(cfg, seed=0, kernels=kernels, precision=precision)
    data = batches(setup, cfg)
    for b in data[:3]:
        model.train_step(b, LR)
    ops = step_breakdown(model, data, steps)
    del model, data  # the rates below are measured with the tables freed
    small = name in QUICK  # the CI smoke: small measurements of the rates
    n = 512 if small else 2048
    gemm = bf16_gemm_gflops(n) if precision == "bf16" else blas_sgemm_gflops(n)
    stream = stream_copy_gbs(16 << 20 if small else 256 << 20)
    print(json.dumps({"ops": ops, "gemm": gemm, "stream": stream}))


def _child(mode: str, framework: str, name: str, threads: int, steps: int, kernels: str):
    if framework == VERSUS:  # numbadlrm fp32, run with the --versus kernels it is given
        framework = "numbadlrm"
    cmd = [sys.executable, __file__, mode, framework, "--configs", name, "--threads",
           str(threads), "--steps", str(steps), "--kernels", kernels]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd())
    if out.returncode != 0:
        sys.exit(f"{framework} {name} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def frameworks_of(precisions: list[str], versus: str | None = None) -> list[str]:
    """numbadlrm per precision, numbadlrm with the --versus kernels, then PyTorch (fp32;
    with bf16, also under bf16 autocast)."""
    names = [PRECISION_FRAMEWORK[p] for p in precisions]
    names += [VERSUS] if versus is not None else []
    if torch is not None:
        names += ["torch"] + (["torch-autocast"] if "bf16" in precisions else [])
    return names


PRECISION_FRAMEWORK = {"fp32": "numbadlrm", "bf16": "numbadlrm-bf16"}
VERSUS = "versus"  # numbadlrm fp32 with the --versus kernels, in the same rounds
# (faster, slower, label) of the printed speed ratios (samples/s), where both ran
RATIOS = (
    ("numbadlrm", "torch", "fp32/torch"),
    ("numbadlrm-bf16", "torch", "bf16/torch"),
    ("numbadlrm-bf16", "torch-autocast", "bf16/autocast"),
    ("numbadlrm-bf16", "numbadlrm", "bf16/fp32"),
    ("numbadlrm", VERSUS, "kernels/versus"),
)


def run_config(name: str, setup: Setup, args, threads: list[int], steps: int) -> list[dict]:
    """Samples/s of each framework: `rounds` alternating subprocess runs, median step."""
    frameworks = frameworks_of(args.precisions, args.versus)
    rows = []
    for n in threads:
        samples: dict[str, list[float]] = {f: [] for f in frameworks}
        for _ in range(args.rounds):  # alternate, so slow phases of a shared machine hit all
            for f in frameworks:
                kernels = args.versus if f == VERSUS else args.kernels
                samples[f] += _child("--time-child", f, name, n, steps, kernels)
        t = {f: float(np.median(v)) for f, v in samples.items()}
        print(f"{name:3} {n:7} " + " ".join(f"{setup.batch / t[f]:>14.0f}" for f in frameworks)
              + "".join(f" {t[b] / t[a]:>13.2f}x" for a, b, _ in RATIOS if a in t and b in t),
              flush=True)  # fmt: skip
        for precision in args.precisions:
            framework = PRECISION_FRAMEWORK[precision]
            child = _child("--breakdown-child", framework, name, n, max(steps, 5), args.kernels)
            limits = op_limits(setup, child["gemm"], child["stream"], precision)
            rows.append({"config": name, "threads": n, "precision": precision, "times": t,
                         "framework": framework, "limits": limits} | child)  # fmt: skip
    return rows


def print_breakdown(rows: list[dict]) -> None:
    print(
        "\nnumbadlrm step per op (median ms) and the same op at this machine's limits ('limit':"
        "\nflops at the GEMM rate or bytes at the STREAM-copy rate, whichever is longer;"
        "\nbench_e2e.op_costs); 'sum' of ops vs the measured train_step"
    )
    cols = [f"{r['config']}/{r['threads']}t/{r['precision']}" for r in rows]
    print(f"{'op':18}" + "".join(f"{c:>12}{'limit':>8}" for c in cols))
    for op in OPS:
        print(
            f"{op:18}"
            + "".join(f"{r['ops'][op] * 1e3:12.2f}{r['limits'][op] * 1e3:8.2f}" for r in rows)
        )
    print(
        f"{'sum':18}"
        + "".join(
            f"{sum(r['ops'].values()) * 1e3:12.2f}{sum(r['limits'].values()) * 1e3:8.2f}"
            for r in rows
        )
    )
    print(
        f"{'train_step':18}"
        + "".join(f"{r['times'][r['framework']] * 1e3:12.2f}{'':8}" for r in rows)
    )
    print(f"{'GEMM GFLOP/s':18}" + "".join(f"{r['gemm']:12.0f}{'':8}" for r in rows))
    print(f"{'STREAM GB/s':18}" + "".join(f"{r['stream']:12.1f}{'':8}" for r in rows))
    if all("torch" in r["times"] for r in rows):
        print(
            "torch step / limit step: the ratio to fp32 PyTorch an implementation would reach "
            "at the limits (GEMM: sgemm for fp32, bf16 GEMM for bf16)"
        )
        print(
            f"{'torch step':18}" + "".join(f"{r['times']['torch'] * 1e3:12.2f}{'':8}" for r in rows)
        )
        print(
            f"{'ratio at limit':18}"
            + "".join(
                f"{r['times']['torch'] / sum(r['limits'].values()):11.2f}x{'':8}" for r in rows
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="a,b,c")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument(
        "--steps", type=int, help="timed steps per process (default: per config, >= ~1 s)"
    )
    parser.add_argument("--kernels", default="", help="op=version,... for numbadlrm")
    parser.add_argument(
        "--versus",
        metavar="OP=VERSION,...",
        help="also time numbadlrm with these kernels ('' for the defaults) in the same "
        "alternating rounds: --kernels A --versus B compares A and B in one run",
    )
    parser.add_argument("--quick", action="store_true", help="tiny config, 1 thread count")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per framework")
    parser.add_argument(
        "--precision",
        default="fp32",
        help="numbadlrm precisions, comma-separated: fp32, bf16 (bf16 adds torch autocast)",
    )
    parser.add_argument("--breakdown-child", help=argparse.SUPPRESS)
    parser.add_argument("--time-child", help=argparse.SUPPRESS)
    add_kernel_module_option(parser)
    args = parser.parse_args()
    use_kernel_modules(args)
    threads = [int(n) for n in args.threads.split(",")]
    args.precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not args.precisions or set(args.precisions) - set(PRECISION_FRAMEWORK):
        sys.exit(f"--precision: fp32 and/or bf16, got {args.precision!r}")
    if args.breakdown_child:
        precision = "bf16" if args.breakdown_child == "numbadlrm-bf16" else "fp32"
        breakdown_child(args.configs, threads[0], args.steps or 10, args.kernels, precision)
        return
    if args.time_child:
        time_child(args.time_child, args.configs, threads[0], args.steps or 10, args.kernels)
        return
    configs = dict(QUICK) if args.quick else {k: CONFIGS[k] for k in args.configs.split(",")}
    if args.quick:  # CI: both precisions where the CPU has bf16
        threads, args.steps, args.rounds = threads[-1:], 3, 1
        args.precisions = ["fp32", "bf16"] if has_avx512_bf16() else ["fp32"]
    set_threads(threads[0])
    print(header("bench_e2e: numbadlrm DLRM.train_step vs TorchDLRM + torch.optim.SGD"))
    print(_pools.describe())
    print(f"torch:    {torch.__version__}" if torch else "torch:    not installed, numbadlrm only")
    try:  # a bad op=version names itself in one line, before anything is timed
        chosen = DLRM(QUICK["q"].config(), kernels=args.kernels).kernels.describe()
        versus = None
        if args.versus is not None:
            versus = DLRM(QUICK["q"].config(), kernels=args.versus).kernels.describe()
    except ValueError as e:
        sys.exit(f"bench_e2e: {e}")
    print(f"kernels:  {chosen}")
    validate(args.kernels, args.precisions)
    if versus is not None:
        print(f"versus:   {versus}")
        validate(args.versus, ["fp32"])
    print("validation: 3 steps match numbadlrm.reference" + (" and PyTorch" if torch else ""))
    frameworks = frameworks_of(args.precisions, args.versus)
    ratios = [label for a, b, label in RATIOS if a in frameworks and b in frameworks]
    print(
        f"\n{'cfg':3} {'threads':>7} " + " ".join(f"{f + '/s':>14}" for f in frameworks)
        + "".join(f" {r:>14}" for r in ratios) + "   (samples/s, median)"
    )  # fmt: skip
    rows = []
    for name, setup in configs.items():
        rows += run_config(name, setup, args, threads, args.steps or setup.steps)
    print_breakdown(rows)


if __name__ == "__main__":
    main()
