"""kNN, linear/ridge probes and diagnostics against closed forms and hand-checkable data sets.

Written from the survivors of mutation testing (``python scripts/mutation.py eval/knn.py`` and
``eval/probes.py``, ``eval/diagnostics.py``; docs/testing.md, "Mutation scores: ssl/ and eval/").
Where our code wraps a scikit-learn estimator the expectation is computed here without it: DINO's
weighted vote ``sum exp(s / T)``, ridge as ``(Zc^T Zc + a I)^-1 Zc^T (y - mean y)``, leave-one-out
errors from the hat matrix, R2 as ``1 - SS_res / SS_tot``, principal axes from ``numpy.linalg.eigh``.
Only scikit-learn's fold splitters (``KFold``) are used, to know which rows each fold holds.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.model_selection import KFold

import chada.eval.probes as probes_mod
from chada.eval import diagnostics as diag_mod
from chada.eval.diagnostics import (
    chance_level,
    chance_normalised,
    linear_cka,
    participation_ratio,
    score_ratio,
    shortcut_explained,
    shortcut_probes,
)
from chada.eval.knn import chunk_rows, knn_accuracy, knn_predict, knn_r2, knn_regress
from chada.eval.probes import DEFAULT_ALPHAS, FeaturePrep, linear_probe_classification, ridge_probe_regression

pytestmark = pytest.mark.usefixtures("one_blas_thread")


# ------------------------------------------------------------------------------- references


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def _ridge(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept: weights and intercept."""
    zm, ym = z.mean(0), y.mean(0)
    zc = z - zm
    w = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ (y - ym))
    return w, ym - zm @ w


def _loo_mse(z: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Mean squared leave-one-out error of that ridge: residuals / (1 - diag of the hat matrix)."""
    n = len(z)
    zc = z - z.mean(0)
    hat = np.ones((n, n)) / n + zc @ np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T)
    res = (y - hat @ y) / (1.0 - np.diag(hat)).reshape((n,) + (1,) * (y.ndim - 1))
    return float(np.mean(res**2))


def _ridge_cv_predict(
    z: np.ndarray, y: np.ndarray, z_new: np.ndarray, alphas=DEFAULT_ALPHAS
) -> tuple[np.ndarray, float]:
    """Alpha of least leave-one-out error (first on ties), then the ridge fit on all rows."""
    errs = [_loo_mse(z, y, a) for a in alphas]
    alpha = alphas[int(np.argmin(errs))]
    w, b = _ridge(z, y, alpha)
    return z_new @ w + b, alpha


def _cv_r2_reference(x: np.ndarray, t: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold R2 per target column of standardise -> ridge (alpha by LOO) over shuffled K folds."""
    folds = min(folds, len(x))
    pred = np.zeros_like(t)
    for tr, te in KFold(folds, shuffle=True, random_state=seed).split(x):
        ztr, zte = _standardise(x[tr], x[te])
        pred[te] = _ridge_cv_predict(ztr, t[tr], zte)[0]
    t2, p2 = t.reshape(len(t), -1), pred.reshape(len(t), -1)
    return np.array([_r2(t2[:, j], p2[:, j]) for j in range(t2.shape[1])])


def _top_axes(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k principal axes [D, k] and variances of centred z, from eigh of the covariance."""
    zc = z - z.mean(0)
    val, vec = np.linalg.eigh(zc.T @ zc / (len(z) - 1))
    order = np.argsort(val)[::-1][:k]
    return vec[:, order], val[order]


def _same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float = 1e-8) -> None:
    assert a.shape == b.shape
    signs = np.sign((a * b).sum(0))
    np.testing.assert_allclose(a, b * signs, atol=atol)


def _knn_reference(train, labels_or_targets, test, k, temperature, regress=False, n_cls=None):
    """DINO's weighted kNN in float64: cosine similarity, k largest, weights exp(s / T)."""
    a = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    b = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    out = []
    for row in b @ a.T:
        nn = np.argsort(-row, kind="stable")[:k]
        w = np.exp(row[nn] / temperature)
        if regress:
            out.append((w * labels_or_targets[nn]).sum() / w.sum())
        else:
            votes = np.zeros(n_cls)
            np.add.at(votes, labels_or_targets[nn], w)
            out.append(int(votes.argmax()))
    return np.array(out)


# --------------------------------------------------------------------------------------- kNN


def _angle_rows(cosines) -> np.ndarray:
    c = np.asarray(cosines, dtype=np.float64)
    return np.stack([c, np.sqrt(1.0 - c**2)], 1)


def _vote_set():
    """Query (1, 0). Class 0: one row at similarity 1 (weight 1 at T=0.07). Class 1: 19 rows at
    s=0.7917 (19 exp((s-1)/0.07) = 0.97 < 1) and a 21st neighbour at s=0.78 (+0.043 would make 1.013).
    Class 2: rows at s=0, never among the 21 nearest."""
    train = _angle_rows([1.0] + [0.7917] * 19 + [0.78] + [0.0] * 4)
    labels = np.array([0] + [1] * 20 + [2] * 4)
    return train, labels, np.array([[1.0, 0.0]])


def test_knn_defaults_are_dinos_k20_t007() -> None:
    train, labels, q = _vote_set()
    assert knn_predict(train, labels, q).tolist() == [0]  # k=20, T=0.07: 1 > 0.97
    assert knn_predict(train, labels, q, k=21).tolist() == [1]  # the 21st neighbour tips it
    assert knn_predict(train, labels, q, temperature=1.07).tolist() == [1]  # flat weights: 19 beat 1
    assert _knn_reference(train, labels, q, 20, 0.07, n_cls=3).tolist() == [0]
    names = np.array(["a", "b", "c"])
    assert knn_accuracy(train, names[labels], q, ["a"]) == 1.0
    assert knn_accuracy(train, names[labels], q, ["b"], k=21) == 1.0
    assert knn_accuracy(train, names[labels], q, ["b"], temperature=1.07) == 1.0
    # regression with the same defaults: the weighted mean of the 20 nearest targets
    t = np.arange(25, dtype=float) ** 1.5
    want = _knn_reference(train, t, q, 20, 0.07, regress=True)
    np.testing.assert_allclose(knn_regress(train, t, q), want, rtol=1e-5)
    rng = np.random.default_rng(0)  # no ties among the neighbours of these test rows
    tr, te = rng.normal(size=(30, 3)), rng.normal(size=(6, 3))
    t, y_test = tr[:, 0] + 0.1 * rng.normal(size=30), te[:, 0]
    pred = _knn_reference(tr, t, te, 20, 0.07, regress=True)
    assert knn_r2(tr, t, te, y_test) == pytest.approx(_r2(y_test, pred), rel=1e-5)
    pred = _knn_reference(tr, t, te, 3, 0.5, regress=True)
    assert knn_r2(tr, t, te, y_test, k=3, temperature=0.5) == pytest.approx(_r2(y_test, pred), rel=1e-5)
    # queries whose 21st neighbour (target 100) is the s=0.78 row: k=20 leaves it out
    t = np.r_[0.0, np.arange(1.0, 20.0), 100.0, np.zeros(4)]
    qs = np.array([[1.0, 0.0], [np.cos(0.05), -np.sin(0.05)]])
    y_q = np.array([0.5, 2.0])
    pred = _knn_reference(train, t, qs, 20, 0.07, regress=True)
    assert knn_r2(train, t, qs, y_q) == pytest.approx(_r2(y_q, pred), rel=1e-5)
    assert knn_r2(train, t, qs, y_q, k=21) != pytest.approx(_r2(y_q, pred), rel=1e-3)


def test_knn_neighbour_set_is_exactly_the_k_nearest() -> None:
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(40, 5)), rng.normal(size=(7, 5))
    t = rng.normal(size=40)
    labels = rng.integers(0, 4, 40)
    for k in (1, 2, 3, 5, 39, 40, 60):  # k >= N_train: every row votes
        kk = min(k, 40)
        for temp in (0.1, 5.0):
            want = _knn_reference(train, t, test, kk, temp, regress=True)
            np.testing.assert_allclose(
                knn_regress(train, t, test, k=k, temperature=temp), want, rtol=1e-5, atol=1e-6
            )
            assert (
                knn_predict(train, labels, test, k=k, temperature=temp).tolist()
                == _knn_reference(train, labels, test, kk, temp, n_cls=4).tolist()
            )
    # every chunk height, including one that leaves a short last chunk, gives the same rows
    for chunk in (1, 3, 7):
        np.testing.assert_allclose(
            knn_regress(train, t, test, k=5, temperature=0.1, chunk=chunk),
            _knn_reference(train, t, test, 5, 0.1, regress=True),
            rtol=1e-5,
        )


def test_knn_small_temperature_neither_overflows_nor_underflows() -> None:
    # T = 0.001: exp(s/T) itself overflows and exp((s-2)/T) underflows; exp((s-1)/T) does neither
    train = _angle_rows([0.99, 1.0])
    q = np.array([[1.0, 0.0]])
    assert knn_predict(train, np.array([0, 1]), q, k=2, temperature=0.001).tolist() == [1]
    got = knn_regress(train, np.array([5.0, 7.0]), q, k=2, temperature=0.001)
    assert got[0] == pytest.approx((5 * np.exp(-10) + 7) / (np.exp(-10) + 1), rel=1e-4)


def test_knn_cosine_ignores_norms_and_zero_rows() -> None:
    train = np.array([[0.001, 0.0], [0.0, 0.002], [0.0, 0.0]])  # small norms, one zero row (similarity 0)
    t = np.array([1.0, 3.0, 10.0])
    q = np.array([[0.003, 0.003]])
    w = np.exp(np.array([2**-0.5, 2**-0.5, 0.0]) / 0.5)
    assert knn_regress(train, t, q, k=3, temperature=0.5)[0] == pytest.approx(
        (w * t).sum() / w.sum(), rel=1e-6
    )


def test_knn_half_precision_features_are_normalised_in_float32() -> None:
    # |(300, 300)|^2 = 180000 overflows float16: a float16 norm would zero every row
    train = np.array([[300.0, 300.0], [-300.0, 300.0]], dtype=np.float16)
    q = np.array([[-250.0, 300.0]], dtype=np.float16)
    assert knn_predict(train, np.array([0, 1]), q, k=2).tolist() == [1]


def test_knn_prediction_is_an_integer_array() -> None:
    pred = knn_predict(np.eye(3), np.array([2, 0, 1]), np.eye(3), k=1)
    assert pred.dtype == np.int64 and pred.tolist() == [2, 0, 1]


def test_knn_rejects_bad_input() -> None:
    x, y = np.eye(3), np.array([0, 1, 1])
    with pytest.raises(ValueError, match="^features contain NaN or inf$"):
        knn_predict(x, y, np.full((1, 3), np.inf))
    with pytest.raises(ValueError, match=r"^features must be 2-D \[N, D\], got shape \(3,\)$"):
        knn_predict(x, y, np.ones(3))
    with pytest.raises(ValueError, match="^empty train or test set$"):
        knn_predict(x, y, np.zeros((0, 3)))
    with pytest.raises(ValueError, match="^empty train or test set$"):
        knn_regress(np.zeros((0, 3)), np.zeros(0), x)
    with pytest.raises(ValueError, match="feature dims differ"):
        knn_predict(x, y, np.eye(2))
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_predict(x, y, x, k=0)
    with pytest.raises(ValueError, match=r"train_labels must be \[N_train\]"):
        knn_predict(x, y[:, None], x)
    with pytest.raises(ValueError, match=r"train_labels must be \[N_train\]"):
        knn_predict(x, y[:2], x)
    with pytest.raises(TypeError, match=r"^train_labels must be non-negative integers \(use chada"):
        knn_predict(x, y.astype(float), x)
    with pytest.raises(TypeError, match="non-negative integers"):
        knn_predict(x, np.array([0, -1, 1]), x)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        knn_predict(x, y, x, temperature=0.0)
    with pytest.raises(ValueError, match=r"train_targets must be \[N_train\]"):
        knn_regress(x, np.zeros((3, 1)), x)
    with pytest.raises(ValueError, match=r"train_targets must be \[N_train\]"):
        knn_regress(x, np.zeros(2), x)
    # one training row is enough
    assert knn_predict(x[:1], y[:1], x, k=1).tolist() == [0, 0, 0]


def test_chunk_rows_closed_forms() -> None:
    assert chunk_rows(10) == 1024  # capped
    assert chunk_rows(10**9) == 1  # at least one row
    assert chunk_rows(100, max_bytes=12 * 100 * 7) == 7
    assert chunk_rows(100, max_bytes=12 * 100 * 7 + 11) == 7
    assert chunk_rows(1, max_bytes=24) == 2 and chunk_rows(0, max_bytes=24) == 2
    assert chunk_rows(5, chunk=1) == 1 and chunk_rows(5, chunk=3) == 3
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunk_rows(5, chunk=0)


def test_knn_chunk_bounds_the_similarity_block_memory() -> None:
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(4000, 4)).astype(np.float32), rng.normal(size=(500, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 4000)
    for run in (
        lambda: knn_predict(train, labels, test, k=5, chunk=10),
        lambda: knn_regress(train, labels.astype(float), test, k=5, chunk=10),
    ):
        tracemalloc.start()
        try:
            run()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # 10 x 4000 pairs x 12 bytes = 0.5 MB per chunk; all 500 rows at once would be 24 MB
        assert peak < 3 * 2**20


# ------------------------------------------------------------------------------------ probes


def test_feature_prep_is_train_standardisation() -> None:
    rng = np.random.default_rng(2)
    x = np.stack(
        [rng.normal(5, 0.5, 20), rng.normal(-3, 40, 20), np.full(20, 0.1), rng.normal(0, 1e-3, 20)], 1
    )
    x_new = rng.normal(size=(4, 4))
    prep = FeaturePrep().fit(x)
    want_tr, want_new = _standardise(x, x_new)
    np.testing.assert_allclose(prep.transform(x), want_tr, atol=1e-12)
    np.testing.assert_allclose(prep.transform(x_new), want_new, atol=1e-12)
    # a constant training column keeps scale 1: new rows show their raw offset from it
    np.testing.assert_allclose(prep.transform(x_new)[:, 2], x_new[:, 2] - 0.1, atol=1e-12)
    np.testing.assert_allclose(FeaturePrep().fit_transform(x), want_tr, atol=1e-12)


def test_feature_prep_projects_only_above_max_dim() -> None:
    rng = np.random.default_rng(3)
    x = (
        rng.normal(size=(30, 6))
        @ np.diag([9.0, 5.0, 3.0, 2.0, 1.0, 0.5])
        @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    )
    z = _standardise(x)[0]
    np.testing.assert_allclose(
        FeaturePrep(max_dim=6).fit_transform(x), z, atol=1e-12
    )  # D == max_dim: untouched
    np.testing.assert_allclose(FeaturePrep(max_dim=None).fit_transform(x), z, atol=1e-12)
    axes, _ = _top_axes(z, 3)
    _same_up_to_sign(FeaturePrep(max_dim=3).fit_transform(x), (z - z.mean(0)) @ axes, atol=1e-8)
    # fewer rows than max_dim: as many components as rows
    wide = rng.normal(size=(5, 12))
    assert FeaturePrep(max_dim=8).fit_transform(wide).shape == (5, 5)


def test_feature_prep_is_reproducible_with_the_randomised_solver() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 600))  # big enough for scikit-learn's randomised PCA
    a = FeaturePrep(max_dim=5, seed=3).fit_transform(x)
    b = FeaturePrep(max_dim=5, seed=3).fit_transform(x)
    assert a.shape == (60, 5) and np.array_equal(a, b)


def test_feature_prep_of_half_precision_features() -> None:
    x = np.array([[300.0, 1.0], [-300.0, 2.0], [310.0, 3.0], [-290.0, 4.0]], dtype=np.float16)
    z = FeaturePrep().fit_transform(x)
    np.testing.assert_allclose(z, _standardise(x.astype(np.float64))[0], atol=1e-6)


def _separable(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    x += np.where(y[:, None] == 1, 1.0, -1.0) * np.array([0.5, 0.25])  # margin
    return x, y


def test_logistic_probe_separates_a_linearly_separable_set() -> None:
    x, y = _separable(0)
    xt, yt = _separable(1)
    got = linear_probe_classification(x, y, xt, yt)
    assert got["accuracy"] == 1.0 and got["C"] == 1.0 and got["dim"] == 2 and 1 <= got["n_iter"] <= 300
    # the class at scale 1e-4 next to a 1e4-scale noise feature: standardisation makes it usable
    rng = np.random.default_rng(5)

    def scaled(yy):
        signal = (2 * yy - 1) * (1.0 + rng.random(len(yy)))
        return np.stack([signal * 1e-4, rng.normal(size=len(yy)) * 1e4], 1)

    assert linear_probe_classification(scaled(y), y, scaled(yt), yt)["accuracy"] == 1.0


def test_logistic_probe_with_vanishing_c_predicts_the_training_majority() -> None:
    # C -> 0: the weights vanish, the unpenalised intercept gives the majority training class
    x, y = _separable(0)
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:5]]
    xt, yt = _separable(1)
    got = linear_probe_classification(x[keep], y[keep], xt, yt, C=1e-8)
    assert got["accuracy"] == pytest.approx(np.mean(yt == 0)) and got["C"] == 1e-8


def test_logistic_probe_single_training_class() -> None:
    x = np.array([[0.0, 1.0]])
    got = linear_probe_classification(x, ["a"], np.array([[1.0, 1.0], [2.0, 0.0]]), ["a", "b"])
    assert got["accuracy"] == 0.5 and np.isnan(got["C"]) and got["n_iter"] == 0 and got["dim"] == 2


def test_logistic_probe_iteration_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _separable(2, n=30)
    y[:10] = 2  # three classes: lbfgs needs more than 3 iterations
    assert linear_probe_classification(x, y, x, y, max_iter=3)["n_iter"] == 3
    seen = []

    class Spy(probes_mod.LogisticRegression):
        def fit(self, *a, **kw):
            seen.append((self.C, self.max_iter))
            return super().fit(*a, **kw)

    monkeypatch.setattr(probes_mod, "LogisticRegression", Spy)
    linear_probe_classification(x, y, x, y)
    assert seen == [(1.0, 300)]  # the documented protocol: C=1, max_iter=300


def _imbalanced():
    # 6 class-0 rows, 3 class-1 rows, separable: a vanishing C predicts class 0 everywhere (CV accuracy 2/3)
    x = np.array([[-3.0], [-2.5], [-2.0], [-1.5], [-1.2], [-1.0], [1.0], [2.0], [3.0]])
    return x, np.array(["a"] * 6 + ["c"] * 3)


def test_logistic_probe_c_grid_by_stratified_3_fold_cv(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _imbalanced()
    calls = []
    real = probes_mod.cross_val_score

    def spy(est, xx, yy, cv):
        calls.append((est.C, est.max_iter, cv.n_splits, cv.shuffle, cv.random_state, type(cv).__name__))
        return real(est, xx, yy, cv=cv)

    monkeypatch.setattr(probes_mod, "cross_val_score", spy)
    # exactly 3 rows in the smallest class: cross-validated; a test-only class "b" does not count
    got = linear_probe_classification(x, y, x, np.r_[y[:-1], ["b"]], C=[1e-8, 1.0], seed=4)
    assert got["C"] == 1.0
    assert calls == [(1e-8, 300, 3, True, 4, "StratifiedKFold"), (1.0, 300, 3, True, 4, "StratifiedKFold")]
    calls.clear()
    assert linear_probe_classification(x, y, x, y, C=[1.0, 1e-8], max_iter=50)["C"] == 1.0
    assert [(c[1], c[4]) for c in calls] == [(50, 0), (50, 0)]  # default seed 0
    calls.clear()
    # fewer than 3 rows in a class: no CV, the first C
    assert linear_probe_classification(x[:-1], y[:-1], x, y, C=[1e-8, 1.0])["C"] == 1e-8
    assert linear_probe_classification(x[:7], y[:7], x, y, C=[1e-8, 1.0])["C"] == 1e-8
    # a single C: fit once, no CV
    assert linear_probe_classification(x, y, x, y, C=2.0)["C"] == 2.0
    assert calls == []


def test_probes_pass_max_dim_and_seed_to_the_feature_prep(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    class Spy(FeaturePrep):
        def fit(self, x):
            seen.append((self.max_dim, self.seed))
            return super().fit(x)

    monkeypatch.setattr(probes_mod, "FeaturePrep", Spy)
    x, y = _imbalanced()
    x = np.c_[x, x**2]
    linear_probe_classification(x, y, x, y)
    linear_probe_classification(x, y, x, y, max_dim=1, seed=5)
    ridge_probe_regression(x, x[:, 0], x, x[:, 0])
    assert ridge_probe_regression(x, x[:, 0], x, x[:, 0], max_dim=1, seed=6)["dim"] == 1
    assert seen == [(256, 0), (1, 5), (256, 0), (1, 6)]


def test_probes_project_above_256_dims_by_default() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 257)), np.arange(30) % 2
    assert linear_probe_classification(x[:20], y[:20], x[20:], y[20:])["dim"] == 20
    assert ridge_probe_regression(x[:20], x[:20, 0], x[20:], x[20:, 0], alphas=[1.0])["dim"] == 20
    assert linear_probe_classification(x[:20, :256], y[:20], x[20:, :256], y[20:])["dim"] == 256


def test_probes_reject_each_bad_input() -> None:
    x, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    for a, b in ((x[:, 0], x), (x, x[:, 0])):
        with pytest.raises(ValueError, match="features must be 2-D"):
            linear_probe_classification(a, y, b, y)
    with pytest.raises(ValueError, match="rows and labels differ"):
        linear_probe_classification(x, y[:3], x, y)
    with pytest.raises(ValueError, match="rows and labels differ"):
        linear_probe_classification(x, y, x, y[:3])
    with pytest.raises(ValueError, match="^empty train or test set$"):
        linear_probe_classification(x[:0], y[:0], x, y)
    with pytest.raises(ValueError, match="^empty train or test set$"):
        ridge_probe_regression(x, y, x[:0], y[:0])
    bad = x.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="^features contain NaN or inf$"):
        linear_probe_classification(bad, y, x, y)
    with pytest.raises(ValueError, match="^features contain NaN or inf$"):
        linear_probe_classification(x, y, bad, y)
    with pytest.raises(ValueError, match="^regression targets contain NaN or inf$"):
        ridge_probe_regression(x, y, x, [0.0, np.inf, 1.0, 2.0])
    with pytest.raises(ValueError, match="^regression targets contain NaN or inf$"):
        ridge_probe_regression(x, [0.0, np.nan, 1.0, 2.0], x, y)
    # None for a missing value is NaN as well, in either list
    with pytest.raises(ValueError, match="^regression targets contain NaN or inf$"):
        ridge_probe_regression(x, [0.0, None, 1.0, 2.0], x, y)
    with pytest.raises(ValueError, match="^regression targets contain NaN or inf$"):
        ridge_probe_regression(x, y, x, [0.0, 1.0, None, 2.0])


def test_ridge_probe_is_the_closed_form() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(25, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
    y = x @ [1.0, 0.2, -4.0] + rng.normal(size=25)
    xt, yt = x[:5] + rng.normal(size=(5, 3)), y[:5] + 1.0
    ztr, zte = _standardise(x, xt)
    # one alpha: (Zc^T Zc + aI)^-1 Zc^T (y - mean y)
    w, b = _ridge(ztr, y, 3.0)
    got = ridge_probe_regression(x, y, xt, yt, alphas=[3.0], return_predictions=True)
    np.testing.assert_allclose(got["predictions"], zte @ w + b, rtol=1e-9)
    assert (
        got["r2"] == pytest.approx(_r2(yt, zte @ w + b), rel=1e-9) and got["alpha"] == 3.0 and got["dim"] == 3
    )
    # the default grid 10^-3 .. 10^4, alpha of least leave-one-out error
    pred, alpha = _ridge_cv_predict(ztr, y, zte)
    got = ridge_probe_regression(x, y, xt, yt)
    assert "predictions" not in got
    assert got["alpha"] == alpha and got["r2"] == pytest.approx(_r2(yt, pred), rel=1e-9)
    noisy = rng.normal(size=25)  # pure noise: a heavy alpha wins
    pred, alpha = _ridge_cv_predict(ztr, noisy, zte)
    got = ridge_probe_regression(x, noisy, xt, yt)
    assert alpha >= 100 and got["alpha"] == alpha and got["r2"] == pytest.approx(_r2(yt, pred), rel=1e-9)


def test_ridge_probe_with_one_or_two_training_rows() -> None:
    xt, yt = np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1.0, 3.0])
    one = ridge_probe_regression(np.array([[1.0, 2.0]]), [4.0], xt, yt, return_predictions=True)
    assert np.isnan(one["alpha"]) and one["predictions"].tolist() == [4.0, 4.0] and one["dim"] == 2
    assert one["r2"] == pytest.approx(_r2(yt, np.array([4.0, 4.0])))
    x2, y2 = np.array([[0.0, 0.0], [2.0, 4.0]]), np.array([1.0, 5.0])
    two = ridge_probe_regression(x2, y2, xt, yt, alphas=[1.0], return_predictions=True)
    ztr, zte = _standardise(x2, xt)
    w, b = _ridge(ztr, y2, 1.0)
    assert two["alpha"] == 1.0
    np.testing.assert_allclose(two["predictions"], zte @ w + b, rtol=1e-9)


# ------------------------------------------------------------------------------- diagnostics


def test_cka_two_rows_small_scale_constant_and_half_precision() -> None:
    rng = np.random.default_rng(8)
    assert linear_cka(rng.normal(size=(2, 3)), rng.normal(size=(2, 5))) == pytest.approx(1.0)  # rank one each
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 4))
    ref = linear_cka(x, y)
    assert 0.05 < ref < 0.95
    assert linear_cka(1e-3 * x, 1e-3 * y) == pytest.approx(ref)  # scale-free, even below 1
    assert linear_cka(x, np.ones((10, 4))) == 0.0
    assert linear_cka(np.full((10, 3), 2.0), y) == 0.0
    # Gram form (D1 D2 > N^2) on a small sample: the closed form tr(KL) / sqrt(tr(KK) tr(LL))
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 6))
    h = np.eye(4) - 0.25
    k, l_ = h @ a @ a.T @ h, h @ b @ b.T @ h
    assert linear_cka(a, b) == pytest.approx(np.trace(k @ l_) / np.sqrt(np.trace(k @ k) * np.trace(l_ @ l_)))
    big = np.array([[300.0, 1.0], [-300.0, 2.0], [310.0, -1.0]], dtype=np.float16)
    assert linear_cka(big, big) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="^CKA needs at least 2 rows$"):
        linear_cka(x[:1], y[:1])


def test_participation_ratio_offsets_scale_and_constants() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(50, 4)) * [3.0, 1.0, 1.0, 0.5]
    ref = participation_ratio(x)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    assert ref == pytest.approx(s.sum() ** 2 / (s**2).sum())
    assert participation_ratio(x + 7.0) == pytest.approx(ref)  # centred first
    assert participation_ratio(1e-3 * x) == pytest.approx(ref)
    assert participation_ratio(np.ones((5, 3))) == 0.0
    assert participation_ratio(np.array([[0.0, 1.0], [2.0, 3.0]])) == pytest.approx(1.0)
    big = np.array([[300.0, 0.0], [-300.0, 0.0], [0.0, 300.0], [0.0, -300.0]], dtype=np.float16)
    assert participation_ratio(big) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="^participation ratio needs at least 2 rows$"):
        participation_ratio(x[:1])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda bad, ok: linear_cka(bad, ok), "x"),
        (lambda bad, ok: linear_cka(ok, bad), "y"),
        (lambda bad, ok: participation_ratio(bad), "x"),
        (lambda bad, ok: shortcut_explained(bad, ok), "shortcut"),
        (lambda bad, ok: shortcut_explained(ok, bad), "embedding"),
        (lambda bad, ok: shortcut_probes(bad, {}), "embedding"),
    ],
)
def test_diagnostics_name_the_bad_argument(call, name: str) -> None:
    ok = np.arange(12.0).reshape(6, 2)
    with pytest.raises(ValueError, match=f"^{name} must be 2-D"):
        call(np.zeros(6), ok)
    bad = ok.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=f"^{name} contains NaN or inf$"):
        call(bad, ok)


def test_ratios_edges_and_chance_level() -> None:
    assert np.isnan(score_ratio(0.5, 0.0)) and score_ratio(0.0, 0.5) == 0.0
    assert chance_normalised(0.3, 0.5, 0.1) == pytest.approx(0.5)
    assert np.isnan(chance_normalised(0.5e-12, 1e-12, 0.0))  # within 1e-12 of chance: nothing to share out
    assert chance_normalised(1e-12, 2e-12, 0.0) == pytest.approx(0.5)
    assert chance_level(["a", "b", "b"], ["a", "a", "b", "a"]) == 0.75  # best constant on the test labels
    # regression: R2 of predicting mean(y_train) = 2 on y_test (2, 4): 1 - 4 / 2
    assert chance_level([1.0, 2.0, 3.0], [2.0, 4.0], "regression") == pytest.approx(-1.0)


def test_shortcut_probes_is_cross_validated_ridge_r2() -> None:
    rng = np.random.default_rng(10)
    n = 24
    emb = rng.normal(size=(n, 3)) * [1.0, 5.0, 0.2]
    count = emb @ [1.0, 0.3, 2.0] + 0.5 * rng.normal(size=n)
    ramp = np.linspace(0.0, 1.0, n)  # range exactly 1
    holes = count.copy()
    holes[[0, 5]] = np.nan
    got = shortcut_probes(emb, {"flat": np.full(n, 3.0), "count": count, "ramp": ramp, "holes": holes})
    assert np.isnan(got["flat"])  # nothing to predict
    assert got["count"] == pytest.approx(_cv_r2_reference(emb, count, 5, 0)[0], rel=1e-9)
    assert got["ramp"] == pytest.approx(_cv_r2_reference(emb, ramp, 5, 0)[0], rel=1e-9)
    ok = np.isfinite(holes)
    assert got["holes"] == pytest.approx(_cv_r2_reference(emb[ok], holes[ok], 5, 0)[0], rel=1e-9)
    # a Python list with None for missing values: the same rows dropped
    as_list = [None if np.isnan(v) else float(v) for v in holes]
    assert shortcut_probes(emb, {"holes": as_list})["holes"] == got["holes"]
    assert shortcut_probes(emb, {"c": count}, folds=3, seed=2)["c"] == pytest.approx(
        _cv_r2_reference(emb, count, 3, 2)[0], rel=1e-9
    )
    # 4 finite values are enough (2 folds), 3 are not
    few = np.full(n, np.nan)
    few[:4] = [1.0, 2.0, 0.0, 3.0]
    assert np.isfinite(shortcut_probes(emb, {"f": few})["f"])
    few[3] = np.nan
    assert np.isnan(shortcut_probes(emb, {"f": few})["f"])
    with pytest.raises(ValueError, match="shortcut target 'bad' has shape"):
        shortcut_probes(emb, {"bad": count[:5]})


def test_shortcut_probes_reduce_wide_embeddings_to_principal_components() -> None:
    rng = np.random.default_rng(11)
    n = 20
    emb = rng.normal(size=(n, 4)) @ rng.normal(size=(4, 6)) + 0.01 * rng.normal(size=(n, 6))
    t = emb[:, 0] + rng.normal(size=n)
    z = _standardise(emb)[0]
    axes, _ = _top_axes(z, 3)
    pcs = (z - z.mean(0)) @ axes  # signs do not matter to a ridge on standardised inputs
    assert shortcut_probes(emb, {"t": t}, max_dim=3)["t"] == pytest.approx(
        _cv_r2_reference(pcs, t, 5, 0)[0], rel=1e-6
    )
    assert shortcut_probes(emb, {"t": t}, max_dim=6)["t"] == pytest.approx(
        _cv_r2_reference(emb, t, 5, 0)[0], rel=1e-9
    )
    wide = rng.normal(size=(n, 257))
    z = _standardise(wide)[0]
    axes, _ = _top_axes(z, n - 1)  # default max_dim 256 > N - 1: N - 1 components
    pcs = (z - z.mean(0)) @ axes
    tw = wide[:, 0] + 0.1 * rng.normal(size=n)
    assert shortcut_probes(wide, {"t": tw})["t"] == pytest.approx(
        _cv_r2_reference(pcs, tw, 5, 0)[0], rel=1e-6
    )


def test_shortcut_explained_is_variance_weighted_cv_r2_of_the_top_pcs() -> None:
    rng = np.random.default_rng(12)
    n = 30
    s = rng.normal(size=(n, 2))
    emb = np.concatenate([s @ rng.normal(size=(2, 6)), rng.normal(size=(n, 7))], 1) + 0.1 * rng.normal(
        size=(n, 13)
    )
    z = _standardise(emb)[0]
    for kwargs, k, folds, seed in (({}, 10, 5, 0), ({"n_components": 3, "folds": 4, "seed": 1}, 3, 4, 1)):
        got = shortcut_explained(s, emb, **kwargs)
        axes, var = _top_axes(z, k)
        r2 = _cv_r2_reference(s, (z - z.mean(0)) @ axes, folds, seed)
        assert got["n_components"] == k
        np.testing.assert_allclose(got["r2_per_pc"], r2, rtol=1e-6, atol=1e-9)
        assert got["r2_mean"] == pytest.approx(r2.mean(), rel=1e-6)
        assert got["r2_weighted"] == pytest.approx((r2 * var).sum() / var.sum(), rel=1e-6)
    # components: at most N - 1 and D, at least 1
    assert shortcut_explained(s[:4], emb[:4], n_components=10, folds=2)["n_components"] == 3
    assert shortcut_explained(s, emb[:, :2], n_components=10)["n_components"] == 2
    assert shortcut_explained(s, emb, n_components=1)["n_components"] == 1
    with pytest.raises(ValueError, match="shortcut and embedding rows differ"):
        shortcut_explained(s[:5], emb)


def test_cv_r2_needs_two_rows_and_uses_at_most_one_fold_per_row() -> None:
    x, t = np.array([[0.0], [1.0], [3.0], [4.5], [7.0], [8.0]]), np.array([0.0, 1.1, 2.9, 4.0, 7.5, 7.0])
    assert diag_mod._cv_r2(x, t, 10, 0) == pytest.approx(_cv_r2_reference(x, t, 6, 0), rel=1e-9)
    two = diag_mod._cv_r2(x, np.stack([t, t**2], 1), 2, 1)  # 2 folds are enough; one R2 per column
    np.testing.assert_allclose(two, _cv_r2_reference(x, np.stack([t, t**2], 1), 2, 1), rtol=1e-9)
    with pytest.raises(ValueError, match="^cross-validation needs at least 2 rows$"):
        diag_mod._cv_r2(x[:1], t[:1], 5, 0)


def test_shortcut_analyses_are_reproducible_with_the_randomised_pca() -> None:
    # N or D above 500 with few components: scikit-learn picks the randomised solver, seeded by `seed`
    rng = np.random.default_rng(13)
    emb, s = rng.normal(size=(40, 600)), rng.normal(size=(40, 2))
    t = {"t": emb[:, 0] + rng.normal(size=40)}
    assert shortcut_explained(s, emb, n_components=4, seed=3) == shortcut_explained(
        s, emb, n_components=4, seed=3
    )
    assert shortcut_probes(emb, t, max_dim=8, seed=3) == shortcut_probes(emb, t, max_dim=8, seed=3)
