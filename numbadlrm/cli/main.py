"""The ``numbadlrm`` command. Training options are generated from TrainConfig's fields.

numbadlrm train [--arch-mlp-bot 13-512-256-64-16 ...]   train (default: built-in data)
mpiexec -n 4 numbadlrm train ...                         hybrid-parallel on 4 ranks
numbadlrm preprocess --data-set kaggle --raw-data-file train.txt --out-dir kaggle
numbadlrm predict | plot | convert                       see numbadlrm/cli/tools.py
numbadlrm kernels [--check op=version [--bench]]         every op's versions; check one
"""

from __future__ import annotations

# isort: off
from ..runtime import pools as _pools  # noqa: F401  first: the pools' and cache's environment
# isort: on

import argparse
import dataclasses
import os
import sys
import types
import typing

from .. import __version__
from ..io.checkpoint import CheckpointError
from ..train.config import TrainConfig
from ..train.loop import run_training
from . import preprocess as preprocess_cli
from .reference_flags import BoolWordAction, add_reference_flags, check_unsupported, reference_notes


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag-name`` per field (and its ``aliases``); bool fields become switches
    that also take a word: ``--flag``, ``--flag True|False``, ``--no-flag``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        meta = dict(f.metadata)
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(
                *flags, dest=f.name, action=BoolWordAction, default=f.default, help=meta.get("help")
            )
            continue
        if isinstance(kind, types.UnionType):  # e.g. int | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        parser.add_argument(
            *flags, dest=f.name, type=kind, default=f.default, choices=meta.get("choices"),
            help=meta.get("help"),
        )  # fmt: skip


def dataclass_from_args(cls: type, args: argparse.Namespace):
    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numbadlrm", description="Autograd-free DLRM training on CPUs (Numba + MPI)."
    )
    parser.add_argument("--version", action="version", version=f"numbadlrm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a DLRM", formatter_class=_Formatter)
    add_dataclass_options(train, TrainConfig)
    add_reference_flags(train)
    preprocess_cli.add_parser(sub)
    pred = sub.add_parser("predict", help="write one click probability per input row")
    pred.add_argument("--load-model", required=True, help="checkpoint from train --save-model")
    pred.add_argument("--processed-data-file", default="", help="a preprocessed directory")
    pred.add_argument(
        "--split",
        default="test",
        choices=("train", "validation", "test"),
        help="which split of --processed-data-file to predict, in its stored order (default: test)",
    )
    pred.add_argument("--raw-data-file", nargs="*", default=[], help="raw labelled TSV files")
    pred.add_argument(
        "--max-ind-range",
        type=int,
        default=0,
        help="only for a checkpoint that does not record its data's preprocessing "
        "(one trained on a dataset does, and a different value is refused)",
    )
    pred.add_argument(
        "--test-mini-batch-size", type=int, default=4096, help="rows per batch (default: 4096)"
    )
    pred.add_argument("--output", required=True, help="text file, one probability a line")
    plot = sub.add_parser("plot", help="draw loss and AUC curves from a metrics file")
    plot.add_argument("metrics_file", help="JSON lines written by train --metrics-file")
    plot.add_argument(
        "--output", default="metrics.png", help="the PNG to write (default: metrics.png)"
    )
    kern = sub.add_parser(
        "kernels", help="list every op, its kernel versions and the default (for --kernels)"
    )
    kern.add_argument(
        "--check",
        metavar="OP=VERSION[,...]",
        help="check these versions against the reference (the packaged checks, no pytest)",
    )
    kern.add_argument(
        "--bench", action="store_true", help="with --check: time each beside the op's default"
    )
    for command in (train, kern):
        add_kernel_module_option(command)
    conv = sub.add_parser(
        "convert",
        help="checkpoint <-> reference DLRM PyTorch state_dict",
        description="Convert between a numbadlrm checkpoint and a state_dict the reference "
        "DLRM (dlrm_s_pytorch.py) loads; needs torch (pip install 'numbadlrm[torch]').",
    )
    conv.add_argument(
        "source", help="a numbadlrm checkpoint (.npz) with --to-torch, a .pt with --from-torch"
    )
    direction = conv.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--to-torch", metavar="OUT_PT", help="write the reference's state_dict (torch.save) here"
    )
    direction.add_argument(
        "--from-torch",
        metavar="OUT_NPZ",
        help="write a numbadlrm checkpoint here (config inferred from the tensor shapes)",
    )
    parser.commands = dict(sub.choices)  # {command: its parser}
    return parser


def add_kernel_module_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kernel-module",
        action="append",
        metavar="PATH",
        help="import kernel modules from this .py file or folder (repeatable; overrides "
        "$NUMBADLRM_KERNEL_MODULES): register versions from anywhere, any install",
    )


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but arguments no command knows are reported by that command's parser,
    so the usage line printed is the command's (``usage: numbadlrm train ...``)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = parser.commands.get(getattr(args, "command", None), parser)
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def launched_by_mpi() -> bool:
    """True under mpiexec (MPICH and Hydra set PMI_SIZE, Open MPI OMPI_COMM_WORLD_SIZE)."""
    sizes = (os.environ.get(v, "") for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"))
    return any(s.isdigit() and int(s) > 1 for s in sizes)


def train(cfg: TrainConfig, notes: list[str] = ()) -> None:
    """Train on one process, or on every rank of COMM_WORLD under mpiexec; ``notes``
    (about flags that change nothing here) are printed first, by rank 0."""
    if launched_by_mpi():  # the one place that reaches for COMM_WORLD
        from mpi4py import MPI

        from ..parallel.train_mpi import run_distributed_training

        if MPI.COMM_WORLD.size > 1:
            if MPI.COMM_WORLD.rank == 0:
                print("\n".join(notes), end="\n" if notes else "")
            run_distributed_training(cfg, MPI.COMM_WORLD)
            return
    for note in notes:
        print(note)
    run_training(cfg)


def _run(args: argparse.Namespace) -> int:
    from . import tools

    if getattr(args, "kernel_module", None):
        from ..kernels.registry import load_all

        load_all(args.kernel_module)
    if args.command == "train":
        check_unsupported(args)
        train(dataclass_from_args(TrainConfig, args), reference_notes(args))
    elif args.command == "preprocess":
        return preprocess_cli.run(args)
    elif args.command == "predict":
        if bool(args.processed_data_file) == bool(args.raw_data_file):
            raise ValueError("give either --processed-data-file or --raw-data-file")
        rows = tools.predict_to_file(
            args.load_model,
            args.output,
            args.test_mini_batch_size,
            args.processed_data_file,
            args.split,
            args.raw_data_file,
            args.max_ind_range,
        )
        print(f"wrote {rows} probabilities to {args.output}")
    elif args.command == "kernels":
        from ..kernels.registry import listing
        from .kernels import check

        if args.check:
            check(args.check, args.bench)
        elif args.bench:
            raise ValueError("kernels --bench times the versions given by --check op=version")
        else:
            print(listing())
    elif args.command == "plot":
        tools.plot_metrics(args.metrics_file, args.output)
        print(f"wrote {args.output}")
    elif args.command == "convert":
        from .convert import convert

        to_torch = args.to_torch is not None
        convert(args.source, args.to_torch or args.from_torch, to_torch)
        print(f"wrote {args.to_torch or args.from_torch}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    try:
        return _run(args)
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
        return 0
    except (ValueError, FloatingPointError, OSError, ImportError, CheckpointError) as exc:
        print(f"numbadlrm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"numbadlrm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
