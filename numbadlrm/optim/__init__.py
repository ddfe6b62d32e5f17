"""numbadlrm/optim."""
