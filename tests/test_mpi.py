"""The MPI layer under mpiexec (2 and 3 ranks) and in-process on one rank.

The cases live in tests/mpi_cases.py; each mpiexec launch runs all of them once and
reports per case, so the whole file costs two launches plus a failure launch (about
half a minute on 2 cores, most of it Python and Numba start-up).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from numbadlrm import DLRM
from numbadlrm.io.checkpoint import load_checkpoint

from . import mpi_cases

pytestmark = pytest.mark.mpi
ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).with_name("mpiexec")
RANKS = (2, 3)


def launch(ranks: int, *args: str, timeout: float) -> subprocess.CompletedProcess:
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    command = [str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "tests.mpi_cases", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mpi")


@pytest.fixture(scope="module")
def results(workdir) -> dict[int, dict]:
    """{ranks: {case: [error per rank]}}; 2 ranks first (3 resumes its checkpoint)."""
    out = {}
    for ranks in RANKS:
        path = workdir / f"results{ranks}.json"
        proc = launch(ranks, str(path), timeout=150)
        assert proc.returncode == 0, f"mpiexec -n {ranks} failed:\n{proc.stderr[-4000:]}"
        out[ranks] = json.loads(path.read_text())
    return out


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("name", list(mpi_cases.CASES))
def test_case_under_mpiexec(results, ranks, name):
    errors = {rank: e for rank, e in enumerate(results[ranks][name]) if e}
    assert not errors, f"{name} on {ranks} ranks failed: {errors}"


@pytest.mark.parametrize("name", list(mpi_cases.CASES))
def test_case_on_one_rank(results, workdir, name):
    """The same case in this process on MPI.COMM_SELF (resuming the 2-rank checkpoint)."""
    from mpi4py import MPI

    errors = mpi_cases.run_cases(MPI.COMM_SELF, workdir, [name])[name]
    assert errors == [None], errors


def test_single_process_dlrm_resumes_the_two_rank_checkpoint(results, workdir):
    ckpt = load_checkpoint(workdir / "ckpt.npz")
    cfg = mpi_cases.tiny_config("dot", "7-400-5-30-3")
    model = DLRM(ckpt.config, seed=99, gemm="numba")
    model.load_state_dict(ckpt.state)
    reference = DLRM(cfg, seed=3, gemm="numba")
    for step, batch in enumerate(mpi_cases.batches(cfg, 2 * mpi_cases.STEPS)):
        if step >= ckpt.step:
            model.train_step(batch, mpi_cases.LR)
        reference.train_step(batch, mpi_cases.LR)
    mpi_cases.assert_same_model(model.state_dict(), reference.state_dict())
    assert np.array_equal(ckpt.config.embedding_sizes, cfg.embedding_sizes)


@pytest.mark.parametrize("name", ["adagrad", "rwsadagrad"])
def test_single_process_dlrm_resumes_a_two_rank_optimizer_checkpoint(results, workdir, name):
    """The 2-rank Adagrad checkpoint, state gathered from the shards, resumed by DLRM
    through the training loop's loader: equal to 2 * STEPS steps on one process."""
    from numbadlrm.train.loop import load_into

    cfg = mpi_cases.tiny_config("dot", "7-400-5-30-3")
    setting = mpi_cases.optimizer_setting(name)
    model = DLRM(cfg, seed=99, gemm="numba", optimizer=setting)
    notes = []
    step, _, _ = load_into(model, str(workdir / f"ckpt_{name}.npz"), cfg, notes.append)
    assert step == mpi_cases.STEPS and model.optimizer.steps == step and notes == []
    reference = DLRM(cfg, seed=3, gemm="numba", optimizer=setting)
    for k, batch in enumerate(mpi_cases.batches(cfg, 2 * mpi_cases.STEPS)):
        if k >= step:
            model.train_step(batch, 0.05)
        reference.train_step(batch, 0.05)
    mpi_cases.assert_same_model(model.state_dict(), reference.state_dict())
    mpi_cases.assert_same_state(model.optimizer_state_dict(), reference.optimizer_state_dict())


def test_an_error_on_one_rank_aborts_the_job():
    try:
        proc = launch(2, "fail", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("an exception on rank 1 left the job hanging")
    assert proc.returncode != 0
    assert "[rank 1/2] RuntimeError: deliberate failure on rank 1" in proc.stderr


def test_cli_under_mpiexec_trains_batches_the_ranks_do_not_divide():
    """`mpiexec -n 3 numbadlrm train --mini-batch-size 100`: 34 + 33 + 33 samples per step,
    and the default --test-mini-batch-size 4096 (1366 + 1365 + 1365) evaluates."""
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    command = [
        str(MPIEXEC),
        "-n",
        "3",
        sys.executable,
        "-m",
        "numbadlrm.cli.main",
        "train",
        "--mini-batch-size",
        "100",
        "--num-batches",
        "2",
        "--test-num-batches",
        "1",
        "--no-progress",
    ]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MPI: 3 ranks" in proc.stdout and "33-34 samples per rank per step" in proc.stdout
    assert "test at step 2: auc" in proc.stdout
    assert "(4096 samples)" in proc.stdout


def test_cli_under_mpiexec_trains_in_bf16():
    """`mpiexec -n 2 numbadlrm train --precision bf16`: the header says so, it evaluates."""
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable}")
    command = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "numbadlrm.cli.main", "train"]
    command += ["--precision", "bf16", "--mini-batch-size", "64", "--num-batches", "3"]
    command += ["--test-num-batches", "1", "--no-progress"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precision bf16" in proc.stdout and "test at step 3: auc" in proc.stdout
