"""The readouts of a set of profiles: mAP (copairs) for activity and consistency, NSC / NSCB.

- **Phenotypic activity**: each treatment's replicate wells are the positives of each other, the
  negative-control wells the negatives (copairs' reference-index recipe); mAP per treatment, a
  permutation p-value, Benjamini-Hochberg q; *retrieved* = q < 0.05.
- **Phenotypic consistency**: on treatment profiles, treatments of one MoA (other compounds) are the
  positives, treatments of other MoAs the negatives; mAP per MoA.
- **NSC / NSCB** (Ljosa et al. 2013): 1-nearest-neighbour MoA accuracy over treatment profiles by
  cosine similarity; the neighbour must be another compound (NSC), and also from no batch the query
  treatment's wells came from (NSCB).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from chada.errors import InputError

__all__ = ["activity_map", "bootstrap_mean", "consistency_map", "nn_moa_accuracy"]

_REF = "_chada_reference_index"
Q_RETRIEVED = 0.05


def _copairs_map(ap: pd.DataFrame, sameby: list[str], null_size: int, seed: int) -> pd.DataFrame:
    from copairs.map import mean_average_precision

    return mean_average_precision(ap, sameby, null_size=null_size, threshold=Q_RETRIEVED, seed=seed,
                                  progress_bar=False, max_workers=1)  # fmt: skip


def _check_replicates(df: pd.DataFrame, treatment_cols: list[str], where: str) -> None:
    counts = df.groupby(treatment_cols, dropna=False).size()
    single = counts[counts < 2]
    if len(single):
        names = ", ".join("/".join(map(str, k if isinstance(k, tuple) else (k,))) for k in single.index[:5])
        raise InputError(f"{where}: treatment(s) with one replicate well, no mAP possible: {names}; "
                         "drop them or add replicates")  # fmt: skip


def activity_map(
    wells: pd.DataFrame, names: Sequence[str], treatment_cols: list[str], controls: np.ndarray,
    null_size: int = 2000, seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Phenotypic activity of every treatment against the controls: ``(per-well AP, per-treatment mAP)``.

    Args:
        wells: well profiles ``[W rows]``; ``controls`` ``[W]`` bool marks the negative controls.
    """
    from copairs.map import average_precision

    df = wells.reset_index(drop=True)
    if not controls.any():
        raise InputError("phenotypic activity: no negative-control well in the table")
    _check_replicates(df.loc[~controls], treatment_cols, "phenotypic activity")
    meta = df[treatment_cols].astype(str)
    meta[_REF] = np.where(controls, np.arange(len(df)), -1)
    meta["_tr"] = meta[treatment_cols].agg("|".join, axis=1)
    # a control row's unique reference index keeps controls from pairing with each other
    ap = average_precision(meta[["_tr", _REF]], df[list(names)].to_numpy(), pos_sameby=["_tr", _REF],
                           pos_diffby=[], neg_sameby=[], neg_diffby=["_tr", _REF], progress_bar=False)  # fmt: skip
    ap = ap[ap[_REF] == -1].copy()
    ap[treatment_cols] = df.loc[ap.index, treatment_cols].to_numpy()
    m = _copairs_map(ap, ["_tr"], null_size, seed)
    m = m.merge(ap.drop_duplicates("_tr")[["_tr", *treatment_cols]], on="_tr").drop(columns="_tr")
    return ap.drop(columns=["_tr", _REF]), m


def consistency_map(
    treatments: pd.DataFrame, names: Sequence[str], compound_col: str, moa_col: str,
    null_size: int = 2000, seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Phenotypic consistency: ``(per-treatment AP, per-MoA mAP)`` over treatment profiles of known MoA."""
    from copairs.map import average_precision

    df = treatments.reset_index(drop=True)
    sizes = df.groupby(moa_col)[compound_col].nunique()
    keep = df[moa_col].map(sizes).ge(2).to_numpy()  # an MoA of one compound has no positive pair
    if keep.sum() < 2:
        raise InputError(f"phenotypic consistency: no MoA in {moa_col!r} has two compounds")
    df = df.loc[keep].reset_index(drop=True)
    meta = df[[moa_col, compound_col]].astype(str)
    ap = average_precision(meta, df[list(names)].to_numpy(), pos_sameby=[moa_col], pos_diffby=[compound_col],
                           neg_sameby=[], neg_diffby=[moa_col], progress_bar=False)  # fmt: skip
    return ap, _copairs_map(ap, [moa_col], null_size, seed)


def _cosine(X: np.ndarray) -> np.ndarray:
    Xn = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return Xn @ Xn.T


def nn_moa_accuracy(
    X: np.ndarray, moa: Sequence, compound: Sequence, batches: Sequence[frozenset] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-treatment 1-NN MoA hit ``[T] bool`` and the neighbour's index ``[T]`` (-1: none allowed).

    Args:
        X: treatment profiles ``[T, F]``.
        moa, compound: ``[T]`` labels.
        batches: ``[T]`` sets of batch ids of each treatment's wells; when given (NSCB), the neighbour
            must share no batch with the query; else (NSC) it must only be another compound.
    """
    S = _cosine(np.asarray(X, dtype=np.float64))
    moa, compound = np.asarray(moa, dtype=object), np.asarray(compound, dtype=object)
    allowed = compound[:, None] != compound[None, :]
    if batches is not None:
        allowed &= np.array([[not (a & b) for b in batches] for a in batches], dtype=bool)
    S = np.where(allowed, S, -np.inf)
    nn = np.argmax(S, axis=1)
    nn[~allowed.any(axis=1)] = -1
    hit = (nn >= 0) & (moa[np.maximum(nn, 0)] == moa)
    return hit, nn


def bootstrap_mean(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, 2.5 %, 97.5 %)`` of ``values [T]`` resampled with replacement (treatments are the units)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(lo), float(hi)
