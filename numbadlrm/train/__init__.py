"""Training runs: what ``numbadlrm train`` does, importable without the command line.

    config.py      TrainConfig: every option of a run (the CLI's flags), validated
    sources.py     the data a run trains and evaluates on: built-in generators or a
                   preprocessed Criteo directory (open_data)
    loop.py        run_training and TrainLoop: steps, logging, evaluation, checkpoints
    evaluation.py  evaluate a model over held-out batches; the collapsed-model warning
    metrics.py     AUC, log loss and accuracy of predictions
    records.py     the metrics file (JSON lines), the log lines and the run header

Nothing here imports numbadlrm.cli; the MPI entry (numbadlrm/parallel/train_mpi.py)
reuses the config, the sources and the loop.
"""
