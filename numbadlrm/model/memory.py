"""How much memory a model needs, checked against what the machine has before allocating.

Bytes needed (float32 = 4 bytes; one estimate, used by DLRM, DistributedDLRM and the CLI):

    tables       sum over the tables held of rows x D x 4; a table replicated on every
                 MPI rank x 2 (its gradient lives in the allreduced buffer); with Adagrad
                 + rows x D x 4 (state), row-wise + rows x 4
    dense        2 x 4 x (MLP parameters): the flat parameter buffer and its gradients,
                 3 x with Adagrad or row-wise Adagrad (their state)
                 (bf16: + 4 x (MLP parameters), each weight's two bf16 packings)
    activations  per batch size B: 4 x B x (2 x (bottom widths + top widths) + 2 x T x D + 1),
                 the workspace (every activation and its gradient); bf16: 2 bytes a value
    data         what the data source holds (the synthetic generator's hidden model, a
                 dataset loader's shuffle window); given by the caller

Available: MemAvailable in /proc/meminfo (else sysconf's available pages), capped by the
cgroup's memory limit when one is set (a container), as limit - usage + page cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import DLRMConfig
from .params import mlp_slots

CGROUP = Path("/sys/fs/cgroup")


class OutOfMemoryError(ValueError):
    """The model does not fit: the message names the biggest tables and the bytes."""


@dataclass(frozen=True)
class MemoryNeed:
    """An estimate in bytes: the tables held, the rest by what it is."""

    tables: tuple[tuple[int, int, int], ...]  # (table, rows held, bytes)
    others: tuple[tuple[str, int], ...]  # (what, bytes)
    largest_layer: str  # e.g. "bottom_mlp.0 (13 -> 512)"

    @property
    def table_bytes(self) -> int:
        return sum(b for _, _, b in self.tables)

    @property
    def total(self) -> int:
        return self.table_bytes + sum(b for _, b in self.others)


def _trick_bytes(config: DLRMConfig, t: int, rows: int, optimizer: str) -> int:
    """Bytes of table t's stored tables, MD projection or pooling weights, with state."""
    plan = config.table_plans()[t]
    per_value = 8 if optimizer == "adagrad" else 4
    row_state = 4 if optimizer == "rwsadagrad" else 0
    if plan.kind == "plain" and not config.learned_pooling:
        return rows * (plan.dim * per_value + row_state)
    out = sum(n * (plan.dim * per_value + row_state) for n in plan.shapes_rows)
    if plan.kind == "md":
        out += config.sparse_feature_size * plan.dim * (4 if optimizer == "sgd" else 8)
    if config.learned_pooling:
        out += rows * (4 if optimizer == "sgd" else 8)
    return out


def estimate(
    config: DLRMConfig,
    batch_sizes: tuple[int, ...] = (),
    data: tuple[str, int] | None = None,
    tables: list[tuple[int, int]] | None = None,
    replicated: tuple[int, ...] = (),
    optimizer: str = "sgd",
    precision: str = "fp32",
) -> MemoryNeed:
    """Bytes one process needs for ``config`` (see the module docstring).

    tables: the (table, rows) this process holds (default: every whole table);
    replicated: tables held whole with their gradients (MPI); data: (what, bytes);
    optimizer: "sgd", "adagrad" or "rwsadagrad" (--optimizer);
    precision "bf16": the same tables and master weights (split in fp32's bytes), plus
    two bf16 packings of every MLP weight, and bf16 activations.
    """
    dim = config.sparse_feature_size
    held = list(enumerate(config.embedding_sizes)) if tables is None else list(tables)
    held += [(t, config.embedding_sizes[t]) for t in replicated]
    copies = {t: 2 for t in replicated}
    state = {"sgd": 0, "adagrad": dim * 4, "rwsadagrad": 4}[optimizer]  # bytes per row
    sized = [(t, r, r * (dim * 4 * copies.get(t, 1) + state)) for t, r in held]
    if config.compressed or config.learned_pooling:  # tables held whole (QR, MD) or weighted
        sized = [(t, r, _trick_bytes(config, t, r, optimizer)) for t, r in held]
    table_list = tuple(sorted(sized, key=lambda x: -x[2]))
    bottom, n = mlp_slots("bottom_mlp", config.bottom_sizes, 0)
    top, n = mlp_slots("top_mlp", config.top_sizes, n)
    big = max(bottom + top, key=lambda s: s.in_features * s.out_features)
    if optimizer == "sgd":
        others = [("dense parameters and gradients", 2 * 4 * n)]
    else:
        others = [("dense parameters, gradients and optimizer state", 3 * 4 * n)]
    bf16 = precision == "bf16"
    if bf16:
        others.append(("dense bf16 weight packings", 4 * n))
    if batch_sizes:
        widths = sum(config.bottom_sizes[1:]) + sum(config.top_sizes)
        per_row = (2 if bf16 else 4) * (2 * widths + 2 * config.num_tables * dim + 1)
        per_row += 2 * config.num_dense + 12 if bf16 else 0  # dense16; fp32 logits, ds, p
        sizes = ", ".join(str(b) for b in batch_sizes)
        others.append((f"activations for batches of {sizes}", per_row * sum(batch_sizes)))
    if data is not None:
        others.append(data)
    layer = f"{big.name} ({big.in_features:,} -> {big.out_features:,})"
    return MemoryNeed(table_list, tuple(others), layer)


def check_memory(
    need: MemoryNeed,
    available: int | None = None,
    node_total: int | None = None,
    where: str = "",
) -> None:
    """Raise OutOfMemoryError if ``need`` (or ``node_total``, what every process on
    this machine needs together) exceeds the available memory."""
    available = available_memory() if available is None else available
    total = need.total if node_total is None else node_total
    if available is not None and total > available:
        raise OutOfMemoryError(describe(need, available, node_total, where))


_HINTS = {
    "tables": "use fewer table rows (--arch-embedding-size; for a dataset, preprocess with a "
    "smaller --max-ind-range or a larger --min-count), a smaller --arch-sparse-feature-size, "
    "or more machines (mpiexec)",
    "dense": "use narrower MLP layers (--arch-mlp-bot, --arch-mlp-top)",
    "activations": "use smaller batches (--mini-batch-size, --test-mini-batch-size) or "
    "narrower MLP layers",
    "data": "use smaller tables (the synthetic generator keeps 20 bytes per table row)",
}


def describe(
    need: MemoryNeed, available: int | None, node_total: int | None = None, where: str = ""
) -> str:
    """The one-line message: bytes needed vs available, the parts largest first (the
    biggest tables and layer named), and what to change."""
    head = f"not enough memory: {where}the run needs {human(need.total)}"
    if node_total is not None:
        head += f" ({human(node_total)} for all ranks on this machine)"
    head += f" and {human(available)} are available" if available is not None else ""
    parts = []
    if need.tables:
        largest = ", ".join(f"table {t} {rows:,} rows {human(b)}" for t, rows, b in need.tables[:3])
        text = f"embedding tables {human(need.table_bytes)} ({len(need.tables)} tables; largest: "
        parts.append((need.table_bytes, "tables", text + largest + ")"))
    for what, nbytes in need.others:
        kind = what.split()[0] if what.split()[0] in ("dense", "activations") else "data"
        parts.append((nbytes, kind, f"{what} {human(nbytes)}"))
    parts.sort(key=lambda p: -p[0])
    mlp = next(i for i, p in enumerate(parts) if p[1] in ("dense", "activations"))
    parts[mlp] = (*parts[mlp][:2], f"{parts[mlp][2]} (largest layer {need.largest_layer})")
    return f"{head}: {'; '.join(p[2] for p in parts)}. To fit, {_HINTS[parts[0][1]]}"


@contextlib.contextmanager
def allocation_errors(need: MemoryNeed):
    """Turn a failed allocation (MemoryError, mmap's ENOMEM) into OutOfMemoryError: the
    estimate fit MemAvailable, but the system refused (overcommit or cgroup limits)."""
    try:
        yield
    except (MemoryError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
            raise
        available = available_memory()
        raise OutOfMemoryError(
            f"{describe(need, available)} (allocating failed: {exc}; the system gives less "
            "than it reports available, e.g. under a memory limit)"
        ) from None


def human(nbytes: int) -> str:
    """Decimal units, as disks and `free -h` report them: 16.6 GB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


# ---------------------------------------------------------------- what the machine has


def available_memory(root: Path = Path("/")) -> int | None:
    """Bytes available to this process now, or None if the system does not say."""
    found = _meminfo_available(root / "proc" / "meminfo")
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            found = None
    limit = _cgroup_headroom(root / CGROUP.relative_to("/"))
    if limit is not None:
        found = limit if found is None else min(found, limit)
    return found


def _meminfo_available(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom(cgroup: Path) -> int | None:
    """limit - usage + page cache of the cgroup (v2, else v1), if a limit is set."""
    for folder, limit_file, usage_file, cache_key in (
        ("", "memory.max", "memory.current", "file"),  # v2
        ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_cache"),  # v1
    ):
        try:
            text = (cgroup / folder / limit_file).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:  # no limit
                return None
            usage = int((cgroup / folder / usage_file).read_text())
            cache = 0
            for line in (cgroup / folder / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
            return max(int(text) - usage + cache, 0)
        except (OSError, ValueError):
            continue
    return None
