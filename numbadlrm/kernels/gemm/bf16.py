"""The linear layer's three GEMMs in bf16 with fp32 accumulation, on the vdpbf16ps tile.

Shapes as kernels/gemm/fp32.py (W (O, I), x (B, I), y and dz (B, O)); bf16 arrays are uint16
(kernels/bf16.py), everything accumulated in fp32 by ``microkernel_bf16.tile``:

    forward           y  = x W^T + b, then max(y, 0) if relu     fp32 (B, O) and/or bf16
    backward_data     dx = dz W, then dx [x > 0] if mask_dx      fp32 (B, I) and/or bf16
    backward_weight   dW = dz^T x (fp32 (O, I)),  db = sum_b dz (fp32)
    weight + SGD      W (hi, lo) -= lr dW,  b -= lr db: split-SGD on the master weights

Each pass is C (M, N) = A (M, K) Bm (K, N) with A bf16 row-major (a k pair is one 32-bit
broadcast) and Bm packed in pairs of k (microkernel_bf16.py, packing in pack_bf16.py):

    pass       M  N  K    A                          Bm packed by
    forward    B  O  I    x as it lies               pack_rows(W): W's rows hold k = i
    data       B  I  O    dz as it lies              pack_cols(W): W's columns hold k = o
    weight     O  I  B    pair_rows(dz): dz^T        pack_cols(x): x's columns hold k = b

W's two packings depend only on W, so they are made once per weight update (their cost
is the caller's, once per step). The weight pass's A = dz^T needs pairs of b in 32 bits:
``pair_rows`` interleaves dz's rows 2kk and 2kk + 1 ((B/2, O + pad) uint32, one
streaming pass) and the tile reads dz^T's row o through byte strides (4, 4 (O + pad)),
no transpose (a 16-bit transpose of dz took 1.8 ms at 2048 x 1024, this pass 0.4, at
one thread; MR-row micro-panels, GotoBLAS's A packing, 1.1-1.4 ms for the same tile
speed). The pad keeps those rows off a 4 KiB stride (see pairs_width). The pass packs x
too, every call (both costs are inside it). With I narrow (< NR / 2) and O wide, it
forms dW^T = x^T dz instead (A = pair_rows(x), Bm = pack_cols(dz)), so a tile's 64
columns are O's, as gemm.py v4.

There is no k blocking: one tile runs the whole K, so a B panel (K x 128 bytes, 128 KiB
at K = 1024) stays in L2 and an A sliver (MR x K x 2 bytes) in L1 while a task's row
tiles sweep it; fine for K up to a few thousand (DLRM's widths). C is cut into ``tasks``
blocks of rows (or of columns when there are few rows); each task writes only its block.
A tile lands in the task's own MR x NR fp32 scratch, and the epilogue (bias, ReLU, mask,
rounding to bf16, the SGD update) runs on it while it is in L1 (the plain weight pass
stores its tiles into dW directly). Every element is one tile's sum over the whole K, so
results do not depend on the task or thread count. O = 1 (the logit layer) has plain
loops for all three passes (``logit_forward``, ``logit_backward_data``, and inside the
weight pass): a tile would compute 64 columns to keep one.

Measured (bench/bench_gemm_bf16.py, 2 threads, all passes of configs b and c summed,
packing included): 2.06x and 2.01x the fp32 blas backend, 0.98x and 0.97x torch's bf16
matmul; the 1024-wide passes at 87-92% of vdpbf16ps's measured peak (bench/RESULTS.md).

Every tile kernel takes the form of vdpbf16ps last (``dot``: microkernel_bf16.VDPBF16PS
or EMULATED, two fp32 FMAs for a CPU without AVX512-BF16); the registry has both as
versions v1 and v1-emu of each op, v1 the default where the CPU has the instruction.

Every kernel has a parallel entry (tasks on Numba's threads) and a ``*_serial`` entry
(the same tasks on the calling thread). Outputs first; an output not wanted is passed
as an empty (0, 0) array (``NONE_F32``, ``NONE_U16``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..bf16 import bf16_value, round_bf16
from ..jit import jit_parallel, jit_serial
from ..registry import register

# the passes' calling convention: NONE_* mark an output not wanted, TASKS blocks per call
from .bf16_blocks import (  # noqa: F401
    NONE_F32,
    NONE_F32_1D,
    NONE_U16,
    TASKS,
    _block,
    _store_tile,
)
from .bf16_weight import (  # noqa: F401  (the weight pass's entries, by this module's name)
    linear_backward_weight,
    linear_backward_weight_serial,
    linear_backward_weight_split_sgd,
    linear_backward_weight_split_sgd_packed,
    linear_backward_weight_split_sgd_packed_serial,
    linear_backward_weight_split_sgd_serial,
)
from .dpbf16 import DOTS
from .tile_bf16 import MR, NR, tile_out

# ------------------------------------------------------------- forward, data


@jit_serial
def _forward_task(y, y16, x16, Wf, b, relu, t, tasks, dot):
    """Task t's block of y = x W^T + b (ReLU), Wf = pack_rows(W); each tile's epilogue
    runs on its accumulators (microkernel_bf16.tile_out)."""
    B, K = x16.shape
    i0, i1, j0, j1 = _block(t, tasks, B, b.shape[0])
    panel = Wf.shape[1] * NR
    for jj in range(j0, j1, NR):  # one B panel (L2) swept by all the task's row tiles
        n = min(NR, j1 - jj)
        for ii in range(i0, i1, MR):
            m = min(MR, i1 - ii)
            p_off = (jj // NR) * panel
            tile_out(
                K,
                x16,
                2 * ii * K,
                2 * K,
                4,
                Wf,
                p_off,
                y,
                y16,
                ii,
                jj,
                b,
                relu,
                NONE_U16,
                False,
                m,
                n,
                dot,
            )


@jit_parallel
def linear_forward(y, y16, x16, Wf, b, relu, tasks, dot):
    """y (B, O) fp32 and/or y16 (B, O) bf16 = x16 (B, I) W^T + b, ReLU if relu; Wf =
    pack_rows(W16) (panels_shape(O, I)); b (O,) fp32; dot: microkernel_bf16.VDPBF16PS or
    EMULATED (as every tile kernel here)."""
    for t in prange(tasks):  # task t writes only its block of y and y16
        _forward_task(y, y16, x16, Wf, b, relu, t, tasks, dot)


@jit_serial
def linear_forward_serial(y, y16, x16, Wf, b, relu, tasks, dot):
    for t in range(tasks):
        _forward_task(y, y16, x16, Wf, b, relu, t, tasks, dot)


@jit_serial
def _logit_rows(y, y16, x16, w16, b, relu, r0, r1):
    """y[r] = x16[r] . w16[0] + b[0] (ReLU) for r0 <= r < r1: an O = 1 layer's forward, a
    matrix-vector product (a tile would compute 64 columns to keep one)."""
    w = w16[0]
    for r in range(r0, r1):
        xr = x16[r]
        acc = np.float32(0.0)
        for k in range(x16.shape[1]):
            acc += bf16_value(xr[k]) * bf16_value(w[k])
        v = acc + b[0]
        v = max(v, np.float32(0.0)) if relu else v
        if y.shape[0] > 0:
            y[r, 0] = v
        if y16.shape[0] > 0:
            y16[r, 0] = round_bf16(v)


@jit_parallel
def logit_forward(y, y16, x16, w16, b, relu, tasks):
    """linear_forward for O = 1, from W16 (1, I) itself (no packing)."""
    B = x16.shape[0]
    for t in prange(tasks):  # task t writes only rows [t B / tasks, (t + 1) B / tasks)
        _logit_rows(y, y16, x16, w16, b, relu, t * B // tasks, (t + 1) * B // tasks)


@jit_serial
def logit_forward_serial(y, y16, x16, w16, b, relu, tasks):
    _logit_rows(y, y16, x16, w16, b, relu, 0, x16.shape[0])


@jit_serial
def _outer_rows(dx, dx16, dz16, w16, x16, mask_dx, scratch, r0, r1):
    """dx[r] = dz16[r, 0] w16[0] (times [x16[r] > 0]) for r0 <= r < r1: an O = 1 layer's
    dx = dz W, an outer product (a K = 1 tile per 6 x 64 block is all epilogue);
    scratch (2, I) float32."""
    I = w16.shape[1]
    w, row = scratch[0], scratch[1]
    for i in range(I):
        w[i] = bf16_value(w16[0, i])
    for r in range(r0, r1):
        d = bf16_value(dz16[r, 0])
        for i in range(I):
            row[i] = d * w[i]
        if mask_dx:
            xr = x16[r]
            for i in range(I):
                row[i] = row[i] if bf16_value(xr[i]) > 0 else np.float32(0.0)
        _store_tile(dx, dx16, row.reshape((1, I)), r, 1, 0, I)


@jit_parallel
def logit_backward_data(dx, dx16, dz16, w16, x16, mask_dx, tasks):
    """linear_backward_data for O = 1, from W16 (1, I) itself (no packing)."""
    B = dz16.shape[0]
    scratch = np.empty((tasks, 2, w16.shape[1]), np.float32)
    for t in prange(tasks):  # task t writes only rows [t B / tasks, (t + 1) B / tasks)
        r0, r1 = t * B // tasks, (t + 1) * B // tasks
        _outer_rows(dx, dx16, dz16, w16, x16, mask_dx, scratch[t], r0, r1)


@jit_serial
def logit_backward_data_serial(dx, dx16, dz16, w16, x16, mask_dx, tasks):
    scratch = np.empty((2, w16.shape[1]), np.float32)
    _outer_rows(dx, dx16, dz16, w16, x16, mask_dx, scratch, 0, dz16.shape[0])


@jit_serial
def _data_task(dx, dx16, dz16, Wd, x16, mask_dx, t, tasks, dot):
    """Task t's block of dx = dz W (masked by [x > 0]), Wd = pack_cols(W)."""
    B, K = dz16.shape
    i0, i1, j0, j1 = _block(t, tasks, B, max(dx.shape[1], dx16.shape[1]))
    panel = Wd.shape[1] * NR
    for jj in range(j0, j1, NR):
        n = min(NR, j1 - jj)
        for ii in range(i0, i1, MR):
            m = min(MR, i1 - ii)
            p_off = (jj // NR) * panel
            tile_out(
                K,
                dz16,
                2 * ii * K,
                2 * K,
                4,
                Wd,
                p_off,
                dx,
                dx16,
                ii,
                jj,
                NONE_F32_1D,
                False,
                x16,
                mask_dx,
                m,
                n,
                dot,
            )


@jit_parallel
def linear_backward_data(dx, dx16, dz16, Wd, x16, mask_dx, tasks, dot):
    """dx (B, I) fp32 and/or dx16 (B, I) bf16 = dz16 (B, O) W, times [x16 > 0] if mask_dx
    (the ReLU backward of the layer below, whose output x16 is); Wd = pack_cols(W16)
    (panels_shape(I, O))."""
    for t in prange(tasks):  # task t writes only its block of dx and dx16
        _data_task(dx, dx16, dz16, Wd, x16, mask_dx, t, tasks, dot)


@jit_serial
def linear_backward_data_serial(dx, dx16, dz16, Wd, x16, mask_dx, tasks, dot):
    for t in range(tasks):
        _data_task(dx, dx16, dz16, Wd, x16, mask_dx, t, tasks, dot)


# ----------------------------------------------------------------- registry
# The ops' entries take W as a numbadlrm.layers.bf16.PackedWeight (w16 (O, I), forward =
# pack_rows(w16), data = pack_cols(w16)); an O = 1 layer runs the logit loops on w16.


def _forward_entry(serial: bool, dot):
    def forward(y, y16, x16, W, b, relu):
        dot.require()
        if W.w16.shape[0] == 1:
            (logit_forward_serial if serial else logit_forward)(y, y16, x16, W.w16, b, relu, TASKS)
        else:
            fn = linear_forward_serial if serial else linear_forward
            fn(y, y16, x16, W.forward, b, relu, TASKS, dot)

    return forward


def _data_entry(serial: bool, dot):
    def backward_data(dx, dx16, dz16, W, x16, mask_dx):
        dot.require()
        if W.w16.shape[0] == 1:
            fn = logit_backward_data_serial if serial else logit_backward_data
            fn(dx, dx16, dz16, W.w16, x16, mask_dx, TASKS)
        else:
            fn = linear_backward_data_serial if serial else linear_backward_data
            fn(dx, dx16, dz16, W.data, x16, mask_dx, TASKS, dot)

    return backward_data


def _weight_entries(dot):
    def weight(dW, db, dz16, x16):
        dot.require()
        linear_backward_weight(dW, db, dz16, x16, numba.get_num_threads(), dot)

    def weight_serial(dW, db, dz16, x16):
        dot.require()
        linear_backward_weight_serial(dW, db, dz16, x16, 1, dot)

    def split_sgd(W, w_lo, b_hi, b_lo, dz16, x16, lr):
        dot.require()
        threads = numba.get_num_threads()
        linear_backward_weight_split_sgd_packed(
            W.w16, w_lo, b_hi, b_lo, W.forward, W.data, dz16, x16, lr, threads, dot
        )

    def split_sgd_serial(W, w_lo, b_hi, b_lo, dz16, x16, lr):
        dot.require()
        linear_backward_weight_split_sgd_packed_serial(
            W.w16, w_lo, b_hi, b_lo, W.forward, W.data, dz16, x16, lr, 1, dot
        )

    return weight, weight_serial, {"split_sgd": split_sgd, "split_sgd_serial": split_sgd_serial}


# v1 on vdpbf16ps, v1-emu on its emulation (microkernel_bf16.DOTS): the same kernels, each
# compiled for its form; the default is v1 where the CPU has AVX512-BF16, else v1-emu
for _dot in DOTS:
    _what = f"6x64 {_dot.what} tile, whole-K, epilogue on an L1 scratch tile; O = 1: plain loops"
    register(
        "bf16_linear_forward",
        _dot.version,
        _forward_entry(False, _dot),
        _forward_entry(True, _dot),
        _what,
        default=_dot.is_default,
    )
    register(
        "bf16_linear_backward_data",
        _dot.version,
        _data_entry(False, _dot),
        _data_entry(True, _dot),
        _what,
        default=_dot.is_default,
    )
    _weight, _weight_serial, _extras = _weight_entries(_dot)
    register(
        "bf16_linear_backward_weight",
        _dot.version,
        _weight,
        _weight_serial,
        f"pairs dz's rows and packs x (one region), then the {_dot.what} tiles; split_sgd: "
        "each tile applied from L1",
        default=_dot.is_default,
        extras=_extras,
    )
