"""What every op must compute: the checks that tests and benches run on every
registered version of an op (``registry.validate``-style), against plain NumPy.

    ops.py         the fp32 ops' checks and ``validate(op, version)``
    cases.py       shared case shapes, random inputs and the GEMM error bound
    bf16.py        the bf16 ops' checks (bit-exact or within bf16 rounding)
    optimizers.py  the Adagrad / row-wise Adagrad table and dense updates' checks
"""
