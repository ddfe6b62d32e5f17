"""bench_embedding.py --mode optimizers: fused sparse optimizer updates against PyTorch's.

Candidates, timed round-robin in one run on the same tables (and the same state arrays:
torch's optimizers are handed numbadlrm's state as theirs): numbadlrm's fused SGD,
Adagrad and row-wise Adagrad updates from dpooled (T, B, D), and PyTorch's sparse step
from the same dpooled: the EmbeddingBags' sparse backward (kept graphs of the forward)
then torch.optim.Adagrad, or the reference's RWSAdagrad (numbadlrm/interop/torch_optim.py).
Every candidate alternates between two batches of the same distribution, as training
would: the kernels' scratch then always holds the other batch's keys, never this one's.

"rowwise floor" is the least any row-wise update must do, timed beside them: read and
write each distinct looked-up row and its state float once, in address order, every
owner a range of rows, rows prefetched as the kernels do; the distinct rows are found
before the timing, and no lookup, sort or gradient is read. Its % of STREAM copy, by the
row-wise byte model, is the ceiling for the row-wise kernel's % on this machine, and the
kernel's time over the floor's is what its select, sort and gradient gathers cost.
"""

from __future__ import annotations

import sys

import numba
import numpy as np
from _common import median_times, stream_copy

from numbadlrm.kernels.embedding import bags as embedding
from numbadlrm.kernels.embedding import optimizers
from numbadlrm.kernels.embedding.bags import PREFETCH_AHEAD
from numbadlrm.kernels.jit import jit_parallel, jit_serial
from numbadlrm.kernels.prefetch import prefetch_l2
from numbadlrm.model.params import table_buffer
from numbadlrm.optim import reference as reference_optim

LR, EPS = 1e-9, 1e-10  # a tiny lr: the tables barely move over hundreds of timed steps
FUSED = {  # name -> (parallel kernel, serial kernel, reference)
    "adagrad": (
        optimizers.embedding_bags_adagrad_update,
        optimizers.embedding_bags_adagrad_update_serial,
        reference_optim.embedding_adagrad,
    ),
    "rowwise": (
        optimizers.embedding_bags_rowwise_adagrad_update,
        optimizers.embedding_bags_rowwise_adagrad_update_serial,
        reference_optim.embedding_rowwise_adagrad,
    ),
}


def _torch():
    try:
        import torch

        from numbadlrm.interop import torch_optim
    except ImportError:
        return None, None
    return torch, torch_optim


def scratch(offsets, owners):
    """The fused kernels' scratch: lists (owners, 2, L) int64."""
    most = max(int(np.diff(offsets[:, [0, -1]], axis=1).max()), 1)  # lookups of one table
    return np.zeros((owners, 2, most), np.int64)


def validate_optimizers(rng, dim, make_problem) -> None:
    """Abort unless the fused kernels (parallel and serial) and torch's steps match the
    reference (float64) on a small problem with bags longer than the prefetch windows."""
    tables, rows, batch, lookups = 3, 500, 17, 40
    w0, row_start, offsets, indices = make_problem(rng, tables, rows, dim, batch, lookups, "power")
    w0[:] = rng.standard_normal(w0.shape, dtype=np.float32)
    dpooled = rng.standard_normal((tables, batch, dim), dtype=np.float32)
    torch, torch_optim = _torch()
    owners = numba.get_num_threads()
    for name, (fused, serial, ref) in FUSED.items():
        s0 = np.full(w0.shape if name == "adagrad" else w0.shape[:1], 0.5, np.float32)
        expect_w, expect_s = w0.astype(np.float64), s0.astype(np.float64)
        ref(expect_w, expect_s, row_start, offsets, indices, dpooled.astype(np.float64), 0.1)
        args = (scratch(offsets, owners), row_start, offsets, indices, dpooled)
        results = {}
        for kind in ("parallel", "serial", "torch"):
            w, s = w0.copy(), s0.copy()
            if kind == "parallel":
                fused(w, s, *args, np.float32(0.1), np.float32(EPS), owners)
            elif kind == "serial":
                serial(w, s, *args, np.float32(0.1), np.float32(EPS))
            elif torch is not None:
                batches = [(offsets, indices)]
                TorchStep(torch, torch_optim, name, w, s, row_start, batches, dpooled, 0.1)()
            else:
                continue
            results[kind] = (w, s)
        for kind, (w, s) in results.items():
            ok = np.allclose(w, expect_w, rtol=1e-4, atol=1e-5)
            if not (ok and np.allclose(s, expect_s, rtol=1e-4, atol=1e-5)):
                sys.exit(f"validation failed: {name} {kind}")
    rows, bounds = floor_rows(row_start, offsets, indices, owners)
    state = np.zeros(w0.shape[0], np.float32)
    rowwise_floor(w0, state, rows, bounds, np.float32(1.0))
    looked_up = np.zeros(w0.shape[0], bool)
    for t in range(tables):
        looked_up[row_start[t] + indices[offsets[t, 0] : offsets[t, -1]]] = True
    if not np.array_equal(state, looked_up.astype(np.float32)):
        sys.exit("validation failed: rowwise floor must touch each looked-up row once")


class TorchStep:
    """PyTorch's sparse step on numbadlrm's arrays (shared memory): backward, step, zero.

    One forward per batch builds the graph each call's backward reuses; calls take the
    batches in turn."""

    def __init__(self, torch, torch_optim, name, weights, state, row_start, batches, dpooled,
                 lr):  # fmt: skip
        torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default, silently
        self.bags = []
        for t in range(row_start.shape[0] - 1):
            table = torch.from_numpy(weights[row_start[t] : row_start[t + 1]])
            bag = torch.nn.EmbeddingBag(*table.shape, mode="sum", sparse=True, _weight=table)
            self.bags.append(bag)
        params = [bag.weight for bag in self.bags]
        if name == "adagrad":
            self.optimizer = torch.optim.Adagrad(params, lr=lr, eps=EPS)
        else:
            self.optimizer = torch_optim.RowWiseSparseAdagrad(params, lr=lr, eps=EPS)
        key = "sum" if name == "adagrad" else "momentum"  # as torch and the reference name it
        for t, p in enumerate(params):  # numbadlrm's state is torch's state
            self.optimizer.state[p][key] = torch.from_numpy(state[row_start[t] : row_start[t + 1]])
            self.optimizer.state[p].setdefault("step", torch.tensor(0.0) if key == "sum" else 0)
        self.graphs = [self._forward(torch, torch_optim, *batch) for batch in batches]
        self.dpooled = [torch.from_numpy(d) for d in dpooled]
        self.torch_optim, self.calls = torch_optim, 0

    def _forward(self, torch, torch_optim, offsets, indices):
        lo, hi = offsets[:, 0], offsets[:, -1]
        starts = [torch.from_numpy(offsets[t, :-1] - lo[t]) for t in range(len(self.bags))]
        lookups = [torch.from_numpy(indices[lo[t] : hi[t]]) for t in range(len(self.bags))]
        return torch_optim.embedding_pooled(self.bags, starts, lookups)

    def __call__(self) -> None:
        self.torch_optim.embedding_backward(
            self.graphs[self.calls % len(self.graphs)], self.dpooled
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.calls += 1


def run_optimizers(rng, T, R, D, B, L, quick, repeat, make_problem) -> None:
    validate_optimizers(rng, D, make_problem)
    torch, _ = _torch()
    checked = "fused adagrad and rowwise (parallel, serial)" + (" and torch" if torch else "")
    print(f"validation: {checked} match numbadlrm.optim.reference; the floor touches each row")
    if torch is None:
        print("torch not installed: its rows are left out")
    else:
        torch.set_num_threads(numba.get_num_threads())
    weights = None
    state = table_buffer(T * R, D)  # Adagrad's per-element state, touched by the fill
    state[:] = 0.0
    rowwise_state = table_buffer(T * R, 1).reshape(-1)  # 64-byte aligned, as the kernels want
    src = np.ones((16 << 20) if quick else (32 << 20))  # 128 / 256 MB
    dst = np.empty_like(src)
    print(f"{'ids':8} {'update':14} {'ms':>8} {'GB/s':>6} {'% STREAM':>9} {'vs torch':>9}")
    for dist in ("uniform", "power"):
        weights, row_start, offsets, indices = make_problem(rng, T, R, D, B, L, dist, weights)
        other = make_problem(rng, T, R, D, B, L, dist, weights)[3]  # same offsets
        batches = [(offsets, indices), (offsets, other)]
        dpooled = (1e-3 * rng.standard_normal((T, B, D))).astype(np.float32)
        fns = {"stream copy": lambda: stream_copy(dst, src)}
        floors = [floor_rows(row_start, *batch, numba.get_num_threads()) for batch in batches]
        fns.update(candidates(weights, state, rowwise_state, row_start, batches, dpooled, floors))
        times = median_times(fns, repeat=repeat)
        unique = np.mean([rows.shape[0] for rows, _ in floors])  # the distinct rows
        report(dist, times, 2 * src.nbytes, unique, T, B, D, L)


def candidates(weights, state, rowwise_state, row_start, batches, dpooled, floors) -> dict:
    """name -> a call of one update (numbadlrm's fused kernels, the floor over each batch's
    floor_rows in floors, torch's steps), each taking the batches in turn."""
    owners = numba.get_num_threads()
    lists = scratch(batches[0][0], owners)
    lr, eps = np.float32(LR), np.float32(EPS)
    turn = {"sgd": 0, "adagrad": 0, "rowwise": 0}

    def fused(name):
        offsets, indices = batches[turn[name] % 2]
        turn[name] += 1
        if name == "sgd":
            embedding.embedding_bags_sgd_update(
                weights, row_start, offsets, indices, dpooled, lr, owners
            )
        else:
            s = state if name == "adagrad" else rowwise_state
            args = (lists, row_start, offsets, indices, dpooled, lr, eps, owners)
            FUSED[name][0](weights, s, *args)

    fns = {f"{name} fused": (lambda name=name: fused(name)) for name in turn}
    turn["floor"] = 0

    def floor():
        rows, bounds = floors[turn["floor"] % 2]
        turn["floor"] += 1
        rowwise_floor(weights, rowwise_state, rows, bounds, lr)

    fns["rowwise floor"] = floor
    torch, torch_optim = _torch()
    if torch is not None:
        for name, s in (("adagrad", state), ("rowwise", rowwise_state)):
            fns[f"{name} torch"] = TorchStep(
                torch, torch_optim, name, weights, s, row_start, batches, dpooled, LR
            )
    return fns


@jit_serial
def _floor_rows(weights, state, rows, lo, hi, step):
    """rows[lo:hi] (distinct, ascending): state[r] += step; weights[r] -= s weights[r]."""
    dim = weights.shape[1]
    ahead = lo  # rows below it are prefetched
    for i in range(lo, hi):
        while ahead < min(i + PREFETCH_AHEAD, hi):
            for d in range(0, dim, 16):  # one prefetch per 64-byte line
                prefetch_l2(weights, rows[ahead], d)
            prefetch_l2(state, rows[ahead], 0)
            ahead += 1
        r = rows[i]
        state[r, 0] += step
        scale = step / (np.sqrt(state[r, 0]) + np.float32(EPS))
        for d in range(dim):
            weights[r, d] -= scale * weights[r, d]


@jit_parallel
def rowwise_floor(weights, state, rows, bounds, step):
    """Owner c updates rows[bounds[c]:bounds[c + 1]] (its own rows): race-free."""
    state_rows = state.reshape((state.shape[0], 1))
    for c in numba.prange(bounds.shape[0] - 1):
        _floor_rows(weights, state_rows, rows, bounds[c], bounds[c + 1], step)


def floor_rows(row_start, offsets, indices, owners):
    """(rows, bounds): each table's distinct looked-up rows (global ids) split into
    owners' ranges of rows (multiples of 16 rows: no two owners write one line of
    state); owner c's, table after table in address order, are rows[bounds[c]:bounds[c+1]]."""
    parts = [[] for _ in range(owners)]
    for t in range(offsets.shape[0]):
        size = row_start[t + 1] - row_start[t]
        rows = np.unique(indices[offsets[t, 0] : offsets[t, -1]])
        cuts = [(size * c // owners) // 16 * 16 for c in range(owners)] + [size]
        for c, piece in enumerate(np.split(rows, np.searchsorted(rows, cuts[1:-1]))):
            parts[c].append(row_start[t] + piece)
    owned = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in owned])]).astype(np.int64)
    return np.concatenate(owned).astype(np.int64), bounds


def report(dist, times, stream_bytes, unique, T, B, D, L) -> None:
    n = T * B * L
    shared = n * 8 + T * B * D * 4  # indices, pooled gradients
    model = {
        "sgd": 2 * n * D * 4 + shared,
        "adagrad": 4 * unique * D * 4 + shared,
        "rowwise": 2 * unique * D * 4 + 2 * unique * 4 + shared,
    }
    stream = stream_bytes / times["stream copy"] / 1e9
    print(f"{dist:8} {'stream copy':14} {times['stream copy'] * 1e3:8.2f} {stream:6.1f}")
    for name, t in times.items():
        if name == "stream copy":
            continue
        gbs = model[name.split()[0]] / t / 1e9
        vs = ""
        if name == "rowwise floor":
            vs = "(ceiling)"
        elif name.endswith("fused") and name.replace("fused", "torch") in times:
            vs = f"{times[name.replace('fused', 'torch')] / t:8.2f}x"
        print(f"{dist:8} {name:14} {t * 1e3:8.2f} {gbs:6.1f} {100 * gbs / stream:8.0f}% {vs:>9}")
    print(f"{dist:8} unique rows U = {unique:,.0f} of N = {n:,} lookups (mean of the 2 batches)")
    if "rowwise floor" in times:
        ratio = times["rowwise fused"] / times["rowwise floor"]
        print(f"{dist:8} rowwise fused takes {ratio:.2f}x the floor's time (select, sort, gathers)")
