"""How raw Criteo files become arrays: :class:`PreprocessOptions` (the format and the
transform are in :mod:`numbadlrm.data.criteo`)."""

from __future__ import annotations

from dataclasses import dataclass

from numbadlrm.data.metadata import FORMAT_VERSION

SPLIT_MODES = ("kaggle", "days", "fractions")


@dataclass(frozen=True)
class PreprocessOptions:
    """How to turn raw files into arrays. ``max_ind_range > 0`` hashes, else vocabulary."""

    split: str = "fractions"  # "kaggle" | "days" | "fractions"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_ind_range: int = 0
    min_count: int = 0  # vocabulary mode threshold; 0 means 1 (keep every seen value)
    skip_bad_lines: bool = False
    chunk_bytes: int = 8 << 20
    sub_sample_rate: float = 0.0  # drop each label-0 line with this probability

    def __post_init__(self) -> None:
        if self.split not in SPLIT_MODES:
            raise ValueError(f"split: must be one of {SPLIT_MODES}, got {self.split!r}")
        fr = tuple(float(f) for f in self.split_fractions)
        object.__setattr__(self, "split_fractions", fr)
        if len(fr) != 3 or not all(0 <= f <= 1 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(  # (NaN fails 0 <= f)
                f"split_fractions: need three fractions in [0, 1] summing to 1, got {fr}"
            )
        if not 0 <= self.max_ind_range <= 2**31 - 1:
            raise ValueError(f"max_ind_range: must be in [0, 2**31 - 1], got {self.max_ind_range}")
        if self.min_count < 0:
            raise ValueError(f"min_count: must be >= 0, got {self.min_count}")
        if self.max_ind_range > 0 and self.min_count > 0:
            raise ValueError("choose one of max_ind_range (hashing) and min_count (vocabulary)")
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes: must be >= 1, got {self.chunk_bytes}")
        if not 0.0 <= self.sub_sample_rate < 1.0:
            raise ValueError(f"sub_sample_rate: must be in [0, 1), got {self.sub_sample_rate}")

    @property
    def hashing(self) -> bool:
        return self.max_ind_range > 0

    def output_key(self) -> dict:
        """The options that change the output arrays (part markers must match them)."""
        key = {
            "format_version": FORMAT_VERSION,
            "max_ind_range": self.max_ind_range,
            "min_count": 0 if self.hashing else max(self.min_count, 1),
            "skip_bad_lines": self.skip_bad_lines,
        }
        if self.sub_sample_rate:  # absent when 0: earlier outputs stay valid
            key["sub_sample_rate"] = self.sub_sample_rate
        return key
