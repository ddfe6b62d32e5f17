"""A training run from Python or the CLI: its config, data sources, the loop,
evaluation and the metrics file.

    run.py       TrainConfig, the data sources, run_training, evaluation, the metrics file
    metrics.py   ROC AUC, log loss, accuracy
"""
