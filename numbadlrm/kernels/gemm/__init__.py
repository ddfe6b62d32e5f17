"""The linear layer's GEMMs: register tiles in LLVM IR, packing, versions, backends.

tile.py        the fp32 micro-kernel (LLVM IR) and the dot blocks
fp32.py        GEMM versions v1-v4 of the three linear passes, fused bias/ReLU epilogues
epilogue.py    the epilogues shared with the blas backend
blas.py        the "blas" backend: single-threaded OpenBLAS sgemm in each Numba thread
auto.py        "auto": v4 or blas per pass and shape, by a fixed rule
tile_bf16.py   the bf16 micro-kernel on vdpbf16ps (AVX512-BF16)
pack_bf16.py   bf16 operand packing (pairs of k in 32-bit lanes)
bf16.py        the bf16 linear passes and their fused split-SGD weight pass
"""
