"""Cells (or images) -> wells -> treatments, with pycytominer's ``aggregate``, keeping the counts.

A profile table here is a DataFrame: metadata columns, then one column per feature (the names are
passed beside it). Metadata that is constant within a group (compound, dose, MoA, batch) is carried
to the group's row; ``n_cells`` / ``n_wells`` count the rows that went into it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from chada.errors import InputError

__all__ = ["aggregate_rows", "to_frame"]

_COUNT = "_chada_row"  # a column pycytominer counts (its object_feature)


def to_frame(meta: pd.DataFrame, X: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """One table: ``meta`` columns then features ``X [N, F]`` named ``names``."""
    clash = sorted(set(meta.columns) & set(names))
    if clash:
        raise InputError(f"feature name(s) also used as metadata columns: {clash[:5]}; rename them")
    meta = meta.copy()
    for c in meta.columns:  # list cells (channel names of a feature file) cannot be grouped: join them
        if meta[c].dtype == object and meta[c].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            meta[c] = meta[c].map(
                lambda v: ";".join(map(str, v)) if isinstance(v, (list, tuple, np.ndarray)) else v
            )
    feats = pd.DataFrame(np.asarray(X, dtype=np.float64), columns=list(names), index=meta.index)
    return pd.concat([meta, feats], axis=1)


def _constant_meta(df: pd.DataFrame, strata: list[str], names: Sequence[str], skip: set[str]) -> pd.DataFrame:
    """Per group, the metadata columns that take one value in it (others are left out, not guessed)."""
    candidates = [c for c in df.columns if c not in set(names) | set(strata) | {_COUNT} | skip]
    if not candidates:
        return df[strata].drop_duplicates()
    g = df.groupby(strata, dropna=False, sort=True)
    nunique = g[candidates].nunique(dropna=False).max()
    keep = [c for c in candidates if nunique[c] <= 1]
    return g[keep].first().reset_index()


def aggregate_rows(
    df: pd.DataFrame,
    names: Sequence[str],
    strata: Sequence[str],
    operation: str = "median",
    count_col: str = "n_cells",
    weight_col: str | None = None,
) -> pd.DataFrame:
    """Rows -> one row per ``strata`` group: the ``operation`` (median/mean) of every feature.

    Args:
        df: metadata + feature columns (N rows).
        strata: the grouping columns (plate + well for wells; compound + dose for treatments).
        count_col: name of the output column that counts the rows of each group.
        weight_col: when given, also sum this column per group (e.g. cells per treatment).

    Returns:
        ``[G rows]``: the strata, the group-constant metadata, ``count_col``, the features.
    """
    strata = list(strata)
    missing = [c for c in strata if c not in df.columns]
    if missing:
        raise InputError(f"grouping column(s) {missing} not in the table; columns: {list(df.columns)[:10]}")
    import pycytominer

    work = df.assign(**{_COUNT: 1})
    for c in strata:  # pycytominer groups with dropna=True: a missing key would silently drop rows
        if work[c].isna().any():
            raise InputError(
                f"column {c!r} has {int(work[c].isna().sum())} empty value(s); fill them before profiling"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        agg = pycytominer.aggregate(
            work, strata=strata, features=list(names), operation=operation, output_type=None,
            compute_object_count=True, object_feature=_COUNT,
        )  # fmt: skip
    agg = agg.rename(columns={"Metadata_Object_Count": count_col})
    meta = _constant_meta(work, strata, names, {weight_col} if weight_col else set())
    out = meta.merge(agg, on=strata, how="inner", validate="one_to_one")
    if weight_col and weight_col in df.columns:
        sums = df.groupby(strata, sort=True)[weight_col].sum().rename(f"{weight_col}_total").reset_index()
        out = out.merge(sums, on=strata, how="left")
    front = [c for c in out.columns if c not in set(names)]
    return out[front + list(names)].reset_index(drop=True)
