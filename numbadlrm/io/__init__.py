"""numbadlrm/io."""
