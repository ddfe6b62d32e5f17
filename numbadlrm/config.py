"""Model configuration: a frozen dataclass validated on construction.

Shape letters used throughout numbadlrm (declared once, here):

    B  batch size                 T  number of embedding tables
    D  embedding dimension        F  = T + 1 feature vectors per sample
    P  interaction pairs: F(F-1)/2, or F(F+1)/2 with interaction_itself
    I  a layer's input features   O  a layer's output features

Architecture strings follow the reference DLRM (facebookresearch/dlrm):
``mlp_bot="13-512-256-64-16"`` lists every width of the bottom MLP including its
input; ``mlp_top="512-256-1"`` lists the top MLP's layers *after* its input, whose
width is computed from the interaction (D + P for "dot", F * D for "cat").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INTERACTION_OPS = ("dot", "cat")
QR_OPERATIONS = ("mult", "add", "concat")
POOLING_WEIGHTS = (None, "fixed", "learned")
# the reference's table tricks (issue 22), their defaults; to_dict writes only changed ones
TRICK_DEFAULTS = {
    "qr_flag": False,
    "qr_threshold": 200,
    "qr_collisions": 4,
    "qr_operation": "mult",
    "md_flag": False,
    "md_threshold": 200,
    "md_temperature": 0.3,
    "md_round_dims": False,
    "weighted_pooling": None,
}


def parse_arch(text: str | tuple[int, ...] | list[int], field: str) -> tuple[int, ...]:
    """Parse a dash-separated architecture string like ``"13-512-256"`` into ints."""
    if isinstance(text, (tuple, list)):
        parts = list(text)
    elif isinstance(text, str):
        if not text.strip():
            raise ValueError(f"{field}: empty architecture string")
        parts = text.strip().split("-")
    else:
        raise ValueError(f"{field}: expected a string like '13-512-256', got {text!r}")
    sizes = []
    for part in parts:
        try:
            if isinstance(part, (bool, float)):  # int() would accept True and truncate 7.5
                raise TypeError
            value = int(part)
        except (TypeError, ValueError):
            raise ValueError(f"{field}: {part!r} in {text!r} is not an integer") from None
        if value <= 0:
            raise ValueError(f"{field}: sizes must be positive, got {value} in {text!r}")
        sizes.append(value)
    return tuple(sizes)


def format_arch(sizes: tuple[int, ...]) -> str:
    return "-".join(str(s) for s in sizes)


def pair_indices(num_features: int, itself: bool) -> tuple[np.ndarray, np.ndarray]:
    """(li, lj) of the dot interaction's pairs of F features, int64: the row-major lower
    triangle (1,0), (2,0), (2,1), (3,0)... (with the diagonal (0,0), (1,1)... if itself)."""
    li = [i for i in range(num_features) for j in range(i + (1 if itself else 0))]
    lj = [j for i in range(num_features) for j in range(i + (1 if itself else 0))]
    return np.array(li, dtype=np.int64), np.array(lj, dtype=np.int64)


def num_pairs(num_features: int, interaction_itself: bool) -> int:
    """P: pairs kept by the dot interaction of F feature vectors."""
    f = num_features
    return f * (f + 1) // 2 if interaction_itself else f * (f - 1) // 2


def require_config(value: object, who: str) -> DLRMConfig:
    """``value`` if it is a DLRMConfig, else a one-line TypeError naming ``who``."""
    if not isinstance(value, DLRMConfig):
        raise TypeError(
            f"{who}: config must be a DLRMConfig (e.g. DLRMConfig.from_arch(...)), "
            f"got {type(value).__name__}"
        )
    return value


@dataclass(frozen=True)
class DLRMConfig:
    """The model's shape. Construct directly or with :meth:`from_arch`.

    embedding_sizes: rows of each table (length T).
    sparse_feature_size: D, the width of every pooled vector (the bottom MLP's output).

    The reference's table tricks (numbadlrm/model/compressed.py has their math):
    qr_*: quotient-remainder tables (qr_operation "concat": two D/2-wide halves);
    md_*: mixed-dimension tables with projections to D; weighted_pooling: None,
    "fixed" or "learned" per-row weights in the bag sums. See :meth:`table_plans`.
    bottom_sizes: bottom MLP widths including its input; the last equals D.
    top_sizes: top MLP widths including its (computed) input; the last equals 1.
    """

    embedding_sizes: tuple[int, ...]
    sparse_feature_size: int
    bottom_sizes: tuple[int, ...]
    top_sizes: tuple[int, ...]
    interaction_op: str = "dot"
    interaction_itself: bool = False
    qr_flag: bool = False
    qr_threshold: int = 200
    qr_collisions: int = 4
    qr_operation: str = "mult"
    md_flag: bool = False
    md_threshold: int = 200
    md_temperature: float = 0.3
    md_round_dims: bool = False
    weighted_pooling: str | None = None

    def __post_init__(self) -> None:
        for name in ("embedding_sizes", "bottom_sizes", "top_sizes"):
            object.__setattr__(self, name, parse_arch(getattr(self, name), name))
        d = self.sparse_feature_size
        if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
            raise ValueError(f"sparse_feature_size: must be a positive integer, got {d!r}")
        if self.interaction_op not in INTERACTION_OPS:
            raise ValueError(
                f"interaction_op: must be one of {INTERACTION_OPS}, got {self.interaction_op!r}"
            )
        if not isinstance(self.interaction_itself, bool):
            raise ValueError(f"interaction_itself: must be a bool, got {self.interaction_itself!r}")
        if len(self.bottom_sizes) < 2:
            raise ValueError(f"bottom_sizes: need at least 2 widths, got {self.bottom_sizes}")
        if self.bottom_sizes[-1] != d:
            raise ValueError(
                f"bottom_sizes: the bottom MLP's last width ({self.bottom_sizes[-1]}) must equal "
                f"sparse_feature_size ({d})"
            )
        if len(self.top_sizes) < 2:
            raise ValueError(f"top_sizes: need at least 2 widths, got {self.top_sizes}")
        if self.top_sizes[0] != self.interaction_width:
            raise ValueError(
                f"top_sizes: the top MLP's input width ({self.top_sizes[0]}) must equal the "
                f"interaction's output width ({self.interaction_width} for "
                f"{self.interaction_op!r} with T={self.num_tables}, D={d})"
            )
        if self.top_sizes[-1] != 1:
            raise ValueError(f"top_sizes: the last width must be 1, got {self.top_sizes[-1]}")
        _check_tricks(self)

    @classmethod
    def from_arch(
        cls,
        sparse_feature_size: int,
        embedding_size: str,
        mlp_bot: str,
        mlp_top: str,
        interaction_op: str = "dot",
        interaction_itself: bool = False,
    ) -> DLRMConfig:
        """Build from the reference's architecture strings (see the module docstring)."""
        tables = parse_arch(embedding_size, "embedding_size")
        bottom = parse_arch(mlp_bot, "mlp_bot")
        top = parse_arch(mlp_top, "mlp_top")
        if interaction_op not in INTERACTION_OPS:
            raise ValueError(
                f"interaction_op: must be one of {INTERACTION_OPS}, got {interaction_op!r}"
            )
        width = interaction_width(interaction_op, interaction_itself, len(tables), bottom[-1])
        return cls(
            embedding_sizes=tables,
            sparse_feature_size=sparse_feature_size,
            bottom_sizes=bottom,
            top_sizes=(width, *top),
            interaction_op=interaction_op,
            interaction_itself=interaction_itself,
        )

    @property
    def num_tables(self) -> int:  # T
        return len(self.embedding_sizes)

    @property
    def num_dense(self) -> int:  # the bottom MLP's input width
        return self.bottom_sizes[0]

    @property
    def interaction_width(self) -> int:
        return interaction_width(
            self.interaction_op, self.interaction_itself, self.num_tables, self.sparse_feature_size
        )

    def arch_strings(self) -> dict[str, str]:
        """The reference-style strings that rebuild this config with :meth:`from_arch`."""
        return {
            "embedding_size": format_arch(self.embedding_sizes),
            "mlp_bot": format_arch(self.bottom_sizes),
            "mlp_top": format_arch(self.top_sizes[1:]),
        }

    @property
    def compressed(self) -> bool:
        """True with QR or MD tables (stored table by table, model/compressed.py)."""
        return self.qr_flag or self.md_flag

    @property
    def learned_pooling(self) -> bool:
        return self.weighted_pooling == "learned"

    def table_plans(self) -> tuple[TablePlan, ...]:
        """How each of the T tables is stored (see :class:`TablePlan`)."""
        d = self.sparse_feature_size
        dims = md_solver(self.embedding_sizes, self.md_temperature, d, self.md_round_dims)
        plans = []
        for n, width in zip(self.embedding_sizes, dims, strict=True):
            if self.qr_flag and n > self.qr_threshold:
                half = d // 2 if self.qr_operation == "concat" else d
                plans.append(
                    TablePlan("qr", n, (-(-n // self.qr_collisions), self.qr_collisions), half)
                )
            elif self.md_flag and n > self.md_threshold and width < d:
                plans.append(TablePlan("md", n, (n,), width))
            else:
                plans.append(TablePlan("plain", n, (n,), d))
        return tuple(plans)

    def to_dict(self) -> dict:
        tricks = {k: getattr(self, k) for k, v in TRICK_DEFAULTS.items() if getattr(self, k) != v}
        return {**self._base_dict(), **tricks}

    def _base_dict(self) -> dict:
        return {
            "embedding_sizes": list(self.embedding_sizes),
            "sparse_feature_size": self.sparse_feature_size,
            "bottom_sizes": list(self.bottom_sizes),
            "top_sizes": list(self.top_sizes),
            "interaction_op": self.interaction_op,
            "interaction_itself": self.interaction_itself,
        }

    @classmethod
    def from_dict(cls, data: dict) -> DLRMConfig:
        """The inverse of :meth:`to_dict`; ValueError names a missing or unknown key."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a dict of config fields, got {type(data).__name__}")
        fields = set(cls.__dataclass_fields__)
        missing = sorted(fields - set(data) - set(TRICK_DEFAULTS))
        unknown = sorted(set(data) - fields)
        if missing or unknown:
            raise ValueError(
                f"missing fields {missing or 'none'}, unknown fields {unknown or 'none'}"
            )
        return cls(**data)


@dataclass(frozen=True)
class TablePlan:
    """How one logical table of ``rows`` rows is stored.

    kind "plain": one (rows, D) table. "qr": a quotient table (ceil(rows/c), dim) indexed
    id // c and a remainder table (c, dim) indexed id % c (dim = D, or D/2 for concat).
    "md": a narrow (rows, dim) table, dim < D, and a bias-free projection (D, dim).
    """

    kind: str
    rows: int
    shapes_rows: tuple[int, ...]  # the stored tables' rows
    dim: int


def md_solver(sizes, temperature: float, d0: int, round_dims: bool) -> tuple[int, ...]:
    """The reference's md_solver (tricks/md_embedding_bag.py) with d0 = D: the table with
    the fewest rows keeps D; table i gets round(D (n_min / n_i)^temperature), at least 1,
    rounded to a power of 2 with ``round_dims`` (each at most D here: the reference's
    power-of-2 rounding can exceed a D that is not one). Ties keep the input order."""
    n = np.asarray(sizes, dtype=np.float64)
    if n.size == 0:
        return ()
    order = np.argsort(n, kind="stable")
    n_min = n[order[0]]
    d = np.maximum(np.round(d0 * (n_min / n) ** temperature), 1.0)
    d[order[0]] = d0
    if round_dims:
        d = 2.0 ** np.round(np.log2(d))
    return tuple(int(min(v, d0)) for v in d)


def _check_tricks(c: DLRMConfig) -> None:
    """ValueError for table-trick settings that do not fit together (one line each)."""
    for name in ("qr_flag", "md_flag", "md_round_dims"):
        if not isinstance(getattr(c, name), bool):
            raise ValueError(f"{name}: must be a bool, got {getattr(c, name)!r}")
    for name, low in (("qr_threshold", 0), ("qr_collisions", 1), ("md_threshold", 0)):
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")
    t = c.md_temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t < 0:
        raise ValueError(f"md_temperature: must be a finite number >= 0, got {t!r}")
    if c.qr_operation not in QR_OPERATIONS:
        raise ValueError(f"qr_operation: must be one of {QR_OPERATIONS}, got {c.qr_operation!r}")
    if c.weighted_pooling not in POOLING_WEIGHTS:
        raise ValueError(
            f"weighted_pooling: must be 'fixed', 'learned' or None, got {c.weighted_pooling!r}"
        )
    if c.qr_flag and c.md_flag:
        raise ValueError("qr_flag and md_flag: choose one table trick, not both")
    if c.weighted_pooling is not None and c.compressed:
        raise ValueError("weighted_pooling: not combined with QR or MD tables (as the reference)")
    if c.qr_flag and c.qr_operation == "concat" and c.sparse_feature_size % 2:
        raise ValueError(
            f"qr_operation 'concat': the pooled width D = {c.sparse_feature_size} (the bottom "
            "MLP's output) must be even, twice the tables' width"
        )


def interaction_width(op: str, itself: bool, num_tables: int, dim: int) -> int:
    """Width of the interaction's output, the top MLP's input."""
    f = num_tables + 1
    if op == "dot":
        return dim + num_pairs(f, itself)
    return f * dim
