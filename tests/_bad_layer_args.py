"""Layer calls with a wrong shape, dtype or layout, run in a child process.

Without the layers' checks these reach kernels that index without bounds checks or
compute raw addresses (the dot interaction's v3), so tests/test_layer_checks.py runs
them here: ``python -m tests._bad_layer_args``. Each case prints one JSON line
{"case", "error"} as soon as it is done, so a crash still reports the cases before it.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from numbadlrm.layers.embedding_bag import (
    embedding_backward_sgd,
    embedding_forward,
    embedding_gradient,
)
from numbadlrm.layers.interaction import Interaction
from numbadlrm.layers.loss import sigmoid, sigmoid_bce

T, B, D, ROWS = 3, 5, 4, 7
F32 = np.float32


def _f(*shape):
    return np.ones(shape, F32)


def _strided(*shape):
    """A non-contiguous float32 view of this shape."""
    return np.ones((*shape[:-1], 2 * shape[-1]), F32)[..., ::2]


def _interaction(op):
    layer = Interaction(op, False, T)
    width = D + (T + 1) * T // 2 if op == "dot" else (T + 1) * D  # D + P, or F * D
    good = {"out": _f(B, width), "x": _f(B, D), "emb": _f(T, B, D)}
    grads = {"dx": _f(B, D), "demb": _f(T, B, D), "dout": _f(B, width)}
    bad = {
        "out": [_f(B, width - 1), np.ones((B, width)), _strided(B, width), [[0.0] * width] * B],
        "x": [_strided(B, D), np.ones((B, D)), _f(B, D, 1)],
        "emb": [_f(T - 1, B, D), _f(T, B + 1, D), _f(T, B, D + 1), np.ones((T, B, D), np.int32)],
        "dx": [_f(B + 1, D), _strided(B, D)],
        "demb": [_strided(T, B, D), _f(T + 1, B, D)],
        "dout": [_f(B, width + 3), np.ones((B, width))],
    }
    for name, values in bad.items():
        for i, value in enumerate(values):
            if name in good:
                yield (
                    f"{op}-forward-{name}-{i}",
                    name,
                    lambda v=value, n=name: layer.forward(**{**good, n: v}),
                )
            if name != "out":
                args = {**good, **grads, name: value}
                args.pop("out")
                yield f"{op}-backward-{name}-{i}", name, lambda a=args: layer.backward(**a)


def _embedding():
    weights = _f(T * ROWS, D)
    row_start = np.arange(T + 1, dtype=np.int64) * ROWS
    offsets = np.stack([np.arange(B + 1, dtype=np.int64) + t * B for t in range(T)])
    indices = np.zeros(T * B, np.int64)
    good = {"weights": weights, "row_start": row_start, "offsets": offsets, "indices": indices}
    bad = {
        "pooled": [np.ones((T, B, D)), _strided(T, B, D), _f(T * B, D)],
        "weights": [_f(T * ROWS, D + 2), _strided(T * ROWS, D), np.ones((T * ROWS, D))],
        "row_start": [row_start[:-1].copy(), row_start.astype(np.int32), row_start * 10],
        "offsets": [offsets[:, :-1].copy(), np.asfortranarray(offsets), offsets.astype(F32)],
        "indices": [indices.astype(np.int32), indices.reshape(T, B), np.repeat(indices, 2)[::2]],
    }
    for name, values in bad.items():
        for i, value in enumerate(values):
            out = value if name == "pooled" else _f(T, B, D)
            args = {**good, name: value} if name != "pooled" else good

            def forward(a=args, o=out):
                embedding_forward(o, **a)

            def backward(a=args, o=out):
                embedding_backward_sgd(dpooled=o, lr=0.1, **a)

            yield f"embedding-forward-{name}-{i}", name, forward
            yield (
                f"embedding-backward-{name}-{i}",
                "dpooled" if name == "pooled" else name,
                backward,
            )
    lookups = {k: v for k, v in good.items() if k != "weights"}
    for i, dweights in enumerate([_f(T * ROWS, D + 1), np.ones((T * ROWS, D))]):
        yield (
            f"embedding-gradient-dweights-{i}",
            "dweights",
            lambda w=dweights: embedding_gradient(w, dpooled=_f(T, B, D), **lookups),
        )
    yield (
        "embedding-gradient-dpooled",
        "dpooled",
        lambda: embedding_gradient(_f(T * ROWS, D), dpooled=_strided(T, B, D), **lookups),
    )
    # pooled sets T, B and D: a pooled of another B or D is a mismatch of offsets or weights
    for name, shape in (("offsets", (T, B + 1, D)), ("weights", (T, B, D + 1))):
        yield (
            f"embedding-forward-pooled-{shape}",
            name,
            lambda s=shape: embedding_forward(_f(*s), **good),
        )


def _loss():
    p, ds, s, labels = _f(B), _f(B), _f(B), _f(B)
    yield "loss-labels-short", "sigmoid/BCE", lambda: sigmoid_bce(p, ds, s, labels[:2])
    yield "loss-labels-float64", "labels", lambda: sigmoid_bce(p, ds, s, np.ones(B))
    yield "loss-s-2d", "s", lambda: sigmoid_bce(p, ds, _f(B, 1), labels)
    yield "sigmoid-p-short", "sigmoid/BCE", lambda: sigmoid(p[:3], s)


def cases():
    """(case name, the argument its error must name, the call)."""
    yield from _interaction("dot")
    yield from _interaction("cat")
    yield from _embedding()
    yield from _loss()


def main() -> int:
    for name, _, call in cases():
        try:
            call()
            error = "no error"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"case": name, "error": error}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
