"""Diagnostic measures beside every score: how much of it a trivial baseline already explains.

- :func:`linear_cka` — linear centred kernel alignment (Kornblith et al. 2019) between two
  embeddings of the same images: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``. Invariant to
  orthogonal transforms and isotropic scaling; 1 for identical representations.
- :func:`participation_ratio` — effective dimensionality ``(sum l)^2 / sum l^2`` of the covariance
  eigenvalues l (1 for a rank-one embedding, D for an isotropic one).
- :func:`score_ratio`, :func:`chance_normalised` — a baseline's score as ``b / m`` and
  ``(b - chance) / (m - chance)``.
- :func:`chance_level` — the score of the best constant predictor
  (:func:`chada.eval.intervals.chance_score`: the most frequent test class's rate, or the R² of the
  training mean).
- :func:`shortcut_explained` — cross-validated R2 of a ridge regression from shortcut features
  (cell count, intensity statistics ...) to the embedding's top principal components.
- :func:`shortcut_probes` — cross-validated R2 of a ridge regression from the embedding to each
  shortcut quantity (e.g. cell count, mean intensity).

Shapes: embeddings ``[N, D]`` with rows aligned (same image in row i).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from chada.eval.intervals import chance_score
from chada.eval.probes import DEFAULT_ALPHAS

__all__ = [
    "chance_level",
    "chance_normalised",
    "linear_cka",
    "participation_ratio",
    "score_ratio",
    "shortcut_explained",
    "shortcut_probes",
]


def _as2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in [0, 1] between ``x [N, D1]`` and ``y [N, D2]`` (rows = the same images).

    Uses the feature-space form when ``D1 * D2`` is smaller than ``N^2``, else the Gram form; both
    are exact. Returns 0 when either embedding is constant.
    """
    x, y = _as2d(x, "x"), _as2d(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x and y need the same rows (images), got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError("CKA needs at least 2 rows")
    x = x - x.mean(0)
    y = y - y.mean(0)
    n = len(x)
    if x.shape[1] * y.shape[1] <= n * n:
        hsic_xy = np.linalg.norm(y.T @ x) ** 2
        hsic_xx = np.linalg.norm(x.T @ x)
        hsic_yy = np.linalg.norm(y.T @ y)
    else:
        kx, ky = x @ x.T, y @ y.T
        hsic_xy = float((kx * ky).sum())
        hsic_xx = np.linalg.norm(kx)
        hsic_yy = np.linalg.norm(ky)
    denom = hsic_xx * hsic_yy
    return float(hsic_xy / denom) if denom > 0 else 0.0


def participation_ratio(x: np.ndarray) -> float:
    """Effective dimensionality of ``x [N, D]``: ``(sum l)^2 / sum l^2`` over covariance eigenvalues."""
    x = _as2d(x, "x")
    if len(x) < 2:
        raise ValueError("participation ratio needs at least 2 rows")
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    lam = s**2  # proportional to covariance eigenvalues; the ratio is scale-free
    total = lam.sum()
    return float(total**2 / (lam**2).sum()) if total > 0 else 0.0


def score_ratio(baseline: float, model: float) -> float:
    """``baseline / model`` (NaN when the model scores 0)."""
    return float(baseline / model) if model != 0 else float("nan")


def chance_normalised(baseline: float, model: float, chance: float) -> float:
    """``(baseline - chance) / (model - chance)``: 1 = the baseline gets everything the model gets
    above chance, 0 = nothing; NaN when the model is at or below chance (nothing to share out)."""
    d = model - chance
    return float((baseline - chance) / d) if d > 1e-12 else float("nan")


def chance_level(y_train: Sequence, y_test: Sequence, kind: str = "classification") -> float:
    """Chance: the best constant predictor's accuracy on ``y_test``, or the R² of ``mean(y_train)``."""
    return chance_score(y_test, kind, y_train)


def _cv_r2(x: np.ndarray, targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Per-column out-of-fold R2 of a standardised ridge (alpha by inner LOO CV) from x to targets."""
    folds = min(folds, len(x))
    if folds < 2:
        raise ValueError("cross-validation needs at least 2 rows")
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(DEFAULT_ALPHAS)))
    pred = cross_val_predict(model, x, targets, cv=KFold(folds, shuffle=True, random_state=seed))
    pred = pred.reshape(targets.shape)
    if targets.ndim == 1:
        return np.array([r2_score(targets, pred)])
    return np.array([r2_score(targets[:, j], pred[:, j]) for j in range(targets.shape[1])])


def shortcut_explained(
    shortcut: np.ndarray,
    embedding: np.ndarray,
    *,
    n_components: int = 10,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """How much of ``embedding [N, D]`` the ``shortcut [N, S]`` features explain linearly.

    The embedding is standardised and projected on its top ``n_components`` PCs; a ridge from the
    standardised shortcut features predicts each PC with ``folds``-fold cross-validation.

    Returns ``{"r2_weighted"`` (R2 averaged with the PCs' explained-variance weights), ``"r2_mean"``,
    ``"r2_per_pc"`` (list), ``"n_components"}``.
    """
    s, e = _as2d(shortcut, "shortcut"), _as2d(embedding, "embedding")
    if len(s) != len(e):
        raise ValueError(f"shortcut and embedding rows differ: {len(s)} vs {len(e)}")
    z = StandardScaler().fit_transform(e)
    k = max(1, min(n_components, z.shape[1], len(z) - 1))
    pca = PCA(n_components=k, random_state=seed).fit(z)
    pcs = pca.transform(z)
    r2 = _cv_r2(s, pcs, folds, seed)
    w = pca.explained_variance_
    return {
        "r2_weighted": float((r2 * w).sum() / w.sum()),
        "r2_mean": float(r2.mean()),
        "r2_per_pc": [float(v) for v in r2],
        "n_components": int(k),
    }


def shortcut_probes(
    embedding: np.ndarray,
    targets: Mapping[str, Sequence[float]],
    *,
    folds: int = 5,
    seed: int = 0,
    max_dim: int = 256,
) -> dict[str, float]:
    """Cross-validated R2 of predicting each shortcut quantity (name -> ``[N]``) from the embedding.

    The embedding is reduced to ``max_dim`` PCs when wider (fit on all rows: unsupervised). Rows where
    a target is NaN are dropped for that target only.
    """
    e = _as2d(embedding, "embedding")
    if e.shape[1] > max_dim:
        e = PCA(n_components=min(max_dim, len(e) - 1), random_state=seed).fit_transform(
            StandardScaler().fit_transform(e)
        )
    out: dict[str, float] = {}
    for name, vals in targets.items():
        t = np.asarray(vals, dtype=np.float64)
        if t.shape != (len(e),):
            raise ValueError(f"shortcut target {name!r} has shape {t.shape}, expected [{len(e)}]")
        ok = np.isfinite(t)
        if ok.sum() < 4 or np.ptp(t[ok]) == 0:
            out[name] = float("nan")
            continue
        out[name] = float(_cv_r2(e[ok], t[ok], folds, seed)[0])
    return out
