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
    sparse_feature_size: D.
    bottom_sizes: bottom MLP widths including its input; the last equals D.
    top_sizes: top MLP widths including its (computed) input; the last equals 1.
    """

    embedding_sizes: tuple[int, ...]
    sparse_feature_size: int
    bottom_sizes: tuple[int, ...]
    top_sizes: tuple[int, ...]
    interaction_op: str = "dot"
    interaction_itself: bool = False

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

    def to_dict(self) -> dict:
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
        missing, unknown = sorted(fields - set(data)), sorted(set(data) - fields)
        if missing or unknown:
            raise ValueError(
                f"missing fields {missing or 'none'}, unknown fields {unknown or 'none'}"
            )
        return cls(**data)


def interaction_width(op: str, itself: bool, num_tables: int, dim: int) -> int:
    """Width of the interaction's output, the top MLP's input."""
    f = num_tables + 1
    if op == "dot":
        return dim + num_pairs(f, itself)
    return f * dim
