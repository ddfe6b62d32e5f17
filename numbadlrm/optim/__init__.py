"""Optimizers: SGD, Adagrad and row-wise Adagrad settings and state, the LR policy,
and their plain NumPy reference.

    optimizers.py  ``--optimizer``: OptimizerConfig, the state, the step count
    sgd.py         plain SGD over the flat buffer (the MPI model's update), the lr check
    lr_policy.py   the reference's LR policy: warmup, polynomial decay
    reference.py   the optimizers' math in NumPy (the oracle)
"""
