"""The end-to-end benches' shared setup: configs a, b, c, their batches, the steppers.

Configs (B, tables, D, lookups per bag, bottom MLP, top MLP as the reference writes it):
    a  128,  8 x 1,000,     16,   1, 13-512-256-64-16, 512-256-1
    b  2048, 8 x 1,000,000, 64, 100, 512-512-64,       1024-1024-1024-1
    c  2048, 26 x 100,000,  128,  1, 13-512-256-128,   1024-1024-512-256-1
Data: random batches with fixed bag sizes (the reference's --data-generation=random).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numbadlrm import DLRMConfig
from numbadlrm.data.synthetic import batch_stream
from numbadlrm.model.dlrm import DLRM

try:
    import torch

    from numbadlrm.interop.torch_dlrm import TorchDLRM, batch_to_torch, torch_train_step
except ImportError:
    torch = None

LR = 0.01


@dataclass(frozen=True)
class Setup:
    batch: int
    tables: int
    rows: int
    dim: int
    lookups: int
    bottom: str
    top: str
    steps: int  # timed steps per process by default: about a second or more of steps

    def config(self) -> DLRMConfig:
        return DLRMConfig.from_arch(
            self.dim, "-".join([str(self.rows)] * self.tables), self.bottom, self.top
        )


CONFIGS = {
    "a": Setup(128, 8, 1_000, 16, 1, "13-512-256-64-16", "512-256-1", 500),
    "b": Setup(2048, 8, 1_000_000, 64, 100, "512-512-64", "1024-1024-1024-1", 10),
    "c": Setup(2048, 26, 100_000, 128, 1, "13-512-256-128", "1024-1024-512-256-1", 10),
}
QUICK = {"q": Setup(64, 3, 500, 8, 4, "13-16-8", "16-1", 3)}


def batches(setup: Setup, cfg: DLRMConfig, count: int = 4):
    return list(batch_stream(cfg, "random", count, setup.batch, 1, setup.lookups, fixed=True))


class Cycle:
    """Calls step(batch) on batches in turn; one call per __call__."""

    def __init__(self, step, data):
        self.step, self.data, self.i = step, data, 0

    def __call__(self):
        self.step(self.data[self.i % len(self.data)])
        self.i += 1


def numbadlrm_stepper(cfg: DLRMConfig, kernels: str = ""):
    model = DLRM(cfg, seed=0, kernels=kernels)
    return lambda b: model.train_step(b, LR)


def numbadlrm_bf16_stepper(cfg: DLRMConfig, kernels: str = ""):
    model = DLRM(cfg, seed=0, kernels=kernels, precision="bf16")
    return lambda b: model.train_step(b, LR)


def torch_stepper(cfg: DLRMConfig, kernels: str = ""):
    oracle = TorchDLRM(cfg, np.random.default_rng(0))
    opt = torch.optim.SGD(oracle.parameters(), lr=LR)
    return lambda b: torch_train_step(oracle, opt, b)


def torch_autocast_stepper(cfg: DLRMConfig, kernels: str = ""):
    """The same PyTorch step under CPU bf16 autocast (``torch.autocast("cpu",
    torch.bfloat16)`` around forward and loss, as PyTorch recommends): its GEMMs (Linear,
    bmm) run in bf16 on oneDNN, the loss in fp32, fp32 weights and SGD."""
    oracle = TorchDLRM(cfg, np.random.default_rng(0))
    opt = torch.optim.SGD(oracle.parameters(), lr=LR)

    def step(b):
        b.check_against(cfg.num_dense, cfg.embedding_sizes)
        dense, offsets, indices, labels = batch_to_torch(b)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = oracle.loss(oracle(dense, offsets, indices), labels)
        loss.backward()  # outside the autocast region, as torch.amp's docs ask
        opt.step()
        return loss.item()

    return step


STEPPERS = {
    "numbadlrm": numbadlrm_stepper,
    "numbadlrm-bf16": numbadlrm_bf16_stepper,
    "torch": torch_stepper,
    "torch-autocast": torch_autocast_stepper,
}
