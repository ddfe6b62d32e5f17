"""The memory estimate equals what is allocated, and a model that does not fit is refused
before allocating, with one line naming the biggest tables and the bytes."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from numbadlrm import DLRM, DLRMConfig
from numbadlrm.cli.main import main
from numbadlrm.data.criteo import PreprocessOptions, preprocess
from numbadlrm.model import dlrm as model
from numbadlrm.model import memory
from numbadlrm.model.memory import OutOfMemoryError, available_memory, estimate
from numbadlrm.model.tower import Workspace
from tests._criteo_files import quirky_lines, write_raw


def _config(tables: str = "7-11-5", bottom: str = "13-8-4") -> DLRMConfig:
    return DLRMConfig.from_arch(4, tables, bottom, "6-1")


def test_estimate_equals_the_allocations():
    cfg = _config()
    m = DLRM(cfg)
    need = estimate(cfg, (3, 5))
    assert need.table_bytes == m.weights.nbytes == (7 + 11 + 5) * 4 * 4
    others = dict(need.others)
    assert others["dense parameters and gradients"] == m.params.nbytes + m.grads.nbytes
    workspace = sum(
        a.nbytes
        for b in (3, 5)
        for value in vars(Workspace(cfg, b)).values()
        for a in (value if isinstance(value, list) else [value])
    )
    assert others["activations for batches of 3, 5"] == workspace
    assert [t for t, _, _ in need.tables] == [1, 0, 2]  # largest first


def test_the_per_rank_share_adds_up_to_the_model():
    pytest.importorskip("mpi4py")
    from numbadlrm.parallel.memory import rank_memory
    from numbadlrm.parallel.partition import plan_placement

    cfg = _config("700-11-500-3")
    placement = plan_placement(cfg.embedding_sizes, 4, 3, replicate_max_rows=5)
    shares = [rank_memory(cfg, placement, q) for q in range(3)]
    replicated = 3 * 4 * 4 * 2  # table 3 on every rank, with its gradient
    sharded = sum(s.table_bytes for s in shares) - 3 * replicated
    assert sharded == (700 + 11 + 500) * 4 * 4


def test_too_big_a_table_is_refused_before_allocating(monkeypatch, capsys):
    available = available_memory()
    if available is None or available > 10**12:
        pytest.skip("this machine has more than 1 TB available")
    monkeypatch.setattr(model, "table_buffer", lambda *a: pytest.fail("allocated"))
    assert main(["train", "--arch-embedding-size", "17179869184-100", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("numbadlrm train: error: not enough memory: the run needs 2.1 TB and ")
    assert "embedding tables 1.1 TB (2 tables; largest: table 0 17,179,869,184 rows 1.1 TB" in err
    assert "To fit, use fewer table rows" in err


def test_too_wide_a_layer_is_refused_before_allocating(capsys):
    assert main(["train", "--arch-mlp-bot", "13-100000000000-16", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not enough memory" in err and "\n" not in err
    assert "largest layer bottom_mlp.1 (100,000,000,000 -> 16)" in err
    assert "dense parameters and gradients 24.0 TB" in err


def test_the_readme_recipe_case_names_the_tables(tmp_path, monkeypatch, capsys):
    """26 tables of 10M rows (hashing a 100-row file mod 10M) on a machine with 8 GB."""
    raw = write_raw(tmp_path / "train.txt", quirky_lines(np.random.default_rng(0), 100))
    out = tmp_path / "kaggle"
    preprocess([raw], out, PreprocessOptions(split="kaggle", max_ind_range=10**7), progress=False)
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 10**9)
    monkeypatch.setattr(model, "table_buffer", lambda *a: pytest.fail("allocated"))
    argv = ["train", "--data-generation", "dataset", "--processed-data-file", str(out)]
    assert main([*argv, "--mini-batch-size", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the run needs 16.9 GB and 8.0 GB are available" in err
    assert "embedding tables 16.6 GB (26 tables; largest: table 0 10,000,000 rows 640.0 MB" in err
    assert "smaller --max-ind-range or a larger --min-count" in err


def test_a_refused_allocation_gets_the_same_message(monkeypatch):
    """The check passed (MemAvailable said yes) but mmap says ENOMEM (overcommit, cgroup)."""

    def enomem(rows, dim):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(memory, "available_memory", lambda: 10**15)
    monkeypatch.setattr(model, "table_buffer", enomem)
    with pytest.raises(
        OutOfMemoryError, match=r"table 1 11 rows .*allocating failed: \[Errno 12\]"
    ):
        DLRM(_config())


def test_the_python_api_refuses_too(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    with pytest.raises(ValueError, match=r"not enough memory: the run needs 2\.1 kB and 1\.0 kB"):
        DLRM(_config())


def test_available_memory_reads_meminfo_and_cgroup_limits(tmp_path: Path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:  4000 kB\n")
    assert available_memory(tmp_path) == 4000 * 1024
    cgroup = tmp_path / "sys" / "fs" / "cgroup"
    (cgroup / "memory").mkdir(parents=True)
    (cgroup / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert available_memory(tmp_path) == 4000 * 1024  # v1, no limit
    (cgroup / "memory" / "memory.limit_in_bytes").write_text("3000000\n")
    (cgroup / "memory" / "memory.usage_in_bytes").write_text("2000000\n")
    (cgroup / "memory" / "memory.stat").write_text("cache 5\ntotal_cache 500000\n")
    assert available_memory(tmp_path) == 1_500_000  # limit - usage + page cache
    (cgroup / "memory.max").write_text("2000000\n")  # v2 wins
    (cgroup / "memory.current").write_text("1500000\n")
    (cgroup / "memory.stat").write_text("anon 1\nfile 100000\n")
    assert available_memory(tmp_path) == 600_000
    (cgroup / "memory.max").write_text("max\n")
    assert available_memory(tmp_path) == 4000 * 1024


def test_distributed_model_checks_its_share(monkeypatch):
    pytest.importorskip("mpi4py")
    from mpi4py import MPI

    from numbadlrm.parallel import distributed
    from numbadlrm.parallel import memory as rank_memory

    monkeypatch.setattr(rank_memory, "available_memory", lambda: 1000)
    with pytest.raises(OutOfMemoryError, match="largest: table 1 11 rows"):
        distributed.DistributedDLRM(_config(), MPI.COMM_SELF)
