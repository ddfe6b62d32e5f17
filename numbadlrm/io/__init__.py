"""What a run writes and reads back: checkpoints, atomic files, MLPerf log lines.

checkpoint.py   one .npz: config, parameters, optimizer state, position, vocabulary
files.py        atomic writes (temporary name, size check, fsync, rename), disk-full errors
mlperf_log.py   ``:::MLLOG`` lines
"""
