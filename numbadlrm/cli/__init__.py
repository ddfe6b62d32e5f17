"""numbadlrm/cli."""
