"""The settings of one profiling run (``chada profile`` options, or a ``profiles:`` config section)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from typing import Any

from chada.config_reader import check_keys, choice, coerce
from chada.errors import InputError

NORMALIZE_METHODS = ("none", "standardize", "mad_robustize", "spherize")
CORRECTIONS = ("none", "harmony")
_LISTS = ("batch_cols", "feature_select", "exclude_moa")  # a single name is a list of one


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
    feature_select: list[str] = field(
        default_factory=list
    )  # pycytominer operations, e.g. ["variance_threshold"]
    correction: str = "none"
    harmony_sigma: float = 0.5  # Harmony's soft-clustering width (see normalize.correct_batches)
    exclude_moa: list[str] = field(
        default_factory=list
    )  # MoA labels left out of consistency / NSC (e.g. "inactive")
    null_size: int = 2000
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.batch_cols, str):
            self.batch_cols = [self.batch_cols]
        try:  # the project's one config reader: one error format (``profiles.normalize: expected ...``)
            choice(self.normalize, "profiles.normalize", NORMALIZE_METHODS)
            choice(self.correction, "profiles.correction", CORRECTIONS)
            choice(self.aggregate, "profiles.aggregate", ("median", "mean"))
        except ValueError as exc:
            raise InputError(str(exc)) from None

    @property
    def treatment_cols(self) -> list[str]:
        """The columns that name a treatment: compound x dose."""
        return [self.compound_col] + ([self.dose_col] if self.dose_col else [])

    @property
    def well_keys(self) -> list[str]:
        return [self.plate_col, self.well_col]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ProfileConfig:
        """From a config section, typed by :mod:`chada.config_reader` (unknown keys and values of the
        wrong type are one-line errors naming the ``profiles.<key>``)."""
        d = {k: [v] if isinstance(v, str) and k in _LISTS else v for k, v in (d or {}).items()}
        hints = typing.get_type_hints(cls)
        try:
            check_keys(d, [f.name for f in fields(cls)], "profiles.")
            values = {k: coerce(v, hints[k], f"profiles.{k}") for k, v in d.items()}
        except (ValueError, TypeError) as exc:
            raise InputError(str(exc)) from None
        return cls(**values)
