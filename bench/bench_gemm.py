"""Linear-layer GEMMs: each Numba kernel version against OpenBLAS, per layer.

For every layer of DLRM configs a, b, c and each pass (forward with bias + ReLU,
backward_data dx = dz W, backward_weight dW = dz^T x with db), the kernel version is first
validated against numbadlrm.reference, then timed round-robin with two OpenBLAS paths:

    blas     the layer's "blas" backend (numbadlrm.kernels.blas): one single-threaded
             sgemm per Numba thread on its share, epilogue fused
    matmul   np.matmul into the output (OpenBLAS threading its own GEMM) + the NumPy or
             Numba epilogue, the path the "blas" backend replaced

Prints median ms and GFLOP/s (2 B I O per pass) of each, and the Numba kernel's throughput
as a fraction of each BLAS path.

    python bench/bench_gemm.py --threads 2 --version v3
    python bench/bench_gemm.py --quick          # tiny shapes, few repeats (CI smoke)
"""

from __future__ import annotations

# isort: off
from numbadlrm import _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
import sys

import numpy as np
from _common import blas_sgemm_gflops, header, median_times, set_threads

from numbadlrm import reference
from numbadlrm.kernels import blas, gemm

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


def validate(version, B, I, O, relu, rng) -> None:
    """Abort unless every pass matches the float64 reference (errors scaled by sqrt(K))."""
    forward, backward_data, backward_weight = gemm.VERSIONS[version]
    x, W, b, dz = make_layer(rng, B, I, O)
    y, dx = np.empty((B, O), np.float32), np.empty((B, I), np.float32)
    dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
    forward(y, x, W, b, relu)
    backward_data(dx, dz, W)
    backward_weight(dW, db, dz, x)
    y_ref, cache = reference.linear_forward(
        x.astype(np.float64), W.astype(np.float64), b.astype(np.float64), relu
    )
    dx_ref, dW_ref, db_ref = reference.linear_backward(dz.astype(np.float64), (*cache[:3], False))
    for what, got, want, k in (
        ("y", y, y_ref, I),
        ("dx", dx, dx_ref, O),
        ("dW", dW, dW_ref, B),
        ("db", db, db_ref, B),
    ):
        err = np.abs(got - want).max() / (np.sqrt(k) * max(1.0, np.abs(want).max()))
        if not err < 1e-5:
            sys.exit(f"validation failed: {version} {what} B={B} I={I} O={O} error {err:.2e}")


def _matmul_forward(y, x, W, b, relu):
    np.matmul(x, W.T, out=y)
    gemm.bias_act(y, b, relu)


def _matmul_backward_data(dx, dz, W):
    if W.shape[0] == 1:  # the logit layer: an outer product
        np.multiply(dz, W, out=dx)
    else:
        np.matmul(dz, W, out=dx)


def _matmul_backward_weight(dW, db, dz, x):
    np.matmul(dz.T, x, out=dW)
    np.sum(dz, axis=0, out=db)


def pass_runs(version, B, I, O, relu, threads, rng):
    """{pass: {"numba": fn, "blas": fn, "matmul": fn}} on one layer's buffers."""
    forward, backward_data, backward_weight = gemm.VERSIONS[version]
    x, W, b, dz = make_layer(rng, B, I, O)
    y, dx = np.empty((B, O), np.float32), np.empty((B, I), np.float32)
    dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
    return {
        "forward": {
            "numba": lambda: forward(y, x, W, b, relu),
            "blas": lambda: blas.forward(y, x, W, b, relu, threads),
            "matmul": lambda: _matmul_forward(y, x, W, b, relu),
        },
        "backward_data": {  # dx = dz W alone (relu=False: no mask), as the Numba kernel
            "numba": lambda: backward_data(dx, dz, W),
            "blas": lambda: blas.backward_data(dx, dz, dz, W, x, False, True, False, threads),
            "matmul": lambda: _matmul_backward_data(dx, dz, W),
        },
        "backward_weight": {
            "numba": lambda: backward_weight(dW, db, dz, x),
            "blas": lambda: blas.backward_weight(dW, db, dz, x, threads),
            "matmul": lambda: _matmul_backward_weight(dW, db, dz, x),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--version", default=gemm.DEFAULT_VERSION, choices=list(gemm.VERSIONS))
    parser.add_argument("--configs", default="a,b,c", help="comma-separated subset of a, b, c")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats")
    args = parser.parse_args()
    set_threads(args.threads)
    names = list(args.configs.replace(",", ""))  # config names are single letters
    unknown = [k for k in names if k not in CONFIGS]
    if unknown:
        sys.exit(f"--configs: {unknown} not among {sorted(CONFIGS)}")
    configs = QUICK if args.quick else {k: CONFIGS[k] for k in names}
    repeat = 3 if args.quick else args.repeat
    print(header(f"bench_gemm: version {args.version}"))
    print(_pools.describe())
    if not args.quick:
        print(
            f"limit:    OpenBLAS sgemm 2048^3 {blas_sgemm_gflops():.0f} GFLOP/s (the faster path)"
        )
    rng = np.random.default_rng(0)
    paths = ("numba", "blas", "matmul")
    print(
        f"{'cfg':3} {'layer':14} {'pass':15} {'B':>5} {'I':>5} {'O':>5} "
        + "".join(f"{p + ' ms':>10} {'GF/s':>6}" for p in paths)
        + f" {'n/blas':>6} {'n/matmul':>8}"
    )
    totals: dict[str, dict[str, float]] = {}
    for name, label, B, I, O, relu, needs_dx in layer_shapes(configs):
        validate(args.version, B, I, O, relu, rng)
        flops = 2.0 * B * I * O
        for pass_, fns in pass_runs(args.version, B, I, O, relu, args.threads, rng).items():
            if pass_ == "backward_data" and not needs_dx:
                continue
            t = median_times(fns, repeat=repeat)
            tot = totals.setdefault(name, dict.fromkeys(paths, 0.0))
            for p in paths:
                tot[p] += t[p]
            print(
                f"{name:3} {label:14} {pass_:15} {B:5} {I:5} {O:5} "
                + "".join(f"{t[p] * 1e3:10.3f} {flops / t[p] / 1e9:6.1f}" for p in paths)
                + f" {t['blas'] / t['numba']:6.2f} {t['matmul'] / t['numba']:8.2f}"
            )
    for name, tot in totals.items():
        print(
            f"config {name}: all passes "
            + ", ".join(f"{p} {tot[p] * 1e3:.2f} ms" for p in paths)
            + f"; numba/blas {tot['blas'] / tot['numba']:.2f}, "
            f"numba/matmul {tot['matmul'] / tot['numba']:.2f}"
        )


if __name__ == "__main__":
    main()
