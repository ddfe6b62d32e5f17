"""MPI test cases: each takes a communicator and a scratch directory and asserts.

Run under mpiexec by tests/test_mpi.py (``mpiexec -n R python -m tests.mpi_cases OUT``),
and in-process on a one-rank communicator by the same file, so the same tests run under
pytest and under mpiexec (as mpi4py-fft does). Every rank runs every case; a case's
assertions are made after its last collective, so a failing assertion on one rank
cannot leave another rank waiting. Rank 0 writes {case: [error per rank]} to OUT.

Why float32 tolerances suffice for "R ranks train the same model as one process": the
distributed step computes the same sums in a different order (each rank sums its Bl
samples, then the allreduce sums R partial results; ds is scaled by Bl / B after the
division by Bl instead of dividing by B). Each difference is a float32 rounding of
about 6e-8 relative per operation; after a few steps at lr 0.3 parameters differ by
~1e-7 absolute (the values are O(0.1..1)). We compare with rtol 1e-4, atol 1e-6 and
losses with rtol 1e-5, while a wrong scaling (a factor R), a lost partial sum or a
misrouted sample gives errors of 1e-2 or more.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numba
import numpy as np
from mpi4py import MPI

from numbadlrm import DLRM, DLRMConfig
from numbadlrm.cli.tools import predict_to_file
from numbadlrm.io.checkpoint import CheckpointError, load_checkpoint
from numbadlrm.optim.optimizers import OptimizerConfig
from numbadlrm.parallel.distributed import DistributedDLRM
from numbadlrm.parallel.exchange import EmbeddingExchange
from numbadlrm.parallel.partition import plan_placement, sample_ranges
from numbadlrm.parallel.train_mpi import (
    abort_on_error,
    load_distributed_checkpoint,
    run_distributed_training,
    save_distributed_checkpoint,
)
from numbadlrm.train.config import TrainConfig
from numbadlrm.train.loop import run_training

from ._criteo_files import quirky_lines, write_raw
from ._helpers import random_batch

BATCH = 12  # divides by 1, 2, 3 and 4 ranks (the uneven cases use other sizes)
STEPS = 5
LR = 0.3
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def tiny_config(op: str = "dot", tables: str = "7-400-5-30-3") -> DLRMConfig:
    return DLRMConfig.from_arch(4, tables, "5-8-4", "6-1", interaction_op=op)


def batches(cfg: DLRMConfig, count: int, seed: int = 0, size: int = BATCH):
    rng = np.random.default_rng(seed)  # the same global batches on every rank
    return [random_batch(rng, cfg, size) for _ in range(count)]


def assert_same_model(sd: dict, expected: dict) -> None:
    assert sorted(sd) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(sd[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def train_both(comm, cfg, placement, count=STEPS, size=BATCH):
    """Distributed and single-process runs from the same seed on the same global batches."""
    model = DistributedDLRM(cfg, comm, placement, seed=3, gemm="numba")
    reference = DLRM(cfg, seed=3, gemm="numba")
    losses, ref_losses = [], []
    for batch in batches(cfg, count, size=size):
        losses.append(model.train_step(batch, LR))
        ref_losses.append(reference.train_step(batch, LR))
    probs = model.predict(batch)
    return model.state_dict(), reference, losses, ref_losses, probs, batch


def optimizer_setting(name: str) -> OptimizerConfig:
    """Every setting away from its default, so each one is exercised."""
    return OptimizerConfig(
        name, eps=1e-8, initial_accumulator_value=0.1, weight_decay=0.01, lr_decay=0.1
    )


def assert_same_state(sd: dict, expected: dict) -> None:
    """Optimizer state (sums of squared gradients): rtol 1e-4 as the parameters."""
    assert sorted(sd) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(sd[name], value, rtol=1e-4, atol=1e-9, err_msg=name)


def _check_matches_single_process(comm, cfg, placement, size=BATCH):
    sd, reference, losses, ref_losses, probs, batch = train_both(comm, cfg, placement, size=size)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(probs, reference.predict(batch), rtol=1e-5, atol=1e-6)
    if comm.rank == 0:
        assert_same_model(sd, reference.state_dict())
    else:
        assert sd is None


# ------------------------------------------------------------------------ the cases


@case
def alltoall_round_trip(comm, workdir):
    """Every pooled block reaches its sample's owner, and every gradient its shard's owner,
    with a global batch the ranks do not divide (the padded bags never arrive)."""
    cfg = tiny_config()
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size, replicate_max_rows=5)
    batch = 3 * comm.size + 1
    ranges = sample_ranges(batch, comm.size)
    plan = EmbeddingExchange(comm, placement, batch)
    shard_id = {s: i for i, s in enumerate(placement.shards)}
    start, stop = ranges[comm.rank]
    assert (plan.local_batch, plan.width) == (stop - start, -(-batch // comm.size))
    d = np.arange(4)[None, :]

    def code(shard, first, count):  # values naming (shard, global sample, d)
        return 1000.0 * shard_id[shard] + 10.0 * (first + np.arange(count)[:, None]) + d

    def gradient(q):  # the pooled gradient rank q sends back, (T, Bl_q, D)
        count = ranges[q][1] - ranges[q][0]
        shape = (cfg.num_tables, count, 4)
        return np.random.default_rng(q).normal(size=shape).astype(np.float32)

    mine = placement.shards_on(comm.rank)
    plan.pooled_out[:] = -7.0  # the padding: must never reach emb
    for q, (a, b) in enumerate(ranges):
        for s, shard in enumerate(mine):
            plan.pooled_out[q, s, : b - a] = code(shard, a, b - a)
    plan.start_forward().Wait()
    emb = np.full((cfg.num_tables, stop - start, 4), -1.0, np.float32)
    plan.assemble(emb)
    plan.scatter(gradient(comm.rank))
    plan.start_backward().Wait()

    senders = [s for r in range(comm.size) for s in placement.shards_on(r)]
    for j, shard in enumerate(senders):
        np.testing.assert_array_equal(
            plan.pooled_in[j, : stop - start], code(shard, start, stop - start)
        )
    for t in range(cfg.num_tables):
        if t in placement.replicated:
            assert (emb[t] == -1).all()  # replicated tables never travel
            continue
        expected = sum(code(s, start, stop - start) for s in placement.shards_of(t))
        np.testing.assert_array_equal(emb[t], expected)
    for q, (a, b) in enumerate(ranges):
        for s, shard in enumerate(mine):
            np.testing.assert_array_equal(plan.dpooled_in[q, s, : b - a], gradient(q)[shard.table])
            assert (plan.dpooled_in[q, s, b - a :] == 0).all()  # padding: zeros


@case
def matches_single_process_dot(comm, workdir):
    cfg = tiny_config("dot", "7-40-5-30-3")
    _check_matches_single_process(comm, cfg, plan_placement(cfg.embedding_sizes, 4, comm.size))


@case
def matches_single_process_cat(comm, workdir):
    cfg = tiny_config("cat", "7-40-5-30-3")
    _check_matches_single_process(comm, cfg, plan_placement(cfg.embedding_sizes, 4, comm.size))


@case
def matches_single_process_row_split(comm, workdir):
    cfg = tiny_config("dot", "7-400-5-30-3")  # 400 rows > the mean share: split
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size)
    if comm.size > 1:
        assert len(placement.shards_of(1)) > 1
    _check_matches_single_process(comm, cfg, placement)


@case
def matches_single_process_replicated(comm, workdir):
    cfg = tiny_config("cat", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size, replicate_max_rows=7)
    assert placement.replicated == (0, 2, 4)
    _check_matches_single_process(comm, cfg, placement)


def _trains_like_one_process(comm, **options) -> None:
    """run_distributed_training equals run_training: weights and evaluation metrics."""
    sizes = {"mini_batch_size": BATCH, "test_mini_batch_size": 24}
    cfg = TrainConfig(
        arch_sparse_feature_size=4,
        arch_mlp_bot="13-8-4",
        arch_mlp_top="8-1",
        threads=1,
        progress=False,
        **{**sizes, **options},
    )
    quiet = lambda *args: None  # noqa: E731
    result = run_distributed_training(cfg, comm, log=quiet)
    sd = result["model"].state_dict()
    assert result["steps"] == cfg.num_batches
    if comm.rank == 0:
        expected = run_training(cfg, log=quiet)
        assert_same_model(sd, expected["model"].state_dict())
        for key in ("auc", "logloss", "accuracy"):
            assert np.isclose(result[key], expected[key], rtol=1e-5), key


@case
def adagrad_matches_single_process(comm, workdir):
    """Adagrad and row-wise Adagrad: R ranks (a row-split table, replicated tables, an
    uneven batch of 13) train the same parameters and state as one process."""
    cfg = tiny_config("dot", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size, replicate_max_rows=5)
    if comm.size > 1:
        assert len(placement.shards_of(1)) > 1 and placement.replicated == (2, 4)
    for name in ("adagrad", "rwsadagrad"):
        setting = optimizer_setting(name)
        model = DistributedDLRM(cfg, comm, placement, seed=3, gemm="numba", optimizer=setting)
        reference = DLRM(cfg, seed=3, gemm="numba", optimizer=setting)
        for batch in batches(cfg, STEPS, size=13):
            loss = model.train_step(batch, 0.05)
            assert np.isclose(loss, reference.train_step(batch, 0.05), rtol=1e-5)
        sd, state = model.state_dict(), model.optimizer_state_dict()
        assert model.optimizer.steps == STEPS
        if comm.rank == 0:
            assert_same_model(sd, reference.state_dict())
            assert_same_state(state, reference.optimizer_state_dict())


@case
def training_loop_with_adagrad_matches_single_process(comm, workdir):
    """Row-wise Adagrad, the LR policy and the wbce loss through the training loops."""
    _trains_like_one_process(
        comm, arch_embedding_size="20-300-8-50", num_batches=8, print_freq=4, test_freq=4,
        test_num_batches=2, num_indices_per_lookup=3, gemm="numba", seed=5,
        optimizer="rwsadagrad", weight_decay=0.01, learning_rate=0.05, lr_num_warmup_steps=2,
        lr_decay_start_step=4, lr_num_decay_steps=3, loss_function="wbce", loss_weights="0.5-2",
    )  # fmt: skip


@case
def training_loop_matches_single_process(comm, workdir):
    _trains_like_one_process(
        comm, arch_embedding_size="20-300-8-50", num_batches=8, print_freq=4, test_freq=4,
        test_num_batches=2, num_indices_per_lookup=3, gemm="numba", seed=5,
    )  # fmt: skip


@case
def uneven_training_loop_matches_single_process(comm, workdir):
    """Train batches of 13 and evaluation batches of 25 on 2 and 3 ranks."""
    _trains_like_one_process(
        comm, arch_embedding_size="20-300-8-50", num_batches=6, print_freq=3, test_freq=3,
        test_num_batches=2, mini_batch_size=13, test_mini_batch_size=25, seed=6,
    )  # fmt: skip


@case
def dataset_training_matches_single_process(comm, workdir):
    """A Criteo file preprocessed once (rank 0), each rank reading its dense slice only."""
    raw = Path(workdir) / "train.txt"
    if comm.rank == 0:
        write_raw(raw, quirky_lines(np.random.default_rng(4), 240 * 7, vocab=30))
    comm.Barrier()
    _trains_like_one_process(
        comm, data_set="kaggle", raw_data_file=str(raw), max_ind_range=41,
        processed_data_file=str(Path(workdir) / "kaggle.numbadlrm"), num_batches=10,
        print_freq=5, seed=2,
    )  # fmt: skip
    # uneven: train batches of 17 (each rank reads its own dense slice of 9, 8 or 6, 6, 5
    # rows), evaluation batches of 23, the last one short (the split is not a multiple)
    _trains_like_one_process(
        comm, data_set="kaggle", raw_data_file=str(raw), max_ind_range=41,
        processed_data_file=str(Path(workdir) / "kaggle.numbadlrm"), num_batches=6,
        print_freq=3, seed=2, mini_batch_size=17, test_mini_batch_size=23,
    )  # fmt: skip


@case
def dataset_checkpoint_records_the_vocabulary(comm, workdir):
    """Trained by R ranks on a --min-count dataset, the checkpoint (written by rank 0)
    holds the vocabulary, and predict maps raw rows with it, no flag needed."""
    raw = Path(workdir) / f"vocab{comm.size}.txt"
    if comm.rank == 0:
        write_raw(raw, quirky_lines(np.random.default_rng(5), 7 * 60, vocab=20))
    comm.Barrier()
    ckpt = Path(workdir) / f"vocab{comm.size}.npz"
    cfg = TrainConfig(
        arch_sparse_feature_size=4, arch_mlp_bot="13-8-4", arch_mlp_top="8-1",
        mini_batch_size=BATCH, test_mini_batch_size=24, threads=1, progress=False,
        data_set="kaggle", raw_data_file=str(raw), num_batches=4, save_model=str(ckpt),
        processed_data_file=str(Path(workdir) / f"vocab{comm.size}.numbadlrm"),
    )  # fmt: skip
    run_distributed_training(cfg, comm, log=lambda *args: None)
    if comm.rank == 0:
        saved = load_checkpoint(ckpt)
        assert saved.preprocessing == {"max_ind_range": 0, "min_count": 1}
        assert saved.vocabulary.table_sizes == list(saved.config.embedding_sizes)
        out = Path(workdir) / f"vocab{comm.size}.p.txt"
        assert predict_to_file(str(ckpt), str(out), 64, raw_files=[str(raw)]) == 7 * 60


@case
def load_state_dict_checks_on_rank_zero(comm, workdir):
    cfg = tiny_config()
    model = DistributedDLRM(cfg, comm, seed=1)
    sd = model.state_dict()
    if comm.rank == 0:
        sd["embeddings.1.weight"] = np.zeros((3, 4), np.float32)
    try:
        model.load_state_dict(sd)
    except ValueError as exc:
        message = str(exc)
    else:
        message = ""
    assert "embeddings.1.weight has shape (3, 4)" in message, message


@case
def refuses_a_batch_changed_after_a_step(comm, workdir):
    """Every rank checks the global batch on every step, before any collective."""
    cfg = tiny_config("dot", "7-400-5-30-3")
    model = DistributedDLRM(cfg, comm, seed=3, gemm="numba")
    batch = batches(cfg, 1)[0]
    model.train_step(batch, LR)
    before = model.state_dict()
    messages = []
    for change in (("indices", 0, 10**12), ("offsets", (2, -1), 10**7)):
        name, where, value = change
        good = getattr(batch, name)[where]
        getattr(batch, name)[where] = value
        try:
            model.train_step(batch, LR)
            messages.append("")
        except ValueError as exc:
            messages.append(str(exc))
        getattr(batch, name)[where] = good
    after = model.state_dict()
    assert "looked up at index 1000000000000" in messages[0], messages
    assert "offsets of table 2 end at 10000000" in messages[1], messages
    if comm.rank == 0:
        assert all(np.array_equal(before[k], after[k]) for k in before)


@case
def refuses_a_bad_learning_rate(comm, workdir):
    """NaN, inf or a negative rate: the same ValueError on every rank, nothing changed."""
    cfg = tiny_config()
    model = DistributedDLRM(cfg, comm, seed=3, gemm="numba")
    batch = batches(cfg, 1)[0]
    before = model.state_dict()
    messages = []
    for lr in (float("nan"), float("inf"), -0.5):
        try:
            model.train_step(batch, lr)
            messages.append("")
        except ValueError as exc:
            messages.append(str(exc))
    after = model.state_dict()
    for lr, message in zip(("nan", "inf", "-0.5"), messages, strict=True):
        assert message == f"learning rate: must be a finite number >= 0, got {lr}", message
    if comm.rank == 0:
        assert all(np.array_equal(before[k], after[k]) for k in before)


@case
def matches_single_process_uneven_batches(comm, workdir):
    """B = 13: slices of 7 + 6 (2 ranks), 5 + 4 + 4 (3 ranks); row-split and replicated
    tables, so every route carries padded bags."""
    cfg = tiny_config("dot", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size, replicate_max_rows=5)
    _check_matches_single_process(comm, cfg, placement, size=13)


@case
def matches_single_process_fewer_samples_than_ranks(comm, workdir):
    """B = 2 on 3 ranks: the last rank has no sample and adds zeros."""
    cfg = tiny_config("cat", "7-400-5-30-3")
    _check_matches_single_process(comm, cfg, plan_placement(cfg.embedding_sizes, 4, comm.size), 2)


@case
def checkpoint_save(comm, workdir):
    """Train STEPS steps and save (the 2-rank run); the 3- and 1-rank runs resume it."""
    if comm.size != 2:
        return
    cfg = tiny_config("dot", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, 2, replicate_max_rows=5)
    model = DistributedDLRM(cfg, comm, placement, seed=3, gemm="numba")
    for batch in batches(cfg, STEPS):
        model.train_step(batch, LR)
    save_distributed_checkpoint(Path(workdir) / "ckpt.npz", model, step=STEPS)


@case
def optimizer_checkpoint_save(comm, workdir):
    """Train STEPS steps with each Adagrad and save (the 2-rank run): the optimizer state
    gathered from the shards; the 3- and 1-rank runs resume it."""
    if comm.size != 2:
        return
    cfg = tiny_config("dot", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, 2, replicate_max_rows=5)
    for name in ("adagrad", "rwsadagrad"):
        model = DistributedDLRM(
            cfg, comm, placement, seed=3, gemm="numba", optimizer=optimizer_setting(name)
        )
        for batch in batches(cfg, STEPS):
            model.train_step(batch, 0.05)
        save_distributed_checkpoint(Path(workdir) / f"ckpt_{name}.npz", model, step=STEPS)


@case
def optimizer_checkpoint_resume(comm, workdir):
    """Resume each 2-rank Adagrad checkpoint here (re-sharded: other placements, other
    row splits); equal to 2 * STEPS steps on one process, parameters and state."""
    if comm.size == 2 or not (Path(workdir) / "ckpt_adagrad.npz").exists():
        return
    cfg = tiny_config("dot", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size, replicate_max_rows=3)
    for name in ("adagrad", "rwsadagrad"):
        setting = optimizer_setting(name)
        model = DistributedDLRM(cfg, comm, placement, seed=99, gemm="numba", optimizer=setting)
        position = load_distributed_checkpoint(Path(workdir) / f"ckpt_{name}.npz", model)
        assert position.step == STEPS and model.optimizer.steps == STEPS
        for batch in batches(cfg, 2 * STEPS)[position.step :]:
            model.train_step(batch, 0.05)
        sd, state = model.state_dict(), model.optimizer_state_dict()
        if comm.rank == 0:
            reference = DLRM(cfg, seed=3, gemm="numba", optimizer=setting)
            for batch in batches(cfg, 2 * STEPS):
                reference.train_step(batch, 0.05)
            assert_same_model(sd, reference.state_dict())
            assert_same_state(state, reference.optimizer_state_dict())


@case
def checkpoint_save_error_reaches_every_rank(comm, workdir):
    """A write that fails on rank 0 (no such directory) raises CheckpointError on every
    rank, so none waits in the next collective; a later save still works."""
    cfg = tiny_config("dot", "7-400-5-30-3")
    model = DistributedDLRM(cfg, comm, seed=3, gemm="numba")
    try:
        save_distributed_checkpoint(Path(workdir) / "missing" / "ckpt.npz", model, step=1)
    except CheckpointError as exc:
        message = str(exc)
    else:
        message = ""
    save_distributed_checkpoint(Path(workdir) / f"ok{comm.size}.npz", model, step=2)
    assert "does not exist" in message, message
    assert load_checkpoint(Path(workdir) / f"ok{comm.size}.npz").step == 2


@case
def checkpoint_resume(comm, workdir):
    """Resume the 2-rank checkpoint on this many ranks; equal to 2 * STEPS on one process."""
    path = Path(workdir) / "ckpt.npz"
    if comm.size == 2 or not path.exists():
        return
    cfg = tiny_config("dot", "7-400-5-30-3")
    model = DistributedDLRM(cfg, comm, seed=99, gemm="numba")  # other init: all overwritten
    position = load_distributed_checkpoint(path, model)
    for batch in batches(cfg, 2 * STEPS)[position.step :]:
        model.train_step(batch, LR)
    sd = model.state_dict()
    assert position.step == STEPS
    if comm.rank == 0:
        reference = DLRM(cfg, seed=3, gemm="numba")
        for batch in batches(cfg, 2 * STEPS):
            reference.train_step(batch, LR)
        assert_same_model(sd, reference.state_dict())
        assert load_checkpoint(path).step == STEPS


# ------------------------------------------------------------------- --precision bf16

BF16_UPDATE_RTOL = 2.0**-4


def _bf16_runs(comm, cfg, placement, size, steps=STEPS):
    """The R-rank and the single-process bf16 runs on the same global batches, with each
    parameter's summed absolute change over the single-process run's steps."""
    model = DistributedDLRM(cfg, comm, placement, seed=3, gemm="numba", precision="bf16")
    reference = DLRM(cfg, seed=3, precision="bf16")
    moved = {k: np.zeros_like(v) for k, v in reference.state_dict().items()}
    losses, ref_losses = [], []
    for batch in batches(cfg, steps, size=size):
        before = reference.state_dict()
        losses.append(model.train_step(batch, LR))
        ref_losses.append(reference.train_step(batch, LR))
        for k, v in reference.state_dict().items():
            moved[k] += np.abs(v - before[k])
    probs = model.predict(batch)
    return model, model.state_dict(), reference, moved, losses, ref_losses, probs, batch


def _check_bf16_matches_single_process(comm, cfg, placement, size=BATCH):
    """R ranks in bf16 against one bf16 process. Differences, and the tolerance each gives:

    - a row-split table's pooled vector is the sum of its shards' bf16-rounded partial
      sums, rounded again, where one process rounds the whole sum once: the emb entry
      differs by at most one or two bf16 roundings (2^-8 of its size);
    - the MLP and replicated tables' gradients are summed in another fp32 order (the
      allreduce; ds is scaled by Bl / B): their masters differ by fp32 roundings, which
      move a truncated bf16 weight by one bf16 ulp only where the master sits at the
      edge of one (about 2^-16 of the weights per fp32 ulp of difference);
    - replicated tables: one update from a dense gradient, against one FMA per lookup.
    Each step's update is then formed from activations that differ by single bf16
    roundings, a small part of the roundings the bf16 step makes anyway; the whole of
    those moves a step's update by 2-10% of it (test_model_bf16's one-step test). So the
    runs' parameters may differ by a few % of how far the parameters moved: normwise,
    ||w_R - w_1|| <= 2^-4 ||sum over steps |w_1 step change|||; losses and
    probabilities, through logits that sum many products of such values, by 2^-6
    relative (measured: 1e-3 at B = 2, 4e-6 at B = 13). A wrong scaling, a lost partial
    sum or a misrouted sample gives errors of the size of the changes or of the values.

    On one rank the arithmetic is the single process's for every whole (unreplicated)
    table and every MLP weight: those must be equal bit for bit."""
    model, sd, reference, moved, losses, ref_losses, probs, batch = _bf16_runs(
        comm, cfg, placement, size
    )
    np.testing.assert_allclose(losses, ref_losses, rtol=2.0**-6)
    np.testing.assert_allclose(probs, reference.predict(batch), rtol=2.0**-6, atol=1e-6)
    assert model.exchange(size).pooled_out.dtype == np.uint16  # bf16 on the wire
    if comm.rank != 0:
        assert sd is None
        return
    expected = reference.state_dict()
    for name, value in expected.items():
        limit = BF16_UPDATE_RTOL * np.linalg.norm(moved[name]) + 1e-6 * np.linalg.norm(value)
        assert np.linalg.norm(sd[name] - value) <= limit, name
        exact = not name.startswith("embeddings") or int(name.split(".")[1]) not in (
            model.replicated
        )
        if comm.size == 1 and exact:
            np.testing.assert_array_equal(sd[name], value, err_msg=name)


@case
def bf16_matches_single_process(comm, workdir):
    """Row-split and replicated tables, B = 13 (uneven slices, padded bags)."""
    cfg = tiny_config("dot", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size, replicate_max_rows=5)
    _check_bf16_matches_single_process(comm, cfg, placement, size=13)


@case
def bf16_matches_single_process_cat_fewer_samples_than_ranks(comm, workdir):
    """B = 2 on 3 ranks: a rank with no sample; the cat interaction."""
    cfg = tiny_config("cat", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size)
    _check_bf16_matches_single_process(comm, cfg, placement, size=2)


@case
def bf16_checkpoint_holds_fp32_masters(comm, workdir):
    """A bf16 R-rank checkpoint holds the merged fp32 masters and the precision; it
    resumes on any number of ranks in bf16 (split back exactly) and loads into fp32."""
    cfg = tiny_config("dot", "7-400-5-30-3")
    placement = plan_placement(cfg.embedding_sizes, 4, comm.size, replicate_max_rows=5)
    model = DistributedDLRM(cfg, comm, placement, seed=3, gemm="numba", precision="bf16")
    for batch in batches(cfg, 2):
        model.train_step(batch, LR)
    path = Path(workdir) / f"bf16_{comm.size}.npz"
    save_distributed_checkpoint(path, model, step=2)
    sd = model.state_dict()
    other = DistributedDLRM(cfg, comm, seed=8, gemm="numba", precision="bf16")
    load_distributed_checkpoint(path, other)
    again = other.state_dict()
    if comm.rank == 0:
        saved = load_checkpoint(path)
        assert saved.extra["precision"] == "bf16"
        for name, value in sd.items():
            np.testing.assert_array_equal(saved.state[name], value, err_msg=name)
            np.testing.assert_array_equal(again[name], value, err_msg=name)
        DLRM(cfg).load_state_dict(saved.state)


# ------------------------------------------------------------------------ the runner


def run_cases(comm, workdir, names=None) -> dict[str, list[str | None]]:
    """Run the named cases (default all) on ``comm``; {case: [error or None per rank]}."""
    results = {}
    for name in names or CASES:
        try:
            CASES[name](comm, workdir)
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        results[name] = comm.allgather(error)
    return results


def main(argv: list[str]) -> int:
    comm = MPI.COMM_WORLD
    numba.set_num_threads(1)  # ranks share this machine's cores
    with abort_on_error(comm):
        if argv[1] == "fail":  # rank 1 raises while rank 0 waits in a collective
            if comm.rank == 1:
                raise RuntimeError("deliberate failure on rank 1")
            comm.Barrier()
            return 0
        out = Path(argv[1])
        results = run_cases(comm, out.parent)
        if comm.rank == 0:
            out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
