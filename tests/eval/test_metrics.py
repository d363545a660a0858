"""Linear probes, kNN and low-data subsets checked against hand-made answers.

The probes wrap scikit-learn estimators, so their expectations are closed forms (ridge normal
equations, leave-one-out from the hat matrix, separable sets) in tests/eval/test_mutants.py, not the
same estimators again. The 1-NN test below compares our numpy kNN with scikit-learn's, an independent
implementation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score
from sklearn.neighbors import KNeighborsClassifier

from chada.eval.knn import knn_accuracy, knn_predict, knn_r2, knn_regress
from chada.eval.lowdata import quantile_bins, stratified_fraction_indices, stratified_split
from chada.eval.probes import FeaturePrep, encode_labels, linear_probe_classification, ridge_probe_regression

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _blobs(n=300, d=20, k=4, sep=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) + sep * rng.normal(size=(k, d))[y]
    return x, y


def test_linear_probe_string_labels_unseen_test_class_counts_as_error():
    x, y = _blobs(n=100, k=2, sep=5.0)
    labels = np.array(["a", "b"])[y]
    test_labels = labels.copy()
    test_labels[:10] = "zzz"  # a class the probe never saw: must be wrong, not dropped
    got = linear_probe_classification(x, labels, x, test_labels)
    assert got["accuracy"] == pytest.approx(0.9)


def test_linear_probe_cv_grid_and_pca():
    x, y = _blobs(n=200, d=300)
    got = linear_probe_classification(x[:150], y[:150], x[150:], y[150:], C=[0.01, 1.0], max_dim=64)
    assert got["dim"] == 64 and got["C"] in (0.01, 1.0)
    prep = FeaturePrep(max_dim=64).fit(x[:150])
    z = prep.transform(x[:150])
    assert z.shape == (150, 64)
    assert np.allclose(z.mean(0), 0, atol=1e-8)


def test_probes_reject_bad_input():
    x, y = _blobs(n=20)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe_classification(np.full_like(x, np.nan), y, x, y)
    with pytest.raises(ValueError, match="dims differ"):
        ridge_probe_regression(x, y.astype(float), x[:, :3], y.astype(float))


def test_knn_hand_made_toy_set():
    # Two tight clusters along the axes; the query near (1, 0.1) belongs to class 0.
    train = np.array([[1, 0], [1, 0.05], [0.9, -0.05], [0, 1], [0.05, 1], [-0.05, 0.9]], dtype=float)
    labels = np.array([0, 0, 0, 1, 1, 1])
    test = np.array([[1, 0.1], [0.1, 1], [2, 0.0]])
    assert knn_predict(train, labels, test, k=3).tolist() == [0, 1, 0]
    # Weighted vote: 2 far class-1 neighbours lose to 1 very close class-0 one at T=0.07 ...
    train2 = np.array([[1, 0], [0.6, 0.8], [0.6, -0.8]])
    y2 = np.array([0, 1, 1])
    q = np.array([[1.0, 0.01]])
    assert knn_predict(train2, y2, q, k=3, temperature=0.07).tolist() == [0]
    # ... but win with a very flat temperature (almost a plain majority vote).
    assert knn_predict(train2, y2, q, k=3, temperature=100.0).tolist() == [1]
    # Scale does not matter (cosine).
    assert knn_predict(train * 7, labels, test * 0.01, k=3).tolist() == [0, 1, 0]


def test_1nn_matches_sklearn_cosine():
    x, y = _blobs(n=300, sep=0.7, seed=3)
    ref = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(x[:200], y[:200]).predict(x[200:])
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], k=1) == pytest.approx(
        accuracy_score(y[200:], ref)
    )


def test_knn_weights_against_direct_formula():
    x, y = _blobs(n=120, k=3, sep=0.3, seed=5)
    tr, te = x[:100], x[100:]
    pred = knn_predict(tr, y[:100], te, k=20, temperature=0.07)
    a = tr / np.linalg.norm(tr, axis=1, keepdims=True)
    b = te / np.linalg.norm(te, axis=1, keepdims=True)
    sim = b @ a.T
    expected = []
    for row in sim:
        nn = np.argsort(-row)[:20]
        votes = np.zeros(3)
        for j in nn:
            votes[y[j]] += np.exp(row[j] / 0.07)
        expected.append(votes.argmax())
    assert pred.tolist() == expected


def test_knn_chunks_bound_memory_and_change_nothing(monkeypatch):
    import chada.eval.knn as knn_mod

    # the block of one chunk stays under the budget at corpus scale, and chunking never changes a result
    for n_train in (10, 80_000, 1_000_000):
        rows = knn_mod.chunk_rows(n_train)
        assert rows >= 1 and (rows == 1 or rows * n_train * 12 <= knn_mod.MAX_BLOCK_BYTES)
    x, y = _blobs(n=400, k=4, sep=0.4, seed=9)
    t = np.random.default_rng(9).normal(size=400)
    whole = knn_predict(x[:300], y[:300], x[300:], k=20, chunk=100)
    reg = knn_regress(x[:300], t[:300], x[300:], k=20, chunk=100)
    for chunk in (1, 7, None):
        assert knn_predict(x[:300], y[:300], x[300:], k=20, chunk=chunk).tolist() == whole.tolist()
        # the float32 product may round differently for another block height (then x 1/T in the weights)
        np.testing.assert_allclose(
            knn_regress(x[:300], t[:300], x[300:], k=20, chunk=chunk), reg, rtol=1e-5, atol=1e-5
        )
    monkeypatch.setattr(knn_mod, "MAX_BLOCK_BYTES", 12 * 300 * 3)  # 3 test rows per chunk by default
    assert knn_mod.chunk_rows(300, knn_mod.MAX_BLOCK_BYTES) == 3
    assert knn_predict(x[:300], y[:300], x[300:], k=20).tolist() == whole.tolist()


def test_knn_regression():
    train = np.array([[1.0, 0], [0, 1.0]])
    t = np.array([2.0, 5.0])
    assert knn_regress(train, t, np.array([[1.0, 0.0]]), k=1)[0] == 2.0
    mid = knn_regress(train, t, np.array([[1.0, 1.0]]), k=2)[0]
    assert mid == pytest.approx(3.5)  # equal similarity -> plain mean
    assert knn_r2(train, t, train, t, k=1) == pytest.approx(1.0)


def test_encode_labels_union():
    a, b, classes = encode_labels(["x", "y"], ["y", "z"])
    assert classes.tolist() == ["x", "y", "z"] and a.tolist() == [0, 1] and b.tolist() == [1, 2]


def test_fraction_is_stratified_seeded_and_keeps_every_class():
    labels = np.array(["a"] * 500 + ["b"] * 300 + ["c"] * 5)
    idx = stratified_fraction_indices(labels, 0.1, seed=0)
    counts = {c: int((labels[idx] == c).sum()) for c in "abc"}
    assert counts == {"a": 50, "b": 30, "c": 1}
    assert np.array_equal(idx, stratified_fraction_indices(labels, 0.1, seed=0))
    assert not np.array_equal(idx, stratified_fraction_indices(labels, 0.1, seed=1))
    one = stratified_fraction_indices(labels, 0.01, seed=2)
    assert {c: int((labels[one] == c).sum()) for c in "abc"} == {"a": 5, "b": 3, "c": 1}
    assert len(stratified_fraction_indices(labels, 1.0, seed=0)) == len(labels)
    with pytest.raises(ValueError):
        stratified_fraction_indices(labels, 0.0, seed=0)


def test_fraction_regression_uses_quantile_bins():
    v = np.arange(1000, dtype=float)
    bins = quantile_bins(v, 10)
    assert np.bincount(bins).tolist() == [100] * 10
    idx = stratified_fraction_indices(v, 0.05, seed=0, regression=True)
    assert np.bincount(bins[idx]).tolist() == [5] * 10


def test_stratified_split():
    labels = np.array([0] * 40 + [1] * 10 + [2])
    tr, te = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(labels)
    assert (labels[te] == 0).sum() == 8 and (labels[te] == 1).sum() == 2 and 2 in labels[tr]
