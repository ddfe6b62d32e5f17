"""Data: synthetic batches, Criteo raw TSV -> compact binary, memory-mapped batches.

synthetic.py   the built-in Criteo-shaped generators (the default run, benchmarks)
criteo.py      preprocessing: parse raw TSV (kernels/parse.py), hash or count ids, write parts
dataset.py     the memory-mapped dataset and its batches
metadata.py    the processed directory's metadata.json, checked on open
vocabulary.py  --min-count vocabularies (raw id -> row)
background.py  batches prepared on a background thread while the step runs
"""
