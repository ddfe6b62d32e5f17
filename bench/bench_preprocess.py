"""Time Criteo preprocessing (--max-ind-range mode) on a synthetic raw file.

    python bench/bench_preprocess.py              # 2,000,000 lines, median of 3 runs
    python bench/bench_preprocess.py --quick      # a tiny smoke run for CI

Writes a raw Criteo-format file with Kaggle-like fields (missing values at Kaggle's
rates, heavy-tailed integers with a few negatives, Zipf-distributed 8-digit hex ids over
Kaggle's cardinalities), checks the first rows of the output against a plain-Python
transform, then runs the preprocessing in child processes (after a JIT warm-up) and
reports rows/s and peak resident memory (VmHWM) of the child.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from numbadlrm.kernels.jit import jit_serial

# Kaggle Criteo cardinalities of C1..C26 and rough missing rates
CARDINALITIES = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593,
                 3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105,
                 142572]  # fmt: skip
CAT_MISSING = [0.0, 0.0, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0, 0.0, 0.03, 0.0, 0.03, 0.0, 0.0,
               0.0, 0.03, 0.0, 0.0, 0.44, 0.44, 0.03, 0.76, 0.0, 0.03, 0.44, 0.44]  # fmt: skip
INT_MISSING = [0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22]


@jit_serial
def _write_int(out, pos, v):
    if v < 0:
        out[pos] = 45
        pos += 1
        v = -v
    n = 1
    x = v
    while x >= 10:
        x //= 10
        n += 1
    for k in range(n - 1, -1, -1):
        out[pos + k] = 48 + v % 10
        v //= 10
    return pos + n


@jit_serial
def _format_lines(out, labels, ints, cats):
    """Raw Criteo text of the rows: ints < -1000 and cats < 0 mean missing."""
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    pos = 0
    for i in range(labels.shape[0]):
        out[pos] = 48 + labels[i]
        pos += 1
        for j in range(ints.shape[1]):
            out[pos] = 9
            pos += 1
            if ints[i, j] > -1000:
                pos = _write_int(out, pos, ints[i, j])
        for j in range(cats.shape[1]):
            out[pos] = 9
            pos += 1
            v = cats[i, j]
            if v >= 0:
                for k in range(7, -1, -1):
                    out[pos + k] = hexdigits[v & 15]
                    v >>= 4
                pos += 8
        out[pos] = 10
        pos += 1
    return pos


def synthetic_block(rng: np.random.Generator, n: int) -> bytes:
    labels = (rng.random(n) < 0.25).astype(np.int64)
    ints = np.floor(rng.lognormal(1.5, 1.8, size=(n, 13))).astype(np.int64)
    ints[:, 1] -= (rng.random(n) < 0.05) * (ints[:, 1] + rng.integers(1, 4, n))  # I2 < 0
    ints[rng.random((n, 13)) < np.array(INT_MISSING)] = -(10**9)
    ranks = np.minimum(rng.zipf(1.15, size=(n, 26)), np.array(CARDINALITIES))
    cats = (ranks * 2654435761 + np.arange(26) * 40503) & 0xFFFFFFFF
    cats[rng.random((n, 26)) < np.array(CAT_MISSING)] = -1
    out = np.empty(n * 400, dtype=np.uint8)
    size = _format_lines(out, labels, ints, cats)
    return out[:size].tobytes()


def write_synthetic(path: Path, lines: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, lines, 200_000):
            f.write(synthetic_block(rng, min(200_000, lines - start)))


def python_transform(line: str, max_ind_range: int) -> tuple:
    fields = line.rstrip("\n").split("\t") + [""] * 40
    dense = [math.log(max(int(x), 0) + 1) if x else 0.0 for x in fields[1:14]]
    cat = [int(x, 16) % max_ind_range if x else 0 for x in fields[14:40]]
    return int(fields[0]), dense, cat


def validate(raw: Path, out: Path, max_ind_range: int, rows: int = 2000) -> None:
    from numbadlrm.data.dataset import ProcessedData

    data = ProcessedData(out)
    got = data.split("train").rows_slice(0, rows)
    with open(raw) as f:
        for i in range(rows):
            label, dense, cat = python_transform(f.readline(), max_ind_range)
            assert got.labels[i] == label, i
            np.testing.assert_allclose(got.dense[i], dense, rtol=1e-6)
            np.testing.assert_array_equal(got.categorical[i], cat)
    print(f"validated the first {rows} rows against a plain-Python transform")


def child(raw: str, out: str, max_ind_range: int, chunk_mb: int) -> None:
    """Runs in a fresh process: warm up the JIT on a tiny file, then time one preprocess."""
    from numbadlrm.data.criteo import PreprocessOptions, preprocess

    opts = PreprocessOptions(max_ind_range=max_ind_range, chunk_bytes=chunk_mb << 20)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny.txt"
        write_synthetic(tiny, 100)
        preprocess([tiny], Path(tmp) / "out", opts, progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    meta = preprocess([raw], out, opts, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = sum(meta["rows"].values())
    hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")).split()[1]
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rows": rows, "vmhwm_kib": int(hwm)}))


def run_child(raw: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(raw), str(out),
           "--max-ind-range", str(args.max_ind_range),
           "--chunk-mb", str(args.chunk_mb)]  # fmt: skip
    if out.exists():
        for p in out.rglob("*"):
            if p.is_file():
                p.unlink()
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 lines, one run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-ind-range", type=int, default=10_000_000)
    ap.add_argument("--chunk-mb", type=int, default=8)
    ap.add_argument("--child", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.max_ind_range, args.chunk_mb)
        return
    if args.quick:
        args.lines, args.runs = 20_000, 1
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}")
    print(f"python {platform.python_version()} numpy {np.__version__} numba {numba.__version__}")
    print(f"numba threads: {numba.get_num_threads()}, chunk {args.chunk_mb} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        t0 = time.perf_counter()
        write_synthetic(raw, args.lines)
        size = raw.stat().st_size
        print(f"synthetic file: {args.lines:,} lines, {size / 1e6:.0f} MB "
              f"({time.perf_counter() - t0:.1f} s to write)")  # fmt: skip
        out = Path(tmp) / "out"
        results = [run_child(raw, out, args) for _ in range(args.runs)]
        validate(raw, out, args.max_ind_range, min(2000, args.lines))
    seconds = statistics.median(r["seconds"] for r in results)
    rows = results[0]["rows"]
    peak = max(r["vmhwm_kib"] for r in results) / 1024
    times = ", ".join(f"{r['seconds']:.2f}s wall / {r['cpu']:.2f}s cpu" for r in results)
    print(f"runs: {times}")
    cpu = statistics.median(r["cpu"] for r in results)
    print(f"CPU cost: {rows / cpu:,.0f} rows per CPU-second (CPU time of all threads; "
          f"less sensitive to other load than wall time)")  # fmt: skip
    print(f"preprocess --max-ind-range: {rows / seconds:,.0f} rows/s, "
          f"{size / seconds / 1e6:.0f} MB/s (median of {len(results)})")  # fmt: skip
    print(f"peak RSS (VmHWM of the child process): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
