"""The linear layer (layers/linear.py) on its --gemm backends against numbadlrm.reference:
masks, the first layer's missing dx, the fused SGD, thread counts, bad input, and the
"auto" rule. Every kernel version of the three passes is checked by tests/test_registry.py
(numbadlrm.kernels.checks.ops, whose GEMM tolerance these tests share)."""

from __future__ import annotations

import os

import numba
import numpy as np
import pytest

from numbadlrm import reference
from numbadlrm.kernels.checks.ops import assert_gemm_close, check_linear_forward, linear_inputs
from numbadlrm.kernels.gemm import auto as linear_auto
from numbadlrm.kernels.gemm import blas, epilogue
from numbadlrm.layers import linear

EPS = float(np.finfo(np.float32).eps)
ODD_SHAPES = [(b, i, o) for b in (1, 7, 129) for i in (1, 13, 100) for o in (1, 17, 64)]


def check_backward(dx, dW, db, dz, x, y, W, dy, relu):
    """dz: the kernel's masked dy; compared with the oracle's backward from dy and y."""
    x64, W64, y64, dy64 = (a.astype(np.float64) for a in (x, W, y, dy))
    dx_ref, dW_ref, db_ref = reference.linear_backward(dy64, (x64, W64, y64, relu))
    want_dz = dy64 * (y64 > 0) if relu else dy64
    np.testing.assert_array_equal(dz, want_dz.astype(np.float32))
    abs_dz = np.abs(want_dz)
    B = x.shape[0]
    if dx is not None:
        assert_gemm_close(dx, dx_ref, abs_dz, np.abs(W64), W.shape[0], "dx")
    assert_gemm_close(dW, dW_ref, abs_dz.T, np.abs(x64), B, "dW")
    assert_gemm_close(db, db_ref, abs_dz.T, np.ones((B,)), B, "db")


def outputs(B, I, O):
    """NaN-filled outputs, so that an entry a kernel forgets to write fails the check."""
    return (
        np.full((B, O), np.nan, np.float32),
        np.full((B, I), np.nan, np.float32),
        np.full((O, I), np.nan, np.float32),
        np.full(O, np.nan, np.float32),
    )


# ---------------------------------------------------------------------- layer API


@pytest.mark.parametrize("backend", linear.BACKENDS)
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize(("B", "I", "O"), ODD_SHAPES)
def test_layer_matches_reference(backend, relu, B, I, O):
    rng = np.random.default_rng([B, I, O])
    x, W, b, y_in, dy = linear_inputs(rng, B, I, O)
    y, dx, dW, db = outputs(B, I, O)
    linear.linear_forward(y, x, W, b, relu, backend)
    check_linear_forward(y, x, W, b, relu)
    dz = dy.copy()
    linear.linear_backward(dx, dW, db, dz, x, y_in, W, relu, backend)
    check_backward(dx, dW, db, dz, x, y_in, W, dy, relu)


@pytest.mark.parametrize("backend", linear.BACKENDS)
@pytest.mark.parametrize("sgd", [False, True], ids=["grads", "sgd"])
@pytest.mark.parametrize(("B", "I", "O"), [(129, 150, 130), (67, 40, 1), (3, 20, 5)])
def test_mask_dx_applies_the_layer_below_relu(backend, sgd, B, I, O):
    """mask_dx: dx comes out multiplied by [x > 0] (the layer below's ReLU backward, x its
    output), equal to the unmasked dx masked afterwards; dW, db, the update untouched."""
    rng = np.random.default_rng([4, B, I, O])
    x, W, b, y_in, dy = linear_inputs(rng, B, I, O)
    x = np.maximum(x, 0)  # the output of a ReLU: exact zeros where the mask cuts
    _, dx, dW, db = outputs(B, I, O)
    _, dx_m, dW_m, db_m = outputs(B, I, O)
    W_m, b_m = W.copy(), b.copy()
    if sgd:
        linear.linear_backward_sgd(dx, W, b, dy.copy(), x, y_in, True, 0.1, dW, db, backend)
        linear.linear_backward_sgd(
            dx_m, W_m, b_m, dy.copy(), x, y_in, True, 0.1, dW_m, db_m, backend, mask_dx=True
        )
        np.testing.assert_array_equal(W_m, W)
        np.testing.assert_array_equal(b_m, b)
    else:
        linear.linear_backward(dx, dW, db, dy.copy(), x, y_in, W, True, backend)
        linear.linear_backward(dx_m, dW_m, db_m, dy.copy(), x, y_in, W, True, backend, True, True)
        np.testing.assert_array_equal(dW_m, dW)
        np.testing.assert_array_equal(db_m, db)
    assert ((x == 0) & (dx != 0)).any()  # the mask has something to cut
    np.testing.assert_array_equal(dx_m, np.where(x > 0, dx, np.float32(0)))


@pytest.mark.parametrize("backend", linear.BACKENDS)
def test_backward_without_dx(backend):
    """The first layer passes dx=None: dW and db are still formed, nothing else written."""
    rng = np.random.default_rng(1)
    x, W, _, y, dy = linear_inputs(rng, 129, 13, 64)
    _, _, dW, db = outputs(129, 13, 64)
    dz = dy.copy()
    linear.linear_backward(None, dW, db, dz, x, y, W, True, backend)
    check_backward(None, dW, db, dz, x, y, W, dy, True)


def test_numba_layer_bitwise_across_threads(threads):
    """Blocks do not depend on the thread count, so neither do the sums' orders."""
    rng = np.random.default_rng(2)
    x, W, b, y_in, dy = linear_inputs(rng, 129, 150, 130)
    results = []
    for n in (1, threads):
        numba.set_num_threads(n)
        y, dx, dW, db = outputs(129, 150, 130)
        linear.linear_forward(y, x, W, b, True, "numba")
        linear.linear_backward(dx, dW, db, dy.copy(), x, y_in, W, True, "numba")
        results.append((y, dx, dW, db))
    for a, b_ in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize(
    ("B", "I", "O"),
    [(129, 150, 130), (67, 40, 3), (1, 5, 7), (2, 33, 1), (70, 13, 40), (90, 40, 100)],
)
def test_blas_layer_shares_work_at_any_thread_count(threads, B, I, O):
    """The blas backend's split of each pass across threads: rows of the batch, and dW by
    its longer side (columns when I >= O, rows when O > I or when the input is narrow,
    I < 16 per thread, at any O of at least 16 per thread); a batch smaller
    than the thread count. (Not bitwise across thread counts: OpenBLAS picks its kernel, and so
    its order of sums, from the shape of each thread's share.)"""
    rng = np.random.default_rng([2, B, I, O])
    x, W, b, y_in, dy = linear_inputs(rng, B, I, O)
    y, dx, dW, db = outputs(B, I, O)
    linear.linear_forward(y, x, W, b, True, "blas")
    check_linear_forward(y, x, W, b, True)
    dz = dy.copy()
    linear.linear_backward(dx, dW, db, dz, x, y_in, W, True, "blas")
    check_backward(dx, dW, db, dz, x, y_in, W, dy, True)


@pytest.mark.parametrize("backend", ["numba", "blas"])
@pytest.mark.parametrize(("B", "I", "O"), [(129, 150, 130), (67, 40, 3), (5, 1, 1), (33, 13, 70)])
def test_backward_sgd_matches_backward_then_sgd(threads, backend, B, I, O):
    """linear_backward_sgd = linear_backward, then W -= lr dW, b -= lr db; dx from the old W."""
    rng = np.random.default_rng([3, B, I, O])
    x, W, b, y_in, dy = linear_inputs(rng, B, I, O)
    lr = 0.05
    _, dx, dW, db = outputs(B, I, O)
    linear.linear_backward(dx, dW, db, dy.copy(), x, y_in, W, True, backend)
    W2, b2 = W.copy(), b.copy()
    _, dx2, dW2, db2 = outputs(B, I, O)
    linear.linear_backward_sgd(dx2, W2, b2, dy.copy(), x, y_in, True, lr, dW2, db2, backend)
    np.testing.assert_array_equal(dx2, dx)
    scale = lr * (np.abs(dy).T @ np.abs(x)) * B * EPS  # the GEMM's rounding, times lr
    want = W - np.float32(lr) * dW
    np.testing.assert_array_less(np.abs(W2 - want), scale + 4 * EPS * np.abs(W))
    np.testing.assert_allclose(b2, b - np.float32(lr) * db, rtol=1e-6, atol=1e-6)
    # fused (blas, and the default Numba version): the gradient buffers are never written
    assert np.isnan(dW2).all() and np.isnan(db2).all()


def test_blas_backend_library_stays_single_threaded():
    """The blas backend calls its OpenBLAS from every Numba thread: it must stay at 1 thread,
    also after set_num_threads raises every BLAS's threads (threadpoolctl finds it too)."""
    from threadpoolctl import threadpool_info

    from numbadlrm.runtime import threads as threads_module

    assert blas.single_thread_blas() == 1
    old = numba.get_num_threads()
    try:
        threads_module.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        threads = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
        assert threads[os.path.realpath(blas.LIBRARY)] == 1
        assert blas._LIB.scipy_openblas_get_num_threads() == 1
    finally:
        threads_module.set_num_threads(old)
    assert "OpenBLAS" in blas.blas_config()


def test_bad_backend_is_named():
    x, W, b, y, dy = linear_inputs(np.random.default_rng(3), 2, 3, 4)
    with pytest.raises(ValueError, match="'cuda'"):
        linear.linear_forward(np.empty_like(y), x, W, b, True, "cuda")
    with pytest.raises(ValueError, match="'gpu'"):
        linear.linear_backward(None, np.empty_like(W), np.empty_like(b), dy, x, y, W, True, "gpu")


def test_bad_shapes_and_dtypes_are_rejected():
    x, W, b, y, _ = linear_inputs(np.random.default_rng(4), 2, 3, 4)
    with pytest.raises(ValueError, match="y"):
        linear.linear_forward(np.empty((2, 5), np.float32), x, W, b, True, "numba")
    with pytest.raises(ValueError, match="x"):
        linear.linear_forward(y, x.astype(np.float64), W, b, True, "numba")
    with pytest.raises(ValueError, match="W"):
        linear.linear_forward(y, x, np.asfortranarray(W), b, True, "numba")


def test_choose_backend_is_deterministic():
    shapes = [
        (b, i, o)
        for b in (1, 128, 2048)
        for i in (1, 13, 100, 512, 1024)
        for o in (1, 16, 64, 256, 1024)
    ]
    for isa in (None, "avx512", "avx2", "neon", "vec128"):
        for pass_ in linear_auto.PASSES:
            first = [linear_auto.choose_backend(*s, pass_, isa) for s in shapes]
            assert set(first) <= {"v4", "v5", "blas"}
            assert first == [linear_auto.choose_backend(*s, pass_, isa) for s in shapes]
    with pytest.raises(ValueError, match="'sideways'"):
        linear_auto.choose_backend(2, 3, 4, "sideways")


def test_choose_backend_is_keyed_by_isa():
    """The rule of the ISA Numba compiles for; ISAs without measurements run blas."""
    from numbadlrm.kernels.gemm.tile import TARGET

    assert linear_auto.choose_backend(128, 512, 256, "forward", "avx512") == "v4"
    assert linear_auto.choose_backend(2048, 1024, 1024, "forward", "avx512") == "blas"
    assert linear_auto.choose_backend(2048, 512, 256, "forward", "avx2") == "v5"
    assert linear_auto.choose_backend(2048, 512, 256, "backward_weight", "avx2") == "blas"
    assert linear_auto.choose_backend(128, 512, 256, "forward", "neon") == "blas"
    here = linear_auto.choose_backend(128, 512, 256, "forward")
    assert here == linear_auto.choose_backend(128, 512, 256, "forward", TARGET.isa.name)


# ------------------------------------------------------------------------ epilogues


@pytest.mark.parametrize(("B", "O"), [(1, 1), (7, 33), (300, 1024)])
def test_relu_mask_serial_and_parallel_agree(B, O):
    rng = np.random.default_rng([B, O])
    y = rng.normal(size=(B, O)).astype(np.float32)
    y[0, 0] = 0.0  # the mask keeps only y > 0
    dy = rng.normal(size=(B, O)).astype(np.float32)
    expect = dy * (y > 0)
    for mask in (epilogue.relu_mask, epilogue.relu_mask_serial):
        out = dy.copy()
        mask(out, y)
        np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("backend", ["numba", "blas"])
def test_an_empty_batch_gives_zero_gradients_and_no_update(backend):
    """B = 0 (an MPI rank with no sample of a small global batch): dW and db are zero
    whatever they held, and the fused SGD leaves W and b as they were."""
    rng = np.random.default_rng(0)
    x, y, dy = (
        np.empty((0, 5), np.float32),
        np.empty((0, 3), np.float32),
        np.empty((0, 3), np.float32),
    )
    W = rng.standard_normal((3, 5), dtype=np.float32)
    b = rng.standard_normal(3, dtype=np.float32)
    dW, db = np.ones((3, 5), np.float32), np.ones(3, np.float32)
    linear.linear_forward(y, x, W, b, True, backend)
    linear.linear_backward(np.empty((0, 5), np.float32), dW, db, dy, x, y, W, True, backend)
    assert not dW.any() and not db.any()
    W0, b0 = W.copy(), b.copy()
    linear.linear_backward_sgd(None, W, b, dy, x, y, True, 0.5, dW, db, backend)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(b, b0)
