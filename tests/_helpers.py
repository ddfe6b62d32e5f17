"""Shared test helpers: random configs, parameters and batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numbadlrm import Batch, DLRMConfig


def small_config(
    op: str = "dot", itself: bool = False, tables: str = "7-11-5", dim: int = 4
) -> DLRMConfig:
    return DLRMConfig.from_arch(
        sparse_feature_size=dim,
        embedding_size=tables,
        mlp_bot=f"5-8-{dim}",
        mlp_top="6-1",
        interaction_op=op,
        interaction_itself=itself,
    )


def random_batch(
    rng: np.random.Generator, cfg: DLRMConfig, batch: int, max_bag: int = 4, empty_bags: bool = True
) -> Batch:
    """Variable bag sizes (empty bags included) with repeated indices likely."""
    low = 0 if empty_bags else 1
    counts = rng.integers(low, max_bag + 1, size=(cfg.num_tables, batch))
    flat = np.concatenate([[0], np.cumsum(counts.ravel())])
    offsets = np.stack([flat[t * batch : (t + 1) * batch + 1] for t in range(cfg.num_tables)])
    indices = np.empty(flat[-1], dtype=np.int64)
    for t, rows in enumerate(cfg.embedding_sizes):
        lo, hi = offsets[t, 0], offsets[t, -1]
        indices[lo:hi] = rng.integers(0, rows, size=hi - lo)
    return Batch(
        dense=rng.normal(size=(batch, cfg.num_dense)).astype(np.float32),
        offsets=offsets.astype(np.int64),
        indices=indices,
        labels=rng.integers(0, 2, size=batch).astype(np.float32),
    )


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar f() with respect to every entry of x."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def assert_grad_close(analytic: np.ndarray, numeric: np.ndarray, tol: float = 1e-6) -> None:
    """float64 central differences are accurate to ~eps^2 * f''' + roundoff/eps ~ 1e-8."""
    err = np.abs(analytic - numeric)
    scale = max(1.0, float(np.abs(numeric).max()))
    assert err.max() / scale < tol, f"max error {err.max():.3e} (scale {scale:.3e})"
    assert err.mean() / scale < tol / 10, f"mean error {err.mean():.3e}"


def run_child_cases(module: str) -> tuple[list[dict], str]:
    """Run ``python -m module`` from the repository root (cases that may crash the
    process run there, not in pytest's); returns its JSON lines and a description of how
    it ended (exit status, stderr's tail) for assertion messages."""
    proc = subprocess.run(
        [sys.executable, "-m", module],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return lines, f"child exit status {proc.returncode}; stderr: {proc.stderr[-2000:]}"


def run_interrupted(monkeypatch, cfg, after: int) -> list[float]:
    """run_training(cfg) stopped by a KeyboardInterrupt at its train_step number
    ``after`` + 1, as a kill would stop it; returns the lr of each step that ran."""
    from numbadlrm.model.dlrm import DLRM
    from numbadlrm.train.loop import run_training

    original, lrs = DLRM.train_step, []

    def step(self, batch, lr):
        if len(lrs) >= after:
            raise KeyboardInterrupt
        lrs.append(lr)
        return original(self, batch, lr)

    monkeypatch.setattr(DLRM, "train_step", step)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, log=lambda *_: None)
    monkeypatch.setattr(DLRM, "train_step", original)
    return lrs
