"""Paired comparisons of two models scored on the same items: bootstrap, exact McNemar, Holm.

Two models tested on the same images differ by which images each gets right; most of the test-set
noise (which images happened to be tested) is shared, so comparing their separate 95 % intervals
throws away the pairing and misses real differences. Everything here pairs item by item:

- :func:`paired_bootstrap` — the difference ``statistic(a) - statistic(b)`` and its percentile
  interval, resampling the SAME item indices for both models in every resample.
- :func:`mcnemar_exact` — the exact McNemar test of two classifiers: only the discordant items count
  (``n01``: ``a`` right and ``b`` wrong, ``n10``: the reverse); under "no difference" each discordant
  item is a fair coin, so p is the two-sided binomial test of ``n01`` out of ``n01 + n10`` at 1/2
  (:func:`scipy.stats.binomtest`).
- :func:`holm` — Holm's step-down adjustment of a family of p-values (controls the family-wise error).
- :func:`compare` — one :class:`Comparison` of two :class:`PairedItems`, matched by item id, for an
  accuracy (per-item right/wrong), an R² (per-item prediction and target) or any per-item score
  (``"mean"``: per-well mAP, per-tile IoU, ...).

Nothing here knows about models, tasks or images: an "item" is whatever both sides were scored on
(an image, a well, a treatment). :mod:`chada.eval.comparisons` builds the tables of ``chada evaluate``
from these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from chada.eval.intervals import bootstrap_values, percentile_bootstrap, r2_rows

__all__ = [
    "KINDS", "Comparison", "PairedItems", "bootstrap_p", "compare", "holm", "mcnemar_exact", "paired_bootstrap",
]  # fmt: skip

KINDS = ("accuracy", "r2", "mean")


def _mean_rows(x: np.ndarray) -> np.ndarray:
    """``[B, N] -> [B]``: the mean per-item score of each resample."""
    return x.mean(axis=1)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] = _mean_rows,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``(diff, low, high)`` of ``statistic(a) - statistic(b)`` by a paired percentile bootstrap.

    ``a``, ``b``: ``[N, ...]``, row ``i`` of both is the same item. ``statistic`` maps a batch of
    resamples ``[B, N, ...]`` to ``[B]`` (default: the mean over items). Every resample draws ONE set of
    item indices and applies it to both sides, so the noise of which items were drawn cancels in the
    difference. ``diff`` is the statistic on the items as they are.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim == 0 or len(a) == 0:
        raise ValueError(f"a and b must hold the same items [N, ...], got shapes {a.shape} and {b.shape}")
    diff = float(statistic(a[None])[0] - statistic(b[None])[0])
    low, high = percentile_bootstrap(
        lambda idx: statistic(a[idx]) - statistic(b[idx]), len(a), n_boot, seed, level
    )
    return diff, low, high


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """``(n01, n10, p)``: items only ``a`` gets right, items only ``b`` gets right, exact two-sided p.

    ``correct_a``, ``correct_b``: ``[N]`` booleans of the same items. p = 1 when no item is discordant.
    """
    from scipy.stats import binomtest

    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape or ca.ndim != 1:
        raise ValueError(
            f"correct_a and correct_b must be [N] of the same items, got {ca.shape} and {cb.shape}"
        )
    n01, n10 = int((ca & ~cb).sum()), int((~ca & cb).sum())
    if n01 + n10 == 0:
        return n01, n10, 1.0
    return n01, n10, float(binomtest(n01, n01 + n10, 0.5, alternative="two-sided").pvalue)


def holm(pvalues: Any) -> np.ndarray:
    """Holm-adjusted p-values ``[M]`` of a family of ``M`` tests (NaN stays NaN and is not counted).

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} (M - j + 1) p_(j)``, capped at 1.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


@dataclass
class PairedItems:
    """One model's per-item results.

    ``ids``: ``[N]`` item ids (image ids, well ids); ``values``: ``[N]`` per-item outcome (accuracy:
    1 right / 0 wrong; r2: the prediction; mean: any per-item score); ``target``: ``[N]`` the true
    values (r2 only).
    """

    ids: np.ndarray
    values: np.ndarray
    target: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.target is not None:
            self.target = np.asarray(self.target, dtype=np.float64)
        if self.values.shape != self.ids.shape or (
            self.target is not None and self.target.shape != self.ids.shape
        ):
            raise ValueError(
                f"ids, values and target must all be [N]; got {self.ids.shape}, {self.values.shape}"
            )
        if len(np.unique(self.ids)) != len(self.ids):
            raise ValueError("item ids repeat: a pairing by id needs each item once")


@dataclass
class Comparison:
    """Model ``model`` against ``reference`` on the same ``n`` items: ``difference`` (model minus
    reference, in the metric's units) with its paired 95 % interval ``[low, high]`` and p-value.

    ``n_a_only`` / ``n_b_only``: accuracy: the discordant items (only the model right / only the
    reference right); r2 and mean: the items where the model's squared error (score) is better /
    worse. ``p``: exact McNemar for accuracy; for r2 and mean the two-sided bootstrap p (twice the
    smaller share of resampled differences on either side of 0). ``p_adj``: Holm over the family of
    ``n_comparisons`` tests it belongs to (filled by the caller).
    """

    task: str = ""
    feature: str = ""
    fraction: float = float("nan")
    model: str = ""
    reference: str = ""
    n: int = 0
    difference: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    p: float = float("nan")
    p_adj: float = float("nan")
    n_a_only: int = 0
    n_b_only: int = 0
    kind: str = "accuracy"
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """A flat dict (``extra``'s keys become columns)."""
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "extra"}, **d["extra"]}


def _aligned(a: PairedItems, b: PairedItems) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(ia, ib)`` of the items both sides hold, in ``a``'s order."""
    pos_b = {v: i for i, v in enumerate(b.ids)}
    ia = np.array([i for i, v in enumerate(a.ids) if v in pos_b], dtype=np.int64)
    return ia, np.array([pos_b[a.ids[i]] for i in ia], dtype=np.int64)


def _r2_pairs(
    a: PairedItems, b: PairedItems, ia: np.ndarray, ib: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if a.target is None or b.target is None:
        raise ValueError("kind='r2' needs the targets of both sides")
    if not np.allclose(a.target[ia], b.target[ib]):
        raise ValueError("the two sides disagree on the targets of the same items: they are not paired")
    y = a.target[ia]
    return np.stack([y, a.values[ia]], -1), np.stack([y, b.values[ib]], -1)


def bootstrap_p(a: np.ndarray, b: np.ndarray, statistic: Callable, n_boot: int, seed: int) -> float:
    """Two-sided percentile-bootstrap p of "difference = 0": twice the smaller share of resampled
    differences on either side of 0 (floor 1 / n_boot). Same seed, so the same resamples as the interval."""
    d = bootstrap_values(lambda idx: statistic(a[idx]) - statistic(b[idx]), len(a), n_boot, seed)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan")
    tail = min((d <= 0).mean(), (d >= 0).mean())
    return float(min(1.0, max(2 * tail, 1.0 / len(d))))


def compare(
    items_a: PairedItems,
    items_b: PairedItems,
    kind: str = "accuracy",
    n_boot: int = 1000,
    seed: int = 0,
    **labels: Any,
) -> Comparison:
    """Compare ``items_a`` (the model) with ``items_b`` (the reference) on the items both hold.

    ``kind``: ``"accuracy"`` (values 1/0; difference of accuracies, exact McNemar p), ``"r2"``
    (values = predictions, ``target`` set; difference of R², bootstrap p) or ``"mean"`` (any per-item
    score; difference of means, bootstrap p). ``labels`` fill the descriptive fields (task, feature,
    fraction, model, reference) or go to ``extra``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    ia, ib = _aligned(items_a, items_b)
    known = {k: labels.pop(k) for k in ("task", "feature", "fraction", "model", "reference") if k in labels}
    out = Comparison(**known, kind=kind, n=len(ia), extra=labels)
    if len(ia) == 0:
        return out
    if kind == "r2":
        a, b = _r2_pairs(items_a, items_b, ia, ib)
        statistic = r2_rows
        err_a, err_b = (a[:, 0] - a[:, 1]) ** 2, (b[:, 0] - b[:, 1]) ** 2
        out.n_a_only, out.n_b_only = int((err_a < err_b).sum()), int((err_a > err_b).sum())
    else:
        a, b = items_a.values[ia], items_b.values[ib]
        statistic = _mean_rows
        out.n_a_only, out.n_b_only = int((a > b).sum()), int((a < b).sum())
    out.difference, out.low, out.high = paired_bootstrap(a, b, statistic, n_boot, seed)
    if kind == "accuracy":
        if not np.isin(a, (0.0, 1.0)).all() or not np.isin(b, (0.0, 1.0)).all():
            raise ValueError("kind='accuracy' needs per-item values 1 (right) or 0 (wrong)")
        out.p = mcnemar_exact(a > 0.5, b > 0.5)[2]
    else:
        out.p = bootstrap_p(a, b, statistic, n_boot, seed)
    return out
