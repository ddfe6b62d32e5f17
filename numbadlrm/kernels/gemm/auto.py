"""The linear layer's default version, "auto": per pass and shape, GEMM v4, v5 or the blas
backend, by a fixed rule per ISA (:func:`choose_backend`) fitted to measurements, never a
timing taken at run time, so runs are reproducible. The ISA is the one Numba compiles for
(runtime/cpu.py). The measurements behind the rules are in bench/RESULTS.md ("Session 9:
GEMM tiles per ISA": bench_gemm.py at 1 thread on an Intel Xeon with AVX-512, natively
and compiling for Haswell):

    pass        batch <= 128                   larger batches
    forward     v4 (AVX2: v4 for 64 <= I < 512,  v5 up to 512 wide, for O = 1 and for
                blas otherwise)                I <= 128; blas for the rest
    data        v4                             as forward
    weight      blas; v5 for O = 1; AVX-512: v4 for O <= 64 and I >= 256 (any batch);
                AVX2: v4 for I < 32 (batch <= 128)

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
    """AVX-512 and AVX2 (see the module docstring; every exception measured)."""
    I, O = in_features, out_features
    avx512 = isa == "avx512"
    if pass_ == "backward_weight":
        if O == 1:  # a vector-matrix loop; OpenBLAS's M = 1 sgemm is slower
            return "v5"
        if avx512 and O <= 64 and I >= 256:  # 256 -> 64: 1.21x blas (B 128), 512 -> 64: 1.09x
            return "v4"
        if not avx512 and batch <= SMALL_BATCH and I < 32:  # 13 -> 512: 1.51x blas
            return "v4"
        return "blas"
    if batch <= SMALL_BATCH:
        if avx512 or pass_ == "backward_data" or SHORT_K <= I < NARROW:
            return "v4"
        return "blas"  # AVX2 forwards: 13 -> 512 1.4x, 52 -> 512 1.25x, 512 -> 256 1.07x
    if max(I, O) <= NARROW or O == 1 or I <= 128:  # 100 -> 1024: v5 1.13x blas
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
