"""numbadlrm/model."""
