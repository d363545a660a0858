"""Scoring features on channel subsets: the two settings, linear probe and kNN, and the summary tables."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from chada.eval.knn import knn_predict
from chada.eval.lowdata import stratified_split
from chada.eval.markdown import markdown_table
from chada.eval.probes import FeaturePrep
from chada.tasks.channel_subsets.data import SubsetData

__all__ = ["METRICS", "METRIC_TITLES", "SETTINGS", "SETTING_TITLES", "subsets_markdown", "summarize_subsets"]

SETTINGS = ("train_all", "train_subset")
SETTING_TITLES = {
    "train_all": "probe trained on all channels, tested on the subset",
    "train_subset": "probe trained and tested on the subset",
}
METRICS = ("linear_probe", "knn")
METRIC_TITLES = {"linear_probe": "linear probe accuracy", "knn": "kNN accuracy (k=20)"}


def _split_indices(
    data: SubsetData,
    train_split: str | Sequence[str],
    test_split: str | Sequence[str],
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(train_idx, test_idx, fixed)``: the split column when it has both parts, else a seeded split."""
    tr_set = {train_split} if isinstance(train_split, str) else set(train_split)
    te_set = {test_split} if isinstance(test_split, str) else set(test_split)
    tr = np.flatnonzero(np.isin(data.splits, list(tr_set)))
    te = np.flatnonzero(np.isin(data.splits, list(te_set)))
    if len(tr) and len(te):
        return tr, te, True
    tr, te = stratified_split([str(v) for v in data.labels], test_fraction, seed)
    return tr, te, False


def _fit_predictor(
    metric: str, x_tr: np.ndarray, y_tr: np.ndarray, n_classes: int, probe: Mapping[str, Any],
    knn: Mapping[str, Any], seed: int,
) -> Callable[[np.ndarray], np.ndarray]:  # fmt: skip
    """Fit once on ``x_tr [N_train, D]`` (integer labels), return ``predict(x [N, D]) -> [N]`` ints.

    ``linear_probe`` is :func:`chada.eval.probes.linear_probe_classification`'s protocol (train-row
    standardisation, PCA past ``max_dim``, L2 logistic regression with one ``C``) split into fit and
    predict, so the all-channel probe of setting ``train_all`` is fitted once and read on every subset.
    ``knn`` is :func:`chada.eval.knn.knn_predict`.
    """
    if metric == "knn":
        return lambda x: knn_predict(x_tr, y_tr, x, num_classes=n_classes, **knn)
    if metric != "linear_probe":
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    c = probe.get("C", 1.0)
    if not np.isscalar(c):
        raise ValueError(f"the channel-subset probe takes one C value, got {c!r}")
    if not np.isfinite(x_tr).all():
        raise ValueError("features contain NaN or inf")
    prep = FeaturePrep(max_dim=probe.get("max_dim", 256), seed=seed).fit(x_tr)
    if np.unique(y_tr).size == 1:
        only = int(y_tr[0])
        return lambda x: np.full(len(x), only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the iteration budget is part of the protocol
        clf = LogisticRegression(C=float(c), max_iter=int(probe.get("max_iter", 300))).fit(
            prep.transform(x_tr), y_tr
        )
    return lambda x: clf.predict(prep.transform(x))


def _score_all(
    feats: Mapping[tuple[int, ...], np.ndarray], full: tuple[int, ...], subsets: Sequence[tuple[int, ...]],
    settings: Sequence[str], metrics: Sequence[str], y: np.ndarray, tr: np.ndarray, te: np.ndarray,
    n_classes: int, probe: Mapping[str, Any], knn: Mapping[str, Any], seed: int,
) -> dict[tuple[tuple[int, ...], str, str], float]:  # fmt: skip
    """Accuracy of every (subset, setting, metric); the all-channel predictor is fitted once per metric."""
    out: dict[tuple[tuple[int, ...], str, str], float] = {}
    for metric in metrics:
        pred_all = None
        if "train_all" in settings:
            pred_all = _fit_predictor(metric, feats[full][tr], y[tr], n_classes, probe, knn, seed)
        for subset in subsets:
            x_te = feats[subset][te]
            for setting in settings:
                if setting == "train_all":
                    fit = pred_all
                else:
                    fit = _fit_predictor(metric, feats[subset][tr], y[tr], n_classes, probe, knn, seed)
                assert fit is not None
                out[(subset, setting, metric)] = float(np.mean(fit(x_te) == y[te]))
    return out


def _blas_limit(threads: int | None) -> Any:
    """BLAS/OpenMP thread cap for the many small probe fits (threaded BLAS makes each ~20x slower)."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads))


def summarize_subsets(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, setting, metric, k): mean over seeds of the subset-mean score, its std over seeds
    (sample std; 0 with one seed), the std over subsets of the seed-mean score, and counts."""
    keys = ["model", "setting", "metric", "k"]
    per_seed = results.groupby([*keys, "seed"], sort=False)["score"].mean().reset_index()
    per_subset = results.groupby([*keys, "subset"], sort=False)["score"].mean().reset_index()
    agg = per_seed.groupby(keys, sort=False)["score"].agg(
        mean="mean", std=lambda s: float(s.std(ddof=1)) if len(s) > 1 else 0.0, n_seeds="count"
    )
    sub = per_subset.groupby(keys, sort=False)["score"].agg(
        subset_std=lambda s: float(s.std(ddof=1)) if len(s) > 1 else 0.0,
        subset_min="min", subset_max="max", n_subsets="count",
    )  # fmt: skip
    out = agg.join(sub).reset_index()
    extra = results.groupby(keys, sort=False)[["chance", "pool"]].first().reset_index()
    return out.merge(extra, on=keys, how="left")


def subsets_markdown(summary: pd.DataFrame, channels: Sequence[str] | None = None) -> str:
    """Markdown tables (one per metric): rows = model x setting, columns = k, cells ``mean ± std``."""
    lines = ["# Channel-subset evaluation", ""]
    if channels:
        lines += [f"Channels ({len(channels)}): {', '.join(channels)}.", ""]
    lines += [
        "`train_all`: probe trained on all channels, tested on the subset (a stain missing at test time); "
        "`train_subset`: trained and tested on the subset. Cells: mean ± std over seeds of the mean over "
        "the subsets of size k; in brackets, the spread (std) over subsets.",
        "",
    ]
    ks = sorted(summary["k"].unique())
    for metric in [m for m in METRICS if m in set(summary["metric"])] + sorted(
        set(summary["metric"]) - set(METRICS)
    ):
        part = summary[summary["metric"] == metric]
        chance = part["chance"].iloc[0] if "chance" in part and len(part) else float("nan")
        lines += [f"## {METRIC_TITLES.get(metric, metric)} (chance {chance:.3f})", ""]
        rows = []
        for (model, setting), grp in part.groupby(["model", "setting"], sort=False):
            cells = []
            for k in ks:
                row = grp[grp["k"] == k]
                if row.empty:
                    cells.append("")
                    continue
                r = row.iloc[0]
                cells.append(f"{r['mean']:.3f} ± {r['std']:.3f} [{r['subset_std']:.3f}]")
            rows.append([model, setting, *cells])
        lines += [markdown_table(["model", "setting", *(f"k={k}" for k in ks)], rows).rstrip("\n"), ""]
    return "\n".join(lines)
