"""numbadlrm/kernels/embedding."""
