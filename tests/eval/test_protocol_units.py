"""Every decision of ``chada.eval.protocol`` pinned on small hand-made cases (issue 26, item 10).

Which rows a model is scored on, how folds and splits are chosen (chance and the small-task
cross-validation among them), how fold scores are pooled, and which inputs are refused. These are
the tests the mutation run of ``eval/protocol.py`` uses (``scripts/mutation.py``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from chada.encode.store import EmbeddingSet
from chada.eval import protocol as P
from chada.eval.config import ModelSpec, TaskSpec
from chada.eval.intervals import bootstrap_r2_interval, chance_score, r2, wilson_interval

SETTINGS = {
    "knn": {"k": 20, "temperature": 0.07}, "probe": {"C": 1.0, "max_iter": 300}, "max_dim": 256,
    "test_fraction": 0.2, "small_data": {"max_images": 200, "folds": 5},
}  # fmt: skip


def _emb(ids, labels=None, x=None, extra=None) -> EmbeddingSet:
    n = len(ids)
    meta = pd.DataFrame({"image_id": list(ids)})
    if labels is not None:
        meta["label"] = list(labels)
    for k, v in (extra or {}).items():
        meta[k] = list(v)
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2) if x is None else x
    return EmbeddingSet({"cls": x}, meta, {})


def _task(**kw) -> TaskSpec:
    base = dict(name="t", label_column="label", kind="classification", embeddings={}, feature_kinds=["cls"],
                fractions=[1.0], seeds=[0])  # fmt: skip
    base.update(kw)
    return TaskSpec(**base)


# ------------------------------------------------------------------------------ loading and rows
def test_loader_sorts_rows_by_image_id_and_reads_each_file_once(tmp_path):
    path = tmp_path / "e.npz"
    _emb(["c", "a", "b"], x=np.array([[3.0], [1.0], [2.0]], np.float32)).save(path)
    load = P.Loader()
    first = load(path)
    assert first.meta["image_id"].tolist() == ["a", "b", "c"]
    assert first.get("cls")[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert load(path) is first and list(load.cache) == [path]


def test_loader_keeps_the_order_of_a_file_without_image_ids(tmp_path):
    path = tmp_path / "e.npz"
    EmbeddingSet({"cls": np.array([[3.0], [1.0]], np.float32)}, pd.DataFrame({"label": ["x", "y"]}), {}).save(
        path
    )
    assert P.Loader()(path).get("cls")[:, 0].tolist() == [3.0, 1.0]


def test_resolve_kind():
    two = EmbeddingSet(
        {"cls": np.zeros((1, 1)), "all": np.zeros((1, 1))}, pd.DataFrame({"image_id": ["a"]}), {}
    )
    one = EmbeddingSet({"handmade": np.zeros((1, 1))}, pd.DataFrame({"image_id": ["a"]}), {})
    assert P.resolve_kind(two, "all") == "all" and P.resolve_kind(two, "mean") is None
    assert P.resolve_kind(one, "cls") == "handmade" and P.resolve_kind(one, "handmade") == "handmade"


def test_align_rows_matches_image_ids():
    a, b = _emb(["x", "y", "z", "w"]), _emb(["z", "q", "x"])
    ia, ib = P.align_rows(a, b)
    assert ia.tolist() == [0, 2] and ib.tolist() == [2, 0] and ia.dtype == np.int64 and ib.dtype == np.int64
    ia, ib = P.align_rows(a, _emb(["q"]))
    assert ia.tolist() == [] and ib.tolist() == [] and ia.dtype == np.int64 and ib.dtype == np.int64
    bare = EmbeddingSet({"cls": np.zeros((1, 1))}, pd.DataFrame({"label": ["x"]}), {})
    for pair in ((bare, a), (a, bare)):
        with pytest.raises(ValueError, match="^cannot align embedding files without an image_id column$"):
            P.align_rows(*pair)


def test_cache_key_separates_its_arrays():
    one, two = np.array([1, 2], np.int64), np.array([3], np.int64)
    assert P._key(one, two) == P._key(one.copy(), two.copy())
    assert P._key(one, two) != P._key(np.array([1], np.int64), np.array([2, 3], np.int64))


# ------------------------------------------------------------------------------ splits and folds
def test_split_column_is_used_when_it_has_both_splits():
    meta = pd.DataFrame({"split": ["train", "test", "train", "val", "test", "train"]})
    labels = np.array(["a", "b"] * 3)
    tr, te, fixed = P._splits(_task(), meta, labels, 0, 0.5)
    assert tr.tolist() == [0, 2, 5] and te.tolist() == [1, 4] and fixed
    tr, te, fixed = P._splits(_task(test_split="val"), meta, labels, 0, 0.5)
    assert te.tolist() == [3] and fixed


def test_random_split_without_a_usable_split_column():
    labels = np.array(["a"] * 10 + ["b"] * 10)
    no_test = pd.DataFrame({"split": ["train"] * 20})
    for meta in (no_test, pd.DataFrame({"other": range(20)})):
        tr, te, fixed = P._splits(_task(), meta, labels, 0, 0.2)
        assert not fixed and len(te) == 4 and sorted(tr.tolist() + te.tolist()) == list(range(20))
    no_train = pd.DataFrame({"split": ["test"] * 20})
    assert not P._splits(_task(), no_train, labels, 0, 0.2)[2]
    # a task's own test_fraction wins over the split column and over the default
    both = pd.DataFrame({"split": ["train", "test"] * 10})
    tr, te, fixed = P._splits(_task(test_fraction=0.5), both, labels, 0, 0.2)
    assert not fixed and len(te) == 10


def test_regression_split_is_stratified_by_quantile_bins():
    labels = np.arange(40, dtype=np.float64)
    tr, te, _ = P._splits(_task(kind="regression"), pd.DataFrame({"x": range(40)}), labels, 3, 0.25)
    assert len(te) == 10
    # 10 quantile bins of 4 values, one test value from each
    assert sorted(set((te // 4).tolist())) == list(range(10))


def test_stratified_folds_test_every_row_once_and_follow_the_seed():
    labels = np.array(["a"] * 6 + ["b"] * 4)
    folds = P.stratified_folds(labels, 5, seed=0)
    assert len(folds) == 4  # k lowered to the smallest class
    tested = np.concatenate([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(10))
    for tr, te in folds:
        assert tr.tolist() == sorted(tr.tolist()) and te.tolist() == sorted(te.tolist())
        assert not set(tr) & set(te) and len(tr) + len(te) == 10
        assert set(labels[te]) == {"a", "b"}  # stratified: both classes in every fold
    assert len(P.stratified_folds(labels, 2, seed=0)) == 2
    again = P.stratified_folds(labels, 5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = P.stratified_folds(labels, 5, seed=1)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_stratified_folds_need_two_rows_per_class():
    assert P.stratified_folds(np.array(["a", "a", "a", "b"]), 5, seed=0) is None
    assert len(P.stratified_folds(np.array(["a", "a", "b", "b"]), 5, seed=0)) == 2


def test_regression_folds_stratify_five_quantile_bins():
    labels = np.arange(10, dtype=np.float64)  # 5 bins of 2: k = 2
    folds = P.stratified_folds(labels, 5, seed=0, regression=True)
    assert len(folds) == 2
    for _, te in folds:
        assert sorted((te // 2).tolist()) == list(range(5))  # one value of each bin per fold


def test_design_small_task_uses_cross_validation():
    labels = np.array(["a", "b"] * 10)
    meta = pd.DataFrame({"split": ["train", "test"] * 10})
    folds, design = P._design(_task(), meta, labels, 0, SETTINGS)
    assert design == "5-fold CV" and len(folds) == 5
    three = dict(SETTINGS, small_data={"max_images": 200, "folds": 3})
    assert P._design(_task(), meta, labels, 0, three)[1] == "3-fold CV"
    # exactly max_images labelled images: no longer small
    at = dict(SETTINGS, small_data={"max_images": 20, "folds": 5})
    folds, design = P._design(_task(), meta, labels, 0, at)
    assert design == "split" and len(folds) == 1 and len(folds[0][1]) == 10
    over = dict(SETTINGS, small_data={"max_images": 21, "folds": 5})
    assert P._design(_task(), meta, labels, 0, over)[1] == "5-fold CV"
    # no small_data section: never cross-validated unless the task asks
    assert P._design(_task(), meta, labels, 0, {"test_fraction": 0.2})[1] == "split"
    assert P._design(_task(cross_validation=True), meta, labels, 0, {"test_fraction": 0.2})[1] == "5-fold CV"


def test_design_task_choice_wins_and_single_row_classes_fall_back_to_a_split():
    labels = np.array(["a", "b"] * 10)
    meta = pd.DataFrame({"split": ["train", "test"] * 10})
    assert P._design(_task(cross_validation=False), meta, labels, 0, SETTINGS)[1] == "split"
    big = dict(SETTINGS, small_data={"max_images": 5, "folds": 5})
    assert P._design(_task(cross_validation=True), meta, labels, 0, big)[1] == "5-fold CV"
    lonely = np.array(["a"] * 19 + ["b"])
    folds, design = P._design(_task(), pd.DataFrame({"x": range(20)}), lonely, 0, SETTINGS)
    assert design == "random split" and len(folds) == 1


# ------------------------------------------------------------------------------ scores
def test_probe_metrics_classification_uses_the_knn_settings():
    """Per test row, right or wrong (the paired comparisons pair these); their means are the accuracies."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = np.array(["a", "b"] * 20)
    x[y == "a"] += 3
    out = P._probe_metrics(_task(), x[:30], y[:30], x[30:], y[30:], SETTINGS, seed=0)
    assert set(out) == {"linear_top1", "knn_top1", "nn1_top1"}
    assert all(np.asarray(v).shape == (10,) and np.asarray(v).dtype == bool for v in out.values())
    assert out["linear_top1"].all()
    # k = 1 makes the weighted kNN the 1-NN, row by row
    flip = x.copy()
    flip[30:] = -flip[30:]
    one = dict(SETTINGS, knn={"k": 1, "temperature": 0.07})
    a = P._probe_metrics(_task(), x[:30], y[:30], flip[30:], y[30:], one, seed=0)
    np.testing.assert_array_equal(a["knn_top1"], a["nn1_top1"])
    b = P._probe_metrics(_task(), x[:30], y[:30], flip[30:], y[30:], SETTINGS, seed=0)
    assert (b["knn_top1"] != b["nn1_top1"]).any() or (b["knn_top1"] == a["knn_top1"]).all()


def test_probe_metrics_regression_returns_predictions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    t = x[:, 0] * 2.0
    out = P._probe_metrics(_task(kind="regression"), x[:30], t[:30], x[30:], t[30:], SETTINGS, seed=0)
    assert set(out) == {"linear_r2", "knn_r2", "nn1_r2"}
    assert all(v.shape == (10,) for v in out.values())
    assert r2(t[30:], out["linear_r2"]) > 0.99
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)  # the kNN compares cosine similarities
    nearest = np.argmax(unit[30:] @ unit[:30].T, axis=1)
    np.testing.assert_allclose(out["nn1_r2"], t[:30][nearest])


def test_pooled_classification_weights_folds_by_their_test_size():
    tests = [np.arange(3), np.arange(3, 4)]
    # per-row right/wrong of each fold: 3 of 3 right, then 0 of 1 -> 3 of 4 pooled (not the fold mean 0.5)
    acc, (lo, hi) = P._pooled(
        "classification", [np.ones(3, bool), np.zeros(1, bool)], tests, np.zeros(4), seed=0
    )
    assert acc == 0.75 and (lo, hi) == wilson_interval(0.75, 4)


def test_pooled_regression_scores_the_concatenated_predictions():
    labels = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    tests = [np.array([0, 2]), np.array([4, 1, 3])]
    preds = [np.array([0.5, 2.0]), np.array([3.0, 1.0, 3.5])]
    score, ci = P._pooled("regression", preds, tests, labels, seed=4)
    y = np.array([0.0, 2.0, 4.0, 1.0, 3.0])
    pred = np.array([0.5, 2.0, 3.0, 1.0, 3.5])
    assert score == pytest.approx(r2(y, pred)) and ci == bootstrap_r2_interval(y, pred, seed=4)
    assert ci != bootstrap_r2_interval(y, pred, seed=5)


def test_chance_pools_the_folds():
    labels = np.array(["a", "a", "a", "b", "b", "c"])
    tests = [np.array([0, 3]), np.array([4, 5])]
    assert P._chance("classification", [], tests, labels) == chance_score(
        np.array(["a", "b", "b", "c"]), "classification"
    )
    y = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 20.0])
    subs = [np.array([0, 1]), np.array([2, 3])]
    tests = [np.array([4]), np.array([5])]
    base = np.array([0.5, 2.5])  # each fold predicts its own training mean
    assert P._chance("regression", subs, tests, y) == pytest.approx(r2(np.array([10.0, 20.0]), base))


# ------------------------------------------------------------------------------ labels and refusals
def test_task_labels_keep_the_labelled_rows():
    emb = _emb(["a", "b", "c", "d"], labels=["x", None, "y", 3])
    out, labels = P._task_labels(_task(), ModelSpec("m", None), emb)
    assert out.meta["image_id"].tolist() == ["a", "c", "d"] and labels.tolist() == ["x", "y", "3"]
    full = _emb(["a", "b"], labels=["x", "y"])
    assert P._task_labels(_task(), ModelSpec("m", None), full)[0] is full


def test_task_labels_regression_coerces_and_drops_non_numbers():
    emb = _emb(["a", "b", "c"], labels=["1.5", "n/a", 2])
    out, labels = P._task_labels(_task(kind="regression"), ModelSpec("m", None), emb)
    assert out.meta["image_id"].tolist() == ["a", "c"] and labels.tolist() == [1.5, 2.0]
    assert labels.dtype == np.float64


def test_task_labels_errors():
    with pytest.raises(ValueError, match="column 'label' not in the embeddings of 'm'"):
        P._task_labels(_task(), ModelSpec("m", None), _emb(["a", "b"]))
    with pytest.raises(ValueError, match="fewer than 2 rows with a 'label' value"):
        P._task_labels(_task(), ModelSpec("m", None), _emb(["a", "b"], labels=["x", None]))
    assert len(P._task_labels(_task(), ModelSpec("m", None), _emb(["a", "b"], labels=["x", "y"]))[1]) == 2


def test_infinite_targets_are_refused_naming_up_to_five_images():
    ids = [f"i{k}" for k in range(8)]
    vals = [1.0, np.inf, 2.0, -np.inf, np.inf, np.inf, np.inf, np.inf]
    emb = _emb(ids, labels=vals)
    with pytest.raises(ValueError) as err:
        P._task_labels(_task(kind="regression"), ModelSpec("m", None), emb)
    msg = str(err.value)
    assert "task 't'" in msg and "'label'" in msg and "'m'" in msg
    assert "'i1', 'i3', 'i4', 'i5', 'i6' and 1 more" in msg
    two = _emb(ids[:3], labels=[1.0, np.inf, 2.0])
    with pytest.raises(ValueError, match=r"image\(s\) 'i1' in") as err:
        P._task_labels(_task(kind="regression"), ModelSpec("m", None), two)
    assert "more" not in str(err.value)
    bare = EmbeddingSet({"cls": np.zeros((3, 1))}, pd.DataFrame({"label": [1.0, 2.0, np.inf]}), {})
    with pytest.raises(ValueError, match=r"image\(s\) '2'"):
        P._task_labels(_task(kind="regression"), ModelSpec("m", None), bare)


@pytest.mark.parametrize(("fraction", "ok"), [(None, True), (0.5, True), (0.01, True), (0.0, False), (1.0, False),
                                              (1.5, False), (-0.1, False)])  # fmt: skip
def test_task_test_fraction_must_lie_in_the_open_unit_interval(fraction, ok):
    labels = np.array(["a", "b"])
    if ok:
        assert P._check_task(_task(test_fraction=fraction), labels)
    else:
        with pytest.raises(
            ValueError, match=f"task 't': test_fraction must lie in \\(0, 1\\), got {fraction}"
        ):
            P._check_task(_task(test_fraction=fraction), labels)


def test_single_class_task_is_left_out_with_a_warning():
    with pytest.warns(UserWarning, match="task 't': every labelled image has the same 'label' \\('a'\\)"):
        assert P._check_task(_task(), np.array(["a", "a", "a"])) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P._check_task(_task(), np.array(["a", "b"])) is True
        assert P._check_task(_task(kind="regression"), np.array([1.0, 1.0])) is True
    emb = _emb([f"i{k}" for k in range(6)], labels=["a"] * 6)
    with pytest.warns(UserWarning):
        assert P.run_task(_task(), ModelSpec("m", None), emb, SETTINGS) == []


# ------------------------------------------------------------------------------ run_task, run_feature_tasks
def _separable(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array(["a", "b"] * (n // 2))
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[y == "a"] += 4
    split = np.where((np.arange(n) // 2) % 4 == 0, "test", "train")  # both classes in test
    meta = pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(n)], "label": y, "split": split})
    return EmbeddingSet({"cls": x, "all": x * 2}, meta, {"arch": "vit"})


def test_run_task_rows_on_a_fixed_split():
    emb = _separable()
    task = _task(feature_kinds=["cls", "mean"], fractions=[0.5, 1.0], seeds=[0, 1], cross_validation=False)
    cache: dict = {}
    rows = pd.DataFrame(P.run_task(task, ModelSpec("m", None, "learned"), emb, SETTINGS, cache))
    assert list(rows.columns) == P.RESULT_COLUMNS
    assert set(rows.feature) == {"cls"}  # no 'mean' kind in a two-kind file: skipped
    assert len(rows) == 2 * 2 * 3 and set(rows.design) == {"split"}
    assert (
        set(rows.task) == {"t"} and set(rows.kind) == {"classification"} and set(rows.family) == {"learned"}
    )
    assert set(rows.arch) == {"vit"} and set(rows.model) == {"m"}
    full = rows[rows.fraction == 1.0]
    assert set(full.n_train) == {30} and set(full.n_test) == {10}
    assert set(rows[rows.fraction == 0.5].n_train) == {16}  # round(0.5 * 15) = 8 per class
    assert set(full.chance) == {0.5} and set(full[full.metric == "linear_top1"].value) == {1.0}
    assert (rows.ci_low <= rows.value).all() and (rows.value <= rows.ci_high + 1e-12).all()
    # the 100 % probe on a fixed split is a function of its rows: fit once, the same for both seeds
    n_fits = len(cache)
    assert n_fits == 1 + 2  # one shared 100 % fit, one 50 % fit per seed
    a, b = (full[full.seed == s].set_index("metric").value for s in (0, 1))
    assert a.equals(b)


def test_run_task_cross_validated_rows():
    emb = _separable(20)
    rows = pd.DataFrame(P.run_task(_task(), ModelSpec("m", None), emb, SETTINGS))
    assert set(rows.design) == {"5-fold CV"} and set(rows.n_test) == {20} and set(rows.n_train) == {16}
    assert set(rows.seed) == {0} and set(rows.fraction) == {1.0}


def test_run_feature_tasks_reads_every_file_and_names_unlisted_models(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    _separable(20, 0).save(a)
    _separable(20, 1).save(b)
    task = _task(embeddings={"first": a, "second": b})
    rows = P.run_feature_tasks(SETTINGS, {"first": ModelSpec("first", a, "handmade")}, [task], P.Loader(),
                               progress=False)  # fmt: skip
    frame = pd.DataFrame(rows)
    assert set(frame.model) == {"first", "second"} and len(frame) == 6
    assert set(frame[frame.model == "first"].family) == {"handmade"}
    assert set(frame[frame.model == "second"].family) == {"learned"}


# ------------------------------------------------------------------------------ common images
def test_common_images_restricts_every_model_to_the_shared_labelled_images():
    big = _emb([f"i{k}" for k in range(8)], labels=["a", "b"] * 4)
    small = _emb(["i5", "i1", "i2", "i9"], labels=["b", "b", None, "a"])
    task = _task()
    with pytest.warns(
        UserWarning, match=r"\(big: 8, small: 3 labelled images\); every model is scored on the 2 "
    ):
        out = P.common_images(task, {"big": big, "small": small})
    assert out["big"].meta["image_id"].tolist() == ["i1", "i5"]
    assert out["small"].meta["image_id"].tolist() == ["i5", "i1"]
    assert out["big"].get("cls").tolist() == big.get("cls")[[1, 5]].tolist()


def test_common_images_leave_equal_files_alone():
    one = _emb(["a", "b", "c"], labels=["x", "y", None])
    two = _emb(["c", "b", "a"], labels=[None, "y", "x"])
    embs = {"one": one, "two": two}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.common_images(_task(), embs) is embs
        assert P.common_images(_task(), {"one": one}) == {"one": one}
        bare = EmbeddingSet({"cls": np.zeros((2, 1))}, pd.DataFrame({"label": ["x", "y"]}), {})
        assert P.common_images(_task(), {"one": one, "bare": bare})["bare"] is bare
    # a file without the label column counts all its images (its own error comes from _task_labels)
    nolabel = _emb(["a", "b"])
    with pytest.warns(
        UserWarning, match=r"one: 3, nolabel: 2 labelled images\); every model is scored on the 2 "
    ):
        P.common_images(_task(), {"one": _emb(["a", "b", "c"], labels=["x", "y", "x"]), "nolabel": nolabel})


@pytest.mark.parametrize("shared", [0, 1])
def test_common_images_refuse_fewer_than_two_shared_images(shared):
    a = _emb(["s0", "a1", "a2"][:3], labels=["x", "y", "x"])
    b = _emb((["s0"] if shared else ["b0"]) + ["b1", "b2"], labels=["x", "y", "x"])
    with pytest.raises(
        ValueError, match=f"\\(a: 3, b: 3 labelled images\\) and share {shared}; embed the same"
    ):
        P.common_images(_task(), {"a": a, "b": b})
    c = _emb(["s0", "a1", "b9"], labels=["x", "y", "x"])
    d = _emb(["s0", "a1", "b8"], labels=["x", "y", "x"])
    with pytest.warns(UserWarning, match="scored on the 2 images"):
        P.common_images(_task(), {"c": c, "d": d})


# ------------------------------------------------------------------------------ seeds, settings, wiring
def test_random_split_and_folds_follow_the_seed():
    labels = np.array(["a", "b"] * 20)
    meta = pd.DataFrame({"x": range(40)})
    one, again, other = (P._splits(_task(), meta, labels, s, 0.25)[1] for s in (0, 0, 1))
    assert np.array_equal(one, again) and not np.array_equal(one, other)
    cv = dict(SETTINGS, small_data={"max_images": 200, "folds": 4})
    f0, f0b, f1 = (P._design(_task(), meta, labels, s, cv)[0] for s in (0, 0, 1))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(f0, f0b))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(f0, f1))


def test_regression_cross_validation_stratifies_by_quantile_bins():
    labels = np.linspace(0.0, 1.0, 20)  # every value unique: as classes, no fold could be made
    folds, design = P._design(_task(kind="regression"), pd.DataFrame({"x": range(20)}), labels, 0, SETTINGS)
    assert design == "4-fold CV" and len(folds) == 4  # 5 bins of 4 values: k = 4
    with pytest.raises(ValueError, match="single row"):  # the same values as 20 one-image classes
        P._design(_task(), pd.DataFrame({"x": range(20)}), labels.astype(str), 0, SETTINGS)


def test_run_task_is_deterministic_per_seed():
    emb = _separable(40)
    emb.meta["split"] = "train"  # no test split: a seeded random split, and 50 % subsets
    task = _task(fractions=[0.5], seeds=[0, 1], cross_validation=False, test_fraction=0.25)
    a = pd.DataFrame(P.run_task(task, ModelSpec("m", None), emb, SETTINGS))
    b = pd.DataFrame(P.run_task(task, ModelSpec("m", None), emb, SETTINGS))
    pd.testing.assert_frame_equal(a, b)
    cv = _task(fractions=[0.5], seeds=[3])
    a = pd.DataFrame(P.run_task(cv, ModelSpec("m", None), _separable(20, 5), SETTINGS))
    b = pd.DataFrame(P.run_task(cv, ModelSpec("m", None), _separable(20, 5), SETTINGS))
    pd.testing.assert_frame_equal(a, b)


def test_regression_subsets_are_stratified_by_bins_and_intervals_follow_the_seed():
    rng = np.random.default_rng(2)
    n = 40
    x = rng.normal(size=(n, 3)).astype(np.float32)
    target = x[:, 0] * 2.0 + 0.1 * rng.normal(size=n)
    split = np.where(np.arange(n) % 4 == 0, "test", "train")
    meta = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(n)], "label": target, "split": split})
    emb = EmbeddingSet({"cls": x}, meta, {})
    task = _task(kind="regression", fractions=[0.5, 1.0], seeds=[0, 1], cross_validation=False)
    rows = pd.DataFrame(P.run_task(task, ModelSpec("m", None), emb, SETTINGS))
    # 30 training targets in 10 bins of 3: round(0.5 * 3) = 2 from each; as 30 one-value classes, all 30
    assert set(rows[rows.fraction == 0.5].n_train) == {20}
    full = rows[(rows.fraction == 1.0) & (rows.metric == "linear_r2")].set_index("seed")
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    pred = P._probe_metrics(task, x[tr], target[tr], x[te], target[te], SETTINGS, seed=0)["linear_r2"]
    for seed in (0, 1):
        assert (full.loc[seed, "ci_low"], full.loc[seed, "ci_high"]) == bootstrap_r2_interval(
            target[te], pred, seed=seed
        )


def test_a_missing_first_feature_kind_does_not_stop_the_others():
    rows = P.run_task(_task(feature_kinds=["mean", "cls"]), ModelSpec("m", None), _separable(20), SETTINGS)
    assert {r["feature"] for r in rows} == {"cls"}


def test_family_comes_from_the_file_when_the_config_names_none():
    emb = _separable(20)
    emb.info["family"] = "handmade"
    rows = P.run_task(_task(), ModelSpec("m", None), emb, SETTINGS)
    assert {r["family"] for r in rows} == {"handmade"}


def test_probe_metrics_pass_every_setting():
    from chada.eval.knn import knn_accuracy, knn_regress
    from chada.eval.probes import linear_probe_classification, ridge_probe_regression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 6))
    y = np.array(["a", "b", "c"] * 20)
    x[:, 0] += (y == "a") * 1.0
    t = x[:, 1] + 0.5 * rng.normal(size=60)
    odd = {"knn": {"k": 3, "temperature": 5.0}, "probe": {"C": 1e-3, "max_iter": 7}, "max_dim": 2}
    cls = P._probe_metrics(_task(), x[:40], y[:40], x[40:], y[40:], odd, seed=4)
    assert cls["knn_top1"].mean() == knn_accuracy(x[:40], y[:40], x[40:], y[40:], k=3, temperature=5.0)
    assert cls["nn1_top1"].mean() == knn_accuracy(x[:40], y[:40], x[40:], y[40:], k=1, temperature=5.0)
    lin = linear_probe_classification(x[:40], y[:40], x[40:], y[40:], C=1e-3, max_iter=7, max_dim=2, seed=4)
    assert cls["linear_top1"].mean() == lin["accuracy"]
    reg = P._probe_metrics(_task(kind="regression"), x[:40], t[:40], x[40:], t[40:], odd, seed=4)
    np.testing.assert_array_equal(reg["knn_r2"], knn_regress(x[:40], t[:40], x[40:], k=3, temperature=5.0))
    np.testing.assert_array_equal(reg["nn1_r2"], knn_regress(x[:40], t[:40], x[40:], k=1, temperature=5.0))
    ridge = ridge_probe_regression(x[:40], t[:40], x[40:], t[40:], max_dim=2, seed=4, return_predictions=True)
    np.testing.assert_array_equal(reg["linear_r2"], ridge["predictions"])
    # and the settings matter on this data: the defaults give other numbers
    base = P._probe_metrics(_task(kind="regression"), x[:40], t[:40], x[40:], t[40:], SETTINGS, seed=4)
    assert not np.array_equal(base["knn_r2"], reg["knn_r2"]) and not np.array_equal(
        base["linear_r2"], reg["linear_r2"]
    )
    base = P._probe_metrics(_task(), x[:40], y[:40], x[40:], y[40:], SETTINGS, seed=4)
    assert not (
        np.array_equal(base["knn_top1"], cls["knn_top1"])
        and np.array_equal(base["linear_top1"], cls["linear_top1"])
    )


def test_nn1_is_the_nearest_neighbour_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    y = np.array(["a", "b", "b"])
    out = P._probe_metrics(
        _task(), x, y, np.array([[1.0, 0.02], [0.1, 1.0]]), np.array(["a", "b"]), SETTINGS, seed=0
    )
    assert out["nn1_top1"].all()  # the 2nd neighbour of the first test point is 'b'


def test_five_infinite_targets_are_all_named_without_more():
    ids = [f"i{k}" for k in range(6)]
    emb = _emb(ids, labels=[np.inf] * 5 + [1.0])
    with pytest.raises(ValueError, match=r"'i0', 'i1', 'i2', 'i3', 'i4' in the embeddings"):
        P._task_labels(_task(kind="regression"), ModelSpec("m", None), emb)


def test_loader_keeps_the_file_order_among_repeated_ids(tmp_path):
    ids = [f"id{k % 5}" for k in range(200)]
    path = tmp_path / "e.npz"
    _emb(ids, x=np.arange(200, dtype=np.float32)[:, None]).save(path)
    got = P.Loader()(path)
    for v in range(5):
        rows = got.get("cls")[got.meta["image_id"].to_numpy() == f"id{v}", 0]
        assert rows.tolist() == sorted(rows.tolist())


def test_feature_task_progress_bar(tmp_path, capsys):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    _separable(20, 0).save(a)
    _separable(20, 1).save(b)
    task = _task(embeddings={"first": a, "second": b})
    P.run_feature_tasks(SETTINGS, {}, [task], P.Loader(), progress=False)
    assert capsys.readouterr().err == ""
    P.run_feature_tasks(SETTINGS, {}, [task], P.Loader())
    err = capsys.readouterr().err
    # the first frame: a fast run may end before tqdm's 0.5 s refresh shows 2/2
    assert "feature tasks:" in err and "0/2" in err and "model/s" in err, err
    P.run_feature_tasks(SETTINGS, {}, [], P.Loader(), progress=True)
    assert capsys.readouterr().err == ""
