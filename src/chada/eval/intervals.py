"""Chance, 95 % intervals and "does the interval separate them": the numbers beside every score.

- :func:`chance_score` — the score of the best constant predictor, the one definition of chance used
  by every table, figure and baseline ratio: for classification the rate of the most frequent class
  among the test labels (always answering it scores exactly that); for regression the R² of
  predicting the training mean (at most 0; exactly 0 only when train and test means agree).
- :func:`wilson_interval` — the Wilson score interval of an accuracy over ``n`` test images
  (binomial). It stays inside [0, 1] and keeps a sensible width at n = 9 or at 0 % / 100 %, where
  the normal approximation ``p ± 1.96 sqrt(p(1-p)/n)`` collapses to a point.
- :func:`bootstrap_r2_interval` — percentile bootstrap of R² over test images (R² has no closed-form
  interval: it is a ratio of two sums over the same images).
- :func:`bootstrap_values` / :func:`percentile_bootstrap` — the one percentile bootstrap over items
  of the package (R² here, the paired differences of :mod:`chada.eval.paired`, the dense IoU).
- :func:`separated` — whether two intervals do not overlap. Two scores whose 95 % intervals overlap
  are not called different (conservative: a paired test on the same test images could separate some).

Both intervals describe the test-set sampling noise: which images happened to be tested. The spread
over seeds (training subsets, probe initialisation) is the separate "± std" of the tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "Z95", "bootstrap_r2_interval", "bootstrap_values", "chance_score", "percentile_bootstrap", "r2", "r2_rows",
    "separated", "wilson_interval",
]  # fmt: skip

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SSE / SST`` (scikit-learn's ``r2_score``; 0 when SST = 0)."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    sst = float(((y - y.mean()) ** 2).sum())
    sse = float(((y - pred) ** 2).sum())
    if sst == 0:
        return 1.0 if sse == 0 else 0.0
    return 1.0 - sse / sst


def chance_score(y_test: Sequence, kind: str, y_train: Sequence | None = None) -> float:
    """Score of the best constant predictor (classification) or of the training mean (regression).

    Classification: ``max_c (share of class c in y_test)``. Regression: R² of predicting
    ``mean(y_train)`` for every test row (``y_train`` is required).
    """
    if kind == "classification":
        te = np.asarray([str(v) for v in y_test])
        if len(te) == 0:
            raise ValueError("no test labels")
        return float(np.unique(te, return_counts=True)[1].max() / len(te))
    if kind == "regression":
        if y_train is None or len(y_train) == 0:
            raise ValueError("the regression chance level needs the training targets")
        y = np.asarray(y_test, dtype=np.float64)
        return r2(y, np.full(len(y), float(np.mean(np.asarray(y_train, dtype=np.float64)))))
    raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of an accuracy measured on ``n`` independent test images."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = min(max(float(accuracy), 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_values(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, n_boot: int = 1000, seed: int = 0, chunk: int = 256
) -> np.ndarray:
    """``[n_boot]`` (or ``[n_boot, K]``) values of ``statistic`` over resamples of ``n`` items.

    ``statistic`` maps item indices ``[B, n]`` (drawn with replacement) to ``[B]`` or ``[B, K]``. The
    indices come from ``numpy.random.default_rng(seed)`` in chunks of ``chunk`` resamples, which bounds
    the memory of the gathered rows; the chunking does not change the draws (one stream).
    """
    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, n_boot, chunk):
        parts.append(np.asarray(statistic(rng.integers(0, n, (min(chunk, n_boot - start), n)))))
    return np.concatenate(parts)


def percentile_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval ``(low, high)`` of :func:`bootstrap_values` (undefined resamples, NaN, dropped)."""
    vals = bootstrap_values(statistic, n, n_boot, seed)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return (float("nan"), float("nan"))
    a = (1.0 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    return (float(lo), float(hi))


def r2_rows(x: np.ndarray) -> np.ndarray:
    """``[B, N, 2]`` (target, prediction) -> ``[B]`` R² of each row, NaN where the targets are constant."""
    y, pred = x[..., 0], x[..., 1]
    sst = ((y - y.mean(-1, keepdims=True)) ** 2).sum(-1)
    sse = ((y - pred) ** 2).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)


def bootstrap_r2_interval(
    y: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` of R² over the test images (``y``, ``pred``: ``[N]``)."""
    yp = np.stack([np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)], -1)
    if len(yp) < 3:
        return (float("nan"), float("nan"))
    return percentile_bootstrap(lambda idx: r2_rows(yp[idx]), len(yp), n_boot, seed, level)


def separated(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when the intervals ``a`` and ``b`` do not overlap (False when either is unknown)."""
    if any(v is None or not np.isfinite(v) for v in (*a, *b)):
        return False
    return a[0] > b[1] or b[0] > a[1]
