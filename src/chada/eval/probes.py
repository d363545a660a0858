"""Linear probes on frozen features: logistic regression (top-1) and ridge regression (R2).

Protocol (cheap enough for 2 CPU cores, see docs of each function):

1. Standardise every feature with mean/std of the *training* rows only (zero-variance columns keep
   scale 1).
2. If the feature dimension D exceeds ``max_dim`` (default 256), project onto the top ``max_dim``
   principal components of the standardised training rows (PCA fit on the training rows only). This
   keeps lbfgs fast on all-token features of big models (D = 2 x 384 ...); with D <= 256 nothing is
   projected.
3. Classification: multinomial L2 logistic regression, lbfgs, fixed regularisation ``C=1.0`` and
   ``max_iter=300`` by default. Passing a sequence of C values selects C by stratified 3-fold
   cross-validation on the training rows (falls back to the first C when a class has < 3 samples).
4. Regression: ridge with ``alpha`` chosen from the fixed grid ``10**[-3..4]`` by efficient
   leave-one-out CV on the training rows (scikit-learn ``RidgeCV``), R2 on the test rows.

Shapes: ``x_train [N_train, D]``, ``x_test [N_test, D]``, labels ``[N]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import StratifiedKFold, cross_val_score

__all__ = [
    "DEFAULT_ALPHAS",
    "FeaturePrep",
    "encode_labels",
    "linear_probe_classification",
    "ridge_probe_regression",
]

DEFAULT_ALPHAS: tuple[float, ...] = tuple(10.0**k for k in range(-3, 5))


def _check_xy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
    if x_train.ndim != 2 or x_test.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D]; got {x_train.shape} and {x_test.shape}")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train/test feature dims differ: {x_train.shape[1]} vs {x_test.shape[1]}")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(
            f"rows and labels differ: train {len(x_train)} vs {len(y_train)}, test {len(x_test)} vs {len(y_test)}"
        )
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("empty train or test set")
    if not (np.isfinite(x_train).all() and np.isfinite(x_test).all()):
        raise ValueError("features contain NaN or inf")


@dataclass
class FeaturePrep:
    """Standardisation (+ optional PCA to ``max_dim``) fit on training rows only."""

    max_dim: int | None = 256
    seed: int = 0

    def fit(self, x: np.ndarray) -> FeaturePrep:
        x = np.asarray(x, dtype=np.float64)
        self.mean_ = x.mean(0)
        std = x.std(0)
        self.std_ = np.where(std > 1e-12, std, 1.0)
        z = (x - self.mean_) / self.std_
        self.pca_ = None
        if self.max_dim is not None and z.shape[1] > self.max_dim:
            n_comp = min(self.max_dim, z.shape[0])
            self.pca_ = PCA(n_components=n_comp, svd_solver="auto", random_state=self.seed).fit(z)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean_) / self.std_
        return self.pca_.transform(z) if self.pca_ is not None else z

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)


def encode_labels(y_train: Sequence, y_test: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map labels (any hashable values) to ints over the union of train and test labels.

    Returns ``(y_train_int, y_test_int, classes)``; test labels absent from train keep their own index
    so they count as errors, never silently dropped.
    """
    yt = np.asarray([str(v) for v in y_train])
    ye = np.asarray([str(v) for v in y_test])
    classes = np.unique(np.concatenate([yt, ye]))
    return np.searchsorted(classes, yt), np.searchsorted(classes, ye), classes


def linear_probe_classification(
    x_train: np.ndarray,
    y_train: Sequence,
    x_test: np.ndarray,
    y_test: Sequence,
    *,
    C: float | Sequence[float] = 1.0,
    max_iter: int = 300,
    max_dim: int | None = 256,
    seed: int = 0,
    return_correct: bool = False,
) -> dict[str, Any]:
    """Top-1 accuracy of an L2 logistic regression on standardised frozen features.

    Returns ``{"accuracy", "C", "n_iter", "dim"}`` (plus ``"correct"``, bool ``[N_test]``, with
    ``return_correct``: which test rows it gets right, for paired comparisons). With a single training
    class the probe predicts it.
    """
    y_train = np.asarray(y_train)
    y_test = np.asarray(y_test)
    _check_xy(x_train, y_train, x_test, y_test)
    ytr, yte, _ = encode_labels(y_train, y_test)
    prep = FeaturePrep(max_dim=max_dim, seed=seed)
    ztr = prep.fit_transform(x_train)
    zte = prep.transform(x_test)
    if np.unique(ytr).size == 1:
        pred = np.full(len(yte), ytr[0])
        out: dict[str, Any] = {"accuracy": float(accuracy_score(yte, pred)), "C": float("nan"), "n_iter": 0,
                               "dim": ztr.shape[1]}  # fmt: skip
        return {**out, "correct": pred == yte} if return_correct else out
    grid = [float(C)] if np.isscalar(C) else [float(c) for c in C]
    best_c = grid[0]
    with warnings.catch_warnings():
        # A probe that stops at max_iter is still a valid (slightly under-fit) probe; the budget is part
        # of the documented protocol, so the warning would only be noise across hundreds of fits.
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(grid) > 1:
            counts = np.bincount(ytr)
            if counts[counts > 0].min() >= 3:
                cv = StratifiedKFold(3, shuffle=True, random_state=seed)
                scores = [
                    cross_val_score(LogisticRegression(C=c, max_iter=max_iter), ztr, ytr, cv=cv).mean()
                    for c in grid
                ]
                best_c = grid[int(np.argmax(scores))]
        clf = LogisticRegression(C=best_c, max_iter=max_iter).fit(ztr, ytr)
    pred = clf.predict(zte)
    out = {
        "accuracy": float(accuracy_score(yte, pred)),
        "C": best_c,
        "n_iter": int(np.max(clf.n_iter_)),
        "dim": int(ztr.shape[1]),
    }
    return {**out, "correct": pred == yte} if return_correct else out


def ridge_probe_regression(
    x_train: np.ndarray,
    y_train: Sequence[float],
    x_test: np.ndarray,
    y_test: Sequence[float],
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    max_dim: int | None = 256,
    seed: int = 0,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Test R2 of a ridge regression (alpha by leave-one-out CV on the training rows).

    Returns ``{"r2", "alpha", "dim"}`` (plus ``"predictions"`` ``[N_test]`` with
    ``return_predictions``). R2 is scikit-learn's ``r2_score`` (can be negative).
    """
    y_train = np.asarray(y_train, dtype=np.float64)
    y_test = np.asarray(y_test, dtype=np.float64)
    _check_xy(x_train, y_train, x_test, y_test)
    if not (np.isfinite(y_train).all() and np.isfinite(y_test).all()):
        raise ValueError("regression targets contain NaN or inf")
    prep = FeaturePrep(max_dim=max_dim, seed=seed)
    ztr = prep.fit_transform(x_train)
    zte = prep.transform(x_test)
    if len(ztr) < 2:
        pred = np.full(len(y_test), y_train.mean())
        out: dict[str, Any] = {
            "r2": float(r2_score(y_test, pred)),
            "alpha": float("nan"),
            "dim": int(ztr.shape[1]),
        }
    else:
        reg = RidgeCV(alphas=[float(a) for a in alphas]).fit(ztr, y_train)
        pred = reg.predict(zte)
        out = {"r2": float(r2_score(y_test, pred)), "alpha": float(reg.alpha_), "dim": int(ztr.shape[1])}
    if return_predictions:
        out["predictions"] = np.asarray(pred, dtype=np.float64)
    return out
