"""Linear-layer GEMMs: registered versions of the three passes side by side, per layer.

For every layer of DLRM configs a, b, c and each pass (forward with bias + ReLU,
backward_data dx = dz W, backward_weight dW = dz^T x with db), the chosen versions of
the ops linear_forward, linear_backward_data and linear_backward_weight (any registered
version, yours in numbadlrm/kernels/lab/ too, and candidate tile shapes with --tiles)
are validated against numbadlrm.reference (numbadlrm.kernels.checks.ops), then timed
round-robin (optionally with np.matmul into the output, OpenBLAS threading its own GEMM,
+ the epilogue: the path the "blas" version replaced).

Prints the CPU (its model, the LLVM name Numba compiles for, the ISA and its tile), the
machine's sgemm rate (2048^3), then per pass each version's median ms and its % of sgemm
(the blas backend's time, OpenBLAS sgemm at that shape, over the version's: 100% = level
with OpenBLAS), the version "auto" runs there, and the fastest version with auto's pick's
time over it; per config the sums.

    python bench/bench_gemm.py --threads 2
    python bench/bench_gemm.py --threads 1 --versions v4,blas --tiles 6x64,8x48
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=... OPENBLAS_CORETYPE=Haswell \
        python bench/bench_gemm.py --threads 1          # an AVX2 machine, emulated
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
    cpu_model,
    header,
    median_times,
    set_threads,
    use_kernel_modules,
    versions_of,
)

from numbadlrm.kernels import registry
from numbadlrm.kernels.checks import ops as checks
from numbadlrm.kernels.gemm import auto, epilogue, fp32_tiled, tile
from numbadlrm.kernels.gemm.blas import blas_config

# (name, batch, bottom widths incl. input, top widths incl. the computed input D + P)
CONFIGS = {
    "a": (128, (13, 512, 256, 64, 16), (16 + 36, 512, 256, 1)),
    "b": (2048, (512, 512, 64), (64 + 36, 1024, 1024, 1024, 1)),
    "c": (2048, (13, 512, 256, 128), (128 + 351, 1024, 1024, 512, 256, 1)),
}
QUICK = {"q": (17, (13, 24, 8), (8 + 3, 20, 1))}
SKIP = {"naive", "v1", "v2", "auto"}  # not timed by default: slow, or a dispatcher


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


def pass_runs(versions, B, I, O, relu, rng, matmul):
    """{pass: {version: fn, ... (, "matmul": fn)}} on one layer's buffers."""
    x, W, b, dz = make_layer(rng, B, I, O)
    y, dx = np.empty((B, O), np.float32), np.empty((B, I), np.float32)
    dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
    runs = {}
    for pass_, op in PASSES.items():
        kernels = {v: registry.get(op, v).parallel for v in versions}
        if pass_ == "forward":
            fns = {v: partial(k, y, x, W, b, relu) for v, k in kernels.items()}
            extra = partial(_matmul_forward, y, x, W, b, relu)
        elif pass_ == "backward_data":  # dx = dz W alone (relu=False: no mask)
            fns = {v: partial(k, dx, dz, dz, W, x, False, False) for v, k in kernels.items()}
            extra = partial(_matmul_backward_data, dx, dz, W)
        else:
            fns = {v: partial(k, dW, db, dz, x) for v, k in kernels.items()}
            extra = partial(_matmul_backward_weight, dW, db, dz, x)
        if matmul:
            fns["matmul"] = extra
        runs[pass_] = fns
    return runs


def default_versions() -> str:
    """Every registered version of the linear ops but SKIP, one name per distinct kernel."""
    seen, names = set(), []
    for name, version in registry.versions("linear_forward").items():
        if name not in SKIP and version.parallel not in seen:
            seen.add(version.parallel)
            names.append(name)
    return ",".join(names)


def register_tiles(text: str, drivers: str) -> list[str]:
    """--tiles "6x16,4x24/8": candidate tile shapes (MR x NR, NR a multiple of the lanes;
    the target ISA's lanes unless "/lanes" says), registered as versions "t4_6x16" (v4's
    driver) and "t5_6x16" (v5's), ..."""
    names = []
    for spec in filter(None, (s.strip() for s in text.split(","))):
        size, _, lanes = spec.partition("/")
        mr, _, nr = size.partition("x")
        lanes_ = int(lanes) if lanes else tile.SHAPE.lanes
        if not (mr.isdigit() and nr.isdigit()) or int(nr) % lanes_:
            sys.exit(f"--tiles: expected MRxNR with NR a multiple of {lanes_}, got {spec!r}")
        shape = tile.TileShape(int(mr), int(nr) // lanes_, lanes_)
        for family, packed in (("t4_", False), ("t5_", True)):
            if f"v{family[1]}" not in drivers.split(","):
                continue
            name = f"{family}{shape}" + (f"_{lanes_}" if lanes else "")
            fp32_tiled.register_tile(name, shape, packed, f"candidate tile {shape} ({family})")
            names.append(name)
    return names


def machine_lines() -> str:
    return "\n".join(
        [
            f"cpu:      {cpu_model()}; Numba compiles for {tile.TARGET.describe()}",
            f"tile:     v4 runs the {tile.SHAPE} tile ({tile.SHAPE.nv} vectors of "
            f"{tile.SHAPE.lanes} floats, {tile.SHAPE.registers(tile.TARGET.isa.fma)} of "
            f"{tile.TARGET.isa.registers} vector registers in the k loop)",
            f"blas:     {blas_config()}",
        ]
    )


def fmt(cells, markdown):
    """One line of the table: fixed columns, or a markdown row."""
    if markdown:
        return "| " + " | ".join(str(c).strip() for c in cells) + " |"
    return " ".join(cells)


def print_pass(cfg, label, pass_, shape, t, pick, registered, markdown):
    """One pass: each version's ms and % of sgemm (blas's time over its), auto's pick and
    the fastest of the ``registered`` versions (not np.matmul, not --tiles candidates)."""
    best = min(registered, key=t.get)
    cells = [f"{cfg:3}", f"{label:14}", f"{pass_:15}", *(f"{v:5}" for v in shape)]
    for p in t:
        cells += [f"{t[p] * 1e3:9.3f}", f"{t['blas'] / t[p]:5.0%}"]
    flag = "" if t[pick] <= 1.05 * t[best] else " *"
    cells += [f"{pick:>9}", f"{best:>9}", f"{t[pick] / t[best]:5.2f}{flag}"]
    print(fmt(cells, markdown))


def print_totals(totals, markdown):
    for cfg, tot in totals.items():
        paths = [p for p in tot if not p.startswith("_")]
        numba = [p for p in paths if p not in ("blas", "matmul")]
        best_numba = min(numba, key=tot.get) if numba else None
        parts = [f"{p} {tot[p] * 1e3:.2f} ms ({tot['blas'] / tot[p]:.0%})" for p in paths]
        print(("- " if markdown else "") + f"config {cfg}: all passes " + ", ".join(parts))
        print(
            ("- " if markdown else "")
            + f"config {cfg}: auto's picks {tot['_auto'] * 1e3:.2f} ms, the fastest version per "
            f"pass {tot['_best'] * 1e3:.2f} ms (auto/best {tot['_auto'] / tot['_best']:.3f}); "
            + (
                f"best Numba version {best_numba} at {tot['blas'] / tot[best_numba]:.2f} of sgemm"
                if best_numba
                else ""
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--versions",
        default=None,
        help="comma-separated versions of the linear ops (numbadlrm kernels lists them); "
        "default: every one but naive, v1, v2 (slow) and auto (its pick is shown)",
    )
    parser.add_argument("--tiles", default="", help="candidate tiles to time, e.g. 6x16,4x24")
    parser.add_argument("--tile-drivers", default="v4,v5", help="the drivers of --tiles")
    parser.add_argument("--configs", default="a,b,c", help="comma-separated subset of a, b, c")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--matmul", action="store_true", help="also time np.matmul + epilogue")
    parser.add_argument("--markdown", action="store_true", help="rows as a markdown table")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats")
    add_kernel_module_option(parser)
    args = parser.parse_args()
    use_kernel_modules(args)
    set_threads(args.threads)
    names = list(args.configs.replace(",", ""))  # config names are single letters
    unknown = [k for k in names if k not in CONFIGS]
    if unknown:
        sys.exit(f"--configs: {unknown} not among {sorted(CONFIGS)}")
    text = args.versions if args.versions is not None else default_versions()
    candidates = register_tiles(args.tiles, args.tile_drivers)
    versions = versions_of(text, tuple(PASSES.values())) + candidates
    versions += [v for v in ("blas",) if v not in versions]  # the % of sgemm's reference
    configs = QUICK if args.quick else {k: CONFIGS[k] for k in names}
    repeat = 3 if args.quick else args.repeat
    print(header(f"bench_gemm: versions {', '.join(versions)} of the linear passes"))
    print(machine_lines())
    print(_pools.describe())
    picks = {auto.choose_backend(B, I, O, p) for _, _, B, I, O, _, _ in layer_shapes(configs)
             for p in PASSES}  # fmt: skip
    versions += sorted(picks - set(versions))  # auto's picks are always timed
    registered = [v for v in versions if v not in candidates]
    for op in PASSES.values():
        for v in versions:
            checks.validate(op, v)
    print("validation: every version of every pass matches numbadlrm.reference")
    limit = blas_sgemm_gflops(256 if args.quick else 2048)
    print(f"limit:    sgemm {limit:.0f} GFLOP/s (the faster of np.matmul and the blas backend)")
    print("% sgemm: the blas backend's time (OpenBLAS sgemm) over the version's, per pass")
    rng = np.random.default_rng(0)
    paths = [*versions, *(["matmul"] if args.matmul else [])]
    title = ["cfg", "layer", "pass", "B", "I", "O"]
    for p in paths:
        title += [f"{p[:9]} ms", "%sgemm"]
    title += ["auto runs", "fastest", "auto/fastest"]
    print(fmt([f"{c:>9}" if i > 5 else c for i, c in enumerate(title)], args.markdown))
    if args.markdown:
        print("|" + "---|" * len(title))
    totals: dict[str, dict[str, float]] = {}
    for cfg, label, B, I, O, relu, needs_dx in layer_shapes(configs):
        for pass_, fns in pass_runs(versions, B, I, O, relu, rng, args.matmul).items():
            if pass_ == "backward_data" and not needs_dx:
                continue
            t = median_times(fns, repeat=repeat)
            pick = auto.choose_backend(B, I, O, pass_)
            tot = totals.setdefault(cfg, dict.fromkeys([*paths, "_auto", "_best"], 0.0))
            for p in paths:
                tot[p] += t[p]
            tot["_auto"] += t[pick]
            tot["_best"] += min(t[p] for p in registered)
            print_pass(cfg, label, pass_, (B, I, O), t, pick, registered, args.markdown)
    print_totals(totals, args.markdown)


if __name__ == "__main__":
    main()
