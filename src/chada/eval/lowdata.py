"""Low-data regimes: seeded, stratified fractions of a probe's training split, and train/test splits.

``stratified_fraction_indices(labels, 0.01, seed)`` keeps, in every class c with n_c rows,
``max(1, round(fraction * n_c))`` rows drawn without replacement by ``numpy.random.default_rng(seed)``,
so every class keeps at least one example and the class proportions follow the full split. For
regression targets, "classes" are ``n_bins`` quantile bins of the target.
Indices are returned sorted (positions into ``labels``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["quantile_bins", "stratified_fraction_indices", "stratified_split"]


def quantile_bins(values: Sequence[float], n_bins: int = 10) -> np.ndarray:
    """``[N]`` integer bin of each value (equal-count quantile bins) for stratifying continuous targets."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("values contain NaN or inf")
    edges = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]) if len(v) else np.array([])
    return np.searchsorted(edges, v, side="right")


def _strata(labels: Sequence, regression: bool, n_bins: int) -> np.ndarray:
    if regression:
        return quantile_bins(labels, n_bins)
    arr = np.asarray([str(v) for v in labels])
    return np.unique(arr, return_inverse=True)[1]


def stratified_fraction_indices(
    labels: Sequence,
    fraction: float,
    seed: int,
    *,
    regression: bool = False,
    n_bins: int = 10,
) -> np.ndarray:
    """Sorted row positions of a stratified ``fraction`` of ``labels`` (>= 1 row per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(labels)
    if n == 0:
        raise ValueError("no rows to subsample")
    if fraction >= 1:
        return np.arange(n)
    strata = _strata(labels, regression, n_bins)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(strata):
        rows = np.flatnonzero(strata == c)
        m = max(1, int(round(fraction * len(rows))))
        keep.append(rng.choice(rows, size=m, replace=False))
    return np.sort(np.concatenate(keep))


def stratified_split(
    labels: Sequence,
    test_fraction: float,
    seed: int,
    *,
    regression: bool = False,
    n_bins: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified ``(train_idx, test_idx)`` for data without a split column.

    Every class with >= 2 rows puts ``max(1, round(test_fraction * n_c))`` rows in test (keeping at
    least one in train); single-row classes stay in train.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    strata = _strata(labels, regression, n_bins)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(strata):
        rows = np.flatnonzero(strata == c)
        if len(rows) < 2:
            continue
        m = min(len(rows) - 1, max(1, int(round(test_fraction * len(rows)))))
        test.append(rng.choice(rows, size=m, replace=False))
    test_idx = np.sort(np.concatenate(test)) if test else np.array([], dtype=np.int64)
    if len(test_idx) == 0:
        raise ValueError("cannot make a test split: every class has a single row")
    train_idx = np.setdiff1d(np.arange(len(strata)), test_idx)
    return train_idx, test_idx
