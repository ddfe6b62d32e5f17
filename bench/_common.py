"""Helpers shared by the bench scripts: threads, machine header, timing, machine limits.

Every bench prints :func:`header` first, sets threads with :func:`set_threads` (Numba and
BLAS together), validates against numbadlrm.reference, then times with
:func:`median_times`, which runs the candidates round-robin so that a neighbour's load on
a shared machine hits all of them alike, and reports medians next to :func:`stream_copy_gbs`
(memory bandwidth) or :func:`blas_sgemm_gflops` (compute).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable

import numba
import numpy as np
from threadpoolctl import threadpool_info

from numbadlrm.kernels.loader import ENVIRONMENT
from numbadlrm.runtime.threads import set_num_threads


def set_threads(n: int) -> None:
    """n threads in Numba and NumPy's BLAS, the blas backend's OpenBLAS kept at one."""
    set_num_threads(n)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def header(title: str) -> str:
    """Machine, versions and thread counts, one per line."""
    from numbadlrm.kernels.gemm.blas import LIBRARY

    own = os.path.realpath(LIBRARY)
    blas = [
        f"{i['internal_api']} {i['version']} ({i['num_threads']} threads"
        + (", the blas backend's)" if os.path.realpath(i["filepath"]) == own else ")")
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    lines = [
        f"# {title}",
        f"machine:  {cpu_model()}, {os.cpu_count()} logical CPUs",
        f"versions: python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}",
        f"threads:  numba {numba.get_num_threads()}, blas: {', '.join(blas) or 'none found'}",
    ]
    return "\n".join(lines)


def median_times(
    fns: dict[str, Callable[[], object]], repeat: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (s) of each fn over `repeat` calls, after `warmup` calls (JIT, caches).

    The candidates take turns in blocks of 3 calls so that a neighbour's load on a shared
    machine hits all of them alike. The first call of each block is not counted: on a
    small machine the previous candidate's thread pool (OpenBLAS, OpenMP) still spins for
    a while after it returns and would be charged to the next one.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    while min(len(s) for s in samples.values()) < repeat:
        for name, fn in fns.items():
            fn()
            for _ in range(2):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {name: float(np.median(s)) for name, s in samples.items()}


@numba.njit(parallel=True, cache=True)
def stream_copy(dst, src):
    """STREAM's copy on every Numba thread (np.copyto would use one core only)."""
    for i in numba.prange(src.shape[0]):  # element i written once: race-free
        dst[i] = src[i]


def stream_copy_gbs(n_bytes: int = 256 << 20, repeat: int = 5) -> float:
    """STREAM-copy bandwidth (GB/s, read + write counted) over n_bytes, all Numba threads."""
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    t = median_times({"copy": lambda: stream_copy(dst, src)}, repeat=repeat, warmup=1)["copy"]
    return 2 * src.nbytes / t / 1e9


def blas_sgemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    """float32 n x n x n GEMM throughput (GFLOP/s) at the current thread count: the faster of
    np.matmul (NumPy's OpenBLAS, its own threads) and the blas backend's forward (one
    single-threaded OpenBLAS sgemm per Numba thread on its rows), timed side by side."""
    from numbadlrm.kernels.gemm import blas

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    bias = np.zeros(n, np.float32)
    threads = numba.get_num_threads()
    times = median_times(
        {
            "np.matmul": lambda: np.matmul(a, b, out=c),
            "blas backend": lambda: blas.forward(c, a, b, bias, False, threads),
        },
        repeat=repeat,
    )
    return 2 * n**3 / min(times.values()) / 1e9


def versions_of(text: str, ops: tuple[str, ...]) -> list[str]:
    """Parse --versions "v1,v2" and check each is registered for every op in ops (exits
    with the registered choices otherwise)."""
    import sys

    from numbadlrm.kernels import registry

    names = [v.strip() for v in text.split(",") if v.strip()]
    for op in ops:
        known = registry.versions(op)
        missing = [v for v in names if v not in known]
        if missing:
            sys.exit(f"--versions: {op} has no version {missing}; it has {list(known)}")
    if not names:
        sys.exit("--versions: give at least one version")
    return names


def bf16_gemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    """bf16 n x n x n GEMM throughput (GFLOP/s, fp32 accumulation) at the current thread
    count: the faster of numbadlrm's vdpbf16ps kernel (kernels/gemm_bf16.linear_forward,
    fp32 output) and PyTorch's bf16 matmul (oneDNN) where torch is installed, timed side by
    side: the bf16 analogue of :func:`blas_sgemm_gflops`."""
    from numbadlrm.kernels.gemm import bf16 as gemm_bf16
    from numbadlrm.kernels.gemm.dpbf16 import default_dot
    from numbadlrm.layers import bf16

    rng = np.random.default_rng(0)
    a16 = bf16.to_bf16(rng.standard_normal((n, n), dtype=np.float32))
    w = bf16.pack_weight(bf16.to_bf16(rng.standard_normal((n, n), dtype=np.float32)))
    c = np.empty((n, n), np.float32)
    bias = np.zeros(n, np.float32)
    fns = {
        "numbadlrm": lambda: gemm_bf16.linear_forward(
            c, gemm_bf16.NONE_U16, a16, w.forward, bias, False, gemm_bf16.TASKS, default_dot()
        )
    }
    try:
        import torch

        ta = torch.randn(n, n, dtype=torch.bfloat16)
        tb = torch.randn(n, n, dtype=torch.bfloat16)
        fns["torch"] = lambda: torch.matmul(ta, tb)
    except ImportError:
        pass
    times = median_times(fns, repeat=repeat)
    return 2 * n**3 / min(times.values()) / 1e9


def add_kernel_module_option(parser) -> None:
    """``--kernel-module PATH`` (repeatable), as on ``numbadlrm train`` and ``kernels``."""
    parser.add_argument(
        "--kernel-module",
        action="append",
        metavar="PATH",
        help="import kernel modules from this .py file or folder (overrides "
        "$NUMBADLRM_KERNEL_MODULES); their versions can then be timed",
    )


def use_kernel_modules(args) -> None:
    """Name --kernel-module's paths in $NUMBADLRM_KERNEL_MODULES, before the registry first
    loads: this process and any child a bench starts import them (the flag overrides the
    variable)."""
    if args.kernel_module:
        paths = [os.path.abspath(p) for p in args.kernel_module]
        os.environ[ENVIRONMENT] = os.pathsep.join(paths)
