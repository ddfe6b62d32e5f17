"""A kernel of your own, in one file: the embedding SGD update with one table per thread.

Copy this file into numbadlrm/kernels/lab/ and it is registered whenever the kernel
registry loads, as version "per_table" of the op embedding_update:

    cp examples/lab_embedding_update.py numbadlrm/kernels/lab/
    numbadlrm kernels                                    # lists it under embedding_update
    python -m pytest tests/test_registry.py -k per_table # checked against the reference
    python bench/bench_embedding.py --forward-versions '' --update-versions v2,per_table
    python bench/bench_e2e.py --configs c --kernels embedding_update=per_table
    numbadlrm train --kernels embedding_update=per_table

The op's calling convention (``numbadlrm kernels`` prints every op's):

    embedding_update(weights, row_start, offsets, indices, dpooled, lr)
    weights (R, D) float32, all tables' rows; table t is rows row_start[t]:row_start[t+1]
    offsets (T, B+1) int64, indices (nnz,) int64: bag (t, b) is
        indices[offsets[t, b]:offsets[t, b + 1]], row ids within table t
    dpooled (T, B, D) float32: the gradient of each bag's pooled (summed) vector
    lr float32; in place: weights[row_start[t] + i] -= lr * dpooled[t, b] per lookup i

The idea: tables own disjoint rows, so one table per parallel iteration is race-free
without the hash ownership of the shipped v2; each table's lookups are applied in order,
so repeated rows sum exactly. It balances poorly when there are fewer tables than threads
or tables of very different traffic; bench_embedding shows by how much.
"""

import numba

from numbadlrm.kernels.jit import jit_parallel, jit_serial
from numbadlrm.kernels.registry import register


@jit_serial
def _update_table(weights, row_start, offsets, indices, dpooled, lr, t):
    batch, dim = dpooled.shape[1], dpooled.shape[2]
    base = row_start[t]
    for b in range(batch):
        for j in range(offsets[t, b], offsets[t, b + 1]):
            r = base + indices[j]
            for d in range(dim):
                weights[r, d] -= lr * dpooled[t, b, d]


@jit_parallel
def update_per_table(weights, row_start, offsets, indices, dpooled, lr):
    # Iteration t writes only table t's rows: race-free.
    for t in numba.prange(dpooled.shape[0]):
        _update_table(weights, row_start, offsets, indices, dpooled, lr, t)


@jit_serial
def update_per_table_serial(weights, row_start, offsets, indices, dpooled, lr):
    for t in range(dpooled.shape[0]):
        _update_table(weights, row_start, offsets, indices, dpooled, lr, t)


register(
    "embedding_update",
    "per_table",
    update_per_table,
    update_per_table_serial,
    "one table per parallel iteration (examples/lab_embedding_update.py)",
)

if __name__ == "__main__":  # python examples/lab_embedding_update.py: check it here
    from numbadlrm.kernels.checks import ops as checks

    for serial in (False, True):
        checks.validate("embedding_update", "per_table", serial)
    print("per_table matches the reference (parallel and serial entries)")
