"""Linear-layer GEMMs: registered versions of the three passes side by side, per layer.

For every layer of DLRM configs a, b, c and each pass (forward with bias + ReLU,
backward_data dx = dz W, backward_weight dW = dz^T x with db), the chosen versions of
the ops linear_forward, linear_backward_data and linear_backward_weight (any registered
version, yours in numbadlrm/kernels/lab/ too) are validated against numbadlrm.reference
(numbadlrm.kernels.checks.ops), then timed round-robin with np.matmul into the output
(OpenBLAS threading its own GEMM) + the epilogue, the path the "blas" version replaced.

Prints median ms, GFLOP/s (2 B I O per pass) and the fraction of the machine's sgemm
rate (measured first, the limit) of each, and the first version's time over the others'.

    python bench/bench_gemm.py --threads 2 --versions v3,v4,blas
    python bench/bench_gemm.py --quick          # tiny shapes, few repeats (CI smoke)
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
import sys
from functools import partial

import numpy as np
from _common import (
    add_kernel_module_option,
    blas_sgemm_gflops,
    header,
    median_times,
    set_threads,
    use_kernel_modules,
    versions_of,
)

from numbadlrm.kernels import registry
from numbadlrm.kernels.checks import ops as checks
from numbadlrm.kernels.gemm import epilogue

# (name, batch, bottom widths incl. input, top widths incl. the computed input D + P)
CONFIGS = {
    "a": (128, (13, 512, 256, 64, 16), (16 + 36, 512, 256, 1)),
    "b": (2048, (512, 512, 64), (64 + 36, 1024, 1024, 1024, 1)),
    "c": (2048, (13, 512, 256, 128), (128 + 351, 1024, 1024, 512, 256, 1)),
}
QUICK = {"q": (17, (13, 24, 8), (8 + 3, 20, 1))}


def layer_shapes(configs):
    """(config, label, B, I, O, relu, needs_dx) for every linear layer."""
    for name, (batch, bottom, top) in configs.items():
        for part, widths in (("bot", bottom), ("top", top)):
            for i in range(len(widths) - 1):
                relu = not (part == "top" and i == len(widths) - 2)
                needs_dx = not (part == "bot" and i == 0)
                label = f"{part} {widths[i]}-{widths[i + 1]}"
                yield name, label, batch, widths[i], widths[i + 1], relu, needs_dx


def make_layer(rng, B, I, O):
    x = rng.standard_normal((B, I), dtype=np.float32)
    W = (rng.standard_normal((O, I), dtype=np.float32) / np.sqrt(I)).astype(np.float32)
    b = rng.standard_normal(O, dtype=np.float32)
    dz = rng.standard_normal((B, O), dtype=np.float32)
    return x, W, b, dz


def _matmul_forward(y, x, W, b, relu):
    np.matmul(x, W.T, out=y)
    epilogue.bias_act(y, b, relu)


def _matmul_backward_data(dx, dz, W):
    if W.shape[0] == 1:  # the logit layer: an outer product
        np.multiply(dz, W, out=dx)
    else:
        np.matmul(dz, W, out=dx)


def _matmul_backward_weight(dW, db, dz, x):
    np.matmul(dz.T, x, out=dW)
    np.sum(dz, axis=0, out=db)


PASSES = {  # pass: (op, flops per (B, I, O) unit: 2 B I O)
    "forward": "linear_forward",
    "backward_data": "linear_backward_data",
    "backward_weight": "linear_backward_weight",
}


def pass_runs(versions, B, I, O, relu, rng):
    """{pass: {version: fn, ..., "matmul": fn}} on one layer's buffers."""
    x, W, b, dz = make_layer(rng, B, I, O)
    y, dx = np.empty((B, O), np.float32), np.empty((B, I), np.float32)
    dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
    runs = {}
    for pass_, op in PASSES.items():
        kernels = {v: registry.get(op, v).parallel for v in versions}
        if pass_ == "forward":
            fns = {v: partial(k, y, x, W, b, relu) for v, k in kernels.items()}
            fns["matmul"] = partial(_matmul_forward, y, x, W, b, relu)
        elif pass_ == "backward_data":  # dx = dz W alone (relu=False: no mask)
            fns = {v: partial(k, dx, dz, dz, W, x, False, False) for v, k in kernels.items()}
            fns["matmul"] = partial(_matmul_backward_data, dx, dz, W)
        else:
            fns = {v: partial(k, dW, db, dz, x) for v, k in kernels.items()}
            fns["matmul"] = partial(_matmul_backward_weight, dW, db, dz, x)
        runs[pass_] = fns
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--versions",
        default="v4,blas",
        help="comma-separated versions of the linear ops (numbadlrm kernels lists them); "
        "the first is the one compared with the others",
    )
    parser.add_argument("--configs", default="a,b,c", help="comma-separated subset of a, b, c")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats")
    add_kernel_module_option(parser)
    args = parser.parse_args()
    use_kernel_modules(args)
    set_threads(args.threads)
    names = list(args.configs.replace(",", ""))  # config names are single letters
    unknown = [k for k in names if k not in CONFIGS]
    if unknown:
        sys.exit(f"--configs: {unknown} not among {sorted(CONFIGS)}")
    versions = versions_of(args.versions, tuple(PASSES.values()))
    configs = QUICK if args.quick else {k: CONFIGS[k] for k in names}
    repeat = 3 if args.quick else args.repeat
    print(header(f"bench_gemm: versions {', '.join(versions)} of the linear passes"))
    print(_pools.describe())
    for op in PASSES.values():
        for v in versions:
            checks.validate(op, v)
    print("validation: every version of every pass matches numbadlrm.reference")
    limit = blas_sgemm_gflops(256 if args.quick else 2048)
    print(f"limit:    sgemm {limit:.0f} GFLOP/s (the faster of np.matmul and the blas backend)")
    rng = np.random.default_rng(0)
    paths = (*versions, "matmul")
    first = versions[0]
    print(
        f"{'cfg':3} {'layer':14} {'pass':15} {'B':>5} {'I':>5} {'O':>5} "
        + "".join(f"{p[:7] + ' ms':>10} {'GF/s':>6} {'%lim':>5}" for p in paths)
        + "".join(f" {first[:4] + '/' + p[:6]:>11}" for p in paths[1:])
    )
    totals: dict[str, dict[str, float]] = {}
    for name, label, B, I, O, relu, needs_dx in layer_shapes(configs):
        flops = 2.0 * B * I * O
        for pass_, fns in pass_runs(versions, B, I, O, relu, rng).items():
            if pass_ == "backward_data" and not needs_dx:
                continue
            t = median_times(fns, repeat=repeat)
            tot = totals.setdefault(name, dict.fromkeys(paths, 0.0))
            for p in paths:
                tot[p] += t[p]
            rate = {p: flops / t[p] / 1e9 for p in paths}
            print(
                f"{name:3} {label:14} {pass_:15} {B:5} {I:5} {O:5} "
                + "".join(
                    f"{t[p] * 1e3:10.3f} {rate[p]:6.1f} {rate[p] / limit:5.0%}" for p in paths
                )
                + "".join(f" {t[p] / t[first]:11.2f}" for p in paths[1:])
            )
    for name, tot in totals.items():
        print(
            f"config {name}: all passes "
            + ", ".join(f"{p} {tot[p] * 1e3:.2f} ms" for p in paths)
            + "; "
            + ", ".join(f"{first}/{p} {tot[p] / tot[first]:.2f}" for p in paths[1:])
        )


if __name__ == "__main__":
    main()
