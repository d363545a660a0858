"""Per-plate normalisation against negative controls, feature selection and batch correction.

Every step takes and returns a profile table (metadata + feature columns) and the feature names.

- ``standardize`` / ``mad_robustize``: per plate, ``(x - centre) / scale`` with the centre and scale
  of that plate's negative-control wells (pycytominer ``normalize(samples=<control query>)``).
- ``spherize``: the JUMP recipe: ``mad_robustize`` per plate, then one ZCA-cor whitening fitted on
  the negative controls of all plates (pycytominer ``normalize(method="spherize")``).
- ``harmony``: harmonypy's Harmony on the well profiles, the batch column(s) as covariates.

A feature that is constant or not finite after a step is dropped with a warning that names it, and
so is a feature without spread among one plate's negative controls (scale 0: MAD for
``mad_robustize``, SD for ``standardize``). pycytominer divides by ``scale + 1e-18`` there, so a
feature that is 0 in most control cells (CellProfiler's granularity at large scales, Zernike phases)
came out near 1e18 in the other wells and drowned every other feature in the cosine similarities.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from chada.errors import InputError

__all__ = ["correct_batches", "drop_bad_features", "normalize_plates", "select_features"]


def _quiet():
    """pycytominer and harmonypy print and warn per call; the run reports its own summary."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def control_mask(df: pd.DataFrame, control_query: str) -> np.ndarray:
    """Boolean ``[N]``: the rows the control query selects (a bad query is a one-line error)."""
    try:
        idx = df.reset_index(drop=True).query(control_query).index
    except Exception as exc:  # pandas raises several types for a bad expression
        raise InputError(f"control query {control_query!r} does not run on the table: {exc}") from None
    mask = np.zeros(len(df), dtype=bool)
    mask[np.asarray(idx)] = True
    return mask


def drop_bad_features(df: pd.DataFrame, names: Sequence[str], step: str) -> tuple[pd.DataFrame, list[str]]:
    """Drop features with a non-finite value or no variance; warn with their names."""
    X = df[list(names)].to_numpy(dtype=np.float64)
    finite = np.isfinite(X).all(axis=0)
    spread = np.zeros(len(names), dtype=bool)
    spread[finite] = np.ptp(X[:, finite], axis=0) > 1e-12 * (1 + np.abs(X[:, finite]).max(axis=0))
    bad = [n for n, ok in zip(names, finite & spread) if not ok]
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        warnings.warn(f"{step}: dropped {len(bad)} feature(s) constant or NaN: {shown}", stacklevel=2)
    keep = [n for n in names if n not in set(bad)]
    if not keep:
        raise InputError(f"{step}: every feature is constant or NaN; nothing left to profile")
    return df.drop(columns=bad), keep


def _flat_on_controls(df: pd.DataFrame, names: list[str], plate_col: str, control_query: str, method: str) -> list[str]:
    """Features whose negative controls have no spread (MAD or SD 0) on some plate, in ``names`` order."""
    flat = np.zeros(len(names), dtype=bool)
    for _, sub in df.groupby(plate_col, sort=False):
        X = sub.loc[control_mask(sub, control_query), names].to_numpy(dtype=np.float64)
        if len(X) == 0:
            continue  # _per_plate names the plate
        centre = np.median(X, axis=0)
        scale = np.median(np.abs(X - centre), axis=0) if method == "mad_robustize" else X.std(axis=0)
        flat |= scale <= 1e-12 * (1 + np.abs(centre))
    return [n for n, f in zip(names, flat) if f]


def _per_plate(df: pd.DataFrame, names: list[str], plate_col: str, control_query: str, method: str) -> pd.DataFrame:
    import pycytominer

    meta_cols = [c for c in df.columns if c not in set(names)]
    parts = []
    for plate, sub in df.groupby(plate_col, sort=False):
        sub = sub.reset_index(drop=True)
        n_ctrl = int(control_mask(sub, control_query).sum())
        if n_ctrl == 0:
            raise InputError(f"plate {plate!r}: no negative-control well ({control_query}); every plate needs some")
        with _quiet():
            parts.append(pycytominer.normalize(
                sub, features=names, meta_features=meta_cols, samples=control_query, method=method, output_type=None,
            ))  # fmt: skip
    return pd.concat(parts, ignore_index=True)


def normalize_plates(
    df: pd.DataFrame, names: Sequence[str], plate_col: str, control_query: str, method: str
) -> tuple[pd.DataFrame, list[str]]:
    """Well profiles ``[W rows]`` normalised per plate against the controls; returns ``(table, names)``."""
    names = list(names)
    if plate_col not in df.columns:
        raise InputError(f"plate column {plate_col!r} not in the table; columns: {list(df.columns)[:10]}")
    if method == "none":
        return df.reset_index(drop=True), names
    df, names = drop_bad_features(df, names, "before normalisation")
    how = "standardize" if method == "standardize" else "mad_robustize"
    flat = _flat_on_controls(df, names, plate_col, control_query, how)
    if flat:
        shown = ", ".join(flat[:8]) + (f" and {len(flat) - 8} more" if len(flat) > 8 else "")
        if len(flat) == len(names):
            raise InputError(f"{how}: no feature varies among the negative controls of every plate ({control_query}); "
                             "add control wells or use --normalize none")  # fmt: skip
        warnings.warn(f"{how}: dropped {len(flat)} feature(s) without spread among a plate's negative controls "
                      f"(scale 0): {shown}", stacklevel=2)  # fmt: skip
        df, names = df.drop(columns=flat), [n for n in names if n not in set(flat)]
    out = _per_plate(df, names, plate_col, control_query, how)
    out, names = drop_bad_features(out, names, f"after {method} per plate")
    if method == "spherize":
        import pycytominer

        meta_cols = [c for c in out.columns if c not in set(names)]
        with _quiet():
            out = pycytominer.normalize(
                out, features=names, meta_features=meta_cols, samples=control_query, method="spherize",
                output_type=None,
            )  # fmt: skip
        out, names = drop_bad_features(out, names, "after spherize")
    return out, names


def select_features(df: pd.DataFrame, names: Sequence[str], operations: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """pycytominer ``feature_select`` (variance_threshold, correlation_threshold, drop_na_columns, ...)."""
    if not operations:
        return df, list(names)
    import pycytominer

    with _quiet():
        out = pycytominer.feature_select(
            df, features=list(names), operation=list(operations), output_type=None
        )
    kept = [n for n in names if n in out.columns]
    if not kept:
        raise InputError(f"feature_select {list(operations)} removed every feature")
    return out, kept


def correct_batches(
    df: pd.DataFrame, names: Sequence[str], batch_cols: Sequence[str], seed: int = 0, sigma: float = 0.5
) -> pd.DataFrame:
    """Harmony (harmonypy) on the profiles ``[W, F]`` with ``batch_cols`` as the covariates.

    Features are z-scored over all wells first (Harmony expects comparable scales, as PCs are) and
    scaled back after. ``sigma`` is Harmony's soft-clustering width: its default 0.1 leaves batches
    that are far apart in their own clusters, and then nothing is corrected (seen on the synthetic
    table: the output equalled the input to 1e-7).
    """
    missing = [c for c in batch_cols if c not in df.columns]
    if missing:
        raise InputError(f"batch column(s) {missing} not in the table; columns: {list(df.columns)[:10]}")
    if df[list(batch_cols)].drop_duplicates().shape[0] < 2:
        warnings.warn(f"harmony: one batch only in {list(batch_cols)}; nothing to correct", stacklevel=2)
        return df
    import harmonypy

    X = df[list(names)].to_numpy(dtype=np.float64)
    mu, sd = X.mean(axis=0), np.maximum(X.std(axis=0), 1e-12)
    meta = df[list(batch_cols)].astype(str)
    with _quiet():
        ho = harmonypy.run_harmony((X - mu) / sd, meta, list(batch_cols), sigma=sigma, random_state=seed,
                                   verbose=False, max_iter_harmony=20)  # fmt: skip
    Z = np.asarray(ho.Z_corr)  # harmonypy 2.x: [W, F] (1.x returned [F, W])
    Z = Z if Z.shape == X.shape else Z.T
    out = df.copy()
    out[list(names)] = Z * sd + mu
    return out
