"""The linear layer on BLAS, called from inside Numba's thread pool: one thread, one call.

OpenBLAS threads its own GEMMs in its own pool. Next to Numba's pool that is a second set
of workers on the same cores, and at DLRM's layer sizes its hand-offs cost as much as
the arithmetic (B=128: 124 GFLOP/s from np.matmul on 2 threads). Here every pass is one
Numba parallel loop with one iteration per thread, and each iteration makes one
single-threaded ``sgemm`` call on its share of the work, then runs the layer's epilogue
(bias, ReLU, ReLU mask, bias gradient) on the rows it has just written, while they are
in cache. There is one pool, and the threads never wait on each other inside a pass
(faster than np.matmul's own threads at every config shape: bench/RESULTS.md).

How each pass is shared (W is (O, I), x (B, I), y and dz (B, O); shape letters as in
numbadlrm.config):

    forward           y[rows]  = x[rows] W^T + b, ReLU          rows of the batch
    mask + data       dz[rows] = dy[rows] [y > 0];  dx[rows] = dz[rows] W,
                      then dx[rows] [x > 0] (the mask of the layer below)
    weight            dW[part] = dz^T x over all rows, db       the longer side of dW:
                                                                 columns (I) or rows (O)
    weight + SGD      W[part] -= lr dz^T x (one sgemm, beta = 1), b[part] -= lr db[part]

The logit layer (O = 1) is a matrix-vector product in every pass, and OpenBLAS runs an
N = 1 or M = 1 sgemm about 3x slower than a plain loop, so those passes are loops here.

so no thread ever writes what another writes, and every output element is computed by
one BLAS call. (Results can still differ in the last bits between thread counts:
OpenBLAS picks its kernel, and with it the order of a sum, from the shape of each
thread's share.) ``threads`` is the caller's
``numba.get_num_threads()``: passed in, not read inside, so that the kernels cache.

The BLAS is OpenBLAS from the ``scipy-openblas32`` package (the build SciPy and NumPy
ship, as a package of its own): ``sgemm`` is looked up in that library and handed to LLVM
as a named symbol, so the kernels still cache. It is a copy of OpenBLAS separate from
NumPy's and SciPy's, with its own thread count, which importing this module sets to one
(it is called from every Numba thread at once), while np.matmul keeps its threads. Its
version matters (0.3.34's weight pass is 5-10% faster than 0.3.30's). Measurements:
bench/RESULTS.md, "blas backend".
"""

from __future__ import annotations

import ctypes
import os

import llvmlite.binding
import numba
import numpy as np
import scipy_openblas32
from numba import prange, types

from ..jit import jit_parallel, jit_serial
from ..registry import register
from .epilogue import bias_relu, column_sums, logit_rows, outer_rows, relu_mask_row

LIBRARY = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))
_LIB = ctypes.CDLL(LIBRARY)  # RTLD_LOCAL: its symbols never mix with NumPy's or SciPy's copy

# Fortran sgemm, all 13 arguments by address. Addresses travel as intp: on x86-64 and
# aarch64 a pointer and a 64-bit integer are passed the same way.
_SYMBOL = "numbadlrm_openblas_sgemm"
_ADDRESS = ctypes.cast(_LIB.scipy_sgemm_, ctypes.c_void_p).value
if numba.config.DISABLE_JIT:  # plain Python (debugging): call it through ctypes
    _sgemm = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))(_ADDRESS)
else:
    llvmlite.binding.add_symbol(_SYMBOL, _ADDRESS)
    _sgemm = types.ExternalFunction(_SYMBOL, types.void(*([types.intp] * 13)))

_N, _T = ord("N"), ord("T")
NO_DX = np.empty((0, 0), np.float32)  # the dx argument of the first layer, which has none


def single_thread_blas() -> int:
    """Limit this module's OpenBLAS to one thread; returns its thread count after."""
    _LIB.scipy_openblas_set_num_threads(1)
    return int(_LIB.scipy_openblas_get_num_threads())


def blas_config() -> str:
    """The library's build line, e.g. "OpenBLAS 0.3.34 DYNAMIC_ARCH ... SkylakeX"."""
    _LIB.scipy_openblas_get_config.restype = ctypes.c_char_p
    _LIB.scipy_openblas_get_corename.restype = ctypes.c_char_p
    config = _LIB.scipy_openblas_get_config().decode()
    return f"{config} (core {_LIB.scipy_openblas_get_corename().decode()})"


single_thread_blas()


@jit_serial
def sgemm_rm(trans_a, trans_b, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    """Row-major C[m, n] = alpha op(A) op(B) + beta C on one thread.

    A, B, C are float32 arrays, each addressed from element offset ``*_off`` with leading
    dimension ``ld*`` (any C-contiguous array, or a block of rows or columns of one);
    op(X) = X^T when ``trans_*``. Row-major C is column-major C^T = op(B)^T op(A)^T, so
    the Fortran call swaps the operands.
    """
    if m == 0 or n == 0:
        return
    flags = np.empty(2, np.uint8)
    flags[0] = _T if trans_b else _N
    flags[1] = _T if trans_a else _N
    dims = np.empty(6, np.int32)
    dims[0] = n
    dims[1] = m
    dims[2] = k
    dims[3] = ldb
    dims[4] = lda
    dims[5] = ldc
    scal = np.empty(2, np.float32)
    scal[0] = alpha
    scal[1] = beta
    d = dims.ctypes.data
    s = scal.ctypes.data
    _sgemm(
        flags.ctypes.data,
        flags.ctypes.data + 1,
        d,
        d + 4,
        d + 8,
        s,
        b.ctypes.data + 4 * b_off,
        d + 12,
        a.ctypes.data + 4 * a_off,
        d + 16,
        s + 4,
        c.ctypes.data + 4 * c_off,
        d + 20,
    )


@jit_serial
def _share(n, t, nt):
    """[start, stop) of part t of range(n) cut into nt near-equal parts."""
    return t * n // nt, (t + 1) * n // nt


@jit_serial
def _parts(threads, n):
    return max(1, min(threads, n))


# ---------------------------------------------------------------------- forward


@jit_parallel
def forward(y, x, W, b, relu, threads):
    """y (B, O) = x (B, I) W^T + b, then max(y, 0) if relu; rows of the batch per thread."""
    B, I = x.shape
    O = W.shape[0]
    nt = _parts(threads, B)
    for t in prange(nt):
        r0, r1 = _share(B, t, nt)
        if O == 1:  # the logit layer: a matrix-vector product, slow as an N=1 sgemm
            logit_rows(y, x, W[0], r0, r1)
        else:
            sgemm_rm(False, True, r1 - r0, O, I, 1.0, x, r0 * I, I, W, 0, I, 0.0, y, r0 * O, O)
        bias_relu(y, b, r0, r1, 0, O, relu)


# --------------------------------------------------------------------- backward


@jit_parallel
def backward_data(dx, dy, y, W, x, relu, with_dx, mask_dx, threads):
    """dy <- dz = dy [y > 0] if relu (in place), and dx (B, I) = dz W if with_dx, then
    dx <- dx [x > 0] if mask_dx: the ReLU backward of the layer below (whose output is
    this layer's input x), on each thread's rows while they are in cache. It also brings
    x into cache for the weight pass that follows, which reads x (RESULTS.md)."""
    B, O = dy.shape
    I = W.shape[1]
    nt = _parts(threads, B)
    for t in prange(nt):
        r0, r1 = _share(B, t, nt)
        if relu:
            for i in range(r0, r1):
                relu_mask_row(dy[i], y[i])
        if with_dx:
            if O == 1:  # the logit layer: an outer product, which BLAS runs as a slow K=1 GEMM
                outer_rows(dx, dy, W[0], r0, r1)
            else:
                m = r1 - r0
                sgemm_rm(False, False, m, I, O, 1.0, dy, r0 * O, O, W, 0, I, 0.0, dx, r0 * I, I)
            if mask_dx:
                for i in range(r0, r1):
                    relu_mask_row(dx[i], x[i])


@jit_serial
def _logit_weight_grad(dz, x, i0, i1):
    """dW[0, i0:i1] of an O = 1 layer, sum_r dz[r, 0] x[r, i0:i1] (slow as an M=1 sgemm)."""
    g = np.zeros(i1 - i0, np.float32)
    for r in range(x.shape[0]):
        d = dz[r, 0]
        xr = x[r, i0:i1]
        for j in range(i1 - i0):
            g[j] += d * xr[j]
    return g


@jit_serial
def _put(out, g, alpha, update):
    """out = out + alpha g if update else alpha g, elementwise."""
    for j in range(out.shape[0]):
        out[j] = out[j] + alpha * g[j] if update else alpha * g[j]


@jit_parallel
def _weight_pass(C, bias, dz, x, alpha, update, threads):
    """C (O, I) = alpha dz^T x and bias (O,) = alpha sum_rows dz, or, with ``update``, both
    added to what C and bias hold: the longer side of C shared between the threads (each
    thread's sgemm then gets the squarer block), and a share of the bias each.

    Rows also where I is too narrow to share (I < 16 per thread: the 13-wide first bottom
    layer) and O is not. (Which side is faster: RESULTS.md, "blas backend".)
    """
    B, O = dz.shape
    I = x.shape[1]
    beta = 1.0 if update else 0.0
    nt = _parts(threads, max(O, I))
    by_rows = O >= 16 * nt and (I < 16 * nt or O > I)
    for t in prange(nt):
        o0, o1 = _share(O, t, nt)  # this thread's part of the bias, either way
        if by_rows:
            sgemm_rm(True, False, o1 - o0, I, B, alpha, dz, o0, O, x, 0, I, beta, C, o0 * I, I)
        else:
            i0, i1 = _share(I, t, nt)
            if O == 1:
                _put(C[0, i0:i1], _logit_weight_grad(dz, x, i0, i1), alpha, update)
            else:
                sgemm_rm(True, False, O, i1 - i0, B, alpha, dz, 0, O, x, i0, I, beta, C, i0, I)
        if o1 > o0:
            db = np.empty(o1 - o0, np.float32)
            column_sums(db, dz, o0, o1)
            _put(bias[o0:o1], db, alpha, update)


@jit_serial
def backward_weight(dW, db, dz, x, threads):
    """dW (O, I) = dz^T x and db (O,) = sum over rows of dz (see :func:`_weight_pass`)."""
    _weight_pass(dW, db, dz, x, np.float32(1.0), False, threads)


@jit_serial
def backward_weight_sgd(W, b, dz, x, lr, threads):
    """W -= lr dz^T x and b -= lr sum_rows dz, in place: the weight pass fused with SGD.

    One sgemm with alpha = -lr and beta = 1 on each thread's part of W (shared as in
    :func:`backward_weight`), so no gradient of W is ever stored. The layer's backward-data
    pass must have read W before this runs.
    """
    _weight_pass(W, b, dz, x, -lr, True, threads)


# ----------------------------------------------------------------- registry
# The ops' calling conventions (numbadlrm.kernels.registry) over the kernels above: the
# thread count is read here, outside the kernels, so that they cache.


def forward_entry(y, x, W, b, relu):
    forward(y, x, W, b, relu, numba.get_num_threads())


def backward_data_entry(dx, dy, y, W, x, relu, mask_dx):
    has_dx = dx is not None
    dx_ = dx if has_dx else NO_DX
    backward_data(dx_, dy, y, W, x, relu, has_dx, mask_dx and has_dx, numba.get_num_threads())


def backward_weight_entry(dW, db, dz, x):
    backward_weight(dW, db, dz, x, numba.get_num_threads())


def backward_weight_sgd_entry(W, b, dz, x, lr):
    backward_weight_sgd(W, b, dz, x, np.float32(lr), numba.get_num_threads())


_WHAT = "one single-threaded OpenBLAS sgemm per Numba thread, epilogue fused after it"
register("linear_forward", "blas", forward_entry, description=_WHAT)
register("linear_backward_data", "blas", backward_data_entry, description=_WHAT)
register(
    "linear_backward_weight",
    "blas",
    backward_weight_entry,
    description=_WHAT,
    extras={"sgd": backward_weight_sgd_entry},
)
