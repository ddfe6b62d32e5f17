#!/usr/bin/env bash
# From a raw Criteo Kaggle train.txt to a trained model and its test AUC, in two commands.
# Usage: bash examples/criteo.sh path/to/train.txt
set -euo pipefail
RAW=${1:?usage: criteo.sh path/to/train.txt}
OUT=${OUT:-kaggle.numbadlrm}

# 1. preprocess: days 0-5 train, day 6 halved into validation and test. Ids become a
#    frequency vocabulary (--min-count 1: every id seen gets a row), so the tables follow
#    the data: the full Kaggle train.txt has 33.8M distinct ids, 2.2 GB of tables at D=16
#    (64 bytes a row); a larger --min-count keeps fewer. (Hashing instead, --max-ind-range N,
#    gives 26 tables of N rows whatever the data: N = 10M is 16.6 GB.) It prints the sizes.
#    Interrupt and rerun at will: finished parts are kept.
numbadlrm preprocess --data-set kaggle --raw-data-file "$RAW" --out-dir "$OUT" --min-count 1

# 2. train one epoch (table sizes come from the data), evaluate on validation every
#    10,000 steps and on test at the end; checkpoint to kaggle.npz.
numbadlrm train --data-generation dataset --processed-data-file "$OUT" \
    --arch-sparse-feature-size 16 --arch-mlp-bot 13-512-256-64-16 --arch-mlp-top 512-256-1 \
    --mini-batch-size 128 --learning-rate 0.1 --test-freq 10000 \
    --save-model kaggle.npz --metrics-file kaggle.jsonl
