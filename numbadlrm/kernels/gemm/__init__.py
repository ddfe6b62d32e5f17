"""The linear layer's GEMMs: register tiles in LLVM IR, packing, versions, backends.

tile.py           the fp32 micro-kernel (LLVM IR), its shape per ISA
fp32.py           GEMM versions v1-v3 of the three linear passes, their registration
fp32_tiled.py     v4 and v5 on the register tile; helpers.py what the fp32 versions share
epilogue.py       the epilogues shared with the blas backend
blas.py           the "blas" backend: single-threaded OpenBLAS sgemm in each Numba thread
auto.py           "auto": a Numba version or blas per pass and shape, by a fixed rule
dpbf16.py         vdpbf16ps (AVX512-BF16), its FMA emulation, the CPU check
tile_bf16.py      the bf16 micro-kernel on either form; epilogue_bf16.py its epilogues
pack_bf16.py      bf16 operand packing (pairs of k in 32-bit lanes)
bf16.py           the bf16 linear passes (forward, data) and their registration
bf16_weight.py    the bf16 weight pass and its fused split-SGD form
bf16_blocks.py    what the bf16 passes share: blocking, store epilogues
"""
