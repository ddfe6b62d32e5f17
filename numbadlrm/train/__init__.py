"""numbadlrm/train."""
