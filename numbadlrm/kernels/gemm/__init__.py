"""numbadlrm/kernels/gemm."""
