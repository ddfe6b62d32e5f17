"""The ``numbadlrm`` command. Options are generated from the config dataclasses' fields.

    numbadlrm train [--arch-mlp-bot 13-512-256-64-16 ...]   train (default: built-in data)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from .train import TrainConfig, run_training


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag-name`` per field; bool fields become switches."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=meta.get("help"))
            continue
        if isinstance(kind, types.UnionType):  # e.g. int | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        parser.add_argument(flag, type=kind, default=f.default, choices=meta.get("choices"),
                            help=meta.get("help"))


def dataclass_from_args(cls: type, args: argparse.Namespace):
    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="numbadlrm", description="Autograd-free DLRM training on CPUs (Numba + MPI)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a DLRM", formatter_class=_Formatter)
    add_dataclass_options(train, TrainConfig)
    return parser


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            cfg = dataclass_from_args(TrainConfig, args)
            run_training(cfg)
            return 0
    except (ValueError, FloatingPointError, OSError) as exc:
        print(f"numbadlrm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
