"""The process: the CPU, thread pools and their environment, the thread count, profiling.

cpu.py        the CPU the kernels are compiled for: name, features, SIMD level
pools.py      the thread pools' environment, set before numpy and numba load
threads.py    ``set_num_threads`` (Numba's pool and the BLAS behind NumPy)
profiling.py  the per-op timing hook (``model.op_times``)
"""
