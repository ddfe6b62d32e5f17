"""Feature interaction: registered dot versions and cat, GFLOP/s and GB/s vs limits and torch.

Configs a (B=128, F=9, D=16) and c (B=2048, F=27, D=128, P=351). The chosen versions of
dot_interaction_forward and dot_interaction_backward (any registered version, yours in
numbadlrm/kernels/lab/ too), with their serial entries where they have one, are first
validated against numbadlrm.reference (numbadlrm.kernels.checks.ops), then all are timed
round-robin in one run with
PyTorch's formulation (as numbadlrm.interop.torch_dlrm.TorchDLRM.interact: stack, bmm, pair
gather, cat; its backward by autograd) when torch is installed. Counts:

    dot forward   2 B P D flops;  bytes B F D 4 read + B (D + P) 4 written
    dot backward  4 B P D flops;  bytes B (D + P) 4 + B F D 4 read + B F D 4 written
    cat           bytes B F D 4 read + B F D 4 written (each direction)

torch bmm computes the full F x F product Z (2 B F^2 D flops); it is counted by the same
pair model as ours, so its GFLOP/s is the useful rate. Each rate is also printed as a
fraction of the machine's limits, measured first: the sgemm rate and STREAM copy.

    python bench/bench_interaction.py --threads 2
    python bench/bench_interaction.py --threads 2 --forward-versions v3 --backward-versions v3,mine
    python bench/bench_interaction.py --quick                     # CI smoke
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
from functools import partial

import numba
import numpy as np
from _common import (
    add_kernel_module_option,
    blas_sgemm_gflops,
    header,
    median_times,
    set_threads,
    stream_copy_gbs,
    use_kernel_modules,
    versions_of,
)

from numbadlrm.config import pair_indices
from numbadlrm.kernels import registry
from numbadlrm.kernels.checks import ops as checks

try:
    import torch
except ImportError:
    torch = None

CONFIGS = {"a": (128, 8, 16), "c": (2048, 26, 128)}  # B, T, D
QUICK = {"q": (33, 5, 24)}


def candidates(versions, batch, tables, dim, rng):
    """{name: (fn, flops, bytes)} on one config's buffers: each version's parallel entry
    and, where it has one, its serial entry (what the layer runs below 1 MB of work)."""
    f = tables + 1
    li, lj = pair_indices(f, False)
    p = li.shape[0]
    x = rng.standard_normal((batch, dim), dtype=np.float32)
    emb = rng.standard_normal((tables, batch, dim), dtype=np.float32)
    out = np.empty((batch, dim + p), np.float32)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    dx, demb = np.empty_like(x), np.empty_like(emb)
    cat_out = np.empty((batch, f * dim), np.float32)
    feats_bytes = batch * f * dim * 4
    fwd_cost = (2.0 * batch * p * dim, feats_bytes + batch * (dim + p) * 4)
    bwd_cost = (4.0 * batch * p * dim, 2 * feats_bytes + batch * (dim + p) * 4)
    fns = {}
    for kind, cost in (("fwd", fwd_cost), ("bwd", bwd_cost)):
        op = "dot_interaction_forward" if kind == "fwd" else "dot_interaction_backward"
        args = (out, x, emb, li, lj) if kind == "fwd" else (dx, demb, dout, x, emb, li, lj)
        for v in versions[kind]:
            version = registry.get(op, v)
            fns[f"dot {kind} {v}"] = (partial(version.parallel, *args), *cost)
            if version.serial is not None:
                fns[f"dot {kind} {v} ser"] = (partial(version.serial, *args), *cost)
    cat_fwd = registry.get("cat_interaction_forward").parallel
    cat_bwd = registry.get("cat_interaction_backward").parallel
    fns["cat fwd"] = (partial(cat_fwd, cat_out, x, emb), 0.0, 2 * feats_bytes)
    fns["cat bwd"] = (partial(cat_bwd, dx, demb, cat_out), 0.0, 2 * feats_bytes)
    if torch is not None:
        fns.update(torch_candidates(x, emb, dout, li, lj, fwd_cost, bwd_cost))
    return fns


def torch_candidates(x, emb, dout, li, lj, fwd_cost, bwd_cost):
    """TorchDLRM.interact's formulation: forward, and forward + autograd backward."""
    tx = torch.from_numpy(x).requires_grad_()
    temb = [torch.from_numpy(e).requires_grad_() for e in emb]
    tdout = torch.from_numpy(dout)
    tli, tlj = torch.from_numpy(li), torch.from_numpy(lj)

    def forward():
        feats = torch.stack([tx, *temb], dim=1)  # (B, F, D)
        z = torch.bmm(feats, feats.transpose(1, 2))  # (B, F, F)
        return torch.cat([tx, z[:, tli, tlj]], dim=1)

    def forward_backward():
        forward().backward(tdout)

    def forward_no_grad():
        with torch.no_grad():
            forward()

    both = (fwd_cost[0] + bwd_cost[0], fwd_cost[1] + bwd_cost[1])
    return {"torch fwd": (forward_no_grad, *fwd_cost), "torch fwd+bwd": (forward_backward, *both)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--forward-versions",
        default="v1,v2,v3",
        help="versions of dot_interaction_forward ('' for none; numbadlrm kernels lists them)",
    )
    parser.add_argument(
        "--backward-versions", default="v1,v2,v3", help="versions of dot_interaction_backward"
    )
    parser.add_argument("--configs", default="ac", help="subset of configs a, c")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats")
    add_kernel_module_option(parser)
    args = parser.parse_args()
    use_kernel_modules(args)
    versions = {
        "fwd": choices(args.forward_versions, "dot_interaction_forward"),
        "bwd": choices(args.backward_versions, "dot_interaction_backward"),
    }
    set_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(header("bench_interaction"))
    print(_pools.describe())
    print(
        f"torch:    {torch.__version__} ({torch.get_num_threads()} threads)"
        if torch
        else "torch:    not installed, numbadlrm only"
    )
    for kind, op in (("fwd", "dot_interaction_forward"), ("bwd", "dot_interaction_backward")):
        for v in versions[kind]:
            checks.validate(op, v)
    print("validation: every version matches numbadlrm.reference")
    gflops_limit = blas_sgemm_gflops(256 if args.quick else 2048)
    gbs_limit = stream_copy_gbs(16 << 20 if args.quick else 256 << 20)
    print(f"limits:   sgemm {gflops_limit:.0f} GFLOP/s, STREAM copy {gbs_limit:.1f} GB/s")
    rng = np.random.default_rng(0)
    configs = QUICK if args.quick else {k: CONFIGS[k] for k in args.configs}
    # the kernel column fits the longest name ("dot fwd " + a version + " ser"; yours too)
    width = max([18] + [len(f"dot fwd {v} ser") for names in versions.values() for v in names])
    print(
        f"{'cfg':3} {'kernel':{width}} {'B':>5} {'F':>3} {'D':>4} {'ms':>8} {'GFLOP/s':>8} "
        f"{'%sgemm':>7} {'GB/s':>6} {'%STREAM':>8}"
    )
    for name, (batch, tables, dim) in configs.items():
        fns = candidates(versions, batch, tables, dim, rng)
        times = median_times(
            {k: v[0] for k, v in fns.items()}, repeat=3 if args.quick else args.repeat
        )
        for kernel, t in times.items():
            _, flops, nbytes = fns[kernel]
            rate = flops / t / 1e9
            flop_cells = f"{rate:8.1f} {rate / gflops_limit:7.0%}" if flops else f"{'-':>16}"
            gbs = nbytes / t / 1e9
            print(
                f"{name:3} {kernel:{width}} {batch:5} {tables + 1:3} {dim:4} {t * 1e3:8.3f} "
                f"{flop_cells} {gbs:6.1f} {gbs / gbs_limit:8.0%}"
            )
        report_torch(name, times, versions)


def choices(text: str, op: str) -> list[str]:
    """The comma-separated versions of op in text ('' gives none)."""
    return versions_of(text, (op,)) if text.strip() else []


def report_torch(name: str, times: dict[str, float], versions: dict[str, list[str]]) -> None:
    """Our best forward + backward (any version, either entry) against torch's."""
    if "torch fwd+bwd" not in times or not versions["fwd"] or not versions["bwd"]:
        return
    best = {
        kind: min(t for k, t in times.items() if k.startswith(f"dot {kind} "))
        for kind in ("fwd", "bwd")
    }
    ours = best["fwd"] + best["bwd"]
    print(
        f"config {name}: dot fwd+bwd (best versions) {ours * 1e3:.3f} ms, torch "
        f"{times['torch fwd+bwd'] * 1e3:.3f} ms, speedup {times['torch fwd+bwd'] / ours:.2f}x "
        f"(threads: numba {numba.get_num_threads()})"
    )


if __name__ == "__main__":
    main()
