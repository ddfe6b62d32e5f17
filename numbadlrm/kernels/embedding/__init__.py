"""Embedding-bag kernels: pooling, the fused sparse updates, lookups' bounds.

bags.py        sum-pooled bags (forward), the fused race-free SGD update, dense gradients
bags_bf16.py   the same on split-bf16 tables (R, 2, D): bf16 pooling, exact split-SGD
optimizers.py  fused sparse Adagrad and row-wise Adagrad (each owner radix-sorts its
               lookups by row), dense Adagrad over the flat buffer
lookups.py     the per-step bounds check of offsets and indices
"""
