"""numbadlrm/kernels/checks."""
