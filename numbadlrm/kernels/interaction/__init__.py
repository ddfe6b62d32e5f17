"""numbadlrm/kernels/interaction."""
