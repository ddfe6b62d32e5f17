"""Data: synthetic batches, Criteo raw TSV -> compact binary, memory-mapped batches.

synthetic.py         the built-in Criteo-shaped generators (the default run, benchmarks)
criteo.py            preprocessing's driver: hash or count ids, split, resume
criteo_read.py       raw TSV parsing (kernels/parse.py) and reading
criteo_write.py      the per-file passes that write a processed directory
criteo_options.py    preprocessing's options
dataset.py           the memory-mapped dataset and its batches
metadata.py          the processed directory's metadata.json, checked on open
vocabulary.py        --min-count vocabularies (raw id -> row)
background.py        batches prepared on a background thread while the step runs
"""
