"""The settings of one profiling run (``chada profile`` options, or a ``profiles:`` config section)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from chada.errors import InputError

NORMALIZE_METHODS = ("none", "standardize", "mad_robustize", "spherize")
CORRECTIONS = ("none", "harmony")


@dataclass
class ProfileConfig:
    """Column names and steps. Defaults follow the synthetic plate's platemap (``plate``, ``well``,
    ``compound``, ``dose``, ``moa``) and DMSO negative controls."""

    plate_col: str = "plate"
    well_col: str = "well"
    compound_col: str = "compound"
    dose_col: str | None = "dose"
    moa_col: str | None = "moa"  # None: no MoA annotation, phenotypic activity only
    control_query: str = "compound == 'DMSO'"
    batch_cols: list[str] = field(default_factory=lambda: ["plate"])
    aggregate: str = "median"  # cells -> wells
    normalize: str = "mad_robustize"
    feature_select: list[str] = field(default_factory=list)  # pycytominer operations, e.g. ["variance_threshold"]
    correction: str = "none"
    harmony_sigma: float = 0.5  # Harmony's soft-clustering width (see normalize.correct_batches)
    exclude_moa: list[str] = field(default_factory=list)  # MoA labels left out of consistency / NSC (e.g. "inactive")
    null_size: int = 2000
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_METHODS:
            raise InputError(f"normalize={self.normalize!r}: choose one of {', '.join(NORMALIZE_METHODS)}")
        if self.correction not in CORRECTIONS:
            raise InputError(f"correction={self.correction!r}: choose one of {', '.join(CORRECTIONS)}")
        if self.aggregate not in ("median", "mean"):
            raise InputError(f"aggregate={self.aggregate!r}: choose median or mean")
        if isinstance(self.batch_cols, str):
            self.batch_cols = [self.batch_cols]

    @property
    def treatment_cols(self) -> list[str]:
        """The columns that name a treatment: compound x dose."""
        return [self.compound_col] + ([self.dose_col] if self.dose_col else [])

    @property
    def well_keys(self) -> list[str]:
        return [self.plate_col, self.well_col]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ProfileConfig:
        """From a config section; unknown keys are an error naming them."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"profiles config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)
