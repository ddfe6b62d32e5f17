"""numbadlrm/runtime."""
