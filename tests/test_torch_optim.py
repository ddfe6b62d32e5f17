"""The optimizers against PyTorch over 10 steps: references, kernels and torch side by side.

torch.optim.Adagrad (dense, and sparse through nn.EmbeddingBag(mode="sum", sparse=True))
and RowWiseSparseAdagrad (the reference's RWSAdagrad, numbadlrm/interop/torch_optim.py) against
numbadlrm.optim.reference and the kernels, with the reference's LR policy setting each
step's lr as its scheduler does, Adagrad's lr_decay and a non-zero initial accumulator.
Bags hold 0..4 lookups of tiny tables: bag 0 of every table is empty, bag 1 repeats one
row 3 times, and rows repeat across bags. Tolerances as tests/test_torch_oracle.py's
10-step trajectories: torch in float64 against the reference in float64, rtol 1e-11 /
atol 1e-13 (only summation order differs); torch in float32 against the reference in
float64 from the same float32 values, and the float32 kernels against torch in float32,
rtol 1e-4 / atol 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from numbadlrm.interop.torch_optim import (  # noqa: E402
    RowWiseSparseAdagrad,
    embedding_backward,
    embedding_pooled,
)
from numbadlrm.kernels.embedding import optimizers as k  # noqa: E402
from numbadlrm.optim import reference as ref  # noqa: E402
from numbadlrm.optim.lr_policy import LRPolicy, adagrad_decayed_lr  # noqa: E402

TOL = {np.float64: dict(rtol=1e-11, atol=1e-13), np.float32: dict(rtol=1e-4, atol=1e-6)}
STEPS, EPS, INITIAL, LR_DECAY = 10, 1e-10, 0.1, 0.05
POLICY = LRPolicy(0.1, num_warmup_steps=3, decay_start_step=5, num_decay_steps=4)
SIZES, DIM, BATCH = (7, 11, 5), 4, 9
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default, said aloud: no warning


def step_lr(step: int) -> float:
    """Step k's lr (k = 0..): the LR policy's, then Adagrad's lr_decay (its step k + 1)."""
    return adagrad_decayed_lr(POLICY.lr_at(step), LR_DECAY, step + 1)


def random_lookups(rng):
    """offsets (T, B+1), indices: 0..4 lookups a bag, bag 0 empty, bag 1 one row 3 times."""
    offsets = np.zeros((len(SIZES), BATCH + 1), np.int64)
    flat = []
    for t, rows in enumerate(SIZES):
        offsets[t, 0] = len(flat)
        for b in range(BATCH):
            if b == 1:
                flat.extend([int(rng.integers(rows))] * 3)
            elif b > 1:
                flat.extend(rng.integers(0, rows, int(rng.integers(0, 5))).tolist())
            offsets[t, b + 1] = len(flat)
    return offsets, np.asarray(flat, np.int64)


def torch_tables(weights, row_start, dtype):
    """One EmbeddingBag per table, its weight a copy of that table's rows."""
    return [
        torch.nn.EmbeddingBag(
            *weights[row_start[t] : row_start[t + 1]].shape, mode="sum", sparse=True,
            _weight=torch.tensor(weights[row_start[t] : row_start[t + 1]], dtype=dtype),
        )
        for t in range(len(SIZES))
    ]  # fmt: skip


def torch_step(bags, optimizer, offsets, indices, dpooled, step):
    torch_offsets = [torch.from_numpy(offsets[t, :-1] - offsets[t, 0]) for t in range(len(bags))]
    torch_indices = [torch.from_numpy(indices[o[0] : o[-1]]) for o in offsets]
    pooled = embedding_pooled(bags, torch_offsets, torch_indices)
    for group in optimizer.param_groups:
        group["lr"] = POLICY.lr_at(step)  # as the reference's LRPolicyScheduler sets it
    embedding_backward(pooled, [torch.from_numpy(d) for d in dpooled])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_all(name, dtype, rng, threads):
    """10 steps of the named sparse optimizer in torch, the reference and the kernels."""
    row_start = np.concatenate([[0], np.cumsum(SIZES)]).astype(np.int64)
    w0 = rng.uniform(-0.6, 0.6, (row_start[-1], DIM)).astype(np.float32).astype(dtype)
    state_shape = w0.shape if name == "adagrad" else w0.shape[:1]
    bags = torch_tables(w0, row_start, TORCH_DTYPE[dtype])
    params = [bag.weight for bag in bags]
    if name == "adagrad":
        opt = torch.optim.Adagrad(params, lr=0.1, lr_decay=LR_DECAY, eps=EPS,
                                  initial_accumulator_value=INITIAL)  # fmt: skip
    else:
        opt = RowWiseSparseAdagrad(params, lr=0.1, lr_decay=LR_DECAY, eps=EPS,
                                   initial_accumulator_value=INITIAL)  # fmt: skip
    ref_w, ref_s = w0.astype(np.float64), np.full(state_shape, INITIAL)
    ker = {kind: (w0.copy(), np.full(state_shape, INITIAL, dtype)) for kind in ("par", "ser")}
    parallel, serial = {
        "adagrad": (k.embedding_bags_adagrad_update, k.embedding_bags_adagrad_update_serial),
        "rowwise": (
            k.embedding_bags_rowwise_adagrad_update,
            k.embedding_bags_rowwise_adagrad_update_serial,
        ),
    }[name]
    reference = {"adagrad": ref.embedding_adagrad, "rowwise": ref.embedding_rowwise_adagrad}[name]
    for step in range(STEPS):
        offsets, indices = random_lookups(rng)
        dpooled = rng.normal(0, 1, (len(SIZES), BATCH, DIM)).astype(dtype)
        torch_step(bags, opt, offsets, indices, dpooled, step)
        lr = step_lr(step)
        reference(ref_w, ref_s, row_start, offsets, indices, dpooled.astype(np.float64), lr, EPS)
        lists = np.empty((threads, 2, indices.shape[0]), np.int64)  # any contents
        args = (lists, row_start, offsets, indices, dpooled, dtype(lr), dtype(EPS))
        parallel(*ker["par"], *args, threads)
        serial(*ker["ser"], *args)
    torch_w = np.concatenate([p.detach().numpy() for p in params])
    key = "sum" if name == "adagrad" else "momentum"  # as torch and the reference name them
    torch_s = np.concatenate([opt.state[p][key].numpy() for p in params])
    return (ref_w, ref_s), (torch_w, torch_s), ker


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["adagrad", "rowwise"])
def test_sparse_optimizers_match_torch_over_10_steps(threads, name, dtype):
    (ref_w, ref_s), (torch_w, torch_s), ker = run_all(
        name, dtype, np.random.default_rng(1), threads
    )
    np.testing.assert_allclose(torch_w, ref_w, **TOL[dtype])
    np.testing.assert_allclose(torch_s, ref_s, **TOL[dtype])
    for kind, (w, s) in ker.items():
        np.testing.assert_allclose(w, torch_w, **TOL[dtype], err_msg=kind)
        np.testing.assert_allclose(s, torch_s, **TOL[dtype], err_msg=kind)
    np.testing.assert_array_equal(ker["par"][0], ker["ser"][0])  # any owner count, bitwise
    # A real test: the rows moved by several steps of lr (0.03 to 0.1, Adagrad-scaled).
    w0 = np.random.default_rng(1).uniform(-0.6, 0.6, ref_w.shape).astype(np.float32)
    assert np.abs(ref_w - w0).max() > 0.15


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_dense_adagrad_matches_torch_over_10_steps(threads, dtype, weight_decay):
    """torch.optim.Adagrad on a flat buffer; RWSAdagrad's dense path is the same, bitwise."""
    rng = np.random.default_rng(2)
    p0 = rng.normal(0, 1, 1003).astype(np.float32).astype(dtype)
    params = {
        name: torch.nn.Parameter(torch.tensor(p0, dtype=TORCH_DTYPE[dtype]))
        for name in ("adagrad", "rwsadagrad")
    }
    kwargs = dict(lr=0.1, lr_decay=LR_DECAY, eps=EPS, initial_accumulator_value=INITIAL,
                  weight_decay=weight_decay)  # fmt: skip
    opts = {
        "adagrad": torch.optim.Adagrad([params["adagrad"]], **kwargs),
        "rwsadagrad": RowWiseSparseAdagrad([params["rwsadagrad"]], **kwargs),
    }
    ref_p, ref_s = p0.astype(np.float64), np.full(p0.shape, INITIAL)
    ker_p, ker_s = p0.copy(), np.full(p0.shape, INITIAL, dtype)
    ser_p, ser_s = p0.copy(), np.full(p0.shape, INITIAL, dtype)
    for step in range(STEPS):
        grads = rng.normal(0, 1, p0.shape).astype(dtype)
        for name, param in params.items():
            opts[name].param_groups[0]["lr"] = POLICY.lr_at(step)
            param.grad = torch.from_numpy(grads.copy())
            opts[name].step()
        lr = step_lr(step)
        ref.adagrad(ref_p, ref_s, grads.astype(np.float64), lr, EPS, weight_decay)
        scalars = (dtype(lr), dtype(EPS), dtype(weight_decay))
        k.adagrad_update(ker_p, ker_s, grads, *scalars)
        k.adagrad_update_serial(ser_p, ser_s, grads, *scalars)
    torch_p = params["adagrad"].detach().numpy()
    np.testing.assert_array_equal(params["rwsadagrad"].detach().numpy(), torch_p)
    np.testing.assert_allclose(torch_p, ref_p, **TOL[dtype])
    np.testing.assert_allclose(opts["adagrad"].state[params["adagrad"]]["sum"], ref_s, **TOL[dtype])
    for p, s in ((ker_p, ker_s), (ser_p, ser_s)):
        np.testing.assert_allclose(p, torch_p, **TOL[dtype])
        np.testing.assert_allclose(s, ref_s, **TOL[dtype])


def test_rowwise_refuses_weight_decay_on_sparse_gradients():
    bag = torch.nn.EmbeddingBag(5, 2, mode="sum", sparse=True)
    opt = RowWiseSparseAdagrad(bag.parameters(), weight_decay=0.1)
    bag(torch.tensor([1, 2]), torch.tensor([0])).sum().backward()
    with pytest.raises(RuntimeError, match="weight_decay"):
        opt.step()
    with pytest.raises(ValueError, match="eps: must be >= 0"):
        RowWiseSparseAdagrad(bag.parameters(), eps=-1.0)
