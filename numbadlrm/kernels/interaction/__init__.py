"""Feature-interaction kernels: dot (pairwise dots of the F feature vectors, in 4 x 4
blocks) and cat, forward and backward.

fp32.py        float32 versions
dots.py        the 4 x 4 fp32 dot blocks in LLVM IR
bf16.py        bf16 in and out, fp32 dots (vdpbf16ps or its emulation)
dots_bf16.py   the 4 x 4 bf16 dot blocks in LLVM IR
"""
