"""Embedding bags: registered versions of the forward and of the fused update, in GB/s.

Config b by default: T=8 tables x 1,000,000 rows, D=64, B=2048 bags of 100 lookups each
(N = T B L = 1,638,400 lookups, tables 2 GB in huge pages). The chosen versions of the
ops embedding_forward and embedding_update (any registered version, yours in
numbadlrm/kernels/lab/ too; each list may be empty) are first validated against
numbadlrm.reference (numbadlrm.kernels.checks.ops), then they and a STREAM
copy (a 256 MB parallel copy on all threads, _common.stream_copy) are timed round-robin in one run,
for uniform and for power-law row ids (id = floor(rows u^2.5), scrambled, as the
synthetic data). GB/s follow an explicit byte model:

    forward  N D 4 (rows read) + N 8 (indices) + T B D 4 (pooled written)
    update   2 N D 4 (rows read and written) + N 8 (indices) + T B D 4 (pooled grads read)

Power-law ids hit cached rows often, so their GB/s by this model can exceed DRAM's.

``--precision bf16`` adds the split-bf16 kernels (kernels/embedding/bags_bf16.py: tables
(R, 2, D) uint16, the forward reads only the bf16 halves, the update applies exact fp32
SGD to both halves), validated against the reference, timed in the same round-robin
next to fp32's v2, with their byte model:

    forward  N D 2 (bf16 rows read) + N 8 + T B D 4      update  as fp32's

and the speedup of forward + update over fp32's v2. Bytes alone bound that speedup: the
update moves as many bytes as fp32's, so with both kernels at fp32's GB/s it is
(f + u) / (f / 2 + u) for fp32 times f, u (about 1.25 at config b).

``--mode optimizers`` times update-only kernels instead: the fused SGD update, the fused
sparse Adagrad and row-wise Adagrad updates (kernels/embedding/optimizers.py), and, on the same
tables and state, PyTorch's sparse step (the EmbeddingBags' sparse backward from the same
dpooled + torch.optim.Adagrad, or + the reference's RWSAdagrad transcribed in
numbadlrm/interop/torch_optim.py); see bench/_embedding_optimizers.py. The coalesced optimizers
read and write each of the U distinct looked-up rows once:

    adagrad   4 U D 4 (rows and state read and written) + N 8 + T B D 4
    rowwise   2 U D 4 + 2 U 4 (rows, one state float each) + N 8 + T B D 4

and a "rowwise floor" (each distinct row and its state read and written once, in address
order, nothing else; by the row-wise model: the ceiling of the row-wise kernel's %).

    python bench/bench_embedding.py --threads 2                   # v1 and v2 of both
    python bench/bench_embedding.py --forward-versions '' --update-versions v2,mine
    python bench/bench_embedding.py --threads 2 --precision bf16
    python bench/bench_embedding.py --threads 2 --mode optimizers # sparse Adagrad vs torch
    python bench/bench_embedding.py --quick                       # tiny, bf16, both modes (CI)
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
import sys
from functools import partial

import numba
import numpy as np
from _common import (
    add_kernel_module_option,
    header,
    median_times,
    set_threads,
    stream_copy,
    use_kernel_modules,
    versions_of,
)
from _embedding_optimizers import run_optimizers

from numbadlrm import reference
from numbadlrm.data.synthetic import POWER_ALPHA
from numbadlrm.kernels import registry
from numbadlrm.kernels.checks import ops as checks
from numbadlrm.kernels.embedding import bags as embedding
from numbadlrm.kernels.embedding import bags_bf16 as embedding_bf16
from numbadlrm.model.params import table_buffer


def make_problem(rng, tables, rows, dim, batch, lookups, dist, weights=None):
    """(weights, row_start, offsets, indices): fixed-size bags, ids uniform or power-law;
    new tables unless ``weights`` are given."""
    if weights is None:
        weights = table_buffer(tables * rows, dim)
        weights[:] = 0.01  # touches every page; values do not matter for timing
    row_start = np.arange(tables + 1, dtype=np.int64) * rows
    flat = np.arange(tables * batch + 1, dtype=np.int64) * lookups
    offsets = np.stack([flat[t * batch : (t + 1) * batch + 1] for t in range(tables)])
    n = tables * batch * lookups
    if dist == "uniform":
        indices = rng.integers(0, rows, n)
    else:  # hot rows spread over the table by an affine bijection, as synthetic data
        raw = np.floor(rows * rng.random(n) ** POWER_ALPHA).astype(np.int64)
        indices = (raw * 7919 + 12345) % rows if rows % 7919 else raw
    return weights, row_start, offsets, indices


def validate_split(rng, dim) -> None:
    """Abort unless the split kernels match the reference: the forward sums the bf16 rows
    (fp32 sums of L values: within L eps32 of float64), and the update's merged fp32
    table equals the fp32 kernel's bit for bit."""
    tables, rows, batch, lookups = 3, 500, 17, 40
    weights, row_start, offsets, indices = make_problem(
        rng, tables, rows, dim, batch, lookups, "power"
    )
    weights[:] = rng.standard_normal(weights.shape, dtype=np.float32)
    split = np.empty((weights.shape[0], 2, dim), np.uint16)
    embedding_bf16.split_rows(split, weights)
    hi = reference.bf16_to_f32(split[:, 0]).astype(np.float64)
    pooled = np.empty((tables, batch, dim), np.float32)
    embedding_bf16.embedding_bags_forward_split(pooled, split, row_start, offsets, indices)
    for t in range(tables):
        table = hi[row_start[t] : row_start[t + 1]]
        want = reference.embedding_bag_forward(table, offsets[t], indices)
        sums = reference.embedding_bag_forward(np.abs(table), offsets[t], indices)
        if not (np.abs(pooled[t] - want) <= lookups * 2.0**-24 * sums).all():
            sys.exit("validation failed: split forward")
    dpooled = rng.standard_normal((tables, batch, dim), dtype=np.float32)
    lr, owners = np.float32(0.5), numba.get_num_threads()
    embedding.embedding_bags_sgd_update(weights, row_start, offsets, indices, dpooled, lr, owners)
    embedding_bf16.embedding_bags_sgd_update_split(
        split, row_start, offsets, indices, dpooled, lr, owners
    )
    merged = np.empty_like(weights)
    embedding_bf16.merge_rows(merged, split)
    if not np.array_equal(merged.view(np.uint32), weights.view(np.uint32)):
        sys.exit("validation failed: split update differs from fp32's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--forward-versions",
        default="v1,v2",
        help="versions of embedding_forward to time ('' for none; numbadlrm kernels lists them)",
    )
    parser.add_argument(
        "--update-versions", default="v1,v2", help="versions of embedding_update to time"
    )
    parser.add_argument("--tables", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--quick", action="store_true", help="tiny tables, 3 repeats, --precision bf16, both modes"
    )
    parser.add_argument(
        "--mode", choices=["versions", "optimizers", "all"], default=None,
        help="kernel versions (default), optimizer updates vs torch, or both (--quick's default)",
    )  # fmt: skip
    add_kernel_module_option(parser)
    args = parser.parse_args()
    use_kernel_modules(args)
    mode = args.mode or ("all" if args.quick else "versions")
    if args.quick:  # the split kernels too, so that CI's smoke run validates them
        args.tables, args.rows, args.batch, args.lookups, args.repeat = 2, 20_000, 64, 10, 3
        args.precision = "bf16"
    versions = {
        "forward": choices(args.forward_versions, "embedding_forward"),
        "update": choices(args.update_versions, "embedding_update"),
    }
    set_threads(args.threads)
    T, R, D, B, L = args.tables, args.rows, args.dim, args.batch, args.lookups
    n = T * B * L
    print(header(f"bench_embedding: T={T} rows={R} D={D} B={B} lookups={L}"))
    print(_pools.describe())
    rng = np.random.default_rng(0)
    if mode in ("optimizers", "all"):
        run_optimizers(rng, T, R, D, B, L, args.quick, args.repeat, make_problem)
    if mode == "optimizers":
        return
    for kind, names in versions.items():
        for v in names:
            checks.validate(f"embedding_{kind}", v)
    split = args.precision == "bf16"
    if split:
        validate_split(rng, D)
    print("validation: every version matches numbadlrm.reference")
    # the kernel column fits the longest name ("update " + a version; your names too)
    width = max([14] + [len(f"update {v}") for names in versions.values() for v in names])
    print(f"{'ids':8} {'kernel':{width}} {'ms':>8} {'GB/s':>6} {'% STREAM':>9}")
    for dist in ("uniform", "power"):
        problem = make_problem(rng, T, R, D, B, L, dist)
        times, stream_bytes = time_versions(problem, versions, args.quick, args.repeat, split)
        stream = stream_bytes / times["stream copy"] / 1e9
        for name, t in times.items():
            if name == "stream copy":
                nbytes = stream_bytes
            elif name.startswith("forward"):
                nbytes = n * D * (2 if name.endswith("bf16") else 4) + n * 8 + T * B * D * 4
            else:
                nbytes = 2 * n * D * 4 + n * 8 + T * B * D * 4
            gbs = nbytes / t / 1e9
            print(f"{dist:8} {name:{width}} {t * 1e3:8.2f} {gbs:6.1f} {100 * gbs / stream:8.0f}%")
        if split:
            print_split_speedup(dist, times)


def print_split_speedup(dist: str, times: dict[str, float]) -> None:
    """forward + update of the split kernels against fp32's v2, and the bytes' bound."""
    fp32 = times["forward v2"] + times["update v2"]
    bf16 = times["forward bf16"] + times["update bf16"]
    bound = fp32 / (times["forward v2"] / 2 + times["update v2"])
    print(
        f"{dist:8} forward + update: fp32 v2 {fp32 * 1e3:.2f} ms, split bf16 {bf16 * 1e3:.2f}"
        f" ms, speedup {fp32 / bf16:.2f}x (bytes bound at fp32's GB/s {bound:.2f}x)"
    )


def choices(text: str, op: str) -> list[str]:
    """The comma-separated versions of op in text ('' gives none)."""
    return versions_of(text, (op,)) if text.strip() else []


def time_versions(problem, versions, quick, repeat, split=False):
    """Median seconds of STREAM copy and each version's forward and update, round-robin;
    with ``split`` also the split-bf16 kernels and fp32's v2 (their baseline)."""
    weights, row_start, offsets, indices = problem
    num_tables, batch = offsets.shape[0], offsets.shape[1] - 1
    pooled = np.zeros((num_tables, batch, weights.shape[1]), np.float32)
    src = np.ones((16 << 20) if quick else (32 << 20))  # 128 / 256 MB
    dst = np.empty_like(src)
    fns = {"stream copy": lambda: stream_copy(dst, src)}  # all threads, like the kernels
    if split:
        versions = {k: sorted(set(names) | {"v2"}) for k, names in versions.items()}
        fns.update(split_fns(weights, row_start, offsets, indices, pooled))
    for v in versions["forward"]:
        fwd = registry.get("embedding_forward", v).parallel
        fns[f"forward {v}"] = partial(fwd, pooled, weights, row_start, offsets, indices)
    for v in versions["update"]:  # a tiny lr: the tables stay (nearly) as they are
        upd = registry.get("embedding_update", v).parallel
        fns[f"update {v}"] = partial(
            upd, weights, row_start, offsets, indices, pooled, np.float32(1e-9)
        )
    return median_times(fns, repeat=repeat), 2 * src.nbytes


def split_fns(weights, row_start, offsets, indices, pooled):
    """The split kernels' forward and update on a split copy of weights (huge pages)."""
    rows, dim = weights.shape
    tables = table_buffer(rows, dim).view(np.uint16).reshape(rows, 2, dim)
    embedding_bf16.split_rows(tables, weights)
    owners = numba.get_num_threads()
    return {
        "forward bf16": partial(
            embedding_bf16.embedding_bags_forward_split,
            pooled, tables, row_start, offsets, indices,
        ),
        "update bf16": partial(
            embedding_bf16.embedding_bags_sgd_update_split,
            tables, row_start, offsets, indices, pooled, np.float32(1e-9), owners,
        ),
    }  # fmt: skip


if __name__ == "__main__":
    main()
