"""bench_e2e's limit model: the flops and bytes it charges each op of a step.

The bench prints each op's time at the machine's limits beside the measured one, and
torch's step over the summed limits; a wrong count there would misstate how close the
step is. Checked here against counts written out by hand for config c.
"""

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def bench_e2e():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("bench_e2e")
    finally:
        sys.path.remove(str(BENCH))


def test_config_c_costs_by_hand(bench_e2e):
    setup = bench_e2e.CONFIGS["c"]
    costs = bench_e2e.op_costs(setup, setup.config())
    assert set(costs) == set(bench_e2e.OPS)
    B, F, D, P = 2048, 27, 128, 27 * 26 // 2
    bottom = 13 * 512 + 512 * 256 + 256 * 128  # multiply-adds per sample and pass
    top = (D + P) * 1024 + 1024 * 1024 + 1024 * 512 + 512 * 256 + 256 * 1
    assert costs["bottom fwd"] == (2 * B * bottom, 0)
    assert costs["bottom bwd"] == (2 * 2 * B * bottom - 2 * B * 13 * 512, 0)  # no dx for 13
    assert costs["top fwd"] == (2 * B * top, 0)
    assert costs["top bwd"] == (4 * B * top, 0)
    row = D * 4
    lookups = B * 26  # one per bag
    assert costs["embedding fwd"] == (0, lookups * (row + 8) + B * 26 * row)
    assert costs["embedding update"] == (0, B * 26 * row + lookups * (2 * row + 8))
    assert costs["interaction fwd"] == (2 * B * P * D, B * F * row + B * (D + P) * 4)
    assert costs["interaction bwd"] == (4 * B * P * D, B * (D + P) * 4 + 2 * B * F * row)


def test_limits_take_the_slower_of_flops_and_bytes(bench_e2e):
    setup = bench_e2e.CONFIGS["c"]
    costs = bench_e2e.op_costs(setup, setup.config())
    limits = bench_e2e.op_limits(setup, gflops=200.0, gbs=40.0)
    for op, (flops, nbytes) in costs.items():
        assert limits[op] == max(flops / 200e9, nbytes / 40e9)
    # the embedding update is memory-bound, the top MLP compute-bound
    assert limits["embedding update"] == costs["embedding update"][1] / 40e9
    assert limits["top fwd"] == costs["top fwd"][0] / 200e9


def test_config_b_bf16_bytes_by_hand(bench_e2e):
    """bf16: the forward reads a row's bf16 half and writes bf16 pooled vectors; the exact
    update reads and writes both halves (fp32's bytes) and reads bf16 gradients; the
    interaction moves bf16 values; the MLPs' flops are fp32's (charged at the bf16 rate)."""
    setup = bench_e2e.CONFIGS["b"]
    cfg = setup.config()
    costs = bench_e2e.op_costs(setup, cfg, "bf16")
    fp32 = bench_e2e.op_costs(setup, cfg)
    B, T, D, L = 2048, 8, 64, 100
    F, P = T + 1, (T + 1) * T // 2
    assert costs["embedding fwd"] == (0, B * T * L * (2 * D + 8) + B * T * 2 * D)
    assert costs["embedding update"] == (0, B * T * 2 * D + B * T * L * (2 * 4 * D + 8))
    assert costs["interaction fwd"] == (2 * B * P * D, B * F * 2 * D + B * (D + P) * 2)
    assert costs["interaction bwd"] == (4 * B * P * D, B * (D + P) * 2 + 2 * B * F * 2 * D)
    for op in ("bottom fwd", "top fwd", "top bwd", "bottom bwd", "loss"):
        assert costs[op] == fp32[op]
    # the bytes bound of forward + update at fp32's bandwidth (RESULTS: about 1.2x)
    f32 = fp32["embedding fwd"][1] + fp32["embedding update"][1]
    b16 = costs["embedding fwd"][1] + costs["embedding update"][1]
    assert 1.15 < f32 / b16 < 1.3
