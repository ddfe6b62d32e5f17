"""The bf16 tile's epilogues in LLVM IR, run on its fp32 accumulators in registers: bias,
ReLU and the bf16 rounding of the output (``_epilogue``), and the fused split-SGD weight
update with the repacking of the updated bf16 weights (``_sgd_epilogue``, ``_repack_tile``).
"""

from __future__ import annotations

from llvmlite import ir

from ..bf16 import merge_bits, round_bits
from .dpbf16 import _LANES, _Q, NR, _f32, _i16, _i32, _i64, _vf, _vi, _vi64, _vmask
from .llvm_ir import _declare, _splat, _vector_intrinsics

# ------------------------------------------------------------------ tile epilogue
_vh16 = ir.VectorType(_i16, _LANES)


def _c32v(value: int) -> ir.Constant:
    return ir.Constant(_vi, [value] * _LANES)


def _round_bf16_vec(builder, v):
    """<16 x i16> bf16 bits of <16 x float> v: kernels/bf16.py's rounding on 16 lanes."""
    return round_bits(builder, v, _vi, _vh16)


def _h16_intrinsics(module):
    hptr = _i16.as_pointer()
    mload = _declare(
        module, "llvm.masked.load.v16i16.p0", ir.FunctionType(_vh16, [hptr, _i32, _vmask, _vh16])
    )
    mstore = _declare(
        module,
        "llvm.masked.store.v16i16.p0",
        ir.FunctionType(ir.VoidType(), [_vh16, hptr, _i32, _vmask]),
    )
    return mload, mstore


def _epilogue(builder, sums, m, n, mr, out):
    """Row r < m, columns < n of the tile: v = sums (+ bias) (ReLU) (* [x16 > 0]), then
    stored as fp32 and/or rounded to bf16; ``out`` holds the epilogue's intp arguments
    (addresses 0 when absent)."""
    c, ldc, c16, ldc16, bias, relu, mask, ldmask = out
    mload, mstore, _ = _vector_intrinsics(builder.module)
    hload, hstore = _h16_intrinsics(builder.module)
    zero, hzero = ir.Constant(_vf, [0.0] * _LANES), ir.Constant(_vh16, [0] * _LANES)
    a4, a2 = ir.Constant(_i32, 4), ir.Constant(_i32, 2)
    nil = ir.Constant(_i64, 0)
    n_vec = _splat(builder, n, _vi64)
    lanes = [
        builder.icmp_signed("<", ir.Constant(_vi64, [_LANES * q + i for i in range(_LANES)]), n_vec)
        for q in range(_Q)
    ]
    has = {
        k: builder.icmp_signed("!=", v, nil) for k, v in (("c", c), ("c16", c16), ("mask", mask))
    }
    biases = []
    bias_p = builder.inttoptr(
        builder.select(builder.icmp_signed("!=", bias, nil), bias, c), _f32.as_pointer()
    )
    for q in range(_Q):  # zero when there is no bias (its pointer is then never read)
        ptr = builder.gep(bias_p, [ir.Constant(_i64, _LANES * q)])
        use = builder.and_(lanes[q], _splat(builder, builder.icmp_signed("!=", bias, nil), _vmask))
        biases.append(builder.call(mload, [ptr, a4, use, zero]))
    relu_on = builder.icmp_signed("!=", relu, nil)
    cp, hp = builder.inttoptr(c, _f32.as_pointer()), builder.inttoptr(c16, _i16.as_pointer())
    xp = builder.inttoptr(mask, _i16.as_pointer())
    for r in range(mr):
        with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, r), m)):
            row = ir.Constant(_i64, r)
            for q in range(_Q):
                col = ir.Constant(_i64, _LANES * q)
                v = builder.fadd(sums[r * _Q + q], biases[q])
                positive = builder.fcmp_ordered(">", v, zero)
                v = builder.select(relu_on, builder.select(positive, v, zero), v)
                x_ptr = builder.gep(xp, [builder.add(builder.mul(row, ldmask), col)])
                use = builder.and_(lanes[q], _splat(builder, has["mask"], _vmask))
                x = builder.call(hload, [x_ptr, a2, use, hzero])
                keep = builder.and_(
                    builder.icmp_signed(">", x, hzero),
                    builder.icmp_signed("<", x, ir.Constant(_vh16, [0x7F81] * _LANES)),
                )
                v = builder.select(has["mask"], builder.select(keep, v, zero), v)
                with builder.if_then(has["c"]):
                    ptr = builder.gep(cp, [builder.add(builder.mul(row, ldc), col)])
                    builder.call(mstore, [v, ptr, a4, lanes[q]])
                with builder.if_then(has["c16"]):
                    ptr = builder.gep(hp, [builder.add(builder.mul(row, ldc16), col)])
                    builder.call(hstore, [_round_bf16_vec(builder, v), ptr, a2, lanes[q]])


def _sgd_epilogue(builder, sums, m, n, mr, w_hi, w_lo, ldw, lr, packs):
    """Rows r < m, columns < n: split-SGD of W (w_hi, w_lo halves) with the gradient tile
    sums: w = (hi << 16) | lo;  w = fma(-lr, g, w);  hi, lo = w >> 16, w & 0xFFFF, the
    arithmetic of kernels/bf16.py's split_sgd_update on 16 lanes (bit for bit); then the
    new bf16 weights into W's packings (``_repack_tile``) when ``packs`` name them."""
    _, _, fma = _vector_intrinsics(builder.module)
    hload, hstore = _h16_intrinsics(builder.module)
    hzero = ir.Constant(_vh16, [0] * _LANES)
    a2 = ir.Constant(_i32, 2)
    n_vec = _splat(builder, n, _vi64)
    lanes = [
        builder.icmp_signed("<", ir.Constant(_vi64, [_LANES * q + i for i in range(_LANES)]), n_vec)
        for q in range(_Q)
    ]
    neg_lr = _splat(builder, builder.fneg(lr), _vf)
    hp, lp = builder.inttoptr(w_hi, _i16.as_pointer()), builder.inttoptr(w_lo, _i16.as_pointer())
    new_his = {}
    for r in range(mr):  # masked per lane and row (no branch: the values feed the packing)
        row_ok = _splat(builder, builder.icmp_signed("<", ir.Constant(_i64, r), m), _vmask)
        for q in range(_Q):
            use = builder.and_(lanes[q], row_ok)
            at = builder.add(builder.mul(ir.Constant(_i64, r), ldw), ir.Constant(_i64, _LANES * q))
            hi_ptr, lo_ptr = builder.gep(hp, [at]), builder.gep(lp, [at])
            hi = builder.call(hload, [hi_ptr, a2, use, hzero])
            lo = builder.call(hload, [lo_ptr, a2, use, hzero])
            w = merge_bits(builder, hi, lo, _vi, _vf)
            bits = builder.bitcast(builder.call(fma, [neg_lr, sums[r * _Q + q], w]), _vi)
            new_hi = builder.trunc(builder.lshr(bits, _c32v(16)), _vh16)
            builder.call(hstore, [new_hi, hi_ptr, a2, use])
            builder.call(hstore, [builder.trunc(bits, _vh16), lo_ptr, a2, use])
            new_his[r, q] = builder.select(use, new_hi, hzero)  # zero past n and m
    _repack_tile(builder, new_his, m, n, mr, packs)


def _repack_tile(builder, his, m, n, mr, packs):
    """Write the tile's new bf16 weights (rows ii + r < ii + m, columns jj + c < jj + n
    of W (O, I)) into W's two packings (pack_bf16.py), so no repacking pass is needed.

    data (pack_cols(W), pairs of W's rows): rows 2s and 2s + 1 of the tile (ii is even)
        are one uint32 vector per 16 columns at ``wd + 4 (s 64 + 16 q)``: a contiguous
        store (a last row without a partner, O odd, pairs with zero)
    forward (pack_rows(W), pairs of W's columns): row o = ii + r is lane o % 64 of panel
        o // 64; each pair of columns (jj + 2t, jj + 2t + 1) is one uint32 at
        ``wf + 4 ((o // 64) pairs_f 64 + (jj / 2 + t) 64 + o % 64)``: stored one by one
    ``packs`` = (wd, wf, pairs_f, ii, jj): addresses (0: that packing is not written)."""
    wd, wf, pairs_f, ii, jj = packs
    nil, one = ir.Constant(_i64, 0), ir.Constant(_i64, 1)
    i32p = _i32.as_pointer()
    _, mstore32 = _i32_vector_store(builder.module)
    n_vec = _splat(builder, n, _vi64)
    lanes = [
        builder.icmp_signed("<", ir.Constant(_vi64, [_LANES * q + i for i in range(_LANES)]), n_vec)
        for q in range(_Q)
    ]
    with builder.if_then(builder.icmp_signed("!=", wd, nil)):
        dp = builder.inttoptr(wd, i32p)
        for s in range(0, mr, 2):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, s), m)):
                pair = builder.icmp_signed("<", ir.Constant(_i64, s + 1), m)
                for q in range(_Q):
                    low = builder.zext(his[s, q], _vi)
                    high = builder.zext(his[s + 1, q], _vi) if s + 1 < mr else None
                    value = (
                        low
                        if high is None
                        else builder.select(
                            pair, builder.or_(low, builder.shl(high, _c32v(16))), low
                        )
                    )
                    ptr = builder.gep(dp, [ir.Constant(_i64, (s // 2) * NR + _LANES * q)])
                    builder.call(mstore32, [value, ptr, ir.Constant(_i32, 4), lanes[q]])
    with builder.if_then(builder.icmp_signed("!=", wf, nil)):
        fp = builder.inttoptr(wf, i32p)
        half_j = builder.ashr(jj, one)
        for r in range(mr):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_i64, r), m)):
                o = builder.add(ii, ir.Constant(_i64, r))
                panel = builder.mul(builder.ashr(o, ir.Constant(_i64, 6)), pairs_f)
                lane = builder.and_(o, ir.Constant(_i64, NR - 1))
                base = builder.add(
                    builder.mul(builder.add(panel, half_j), ir.Constant(_i64, NR)), lane
                )
                for q in range(_Q):
                    words = builder.bitcast(his[r, q], ir.VectorType(_i32, _LANES // 2))
                    for t in range(_LANES // 2):
                        col = ir.Constant(_i64, _LANES * q + 2 * t)
                        with builder.if_then(builder.icmp_signed("<", col, n)):
                            at = builder.add(base, ir.Constant(_i64, (8 * q + t) * NR))
                            word = builder.extract_element(words, ir.Constant(_i32, t))
                            builder.store(word, builder.gep(fp, [at]), align=4)


def _i32_vector_store(module):
    ip = _i32.as_pointer()
    mload = _declare(
        module, "llvm.masked.load.v16i32.p0", ir.FunctionType(_vi, [ip, _i32, _vmask, _vi])
    )
    mstore = _declare(
        module,
        "llvm.masked.store.v16i32.p0",
        ir.FunctionType(ir.VoidType(), [_vi, ip, _i32, _vmask]),
    )
    return mload, mstore
