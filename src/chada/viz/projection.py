"""One embedding space for many datasets: PCA and UMAP of several embedding files, and how linearly
the datasets (PC1) and the labels (PC2) separate (the paper's Fig. 5).

Row order is a contract: the rows of file 1, then file 2, ..., each in its own order; every output
(coordinates, CSV) keeps that order and each row keeps its metadata. Features are standardised per
dimension over all rows before PCA/UMAP, so one dataset's scale cannot dominate.

Separability of a grouping along one component (:func:`separability_1d`):

- ``cv_accuracy`` / ``cv_balanced_accuracy``: stratified k-fold (k = min(5, smallest group)) accuracy of
  a logistic regression that sees ONLY that component; held-out, so near chance for identical data.
- ``threshold_balanced_accuracy`` (two groups only): the best single cut on the component, balanced
  accuracy; in-sample, hence optimistic on small N (it is 1.0 whenever one cut splits the groups).
- ``chance``: the majority-group share (what always guessing the largest group scores).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.encode.store import EmbeddingSet, load_embeddings
from chada.io import atomic_write_bytes

__all__ = [
    "METHODS",
    "concat_embeddings",
    "separability_1d",
    "project",
    "write_coords_csv",
    "format_stats",
]

METHODS = ("pca", "umap")
_MODEL_KEYS = ("model", "model_name", "model_path")


def _model_id(info: dict[str, Any]) -> str | None:
    for key in _MODEL_KEYS:
        if info.get(key):
            return str(info[key])
    return None


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (list, tuple, np.ndarray)):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def concat_embeddings(
    embedding_sets: Sequence[EmbeddingSet | str | os.PathLike],
    feature: str = "cls",
    names: Sequence[str] | None = None,
    allow_mixed_models: bool = False,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Stack the ``feature`` arrays of several sets, keeping row order (set 1 rows, then set 2, ...).

    Returns:
        ``X [N, D]`` float64 and ``meta`` (N rows): the sets' metadata columns (union) plus
        ``input_row`` (0..N-1), ``source`` (the set's name), ``source_row`` (row within its set) and a
        ``dataset`` column (filled with ``source`` where a set has none).

    Raises:
        ValueError: no sets, a missing feature kind, different embedding dims, or sets from different
            models (their spaces are not comparable; ``allow_mixed_models=True`` to override when dims match).
    """
    if not embedding_sets:
        raise ValueError("no embedding sets given")
    sets: list[EmbeddingSet] = []
    default_names: list[str] = []
    for i, e in enumerate(embedding_sets):
        if isinstance(e, EmbeddingSet):
            sets.append(e)
            default_names.append(str(e.info.get("name") or f"set{i + 1}"))
        elif isinstance(e, (str, os.PathLike)):
            sets.append(load_embeddings(e))
            default_names.append(Path(e).stem)
        else:
            raise TypeError(f"embedding set {i} is a {type(e).__name__}; expected an EmbeddingSet or a path")
    if names is not None and len(names) != len(sets):
        raise ValueError(f"{len(names)} names for {len(sets)} embedding sets")
    names = list(names) if names is not None else default_names
    if len(set(names)) != len(names):  # two files with the same stem in different folders
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]

    arrays = []
    for name, e in zip(names, sets):
        if feature not in e.features:
            raise ValueError(f"{name}: no feature {feature!r}; available: {sorted(e.features)}")
        arrays.append(np.asarray(e.features[feature], dtype=np.float64))
    dims = {a.shape[1] for a in arrays}
    models = [_model_id(e.info) for e in sets]
    if len(dims) > 1:
        detail = ", ".join(
            f"{n}: D={a.shape[1]} (model {m or '?'})" for n, a, m in zip(names, arrays, models)
        )
        raise ValueError(
            f"embeddings of different sizes cannot share one space: {detail}; "
            "embed every dataset with the same model and --feature"
        )
    known = {m for m in models if m is not None}
    if len(known) > 1 and not allow_mixed_models:
        detail = ", ".join(f"{n}: {m}" for n, m in zip(names, models))
        raise ValueError(
            f"embeddings come from different models ({detail}); their spaces are not comparable "
            "(pass allow_mixed_models=True / --allow-mixed-models to plot them anyway)"
        )
    metas = []
    for name, e in zip(names, sets):
        m = e.meta.reset_index(drop=True).copy()
        # Manifests may carry their own columns with these names (e.g. the file a crop came from).
        m = m.rename(
            columns={c: f"meta_{c}" for c in ("source", "source_row", "input_row") if c in m.columns}
        )
        m.insert(0, "source_row", np.arange(len(m)))
        m.insert(0, "source", name)
        if "dataset" not in m.columns:
            m["dataset"] = name
        else:
            m["dataset"] = [name if _is_missing(v) else str(v) for v in m["dataset"]]
        metas.append(m)
    meta = pd.concat(metas, ignore_index=True, sort=False)
    meta.insert(0, "input_row", np.arange(len(meta)))
    X = np.concatenate(arrays, axis=0)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(1))
        raise ValueError(f"NaN/inf in embeddings of rows {bad[:10].tolist()} (input order)")
    return X, meta


def _best_threshold_balanced_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Best balanced accuracy of one cut on ``x`` for binary ``y`` in {0, 1} (either direction)."""
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    n = len(xs)
    n1 = int(ys.sum())
    n0 = n - n1
    c1_below = np.concatenate([[0], np.cumsum(ys)])
    c0_below = np.arange(n + 1) - c1_below
    bal = 0.5 * ((n1 - c1_below) / n1 + c0_below / n0)  # predict 1 above the cut
    # A cut may only fall between two different values (ties cannot be split); values within float
    # round-off of each other (duplicate rows after PCA) count as ties.
    tol = 1e-9 * max(float(np.abs(xs).max()), 1e-300)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = (xs[1:] - xs[:-1]) > tol
    b = bal[valid]
    return float(max(b.max(), (1.0 - b).max()))


def separability_1d(x: np.ndarray, groups: Sequence[Any], seed: int = 0) -> dict[str, Any] | None:
    """How well one coordinate ``x [N]`` separates ``groups`` (see the module docstring).

    Returns None when there are fewer than two groups.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.asarray(x, dtype=np.float64).ravel()
    labels = np.asarray([str(g) for g in groups])
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} group labels for {len(x)} values")
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        return None
    counts = np.bincount(y)
    res: dict[str, Any] = {
        "n": int(len(x)),
        "groups": {str(c): int(k) for c, k in zip(classes, counts)},
        "chance": float(counts.max() / len(x)),
        "cv_accuracy": None,
        "cv_balanced_accuracy": None,
        "cv_folds": 0,
        "threshold_balanced_accuracy": None,
    }
    sd = x.std()
    xz = ((x - x.mean()) / (sd if sd > 0 else 1.0))[:, None]
    folds = int(min(5, counts.min()))
    if folds >= 2:
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        pred = cross_val_predict(LogisticRegression(max_iter=1000), xz, y, cv=cv)
        res["cv_accuracy"] = float(accuracy_score(y, pred))
        res["cv_balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
        res["cv_folds"] = folds
    if len(classes) == 2:
        res["threshold_balanced_accuracy"] = _best_threshold_balanced_accuracy(x, y)
    return res


def _shared_labels(meta: pd.DataFrame, column: str) -> list[str]:
    """Labels (as strings) present in at least two datasets, most frequent first."""
    ok = [not _is_missing(v) for v in meta[column]]
    sub = meta.loc[ok, ["dataset", column]].astype(str)
    per = sub.groupby(column)["dataset"].nunique()
    shared = per[per >= 2].index
    freq = sub[sub[column].isin(shared)][column].value_counts()
    return [str(v) for v in freq.index]


def project(
    embedding_sets: Sequence[EmbeddingSet | str | os.PathLike],
    feature: str = "cls",
    color_by: str | None = "label",
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    names: Sequence[str] | None = None,
    allow_mixed_models: bool = False,
    n_neighbors: int = 15,
    marker_by: str | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """PCA and/or UMAP of several embedding sets in one space (``log``: one line as each step starts).

    Args:
        embedding_sets: :class:`EmbeddingSet` objects or ``.npz`` paths, concatenated in this order.
        feature: feature kind to use (``"cls"`` or ``"all"``).
        color_by: label column for the per-label statistics (PC2) and plot panel; None for none.
            A missing ``"label"`` column is skipped with a note; any other missing column is an error.
        methods: any of ``"pca"``, ``"umap"``.
        seed: seeds PCA's randomized solver, the CV folds and UMAP.
        n_neighbors: UMAP neighbours, lowered to N-1 for small N.
        marker_by: column whose shared labels get markers in the plot (checked here, recorded in stats).

    Returns:
        ``(coords, stats)``: ``coords`` has one row per input row IN INPUT ORDER with the metadata and
        ``pc1, pc2`` / ``umap1, umap2``; ``stats`` holds ``explained_variance_ratio`` (top 5),
        ``dataset_pc1`` and ``label_pc2`` (:func:`separability_1d` dicts or None), counts and notes.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    methods = [m.lower() for m in methods]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
    X, meta = concat_embeddings(embedding_sets, feature, names, allow_mixed_models)
    N, D = X.shape
    if N < 3 or D < 2:
        raise ValueError(f"need at least 3 rows and 2 dimensions to project, got N={N}, D={D}")
    notes: list[str] = []
    if color_by is not None and color_by not in meta.columns:
        if color_by == "label":
            notes.append("no 'label' column: only the dataset view is drawn")
            color_by = None
        else:
            cols = [c for c in meta.columns if c not in ("input_row", "source", "source_row")]
            raise ValueError(
                f"--color-by column {color_by!r} not in the embeddings' metadata; available: {cols}"
            )
    if marker_by is not None and marker_by not in meta.columns:
        raise ValueError(f"--marker-by column {marker_by!r} not in the embeddings' metadata")
    if color_by is not None and all(_is_missing(v) for v in meta[color_by]):
        notes.append(f"column {color_by!r} is empty in every row")
        color_by = None

    if log is not None:
        log(f"PCA of {N} x {D} from {meta['source'].nunique()} file(s), and separability scores")
    Xs = StandardScaler().fit_transform(X)
    coords = meta.copy()
    stats: dict[str, Any] = {
        "n": int(N),
        "dim": int(D),
        "feature": feature,
        "sources": meta["source"].value_counts(sort=False).to_dict(),
        "datasets": meta["dataset"].value_counts(sort=False).to_dict(),
        "color_by": color_by,
        "marker_by": marker_by,
        "notes": notes,
    }
    # PCA always runs: the separability scores are defined on its components.
    n_comp = int(min(5, N, D))
    pca = PCA(n_components=n_comp, random_state=seed, svd_solver="full" if N * D <= 2_000_000 else "auto")
    pcs = pca.fit_transform(Xs)
    stats["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
    coords["pc1"], coords["pc2"] = pcs[:, 0], pcs[:, 1]
    stats["dataset_pc1"] = separability_1d(pcs[:, 0], coords["dataset"], seed)
    stats["label_pc2"] = None
    if color_by is not None:
        has = np.array([not _is_missing(v) for v in meta[color_by]])
        shared = _shared_labels(meta, color_by) if meta["dataset"].nunique() > 1 else []
        if shared:
            rows = has & meta[color_by].astype(str).isin(shared).to_numpy()
            stats["label_rows"] = f"labels shared by >= 2 datasets ({len(shared)})"
        else:
            rows = has
            stats["label_rows"] = "all labelled rows"
        stats["label_pc2"] = separability_1d(pcs[rows, 1], meta.loc[rows, color_by], seed)
        stats["shared_labels"] = shared

    if "umap" in methods:
        if log is not None:
            log(f"UMAP of {N} x {D} (numba compiles it on first use in a process: about half a minute)")
        _umap(Xs, coords, stats, notes, n_neighbors, seed)
    stats["methods"] = [m for m in METHODS if m in methods and (m != "umap" or "umap1" in coords.columns)]
    return coords, stats


def _umap(
    Xs: np.ndarray, coords: pd.DataFrame, stats: dict[str, Any], notes: list[str], n_neighbors: int, seed: int
) -> None:
    """Adds ``umap1, umap2`` to ``coords`` (and ``stats["umap"]``), or a note when N is too small."""
    N = len(Xs)
    if N < 4:
        notes.append(f"UMAP skipped: {N} rows are too few")
        return
    import umap

    k = int(max(2, min(n_neighbors, N - 1)))
    # Spectral init needs a connected, not-tiny graph; random init is safe for small N.
    init = "spectral" if N >= 50 else "random"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_neighbors=k, n_components=2, random_state=seed, init=init, n_jobs=1)
        emb = reducer.fit_transform(Xs)
    coords["umap1"], coords["umap2"] = emb[:, 0], emb[:, 1]
    stats["umap"] = {"n_neighbors": k, "init": init}


def _csv_cell(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return ";".join(str(x) for x in v)
    return v


def write_coords_csv(coords: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the coordinates + metadata (input row order), list cells joined with ``;``, atomically."""
    df = coords.copy()
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(_csv_cell)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _sep_line(name: str, s: dict[str, Any] | None) -> str:
    if s is None:
        return f"{name}: n/a (fewer than two groups)"
    line = (
        f"{name}: CV accuracy {_fmt(s['cv_accuracy'])} (balanced {_fmt(s['cv_balanced_accuracy'])}, "
        f"{s['cv_folds']}-fold), chance {s['chance']:.3f}"
    )
    if s["threshold_balanced_accuracy"] is not None:
        line += f", best-threshold balanced accuracy {s['threshold_balanced_accuracy']:.3f}"
    return line + f"; {len(s['groups'])} groups, n={s['n']}"


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable summary (what ``chada project`` prints)."""
    lines = [
        f"{stats['n']} rows, D={stats['dim']} ({stats['feature']}), datasets: "
        + ", ".join(f"{k} ({v})" for k, v in stats["datasets"].items())
    ]
    lines.append("explained variance ratio (standardised features):")
    for i, v in enumerate(stats["explained_variance_ratio"], 1):
        lines.append(f"  PC{i}: {100 * v:6.2f} %")
    lines.append(_sep_line("dataset along PC1", stats["dataset_pc1"]))
    if stats.get("color_by"):
        lines.append(
            _sep_line(f"{stats['color_by']} along PC2 [{stats.get('label_rows')}]", stats["label_pc2"])
        )
    if "umap" in stats:
        lines.append(f"UMAP: n_neighbors={stats['umap']['n_neighbors']}, init={stats['umap']['init']}")
    lines.extend(f"note: {n}" for n in stats["notes"])
    return "\n".join(lines)
