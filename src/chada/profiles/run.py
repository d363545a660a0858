"""One model's feature table -> well and treatment profiles and their readouts (``chada profile``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from chada.errors import InputError
from chada.profiles.aggregate import aggregate_rows
from chada.profiles.config import ProfileConfig
from chada.profiles.normalize import control_mask, correct_batches, normalize_plates, select_features
from chada.profiles.readouts import (
    Q_RETRIEVED,
    activity_map,
    bootstrap_mean,
    consistency_map,
    nn_moa_accuracy,
)

__all__ = ["ProfileResult", "profile_table", "summarize"]


@dataclass
class ProfileResult:
    """Profiles and readouts of one model. ``per_treatment`` holds the paired items of comparisons:
    one row per treatment (activity AP, retrieved, NSC hit, NSCB hit)."""

    wells: pd.DataFrame
    treatments: pd.DataFrame
    names: list[str]
    activity: pd.DataFrame
    consistency: pd.DataFrame
    per_treatment: pd.DataFrame
    readouts: dict[str, dict[str, float]] = field(default_factory=dict)


def _check_columns(df: pd.DataFrame, cfg: ProfileConfig) -> None:
    need = {"plate": cfg.plate_col, "well": cfg.well_col, "compound": cfg.compound_col}
    if cfg.moa_col:
        need["moa"] = cfg.moa_col
    if cfg.dose_col:
        need["dose"] = cfg.dose_col
    for i, b in enumerate(cfg.batch_cols):
        need[f"batch {i + 1}"] = b
    missing = [f"{v!r} ({k})" for k, v in need.items() if v not in df.columns]
    if missing:
        raise InputError(f"column(s) {', '.join(missing)} not in the feature table; columns: {list(df.columns)[:12]}; "
                         "name them with the --*-col / --batch-col options")  # fmt: skip


def well_profiles(
    cells: pd.DataFrame, names: Sequence[str], cfg: ProfileConfig
) -> tuple[pd.DataFrame, list[str]]:
    """Cells -> wells -> normalised (+ selected, + corrected) well profiles ``[W rows]``."""
    _check_columns(cells, cfg)
    wells = aggregate_rows(cells, names, cfg.well_keys, cfg.aggregate, count_col="n_cells")
    wells, names = normalize_plates(wells, names, cfg.plate_col, cfg.control_query, cfg.normalize)
    wells, names = select_features(wells, names, cfg.feature_select)
    if cfg.correction == "harmony":
        wells = correct_batches(wells, names, cfg.batch_cols, seed=cfg.seed, sigma=cfg.harmony_sigma)
    return wells, names


def _batch_sets(wells: pd.DataFrame, treatments: pd.DataFrame, cfg: ProfileConfig) -> list[frozenset]:
    key = wells[cfg.batch_cols].astype(str).agg("|".join, axis=1)
    sets = key.groupby([wells[c] for c in cfg.treatment_cols], sort=False).agg(frozenset)
    return [
        sets.loc[tuple(r) if len(r) > 1 else r[0]]
        for r in treatments[cfg.treatment_cols].itertuples(index=False)
    ]


def _nn_readouts(wells: pd.DataFrame, tr: pd.DataFrame, names: list[str], cfg: ProfileConfig) -> pd.DataFrame:
    """Per treatment of known MoA: NSC and NSCB hits (NaN where no neighbour is allowed)."""
    X = tr[names].to_numpy()
    moa, cpd = tr[cfg.moa_col].to_numpy(), tr[cfg.compound_col].to_numpy()
    out = tr[cfg.treatment_cols + [cfg.moa_col]].copy()
    for name, batches in (("nsc", None), ("nscb", _batch_sets(wells, tr, cfg))):
        hit, nn = nn_moa_accuracy(X, moa, cpd, batches)
        out[name] = np.where(nn >= 0, hit.astype(float), np.nan)
    return out


def _moa_readouts(
    per: pd.DataFrame, treated: pd.DataFrame, tr: pd.DataFrame, names: list[str], cfg: ProfileConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Consistency AP and NSC/NSCB hits joined to ``per`` (one row per treatment); ``(per, per-MoA mAP)``."""
    if cfg.moa_col not in tr.columns:
        raise InputError(
            f"MoA column {cfg.moa_col!r} takes several values within one treatment; one per compound x dose"
        )
    known = tr[~tr[cfg.moa_col].isin(cfg.exclude_moa) & tr[cfg.moa_col].notna()].reset_index(drop=True)
    ap_c, cons = consistency_map(known, names, cfg.compound_col, cfg.moa_col, cfg.null_size, cfg.seed)
    per = per.merge(_nn_readouts(treated, known, names, cfg), on=cfg.treatment_cols, how="left")
    ap_c = ap_c.assign(**{c: known.loc[ap_c.index, c].to_numpy() for c in cfg.treatment_cols})
    per = per.merge(ap_c[cfg.treatment_cols + ["average_precision"]].rename(
        columns={"average_precision": "consistency_ap"}), on=cfg.treatment_cols, how="left")  # fmt: skip
    return per, cons


def profile_table(cells: pd.DataFrame, names: Sequence[str], cfg: ProfileConfig) -> ProfileResult:
    """The whole chain for one feature table ``cells [N rows]`` (cells, images or wells).

    Without an MoA column (``cfg.moa_col`` None) only phenotypic activity is scored; the MoA
    readouts are NaN with ``n`` 0.
    """
    wells, names = well_profiles(cells, names, cfg)
    ctrl = control_mask(wells, cfg.control_query)
    _, act = activity_map(wells, names, cfg.treatment_cols, ctrl, cfg.null_size, cfg.seed)
    treated = wells.loc[~ctrl].reset_index(drop=True)
    tr = aggregate_rows(
        treated, names, cfg.treatment_cols, cfg.aggregate, count_col="n_wells", weight_col="n_cells"
    )
    tr.insert(
        len(cfg.treatment_cols), "batches", ["+".join(sorted(b)) for b in _batch_sets(treated, tr, cfg)]
    )
    per = act[cfg.treatment_cols + ["mean_average_precision", "corrected_p_value"]].rename(
        columns={"mean_average_precision": "activity_map", "corrected_p_value": "activity_q"}
    )
    per["retrieved"] = (per["activity_q"] < Q_RETRIEVED).astype(float)
    cons = pd.DataFrame()
    if cfg.moa_col:
        per, cons = _moa_readouts(per, treated, tr, names, cfg)
    res = ProfileResult(wells, tr, names, act, cons, per)
    res.readouts = summarize(per, cfg.n_boot, cfg.seed)
    return res


READOUTS = {
    "activity_map": "mean activity mAP over treatments",
    "retrieved": f"fraction of treatments retrieved (activity q < {Q_RETRIEVED})",
    "consistency_ap": "mean consistency AP over treatments of known MoA",
    "nsc": "NSC 1-NN MoA accuracy",
    "nscb": "NSCB 1-NN MoA accuracy",
}


def summarize(per: pd.DataFrame, n_boot: int, seed: int) -> dict[str, dict[str, float]]:
    """``{readout: {value, ci_low, ci_high, n}}``, intervals by bootstrap over treatments."""
    out = {}
    for col in READOUTS:
        v = per[col].dropna().to_numpy(dtype=float) if col in per.columns else np.zeros(0)
        mean, lo, hi = bootstrap_mean(v, n_boot, seed)
        out[col] = {"value": mean, "ci_low": lo, "ci_high": hi, "n": int(v.size)}
    return out
