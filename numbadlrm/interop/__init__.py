"""numbadlrm/interop."""
