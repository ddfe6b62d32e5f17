"""The reference's command-line flags that have no TrainConfig field here.

Command lines written for the reference's ``dlrm_s_pytorch.py`` run unchanged under
``numbadlrm train``: every flag with a meaning here is a TrainConfig field (the same
name, the same meaning), and each of the others is one of

    NOTES        accepted; the run prints one line saying why it changes nothing here
                 (a GPU, worker processes, the reference's file formats, debug prints)
    UNSUPPORTED  accepted at the value that means "off" (the reference's default), and
                 refused with one line otherwise: they change the model or the training
                 in a way numbadlrm does not implement, so ignoring them would silently
                 train something else

The reference declares some switches ``type=bool`` (``--round-targets True``), under
which any non-empty word, "False" included, means True; here the words mean what they
say (:func:`parse_bool_word`), and every switch takes them (``--data-shuffle false``)
as well as its bare form and its ``--no-`` form.
"""

from __future__ import annotations

import argparse

_TRUE = ("true", "1", "yes", "on", "y", "t")
_FALSE = ("false", "0", "no", "off", "n", "f")


def parse_bool_word(text: str) -> bool:
    """'True'/'False' (any case), 1/0, yes/no, on/off -> bool; ValueError otherwise."""
    word = str(text).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected True or False, got {text!r}")


class BoolWordAction(argparse.Action):
    """``--flag`` (True), ``--flag True|False|1|0|yes|no``, ``--no-flag`` (False)."""

    def __init__(self, option_strings, dest, default=False, help=None, **kwargs):
        strings = list(option_strings)
        for s in option_strings:
            if s.startswith("--"):
                strings.append("--no-" + s[2:])
        super().__init__(strings, dest, nargs="?", default=default, help=help, metavar="BOOL")

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string}: takes no value")
            setattr(namespace, self.dest, False)
            return
        if values is None:
            setattr(namespace, self.dest, True)
            return
        try:
            setattr(namespace, self.dest, parse_bool_word(values))
        except ValueError as exc:
            parser.error(f"argument {option_string}: {exc}")

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


_SWITCH = {"action": "store_true", "default": False}
# flag -> (argparse keywords, why it changes nothing here)
NOTES: dict[str, tuple[dict, str]] = {
    "--use-gpu": (_SWITCH, "numbadlrm trains on CPUs"),
    "--dataset-multiprocessing": (
        _SWITCH, "preprocessing is already parallel (Numba) and resumable",
    ),
    "--debug-mode": (_SWITCH, "no debug prints; see model.state_dict() or --metrics-file"),
    "--memory-map": (_SWITCH, "processed data is always memory-mapped"),
    "--mlperf-bin-loader": (_SWITCH, "processed data is always read as binary batches"),
    "--mlperf-bin-shuffle": (_SWITCH, "--data-shuffle shuffles the train split every epoch"),
    "--num-workers": ({"type": int, "default": 0}, "batches are made by a background thread"),
    "--test-num-workers": (
        {"type": int, "default": -1}, "evaluation batches are made by a background thread",
    ),
    "--print-precision": ({"type": int, "default": 5}, "no parameter prints"),
    "--print-wall-time": (_SWITCH, "the progress bar shows the elapsed time"),
    "--sync-dense-params": (
        {"action": BoolWordAction, "default": True},
        "the MLPs are always synchronised (allreduce every step under MPI)",
    ),
    "--save-onnx": (_SWITCH, "no ONNX export; convert --to-torch writes the reference's format"),
    "--plot-compute-graph": (_SWITCH, "no graph plot"),
    "--tensor-board-filename": (
        {"default": "run_kaggle_pt"}, "no TensorBoard; --metrics-file and `numbadlrm plot`",
    ),
    "--local_rank": ({"type": int, "default": -1}, "launch with mpiexec -n R"),
    "--dist-backend": ({"default": ""}, "the MPI layer uses mpi4py"),
    "--data-randomize": ({"default": "total"}, "--data-shuffle shuffles the train split"),
    "--data-trace-file": ({"default": ""}, "no trace data generator"),
    "--data-trace-enable-padding": (
        {"action": BoolWordAction, "default": False}, "no trace data generator",
    ),
    "--rand-data-dist": ({"default": "uniform"}, "the built-in generators draw uniform ids"),
    "--rand-data-min": ({"type": float, "default": 0.0}, "the built-in generators' own range"),
    "--rand-data-max": ({"type": float, "default": 1.0}, "the built-in generators' own range"),
    "--rand-data-mu": ({"type": float, "default": -1.0}, "the built-in generators' own range"),
    "--rand-data-sigma": ({"type": float, "default": 1.0}, "the built-in generators' own range"),
}  # fmt: skip
# flag -> (argparse keywords, the value that means off, what is not implemented)
UNSUPPORTED: dict[str, tuple[dict, object, str]] = {
    "--activation-function": ({"default": "relu"}, "relu", "only relu is implemented"),
    "--loss-threshold": (
        {"type": float, "default": 0.0}, 0.0, "clamping the probabilities is not implemented",
    ),
    "--quantize-mlp-with-bit": ({"type": int, "default": 32}, 32, "MLPs train in float32"),
    "--quantize-emb-with-bit": ({"type": int, "default": 32}, 32, "tables train in float32"),
    "--mlperf-grad-accum-iter": (
        {"type": int, "default": 1}, 1, "gradient accumulation is not implemented",
    ),
}  # fmt: skip


def add_reference_flags(parser: argparse.ArgumentParser) -> None:
    """The NOTES and UNSUPPORTED flags, in their own help group."""
    group = parser.add_argument_group(
        "flags of the reference DLRM accepted for its command lines",
        "each one given prints a note (it changes nothing here) or, at a value that would "
        "change the model, an error naming what is not implemented",
    )
    for flag, (kwargs, note) in NOTES.items():
        group.add_argument(flag, **_names(flag, kwargs), help=f"no effect: {note}", **kwargs)
    for flag, (kwargs, off, what) in UNSUPPORTED.items():
        group.add_argument(flag, **_names(flag, kwargs), help=f"only {off!r}: {what}", **kwargs)


def _names(flag: str, kwargs: dict) -> dict:
    """dest (apart from TrainConfig's fields) and, for a flag taking a value, a metavar."""
    names = {"dest": _dest(flag)}
    if kwargs.get("action") is None:
        names["metavar"] = flag.lstrip("-").replace("-", "_").upper()
    return names


def _dest(flag: str) -> str:
    return "reference_" + flag.lstrip("-").replace("-", "_")


def reference_notes(args: argparse.Namespace) -> list[str]:
    """One note per NOTES flag given a value other than its default."""
    notes = []
    for flag, (kwargs, note) in NOTES.items():
        if getattr(args, _dest(flag)) != kwargs.get("default"):
            notes.append(f"note: {flag} changes nothing here: {note}")
    return notes


def check_unsupported(args: argparse.Namespace) -> None:
    """ValueError naming the first UNSUPPORTED flag set to anything but its off value."""
    for flag, (_, off, what) in UNSUPPORTED.items():
        value = getattr(args, _dest(flag))
        if value != off:
            raise ValueError(f"{flag} {value}: {what} (only {off!r} is accepted)")
