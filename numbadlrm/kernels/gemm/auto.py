"""The linear layer's default version, "auto": per pass and shape, GEMM v4, v5 or the blas
backend, by a fixed rule per ISA (:func:`choose_backend`) fitted to measurements, never a
timing taken at run time, so runs are reproducible. The ISA is the one Numba compiles for
(runtime/cpu.py). The measurements behind the rules are in bench/RESULTS.md ("GEMM per
ISA", bench_gemm.py at 1 thread, an Intel Xeon with AVX-512, natively and compiling for
Haswell):

    pass        batch <= 128                    larger batches
    forward     v4 (AVX2: blas when I < 64)     v5 up to 512 wide and for O = 1, else blas
    data        v4                              v5 up to 512 wide and for O = 1, else blas
    weight      blas                            blas

on AVX-512 and AVX2; other ISAs (NEON, SSE2: our tiles are unmeasured there) run blas.
"""

from __future__ import annotations

from ..registry import get, register
from .tile import TARGET

PASSES = ("forward", "backward_data", "backward_weight")
SMALL_BATCH = 128  # at most this many rows: v4 (operands sit in L2; v5's packing costs)
NARROW = 512  # v5's forward and data passes lead OpenBLAS up to this width (batch 2048)
SHORT_K = 64  # AVX2, small batch: a forward with fewer inputs runs blas (13 -> 512: 1.35x)


def _tiled(batch: int, in_features: int, out_features: int, pass_: str, isa: str) -> str:
    """AVX-512 and AVX2: v4 for small batches, v5 for the forward and data passes of
    narrower layers at large ones, OpenBLAS for every weight pass and the widest layers."""
    if pass_ == "backward_weight":
        return "blas"
    if batch <= SMALL_BATCH:
        short = isa == "avx2" and pass_ == "forward" and in_features < SHORT_K
        return "blas" if short else "v4"
    if max(in_features, out_features) <= NARROW or out_features == 1:
        return "v5"
    return "blas"


def _other(batch: int, in_features: int, out_features: int, pass_: str, isa: str) -> str:
    return "blas"


RULES = {"avx512": _tiled, "avx2": _tiled}


def choose_backend(
    batch: int, in_features: int, out_features: int, pass_: str, isa: str | None = None
) -> str:
    """The version that "auto" runs for one pass of a layer, by the rule of ``isa`` (the
    target's ISA when None; ISAs without a rule run blas)."""
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")
    isa = isa or TARGET.isa.name
    return RULES.get(isa, _other)(batch, in_features, out_features, pass_, isa)


def forward(y, x, W, b, relu):
    name = choose_backend(x.shape[0], x.shape[1], W.shape[0], "forward")
    get("linear_forward", name).parallel(y, x, W, b, relu)


def backward_data(dx, dy, y, W, x, relu, mask_dx):
    name = choose_backend(x.shape[0], x.shape[1], W.shape[0], "backward_data")
    get("linear_backward_data", name).parallel(dx, dy, y, W, x, relu, mask_dx)


def backward_weight(dW, db, dz, x):
    name = choose_backend(x.shape[0], x.shape[1], dW.shape[0], "backward_weight")
    get("linear_backward_weight", name).parallel(dW, db, dz, x)


def backward_weight_sgd(W, b, dz, x, lr):
    name = choose_backend(x.shape[0], x.shape[1], W.shape[0], "backward_weight")
    get("linear_backward_weight", name).extras["sgd"](W, b, dz, x, lr)


_WHAT = f"per ISA ({TARGET.isa.name} here): v4, v5 or blas by shape and pass (the default)"
register("linear_forward", "auto", forward, description=_WHAT, default=True)
register("linear_backward_data", "auto", backward_data, description=_WHAT, default=True)
register(
    "linear_backward_weight",
    "auto",
    backward_weight,
    description=_WHAT,
    extras={"sgd": backward_weight_sgd},
    default=True,
)
