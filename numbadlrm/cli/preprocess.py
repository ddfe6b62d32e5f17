"""``numbadlrm preprocess``: raw Criteo files -> a memory-mapped training directory.

    numbadlrm preprocess --data-set kaggle --raw-data-file train.txt --out-dir kaggle --min-count 1
    numbadlrm preprocess --data-set terabyte --raw-data-file /data/day --out-dir tb --min-count 15
    numbadlrm preprocess a.txt b.txt.gz --out-dir small --split-fractions 0.8,0.1,0.1

Rerunning the same command after an interruption resumes: finished files are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from numbadlrm.data.criteo import (
    SPLIT_MODES,
    CriteoError,
    PreprocessOptions,
    preprocess,
    terabyte_sources,
)
from numbadlrm.model.memory import human


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``preprocess`` subcommand on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "preprocess",
        help="convert raw Criteo TSV (plain or .gz) into binary arrays",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", type=Path, help="raw files (instead of --data-set)")
    p.add_argument("--data-set", choices=("kaggle", "terabyte"), help="as the reference DLRM")
    p.add_argument(
        "--raw-data-file", type=Path, help="kaggle: train.txt; terabyte: prefix of day_N"
    )
    p.add_argument("--out-dir", required=True, help="processed output directory")
    p.add_argument("--split", choices=SPLIT_MODES, help="default: from --data-set, else fractions")
    p.add_argument("--split-fractions", default="0.8,0.1,0.1", help="train,validation,test")
    p.add_argument("--max-ind-range", type=int, default=0, help="hash ids: id mod N (one pass)")
    p.add_argument("--min-count", type=int, default=0, help="vocabulary: rarer ids share one id")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip and count bad lines")
    p.add_argument(
        "--data-sub-sample-rate", type=float, default=0.0,
        help="drop each label-0 line with this probability (the reference's), in [0, 1)",
    )  # fmt: skip
    p.add_argument("--chunk-mb", type=int, default=8, help="raw bytes parsed per chunk")
    p.add_argument("--threads", type=int, help="Numba threads (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _sources_and_split(args: argparse.Namespace) -> tuple[list[Path], str]:
    if args.data_set:
        if args.raw_data_file is None or args.inputs:
            raise CriteoError("--data-set needs --raw-data-file and no positional inputs")
        if args.data_set == "kaggle":
            return [args.raw_data_file], args.split or "kaggle"
        return terabyte_sources(args.raw_data_file), args.split or "days"
    inputs = list(args.inputs) + ([args.raw_data_file] if args.raw_data_file else [])
    if not inputs:
        raise CriteoError("no input files: give files, or --data-set with --raw-data-file")
    return inputs, args.split or "fractions"


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; prints a one-line error and returns non-zero on bad input."""
    try:
        sources, split = _sources_and_split(args)
        try:
            fractions = tuple(float(x) for x in args.split_fractions.split(","))
        except ValueError:
            raise CriteoError(f"--split-fractions: expected e.g. 0.8,0.1,0.1, got "
                              f"{args.split_fractions!r}") from None  # fmt: skip
        options = PreprocessOptions(
            split=split,
            split_fractions=fractions,
            max_ind_range=max(args.max_ind_range, 0),
            min_count=args.min_count,
            skip_bad_lines=args.skip_bad_lines,
            chunk_bytes=args.chunk_mb << 20,
            sub_sample_rate=args.data_sub_sample_rate,
        )
        if args.threads is not None:
            from numbadlrm.runtime.threads import set_num_threads

            set_num_threads(args.threads)
        if not args.out_dir.strip():
            raise CriteoError(f"--out-dir: must name a directory, got {args.out_dir!r}")
        meta = preprocess(sources, args.out_dir, options, progress=not args.no_progress)
    except (CriteoError, ValueError) as exc:
        print(f"numbadlrm preprocess: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a WriteError names the path; finished parts are kept
        print(f"numbadlrm preprocess: error: {exc}; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print("numbadlrm preprocess: interrupted; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    rows = ", ".join(f"{k} {v:,}" for k, v in meta["rows"].items())
    print(f"wrote {args.out_dir}: {rows} rows; table sizes {meta['table_sizes']}")
    total = sum(meta["table_sizes"])
    print(f"embedding tables: {total:,} rows, {human(total * 16 * 4)} at D=16 (64 bytes a row)")
    if options.skip_bad_lines:
        print(f"skipped {meta['bad_lines_skipped']:,} bad line(s)")
    return 0
