"""Feature interaction: every dot kernel version and cat, in GFLOP/s and GB/s, vs torch.

Configs a (B=128, F=9, D=16) and c (B=2048, F=27, D=128, P=351). Each version is first
validated against numbadlrm.reference, then all are timed round-robin in one run with
PyTorch's formulation (as numbadlrm.torch_dlrm.TorchDLRM.interact: stack, bmm, pair
gather, cat; its backward by autograd) when torch is installed. Counts:

    dot forward   2 B P D flops;  bytes B F D 4 read + B (D + P) 4 written
    dot backward  4 B P D flops;  bytes B (D + P) 4 + B F D 4 read + B F D 4 written
    cat           bytes B F D 4 read + B F D 4 written (each direction)

torch bmm computes the full F x F product Z (2 B F^2 D flops); it is counted by the same
pair model as ours, so its GFLOP/s is the useful rate.

    python bench/bench_interaction.py --threads 2
    python bench/bench_interaction.py --threads 2 --versions v1   # one version
    python bench/bench_interaction.py --quick                     # CI smoke
"""

from __future__ import annotations

# isort: off
from numbadlrm import _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
import sys

import numba
import numpy as np
from _common import header, median_times, set_threads

from numbadlrm import (
    reference,
)
from numbadlrm.kernels import interaction

try:
    import torch
except ImportError:
    torch = None

CONFIGS = {"a": (128, 8, 16), "c": (2048, 26, 128)}  # B, T, D
QUICK = {"q": (33, 5, 24)}


def validate(version, rng) -> None:
    forward, backward = interaction.DOT_VERSIONS[version]
    batch, tables, dim = 19, 6, 21
    x = rng.standard_normal((batch, dim), dtype=np.float32)
    emb = rng.standard_normal((tables, batch, dim), dtype=np.float32)
    feats = np.concatenate([x[:, None], emb.transpose(1, 0, 2)], axis=1).astype(np.float64)
    li, lj = reference.pair_indices(tables + 1, False)
    out = np.empty((batch, dim + li.shape[0]), np.float32)
    forward(out, x, emb, li, lj)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    dx, demb = np.empty_like(x), np.empty_like(emb)
    backward(dx, demb, dout, x, emb, li, lj)
    dfeats = reference.interaction_backward(dout.astype(np.float64), feats, "dot", False)
    for what, got, want in (
        ("forward", out, reference.interaction_forward(feats, "dot", False)),
        ("dx", dx, dfeats[:, 0]),
        ("demb", demb, dfeats[:, 1:].transpose(1, 0, 2)),
    ):
        if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            sys.exit(f"validation failed: {version} {what}")


def candidates(versions, batch, tables, dim, rng):
    """{name: (fn, flops, bytes)} on one config's buffers."""
    f = tables + 1
    li, lj = reference.pair_indices(f, False)
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
    for v in versions:
        fwd, bwd = interaction.DOT_VERSIONS[v]
        fns[f"dot fwd {v}"] = (lambda g=fwd: g(out, x, emb, li, lj), *fwd_cost)
        fns[f"dot bwd {v}"] = (lambda g=bwd: g(dx, demb, dout, x, emb, li, lj), *bwd_cost)
    fwd, bwd = (
        interaction.dot_interaction_forward_serial,
        interaction.dot_interaction_backward_serial,
    )
    fns["dot fwd serial"] = (lambda: fwd(out, x, emb, li, lj), *fwd_cost)  # the layer's pick
    fns["dot bwd serial"] = (lambda: bwd(dx, demb, dout, x, emb, li, lj), *bwd_cost)  # if small
    fns["cat fwd"] = (
        lambda: interaction.cat_interaction_forward(cat_out, x, emb),
        0.0,
        2 * feats_bytes,
    )
    fns["cat bwd"] = (
        lambda: interaction.cat_interaction_backward(dx, demb, cat_out),
        0.0,
        2 * feats_bytes,
    )
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
    parser.add_argument("--versions", default=",".join(interaction.DOT_VERSIONS))
    parser.add_argument("--configs", default="ac", help="subset of configs a, c")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats")
    args = parser.parse_args()
    versions = args.versions.split(",")
    for v in versions:
        if v not in interaction.DOT_VERSIONS:
            sys.exit(f"--versions: {v!r} is not one of {list(interaction.DOT_VERSIONS)}")
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
    rng = np.random.default_rng(0)
    for v in versions:
        validate(v, rng)
    print(f"validation: dot {', '.join(versions)} match numbadlrm.reference")
    configs = QUICK if args.quick else {k: CONFIGS[k] for k in args.configs}
    print(
        f"{'cfg':3} {'kernel':14} {'B':>5} {'F':>3} {'D':>4} {'ms':>8} {'GFLOP/s':>8} {'GB/s':>6}"
    )
    for name, (batch, tables, dim) in configs.items():
        fns = candidates(versions, batch, tables, dim, rng)
        times = median_times(
            {k: v[0] for k, v in fns.items()}, repeat=3 if args.quick else args.repeat
        )
        for kernel, t in times.items():
            _, flops, nbytes = fns[kernel]
            gflops = f"{flops / t / 1e9:8.1f}" if flops else f"{'-':>8}"
            print(
                f"{name:3} {kernel:14} {batch:5} {tables + 1:3} {dim:4} {t * 1e3:8.3f} "
                f"{gflops} {nbytes / t / 1e9:6.1f}"
            )
        ours = min(
            times[f"dot fwd {versions[0]}"] + times[f"dot bwd {versions[0]}"],
            times["dot fwd serial"] + times["dot bwd serial"],
        )
        if "torch fwd+bwd" in times:
            print(
                f"config {name}: dot fwd+bwd (best of {versions[0]}, serial) {ours * 1e3:.3f} ms, "
                f"torch "
                f"{times['torch fwd+bwd'] * 1e3:.3f} ms, speedup "
                f"{times['torch fwd+bwd'] / ours:.2f}x (threads: numba "
                f"{numba.get_num_threads()})"
            )


if __name__ == "__main__":
    main()
