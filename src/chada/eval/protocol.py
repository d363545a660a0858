"""The frozen-feature protocol: every task x model x regime x seed x feature kind, on feature files only.

:func:`run_feature_tasks` reads embedding files (:class:`chada.encode.store.EmbeddingSet`) and runs
linear probes, weighted kNN (k=20, T=0.07) and 1-NN on 1/10/100 % stratified fractions of each
training split for every seed. The config is :mod:`chada.eval.config`; the diagnostics of issue 12
(baseline ratios, CKA, participation ratio, shortcut analyses) are :mod:`chada.eval.diagnostics_table`;
the tables and figures :mod:`chada.eval.report`. :func:`chada.tasks.evaluation.run_evaluation` runs
all of it, plus the tasks that run models (channel reconstruction), and writes the report.

Seeds drive the low-data subsets and the split when there is no split column; with a fixed split at
100 % a probe is deterministic, so it is computed once and the same value is recorded for each seed.
A task with fewer labelled images than ``small_data.max_images`` (200) is scored by stratified k-fold
over all its images instead, one repetition per seed: every image is tested, and a seed's score is
over the pooled predictions of its folds. Every row carries the 95 % interval of its score over the
test images (:mod:`chada.eval.intervals`) and chance, the score of the best constant predictor.

Models ranked in one table are scored on the same images: when their feature files hold different
labelled images, each is restricted to the images they share (:func:`common_images`, with a warning
naming every model's count). A classification task with a single class is left out with a warning
(every score would be 100 %); an infinite regression target and a ``test_fraction`` outside (0, 1)
are errors.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
import pandas as pd

from chada.encode.store import EmbeddingSet
from chada.eval.config import ModelSpec, TaskSpec, arch_name, infer_family
from chada.eval.feature_files import Loader, align_rows, common_images, resolve_kind
from chada.eval.intervals import bootstrap_r2_interval, chance_score, r2, wilson_interval
from chada.eval.knn import knn_correct, knn_regress
from chada.eval.lowdata import quantile_bins, stratified_fraction_indices, stratified_split
from chada.eval.paired import PairedItems
from chada.eval.probes import linear_probe_classification, ridge_probe_regression

__all__ = [
    "RESULT_COLUMNS", "Loader", "align_rows", "common_images", "resolve_kind", "run_feature_tasks", "run_task",
    "stratified_folds",
]  # fmt: skip

RESULT_COLUMNS = [
    "task", "kind", "model", "family", "arch", "feature", "fraction", "seed",
    "metric", "value", "chance", "n_train", "n_test", "ci_low", "ci_high", "design",
]  # fmt: skip


def _key(*arrays: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _splits(task: TaskSpec, meta: pd.DataFrame, labels: np.ndarray, seed: int, default_tf: float):
    """``(train_idx, test_idx, fixed)``: the meta's split column, else a seeded stratified split."""
    regression = task.kind == "regression"
    if task.test_fraction is None and "split" in meta.columns:
        split = meta["split"].astype(str).to_numpy()
        tr = np.flatnonzero(split == str(task.train_split))
        te = np.flatnonzero(split == str(task.test_split))
        if len(tr) and len(te):
            return tr, te, True
    tf = float(task.test_fraction if task.test_fraction is not None else default_tf)
    tr, te = stratified_split(labels, tf, seed, regression=regression)
    return tr, te, False


def stratified_folds(labels: np.ndarray, folds: int, seed: int, regression: bool = False) -> list | None:
    """``[(train_idx, test_idx), ...]`` of a seeded stratified k-fold over all rows (every row tested
    once), k lowered to the smallest class; None when a class (or quantile bin) has a single row."""
    from sklearn.model_selection import StratifiedKFold

    strata = quantile_bins(labels, 5) if regression else np.unique(labels, return_inverse=True)[1]
    k = min(int(folds), int(np.bincount(strata).min()))
    if k < 2:
        return None
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in cv.split(np.zeros(len(strata)), strata)]


def _design(
    task: TaskSpec, meta: pd.DataFrame, labels: np.ndarray, seed: int, settings: dict
) -> tuple[list, str]:
    """The folds of one seed and how they were made: ``"split"`` (the split column), ``"random split"``
    or ``"K-fold CV"`` (small data: every image is tested)."""
    small = settings.get("small_data") or {}
    use_cv = task.cross_validation
    if use_cv is None:
        use_cv = len(labels) < int(small.get("max_images", 0))
    if use_cv:
        folds = stratified_folds(labels, int(small.get("folds", 5)), seed, task.kind == "regression")
        if folds is not None:
            return folds, f"{len(folds)}-fold CV"
    tr, te, fixed = _splits(task, meta, labels, seed, float(settings["test_fraction"]))
    return [(tr, te)], "split" if fixed else "random split"


def _probe_metrics(
    task: TaskSpec,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    settings: dict,
    seed: int,
) -> dict[str, float | np.ndarray]:
    """Per metric, one value per test row ``[N_test]``: classification, right (True) or wrong;
    regression, the prediction. Scores and intervals are computed over the pooled folds, and the
    per-row values are what the paired comparisons (:mod:`chada.eval.comparisons`) pair."""
    knn = settings["knn"]
    k, temp = int(knn["k"]), float(knn["temperature"])
    if task.kind == "classification":
        lin = linear_probe_classification(
            x_tr, y_tr, x_te, y_te, C=settings["probe"]["C"], max_iter=int(settings["probe"]["max_iter"]),
            max_dim=settings["max_dim"], seed=seed, return_correct=True,
        )  # fmt: skip
        return {
            "linear_top1": lin["correct"],
            "knn_top1": knn_correct(x_tr, y_tr, x_te, y_te, k=k, temperature=temp),
            "nn1_top1": knn_correct(x_tr, y_tr, x_te, y_te, k=1, temperature=temp),
        }
    lin = ridge_probe_regression(
        x_tr, y_tr, x_te, y_te, max_dim=settings["max_dim"], seed=seed, return_predictions=True
    )
    return {
        "linear_r2": lin["predictions"],
        "knn_r2": knn_regress(x_tr, y_tr, x_te, k=k, temperature=temp),
        "nn1_r2": knn_regress(x_tr, y_tr, x_te, k=1, temperature=temp),
    }


def _pooled(kind: str, per_fold: list, tests: list[np.ndarray], labels: np.ndarray, seed: int) -> tuple:
    """``(score, (ci_low, ci_high))`` of one metric over the pooled test rows of every fold."""
    n = sum(len(te) for te in tests)
    if kind == "classification":
        acc = float(np.concatenate(per_fold).sum()) / n
        return acc, wilson_interval(acc, n)
    y = np.concatenate([labels[te] for te in tests])
    pred = np.concatenate(per_fold)
    return r2(y, pred), bootstrap_r2_interval(y, pred, seed=seed)


def _chance(kind: str, subs: list[np.ndarray], tests: list[np.ndarray], labels: np.ndarray) -> float:
    """:func:`chance_score` over the pooled folds (regression: each fold predicts its own training mean)."""
    y = np.concatenate([labels[te] for te in tests])
    if kind == "classification":
        return chance_score(y, kind)
    base = np.concatenate([np.full(len(te), labels[sub].mean()) for sub, te in zip(subs, tests)])
    return r2(y, base)


def _task_labels(task: TaskSpec, model: ModelSpec, emb: EmbeddingSet) -> tuple[EmbeddingSet, np.ndarray]:
    """The rows with a label, and their labels (float for regression, str for classification)."""
    if task.label_column not in emb.meta.columns:
        raise ValueError(
            f"task {task.name!r}: column {task.label_column!r} not in the embeddings of {model.name!r} "
            f"(columns: {list(emb.meta.columns)})"
        )
    col = emb.meta[task.label_column]
    if task.kind == "regression":
        col = pd.to_numeric(col, errors="coerce")
        _refuse_infinite(task, model, emb, col.to_numpy(dtype=np.float64))
    keep = np.flatnonzero(col.notna().to_numpy())
    if len(keep) < 2:
        raise ValueError(f"task {task.name!r}: fewer than 2 rows with a {task.label_column!r} value")
    emb = emb.subset(keep) if len(keep) < len(emb) else emb
    labels = col.to_numpy()[keep]
    labels = labels.astype(np.float64) if task.kind == "regression" else np.asarray([str(v) for v in labels])
    return emb, labels


def _items(
    emb: EmbeddingSet, tests: list, labels: np.ndarray, per_fold: list, regression: bool
) -> PairedItems:
    """The pooled test rows' per-image results, keyed by image_id (row position without one)."""
    te = np.concatenate(tests)
    if "image_id" in emb.meta.columns:
        ids = emb.meta["image_id"].astype(str).to_numpy()[te]
        if len(set(ids)) < len(ids):  # a repeated id: its k-th occurrence pairs with the other's k-th
            ids = (pd.Series(ids) + "#" + pd.Series(ids).groupby(ids).cumcount().astype(str)).to_numpy()
    else:
        ids = te
    return PairedItems(ids, np.concatenate(per_fold), labels[te] if regression else None)


def _refuse_infinite(task: TaskSpec, model: ModelSpec, emb: EmbeddingSet, values: np.ndarray) -> None:
    """An infinite regression target is a broken value, not a missing one: refuse it by image id."""
    bad = np.flatnonzero(np.isinf(values))
    if len(bad):
        ids = emb.meta["image_id"].astype(str).to_numpy()[bad] if "image_id" in emb.meta.columns else bad
        listed = ", ".join(repr(str(i)) for i in ids[:5]) + (
            f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        )
        raise ValueError(
            f"task {task.name!r}: {task.label_column!r} is infinite for image(s) {listed} in the embeddings of "
            f"{model.name!r}; fix the target in the manifest (or leave it empty to drop the row) and re-embed"
        )


def _check_task(task: TaskSpec, labels: np.ndarray) -> bool:
    """False (with a warning) for a classification task with one class: every score would be 100 %."""
    if task.test_fraction is not None and not 0 < float(task.test_fraction) < 1:
        raise ValueError(f"task {task.name!r}: test_fraction must lie in (0, 1), got {task.test_fraction}")
    if task.kind == "classification" and len(set(labels.tolist())) < 2:
        warnings.warn(
            f"task {task.name!r}: every labelled image has the same {task.label_column!r} "
            f"({str(labels[0])!r}): a single-class task scores 100 % whatever the features; it is left out",
            stacklevel=2,
        )
        return False
    return True


def run_task(
    task: TaskSpec,
    model: ModelSpec,
    emb: EmbeddingSet,
    settings: dict[str, Any],
    cache: dict[str, dict[str, Any]] | None = None,
    items: dict[tuple, PairedItems] | None = None,
) -> list[dict[str, Any]]:
    """All (feature kind x fraction x seed x metric) rows of one task on one model's embeddings.

    ``items``, when given, receives each score's per-image results for the paired comparisons:
    ``(task, model, feature, fraction, seed, metric) -> PairedItems`` over the pooled test rows
    (right / wrong, or the prediction and target), keyed by ``image_id``.
    Each seed scores the test rows of one split, or (small data) of every fold of a seeded
    stratified k-fold pooled together; ``ci_low`` / ``ci_high`` is the 95 % interval of that score
    over the test images (Wilson for accuracy, percentile bootstrap for R²) and ``chance`` the
    score of the best constant predictor on the same test rows.
    """
    cache = {} if cache is None else cache
    emb, labels = _task_labels(task, model, emb)
    if not _check_task(task, labels):
        return []
    family = infer_family(model.name, emb.info, model.family)
    arch = arch_name(model, emb.info)
    regression = task.kind == "regression"
    rows: list[dict[str, Any]] = []
    for seed in task.seeds:
        folds, design = _design(task, emb.meta, labels, seed, settings)
        tests = [te for _, te in folds]
        for frac in task.fractions:
            subs = [
                tr[stratified_fraction_indices(labels[tr], frac, seed, regression=regression)]
                for tr, _ in folds
            ]
            chance = _chance(task.kind, subs, tests, labels)
            for feat in task.feature_kinds:
                src = resolve_kind(emb, feat)
                if src is None:
                    continue
                x = emb.get(src)
                per_fold = []
                for sub, te in zip(subs, tests):
                    # A probe is a deterministic function of its rows: a fixed split at 100 % is fit once.
                    key = _key(
                        np.frombuffer(str((id(x), src, model.name, task.name)).encode(), np.uint8), sub, te
                    )
                    if key not in cache:
                        cache[key] = _probe_metrics(
                            task, x[sub], labels[sub], x[te], labels[te], settings, seed=0
                        )
                    per_fold.append(cache[key])
                for metric in per_fold[0]:
                    value, (lo, hi) = _pooled(task.kind, [f[metric] for f in per_fold], tests, labels, seed)
                    if items is not None:
                        items[(task.name, model.name, feat, frac, seed, metric)] = _items(
                            emb, tests, labels, [f[metric] for f in per_fold], regression
                        )
                    rows.append(
                        dict(
                            task=task.name,
                            kind=task.kind,
                            model=model.name,
                            family=family,
                            arch=arch,
                            feature=feat,
                            fraction=frac,
                            seed=seed,
                            metric=metric,
                            value=float(value),
                            chance=float(chance),
                            n_train=int(np.mean([len(s) for s in subs])),
                            n_test=sum(len(te) for te in tests),
                            ci_low=lo,
                            ci_high=hi,
                            design=design,
                        )  # fmt: skip
                    )
    return rows


def run_feature_tasks(
    settings: dict[str, Any],
    models: dict[str, ModelSpec],
    tasks: list[TaskSpec],
    loader: Loader,
    progress: bool = True,
    items: dict[tuple, PairedItems] | None = None,
) -> list[dict[str, Any]]:
    """Result rows (columns :data:`RESULT_COLUMNS`) of every task on every model's feature file
    (``items``: see :func:`run_task`)."""
    from tqdm.auto import tqdm

    units = [(t, n) for t in tasks for n in t.embeddings]  # the progress bar counts one per task x model
    rows: list[dict[str, Any]] = []
    cache: dict[str, dict[str, Any]] = {}
    # tqdm rather than a rich live display: it also shows progress when the output is a log file.
    with tqdm(total=len(units), desc="feature tasks", unit="model", disable=not progress or not units, leave=False,
              dynamic_ncols=True, mininterval=0.5) as bar:  # fmt: skip
        for task in tasks:
            specs = {n: models.get(n, ModelSpec(n, p)) for n, p in task.embeddings.items()}
            sets = common_images(task, {n: loader(p) for n, p in task.embeddings.items()})
            for name, spec in specs.items():
                bar.set_postfix_str(f"{task.name} / {name}", refresh=False)
                rows.extend(run_task(task, spec, sets[name], settings, cache, items))
                bar.update(1)
    return rows
