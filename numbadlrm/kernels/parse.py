"""Criteo TSV parsing kernels: raw bytes of many lines -> dense, raw ids, labels, errors.

One line per output row, so the parallel loop over lines is race-free. A line is
``label \t I1..I13 \t C1..C26``; empty fields are 0 (dense) or -1 (categorical, "missing");
missing trailing fields count as empty. Errors are reported per line as
(code, field, value start, value end) for the driver (numbadlrm.data.criteo) to word.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .jit import jit_parallel, jit_serial

NUM_DENSE = 13
NUM_CATEGORICAL = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_CATEGORICAL  # 40
ERR_OK, ERR_FIELDS, ERR_INT, ERR_HEX, ERR_LABEL = 0, 1, 2, 3, 4


@jit_serial
def _parse_int(buf, a, b):
    """Decimal integer in buf[a:b] with optional sign; empty -> 0. Returns (ok, value)."""
    if a == b:
        return True, 0
    i = a
    negative = False
    if buf[i] == 45 or buf[i] == 43:  # '-' or '+'
        negative = buf[i] == 45
        i += 1
    if i == b or b - i > 18:
        return False, 0
    value = 0
    while i < b:
        d = np.int64(buf[i]) - 48
        if d < 0 or d > 9:
            return False, 0
        value = value * 10 + d
        i += 1
    return True, -value if negative else value


@jit_serial
def _parse_hex(buf, a, b):
    """Hex id in buf[a:b]; empty -> -1 (missing). Returns (ok, value)."""
    if a == b:
        return True, -1
    if b - a > 15:
        return False, -1
    value = 0
    for i in range(a, b):
        c = np.int64(buf[i])
        if 48 <= c <= 57:
            d = c - 48
        elif 97 <= c <= 102:
            d = c - 87
        elif 65 <= c <= 70:
            d = c - 55
        else:
            return False, -1
        value = value * 16 + d
    return True, value


@jit_serial
def _parse_line(dense, raw, labels, errors, i, buf, a, b):
    """Parse line buf[a:b] into row i; on error set errors[i] = code, field, start, stop."""
    field = 0
    pos = a
    while True:
        e = pos
        while e < b and buf[e] != 9:  # tab
            e += 1
        code = ERR_OK
        if field >= NUM_FIELDS:
            code, e = ERR_FIELDS, b
        elif field == 0:
            if e - pos == 1 and (buf[pos] == 48 or buf[pos] == 49):
                labels[i] = buf[pos] - 48
            else:
                code = ERR_LABEL
        elif field <= NUM_DENSE:
            ok, v = _parse_int(buf, pos, e)
            dense[i, field - 1] = np.float32(np.log(np.float64(max(v, 0)) + 1.0))
            code = ERR_OK if ok else ERR_INT
        else:
            ok, v = _parse_hex(buf, pos, e)
            raw[i, field - 1 - NUM_DENSE] = v
            code = ERR_OK if ok else ERR_HEX
        if code != ERR_OK:
            errors[i, 0], errors[i, 1], errors[i, 2], errors[i, 3] = code, field, pos, e
            return
        field += 1
        if e >= b:
            break
        pos = e + 1
    for f in range(max(field, 1), NUM_FIELDS):  # missing trailing fields are empty
        if f <= NUM_DENSE:
            dense[i, f - 1] = 0.0
        else:
            raw[i, f - 1 - NUM_DENSE] = -1
    errors[i, 0] = ERR_OK


@jit_parallel
def parse_lines(dense, raw, labels, errors, buf, starts, ends):
    """Parse lines buf[starts[i]:ends[i]]: dense (L, 13) f32, raw (L, 26) i64 (-1 = empty),
    labels (L,) u8, errors (L, 4) i64 (code, field, value start, value stop)."""
    for i in prange(starts.shape[0]):  # race-free: line i writes only row i
        _parse_line(dense, raw, labels, errors, i, buf, starts[i], ends[i])


@jit_parallel
def hash_ids(out, raw, modulus):
    """out (L, 26) int32 = raw % modulus; empty (-1) -> 0."""
    for i in prange(raw.shape[0]):  # race-free: row i only
        for t in range(raw.shape[1]):
            v = raw[i, t]
            out[i, t] = 0 if v < 0 else v % modulus


@jit_parallel
def map_vocabulary(out, raw, keys, key_offsets):
    """out (L, 26) int32: 0 empty, 1 rare/unknown, 2 + rank of raw in keys[key_offsets[t]:..]."""
    for i in prange(raw.shape[0]):  # race-free: row i only
        for t in range(raw.shape[1]):
            v = raw[i, t]
            if v < 0:
                out[i, t] = 0
                continue
            lo, hi = key_offsets[t], key_offsets[t + 1]
            j = np.searchsorted(keys[lo:hi], v)
            out[i, t] = 2 + j if j < hi - lo and keys[lo + j] == v else 1
