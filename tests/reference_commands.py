"""Command lines written for the reference's dlrm_s_pytorch.py, run by `numbadlrm train`.

Each entry: (name, where it comes from, the reference's flags verbatim, size flags the
test appends so that it runs in seconds, the data it reads). The flags are passed
unchanged; the appended size flags come after them (argparse keeps the last value), and
the data files are made at the paths the command names (./input/... in a scratch
directory). README.md's "Reference command lines" table lists the same commands.
"""

from __future__ import annotations

from typing import NamedTuple


class Command(NamedTuple):
    name: str
    source: str
    flags: str
    sizes: str
    data: str = ""  # "" (built-in generator), "kaggle-raw", "kaggle-processed", "terabyte"


_TEST_SH = "--nepochs={e} --arch-interaction-op=dot --learning-rate=0.1 --debug-mode"
_KAGGLE = (
    '--arch-sparse-feature-size=16 --arch-mlp-bot="13-512-256-64-16" --arch-mlp-top="512-256-1" '
    "--data-generation=dataset --data-set=kaggle "
    "--processed-data-file=./input/kaggle_processed.npz --loss-function=bce "
    "--round-targets=True --learning-rate=0.1 --mini-batch-size=128 "
    "--print-freq=1024 --print-time"
)
_KAGGLE_SIZES = "--num-batches=3 --test-mini-batch-size=64 --test-num-batches=1"
_TERABYTE = (
    '--arch-sparse-feature-size=64 --arch-mlp-bot="13-512-256-64" --arch-mlp-top="512-512-256-1" '
    "--max-ind-range=20000000 --data-generation=dataset --data-set=terabyte "
    "--raw-data-file=./input/day --processed-data-file=./input/terabyte_processed.npz "
    "--loss-function=bce --round-targets=True --learning-rate=0.1 --mini-batch-size=128 "
    "--print-freq=1024 --print-time"
)
_MLPERF = (
    '--arch-sparse-feature-size=128 --arch-mlp-bot="13-512-256-128" '
    '--arch-mlp-top="1024-1024-512-256-1" --max-ind-range=40000000 --data-generation=dataset '
    "--data-set=terabyte --raw-data-file=./input/day "
    "--processed-data-file=./input/terabyte_processed.npz --loss-function=bce "
    "--round-targets=True --learning-rate=1.0 --mini-batch-size=2048 --print-freq=2048 "
    "--print-time --test-freq=102400 --test-mini-batch-size=16384 --test-num-workers=16 "
    "--memory-map --mlperf-logging --mlperf-auc-threshold=0.8025 --mlperf-bin-loader "
    "--mlperf-bin-shuffle"
)
_BENCH = (
    "--mini-batch-size=2048 --test-mini-batch-size=16384 --test-num-workers=0 "
    "--num-batches=1000 --data-generation=random --arch-mlp-bot=512-512-64 "
    "--arch-mlp-top=1024-1024-1024-1 --arch-sparse-feature-size=64 "
    "--arch-embedding-size=" + "-".join(["1000000"] * 8) + " --num-indices-per-lookup=100 "
    "--arch-interaction-op=dot --numpy-rand-seed=727 --print-freq=100 --print-time "
    "--enable-profiling"
)
_FBGEMM = (
    "--arch-sparse-feature-size=172 --arch-mlp-bot=1559-2500-2500-172 "
    "--arch-mlp-top=2000-2000-2000-1 --arch-embedding-size=" + "-".join(["213728"] * 8) + " "
    "--mini-batch-size=64 --num-indices-per-lookup-fixed=1 --num-indices-per-lookup=16 "
    "--num-batches=1 --nepochs=3 --debug-mode"
)
_SMALL_TABLES = "--arch-embedding-size=" + "-".join(["100"] * 8)

COMMANDS = [
    Command("readme_sample", "README: a sample run", "--mini-batch-size=2 --data-size=6",
            "--test-num-batches=1"),
    Command("readme_debug", "README: the sample in debug mode",
            "--mini-batch-size=2 --data-size=6 --debug-mode", "--test-num-batches=1"),
    Command("test_sh_1", "test/dlrm_s_test.sh, 1st run",
            "--mini-batch-size=1 --data-size=1 " + _TEST_SH.format(e=1), "--test-num-batches=1"),
    Command("test_sh_2", "test/dlrm_s_test.sh, 2nd run",
            "--mini-batch-size=2 --data-size=4 " + _TEST_SH.format(e=1), "--test-num-batches=1"),
    Command("test_sh_4", "test/dlrm_s_test.sh, 4th run",
            "--mini-batch-size=2 --data-size=5 " + _TEST_SH.format(e=3), "--test-num-batches=1"),
    Command("fbgemm_test", "test/dlrm_s_test_fbgemm_gpu.sh, its base run (CPU)", _FBGEMM,
            "--arch-sparse-feature-size=8 --arch-mlp-bot=1559-32-8 --arch-mlp-top=32-1 "
            f"{_SMALL_TABLES} --test-num-batches=1 --test-mini-batch-size=64"),
    Command("benchmark_cpu", "bench/dlrm_s_benchmark.sh, its CPU run", _BENCH,
            "--mini-batch-size=64 --test-mini-batch-size=128 --num-batches=3 "
            "--arch-mlp-bot=512-32-8 --arch-mlp-top=32-1 --arch-sparse-feature-size=8 "
            f"{_SMALL_TABLES} --num-indices-per-lookup=5 --print-freq=1 --test-num-batches=1"),
    Command("kaggle", "bench/dlrm_s_criteo_kaggle.sh (processed data)", _KAGGLE,
            _KAGGLE_SIZES, "kaggle-processed"),
    Command("kaggle_raw", "bench/dlrm_s_criteo_kaggle.sh with the README's --raw-data-file",
            _KAGGLE + " --raw-data-file=./input/train.txt", _KAGGLE_SIZES, "kaggle-raw"),
    Command("terabyte_subsampled",
            'bench/dlrm_s_criteo_terabyte.sh "--memory-map --data-sub-sample-rate=0.875" (README)',
            _TERABYTE + " --memory-map --data-sub-sample-rate=0.875",
            "--max-ind-range=1000 --num-batches=3 --mini-batch-size=16 --test-mini-batch-size=32 "
            "--test-num-batches=1", "terabyte"),
    Command("mlperf_run_and_time", "bench/run_and_time.sh (MLPerf, Terabyte)", _MLPERF,
            "--max-ind-range=1000 --arch-sparse-feature-size=16 --arch-mlp-bot=13-32-16 "
            "--arch-mlp-top=32-1 --mini-batch-size=32 --num-batches=4 --test-freq=2 "
            "--test-mini-batch-size=64 --test-num-batches=1 --print-freq=1", "terabyte"),
    Command("kaggle_rwsadagrad_lr_policy",
            "bench/dlrm_s_criteo_kaggle.sh with the reference's optimizer and LR-policy flags",
            _KAGGLE + " --optimizer=rwsadagrad --lr-num-warmup-steps=2 --lr-decay-start-step=2 "
            "--lr-num-decay-steps=4", "--num-batches=6 --test-mini-batch-size=64 "
            "--test-num-batches=1 --mini-batch-size=16", "kaggle-processed"),
    Command("adagrad_wbce_defaults",
            "the reference's defaults written out, Adagrad and the weighted loss",
            "--mini-batch-size=4 --data-size=12 --optimizer=adagrad --loss-function=wbce "
            "--loss-weights=1.0-3.0 --test-freq=-1 --max-ind-range=-1 "
            "--num-indices-per-lookup-fixed=False --numpy-rand-seed=123 --sync-dense-params=True "
            "--data-generation=random --use-gpu", "--test-num-batches=1"),
]  # fmt: skip
