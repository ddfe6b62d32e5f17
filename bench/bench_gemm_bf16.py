"""bf16 linear-layer GEMMs (vdpbf16ps, fp32 accumulation) against fp32 BLAS and torch bf16.

For every linear layer of DLRM configs b and c and each pass, the bf16 kernels
(numbadlrm.kernels.gemm.bf16) are first validated against the float64 reference on the
same bf16 inputs (bound (K + 2) eps32 (|A| @ |B| + |b|), as tests/test_gemm_bf16.py),
then timed round-robin with:

    blas    the fp32 "blas" backend (numbadlrm.kernels.gemm.blas, ~OpenBLAS sgemm) on the
            fp32 layer of the same shape, epilogues included as in the model
    torch   PyTorch on bf16 tensors (oneDNN), torch.set_num_threads matched: forward
            F.linear(x, W, b) then relu_; data dz @ W; weight dz^T @ x and dz.sum(0)
            (its dW is bf16, ours fp32)

The bf16 passes are the kernels with preallocated outputs: forward writes bf16 y (the
next layer's input) with bias and ReLU fused, or fp32 for the layers without ReLU; data
writes bf16 dx masked by the layer below's ReLU; weight writes fp32 dW and db, and
packs its operands inside. ``pack`` is packing W for the forward and data passes
(pack_rows + pack_cols), once per weight update; the sums count it in the bf16 column.

Limits printed first: the peak of vdpbf16ps and of the fp32 FMA (vfmadd231ps) on all
threads, from a loop of 12 independent register-only accumulators per thread.

    python bench/bench_gemm_bf16.py --threads 2
    python bench/bench_gemm_bf16.py --threads 2 --configs c
    python bench/bench_gemm_bf16.py --quick          # tiny shapes, few repeats (CI smoke)
"""

from __future__ import annotations

# isort: off
from numbadlrm.runtime import pools as _pools  # first: the thread pools' environment, before numpy
# isort: on

import argparse
import sys

import numba
import numpy as np
from _common import add_kernel_module_option, header, median_times, set_threads, use_kernel_modules
from bench_gemm import CONFIGS, QUICK, layer_shapes
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from numbadlrm import reference
from numbadlrm.kernels.gemm import bf16 as kg
from numbadlrm.kernels.gemm import blas, dpbf16
from numbadlrm.kernels.gemm import pack_bf16 as kp
from numbadlrm.kernels.gemm import tile as gemm_tile

EPS = 2.0**-24
_SPIN_ACCUMULATORS = 12
_vf = ir.VectorType(ir.FloatType(), 16)
_vi = ir.VectorType(ir.IntType(32), 16)
_i64 = ir.IntType(64)


def _spin_codegen(bf16: bool):
    """n iterations of 12 independent vdpbf16ps (or fp32 FMAs) on registers only."""

    def codegen(context, builder, signature, args):
        n, out = args
        if bf16:
            op = dpbf16._dpbf16(context, builder)
        else:
            op = gemm_tile._declare(
                builder.module, "llvm.fma.v16f32", ir.FunctionType(_vf, [_vf] * 3)
            )
        ptr = builder.inttoptr(out, _vf.as_pointer())
        seed = builder.load(ptr, align=4)
        a = builder.bitcast(seed, _vi) if bf16 else seed
        entry = builder.block
        loop, done = builder.append_basic_block("spin"), builder.append_basic_block("done")
        builder.branch(loop)
        builder.position_at_end(loop)
        k = builder.phi(_i64)
        k.add_incoming(ir.Constant(_i64, 0), entry)
        accs = [builder.phi(_vf) for _ in range(_SPIN_ACCUMULATORS)]
        new = [builder.call(op, [acc, a, a] if bf16 else [a, a, acc]) for acc in accs]
        for acc, value in zip(accs, new, strict=True):
            acc.add_incoming(seed, entry)
            acc.add_incoming(value, loop)
        k_next = builder.add(k, ir.Constant(_i64, 1))
        k.add_incoming(k_next, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, n), loop, done)
        builder.position_at_end(done)
        total = new[0]
        for value in new[1:]:
            total = builder.fadd(total, value)
        builder.store(total, ptr, align=4)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _spin_bf16(typingctx, n, out):
    return types.void(types.intp, types.intp), _spin_codegen(True)


@intrinsic
def _spin_fp32(typingctx, n, out):
    return types.void(types.intp, types.intp), _spin_codegen(False)


@numba.njit(parallel=True, cache=True)
def _peak_bf16(n, out):
    for t in prange(out.shape[0]):  # thread t writes only out[t]
        _spin_bf16(n, out[t].ctypes.data)


@numba.njit(parallel=True, cache=True)
def _peak_fp32(n, out):
    for t in prange(out.shape[0]):  # thread t writes only out[t]
        _spin_fp32(n, out[t].ctypes.data)


def peak_gflops(n: int = 2_000_000) -> dict[str, float]:
    """GFLOP/s of vdpbf16ps (64 flops) and vfmadd231ps (32) on every Numba thread."""
    threads = numba.get_num_threads()
    out = np.full((threads, 16), 1e-3, np.float32)
    times = median_times(
        {"vdpbf16ps": lambda: _peak_bf16(n, out), "fp32 fma": lambda: _peak_fp32(n, out)},
        repeat=5,
    )
    per_loop = n * _SPIN_ACCUMULATORS * threads
    return {
        "vdpbf16ps": per_loop * 64 / times["vdpbf16ps"] / 1e9,
        "fp32 fma": per_loop * 32 / times["fp32 fma"] / 1e9,
    }


def make_layer(rng, B, I, O):
    """fp32 x, W, b, dz, and their bf16 roundings (x >= 0, as a ReLU output)."""
    x = np.maximum(rng.standard_normal((B, I), dtype=np.float32), 0)
    W = (rng.standard_normal((O, I), dtype=np.float32) / np.sqrt(I)).astype(np.float32)
    b = rng.standard_normal(O, dtype=np.float32)
    dz = rng.standard_normal((B, O), dtype=np.float32)
    return (x, W, b, dz), tuple(reference.bf16_round(a) for a in (x, W, dz))


def packed(w16):
    O, I = w16.shape
    forward, data = (
        np.empty(kp.panels_shape(O, I), np.uint32),
        np.empty(kp.panels_shape(I, O), np.uint32),
    )
    return forward, data


def validate(B, I, O, relu, rng) -> None:
    """Abort unless every bf16 pass is within the fp32-accumulation bound of float64."""
    (_, _, b, _), (x16, w16, dz16) = make_layer(rng, B, I, O)
    x, W, dz = (reference.bf16_to_f32(a).astype(np.float64) for a in (x16, w16, dz16))
    wf, wd = packed(w16)
    kp.pack_rows(wf, w16)
    kp.pack_cols(wd, w16)
    y, dx = np.empty((B, O), np.float32), np.empty((B, I), np.float32)
    dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
    if O == 1:
        kg.logit_forward(y, kg.NONE_U16, x16, w16, b, relu, kg.TASKS)
    else:
        kg.linear_forward(y, kg.NONE_U16, x16, wf, b, relu, kg.TASKS, dpbf16.VDPBF16PS)
    if O == 1:
        kg.logit_backward_data(dx, kg.NONE_U16, dz16, w16, x16, True, kg.TASKS)
    else:
        kg.linear_backward_data(dx, kg.NONE_U16, dz16, wd, x16, True, kg.TASKS, dpbf16.VDPBF16PS)
    kg.linear_backward_weight(dW, db, dz16, x16, numba.get_num_threads(), dpbf16.VDPBF16PS)
    y_want = reference.linear_forward(x, W, b.astype(np.float64), relu)[0]
    for what, got, want, bound in (
        ("y", y, y_want, (I + 2) * EPS * (np.abs(x) @ np.abs(W).T + np.abs(b))),
        ("dx", dx, (dz @ W) * (x > 0), (O + 2) * EPS * (np.abs(dz) @ np.abs(W))),
        ("dW", dW, dz.T @ x, (B + 2) * EPS * (np.abs(dz).T @ np.abs(x))),
        ("db", db, dz.sum(axis=0), (B + 2) * EPS * np.abs(dz).sum(axis=0)),
    ):
        if not (np.abs(got - want) <= bound + 1e-30).all():
            sys.exit(f"validation failed: bf16 {what} B={B} I={I} O={O}")


def pass_runs(B, I, O, relu, threads, rng, torch):
    """{pass: {"bf16": fn, "blas": fn, "torch": fn}} on one layer's buffers."""
    (x, W, b, dz), (x16, w16, dz16) = make_layer(rng, B, I, O)
    wf, wd = packed(w16)
    kp.pack_rows(wf, w16)
    kp.pack_cols(wd, w16)
    y, dx = np.empty((B, O), np.float32), np.empty((B, I), np.float32)
    y16, dx16 = np.empty((B, O), np.uint16), np.empty((B, I), np.uint16)
    dW, db = np.empty((O, I), np.float32), np.empty(O, np.float32)
    if O == 1:
        forward = lambda: kg.logit_forward(y, kg.NONE_U16, x16, w16, b, relu, kg.TASKS)  # noqa: E731
    else:  # a ReLU layer's output is the next layer's bf16 input; the last is fp32
        y32, y_16 = (kg.NONE_F32, y16) if relu else (y, kg.NONE_U16)
        forward = lambda: kg.linear_forward(y32, y_16, x16, wf, b, relu, kg.TASKS, dpbf16.VDPBF16PS)  # noqa: E731
    if O == 1:
        data = lambda: kg.logit_backward_data(kg.NONE_F32, dx16, dz16, w16, x16, True, kg.TASKS)  # noqa: E731
    else:
        data = lambda: kg.linear_backward_data(  # noqa: E731
            kg.NONE_F32, dx16, dz16, wd, x16, True, kg.TASKS, dpbf16.VDPBF16PS
        )
    runs = {
        "forward": {
            "bf16": forward,
            "blas": lambda: blas.forward(y, x, W, b, relu, threads),
        },
        "backward_data": {
            "bf16": data,
            "blas": lambda: blas.backward_data(dx, dz, dz, W, x, False, True, True, threads),
        },
        "backward_weight": {
            "bf16": lambda: kg.linear_backward_weight(dW, db, dz16, x16, threads, dpbf16.VDPBF16PS),
            "blas": lambda: blas.backward_weight(dW, db, dz, x, threads),
        },
        "pack": {"bf16": lambda: (kp.pack_rows(wf, w16), kp.pack_cols(wd, w16))},
    }
    if torch is not None:
        tx, tW, tdz = (torch.from_numpy(a).bfloat16() for a in (x, W, dz))
        ty, tdx, tdW = (torch.empty(s, dtype=torch.bfloat16) for s in ((B, O), (B, I), (O, I)))
        runs["forward"]["torch"] = lambda: torch.matmul(tx, tW.t(), out=ty)
        runs["backward_data"]["torch"] = lambda: torch.matmul(tdz, tW, out=tdx)
        runs["backward_weight"]["torch"] = lambda: torch.matmul(tdz.t(), tx, out=tdW)
    return runs


def _import_torch(threads):
    try:
        import torch
    except ImportError:
        print("torch:    not installed, its column is skipped")
        return None
    torch.set_num_threads(threads)
    print(f"torch:    {torch.__version__}, {torch.get_num_threads()} threads")
    return torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="b,c", help="comma-separated subset of a, b, c")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 3 repeats")
    add_kernel_module_option(parser)
    args = parser.parse_args()
    use_kernel_modules(args)
    names = list(args.configs.replace(",", ""))
    unknown = [k for k in names if k not in CONFIGS]
    if unknown:
        sys.exit(f"--configs: {unknown} not among {sorted(CONFIGS)}")
    if not dpbf16.has_avx512_bf16():  # not a failure (CI smoke runs on any CPU): nothing to time
        print("bench_gemm_bf16: this CPU has no AVX512-BF16 (vdpbf16ps); skipped")
        return
    set_threads(args.threads)
    configs = QUICK if args.quick else {k: CONFIGS[k] for k in names}
    repeat = 3 if args.quick else args.repeat
    print(header("bench_gemm_bf16: bf16 passes (fp32 accumulation) vs fp32 blas and torch bf16"))
    print(_pools.describe())
    torch = _import_torch(args.threads)
    peaks = peak_gflops(20_000 if args.quick else 2_000_000)
    print("limit:    " + ", ".join(f"{k} peak {v:.0f} GFLOP/s" for k, v in peaks.items()))
    rng = np.random.default_rng(0)
    paths = ["bf16", "blas"] + (["torch"] if torch is not None else [])
    print(
        f"{'cfg':3} {'layer':14} {'pass':15} {'B':>5} {'I':>5} {'O':>5} "
        + "".join(f"{p + ' ms':>10} {'GF/s':>6}" for p in paths)
        + "".join(f" {'x ' + p:>8}" for p in paths[1:])
    )
    totals: dict[str, dict[str, float]] = {}
    for name, label, B, I, O, relu, needs_dx in layer_shapes(configs):
        validate(B, I, O, relu, rng)
        flops = 2.0 * B * I * O
        tot = totals.setdefault(name, dict.fromkeys(paths, 0.0))
        for pass_, fns in pass_runs(B, I, O, relu, args.threads, rng, torch).items():
            if pass_ == "backward_data" and not needs_dx:
                continue
            t = median_times(fns, repeat=repeat)
            for p in fns:
                tot[p] += t[p]
            if pass_ == "pack":
                print(
                    f"{name:3} {label:14} {'pack W':15} {B:5} {I:5} {O:5} {t['bf16'] * 1e3:10.3f}"
                )
                continue
            print(
                f"{name:3} {label:14} {pass_:15} {B:5} {I:5} {O:5} "
                + "".join(f"{t[p] * 1e3:10.3f} {flops / t[p] / 1e9:6.1f}" for p in paths)
                + "".join(f" {t[p] / t['bf16']:8.2f}" for p in paths[1:])
            )
    for name, tot in totals.items():
        print(
            f"config {name}: all passes (bf16 with packing) "
            + ", ".join(f"{p} {tot[p] * 1e3:.2f} ms" for p in paths)
            + "; bf16 speedup "
            + ", ".join(f"over {p} {tot[p] / tot['bf16']:.2f}x" for p in paths[1:])
        )


if __name__ == "__main__":
    main()
