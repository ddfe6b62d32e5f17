"""Peak memory of training steps: numbadlrm against the PyTorch DLRM, per config.

Each framework runs each config in a subprocess that reports its peak resident memory
during training steps (VmHWM, reset after the model is built, so initialisation does not
count) above the process baseline (the interpreter, libraries and compiled kernels,
measured on a tiny model first), next to the tables' bytes and the activation bytes
(numbadlrm's Workspace: every activation and gradient buffer of a step). The target is
peak - baseline <= tables + 1.3 x activations.

    python bench/bench_memory.py                        # configs a, b, c
    python bench/bench_memory.py --configs b --kernels embedding_update=v1
    python bench/bench_memory.py --configs b --precision fp32,bf16   # + --precision bf16
    python bench/bench_memory.py --quick                # tiny config (CI smoke)
PyTorch is optional: without it numbadlrm runs alone.
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np
from _common import header, set_threads
from _e2e import CONFIGS, LR, QUICK, STEPPERS, Cycle, batches, torch

from numbadlrm.kernels.gemm.dpbf16 import has_avx512_bf16
from numbadlrm.model.dlrm import DLRM
from numbadlrm.model.memory import estimate
from numbadlrm.model.tower import Workspace, dense_layout


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(framework: str, name: str, threads: int, steps: int, kernels: str) -> None:
    """In a subprocess: a config's training-step peak over the process baseline. Prints JSON.

    The baseline is taken after a tiny model's step (libraries and compiled kernels loaded)
    and after the config's batch is generated (input data, not the step's memory). For
    numbadlrm the tiny model steps on both GEMM backends: at its batch size the default
    picks v4, and before session 4 the blas backend's kernels and OpenBLAS's buffers were
    first loaded inside the measured steps (3.3 MB of config b's "used", measured).
    """
    set_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    make = STEPPERS[framework]
    tiny = QUICK["q"]
    Cycle(make(tiny.config(), kernels), batches(tiny, tiny.config(), 1))()
    if framework == "numbadlrm":  # the tiny batch ran the v4 kernels: load the blas ones too
        DLRM(tiny.config(), seed=0, gemm="blas").train_step(batches(tiny, tiny.config(), 1)[0], LR)
    bf16 = framework == "numbadlrm-bf16"
    setup = (QUICK | CONFIGS)[name]
    cfg = setup.config()
    data = batches(setup, cfg, 1)
    baseline = _rss_kb("VmRSS")
    step = Cycle(make(cfg, kernels), data)
    reset = _reset_peak()  # initialisation's temporaries do not count
    for _ in range(steps):
        step()
    peak = _rss_kb("VmHWM")  # since the reset (or, where unsupported, the process start)
    ws = Workspace(cfg, setup.batch, np.uint16 if bf16 else np.float32)
    arrays = [ws.emb, ws.demb, ws.p, *ws.bottom, *ws.dbottom, *ws.top, *ws.dtop]
    arrays += [ws.dense16, ws.ds16] if bf16 else []
    # MLP parameters, plus their gradients for PyTorch (.grad); numbadlrm's train_step
    # fuses SGD into the weight GEMMs and stores no dense gradient; bf16: the split masters
    # (fp32's bytes) and each weight's two bf16 packings (memory.estimate's count)
    dense = (1 if framework != "torch" else 2) * 4 * dense_layout(cfg)[2]
    if bf16:
        dense += dict(estimate(cfg, precision="bf16").others)["dense bf16 weight packings"]
    print(json.dumps({
        "baseline": baseline * 1024, "peak": peak * 1024, "peak_reset": reset,
        "tables": sum(cfg.embedding_sizes) * cfg.sparse_feature_size * 4,
        "activations": sum(a.nbytes for a in arrays),
        "dense": dense,
    }))  # fmt: skip


def measure_memory(names: list[str], threads: int, kernels: str, precisions: list[str]) -> None:
    print(f"\npeak memory of training steps ({threads} threads; MB = 1e6 bytes)")
    print("  used = peak - baseline; over = used - tables - 1.3 x activations (<= 0 meets "
          "the target); dense = MLP parameters (+ gradients, torch), part of used")  # fmt: skip
    print(f"{'cfg':3} {'framework':14} {'baseline':>9} {'peak':>9} {'used':>9} {'tables':>9} "
          f"{'activ.':>8} {'dense':>7} {'over':>7}")  # fmt: skip
    for name in names:
        frameworks = [{"fp32": "numbadlrm", "bf16": "numbadlrm-bf16"}[p] for p in precisions]
        for framework in frameworks + (["torch"] if torch is not None else []):
            cmd = [sys.executable, __file__, "--memory-child", framework, "--configs", name,
                   "--threads", str(threads), "--kernels", kernels]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd())
            if out.returncode != 0:
                print(f"{name:3} {framework:14} failed: {out.stderr.strip()[-300:]}")
                continue
            m = {k: v if isinstance(v, bool) else v * 1e-6
                 for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}  # fmt: skip
            used = m["peak"] - m["baseline"]
            over = used - m["tables"] - 1.3 * m["activations"]
            print(f"{name:3} {framework:14} {m['baseline']:9.0f} {m['peak']:9.0f} {used:9.0f} "
                  f"{m['tables']:9.0f} {m['activations']:8.1f} {m['dense']:7.1f} {over:7.0f}"
                  + ("" if m["peak_reset"] else "  (peak not reset)"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="a,b,c")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels", default="", help="op=version,... for numbadlrm")
    parser.add_argument("--quick", action="store_true", help="tiny config (CI smoke)")
    parser.add_argument("--precision", default="fp32", help="fp32 and/or bf16, comma-separated")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.configs, args.threads, 3, args.kernels)
        return
    set_threads(args.threads)
    print(header("bench_memory: peak memory of training steps, numbadlrm and PyTorch"))
    print(_pools.describe())
    names = list(QUICK) if args.quick else args.configs.split(",")
    precisions = args.precision.split(",")
    if args.quick:  # CI: both precisions where the CPU has bf16
        precisions = ["fp32", "bf16"] if has_avx512_bf16() else ["fp32"]
    if set(precisions) - {"fp32", "bf16"}:
        sys.exit(f"--precision: fp32 and/or bf16, got {args.precision!r}")
    measure_memory(names, args.threads, args.kernels, precisions)


if __name__ == "__main__":
    main()
