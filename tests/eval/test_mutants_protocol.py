"""What ``chada.eval.protocol`` hands to the estimators and to the paired comparisons (issue 26, item 10).

The estimators are replaced by recorders, so each setting is checked where it arrives, and the
per-image results (``items``) are checked against the rows the folds tested: a stand-in probe
returns each test row's own index as its result, so the ids must be those rows' ids in that order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chada.encode.store import EmbeddingSet
from chada.eval import protocol as P
from chada.eval.config import ModelSpec, TaskSpec

SETTINGS = {
    "knn": {"k": 7, "temperature": 0.5}, "probe": {"C": 0.25, "max_iter": 11}, "max_dim": 5,
    "test_fraction": 0.25, "small_data": {"max_images": 200, "folds": 4},
}  # fmt: skip


def _task(**kw) -> TaskSpec:
    base = dict(name="t", label_column="label", kind="classification", embeddings={}, feature_kinds=["cls"],
                fractions=[1.0], seeds=[0])  # fmt: skip
    return TaskSpec(**(base | kw))


def _emb(n: int = 16, ids=None, labels=None, split=None, image_ids: bool = True) -> EmbeddingSet:
    meta = pd.DataFrame({"label": labels if labels is not None else ["a", "b"] * (n // 2)})
    if image_ids:
        meta.insert(0, "image_id", ids if ids is not None else [f"im{i:02d}" for i in range(n)])
    if split is not None:
        meta["split"] = split
    x = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 3))  # column 0 = the row index
    return EmbeddingSet({"cls": x, "all": x + 0.5}, meta, {})


def test_probe_metrics_hands_every_setting_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def rec(name, out):
        def f(*args, **kw):
            calls.append((name, len(args), kw))
            return out

        return f

    monkeypatch.setattr(P, "linear_probe_classification", rec("lin", {"correct": "L"}))
    monkeypatch.setattr(P, "knn_correct", rec("knn", "K"))
    monkeypatch.setattr(P, "ridge_probe_regression", rec("ridge", {"predictions": "R"}))
    monkeypatch.setattr(P, "knn_regress", rec("knnr", "Q"))
    x, y = np.zeros((4, 2)), np.zeros(4)
    out = P._probe_metrics(_task(), x, y, x, y, SETTINGS, seed=9)
    assert out == {"linear_top1": "L", "knn_top1": "K", "nn1_top1": "K"}
    assert calls == [
        ("lin", 4, {"C": 0.25, "max_iter": 11, "max_dim": 5, "seed": 9, "return_correct": True}),
        ("knn", 4, {"k": 7, "temperature": 0.5}),
        ("knn", 4, {"k": 1, "temperature": 0.5}),
    ]
    calls.clear()
    out = P._probe_metrics(_task(kind="regression"), x, y, x, y, SETTINGS, seed=3)
    assert out == {"linear_r2": "R", "knn_r2": "Q", "nn1_r2": "Q"}
    assert calls == [
        ("ridge", 4, {"max_dim": 5, "seed": 3, "return_predictions": True}),
        ("knnr", 3, {"k": 7, "temperature": 0.5}),
        ("knnr", 3, {"k": 1, "temperature": 0.5}),
    ]


def _row_index_probe(seen: list):
    """A stand-in for _probe_metrics: each test row's result is its own row index (x column 0)."""

    def probe(task, x_tr, y_tr, x_te, y_te, settings, seed):
        seen.append(seed)
        names = ("linear_top1", "knn_top1") if task.kind == "classification" else ("linear_r2",)
        return {m: x_te[:, 0].copy() for m in names}

    return probe


def test_items_are_the_tested_rows_in_fold_order(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list = []
    monkeypatch.setattr(P, "_probe_metrics", _row_index_probe(seeds))
    emb = _emb(16)
    ids = emb.meta["image_id"].to_numpy()
    items: dict = {}
    rows = P.run_task(_task(seeds=[3], feature_kinds=["cls", "all"]), ModelSpec("m", None), emb, SETTINGS,
                      items=items)  # fmt: skip
    assert rows[0]["design"] == "4-fold CV" and seeds == [0] * 4 * 2  # probes always get seed 0
    assert sorted(items) == sorted(
        ("t", "m", f, 1.0, 3, m) for f in ("cls", "all") for m in ("linear_top1", "knn_top1")
    )
    it = items[("t", "m", "cls", 1.0, 3, "linear_top1")]
    order = it.values.astype(int)
    assert sorted(order) == list(range(16))  # every image once (CV)
    assert list(order) != sorted(order)  # fold order, not row order: a real check of the pairing
    assert list(it.ids) == list(ids[order]) and it.target is None
    np.testing.assert_array_equal(items[("t", "m", "all", 1.0, 3, "knn_top1")].values, order + 0.5)


def test_items_of_repeated_ids_and_of_files_without_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_probe_metrics", _row_index_probe([]))
    ids = [f"im{i // 2}" for i in range(16)]  # every id twice
    items: dict = {}
    P.run_task(_task(), ModelSpec("m", None), _emb(16, ids=ids), SETTINGS, items=items)
    it = items[("t", "m", "cls", 1.0, 0, "linear_top1")]
    order, seen, want = it.values.astype(int), {}, []
    for i in order:  # the k-th occurrence (in test order) of an id gets "#k"
        want.append(f"{ids[i]}#{seen.get(ids[i], 0)}")
        seen[ids[i]] = seen.get(ids[i], 0) + 1
    assert list(it.ids) == want
    items.clear()
    P.run_task(_task(), ModelSpec("m", None), _emb(16, image_ids=False), SETTINGS, items=items)
    it = items[("t", "m", "cls", 1.0, 0, "linear_top1")]
    assert list(it.ids) == [str(i) for i in it.values.astype(int)]  # row positions


def test_regression_items_carry_their_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_probe_metrics", _row_index_probe([]))
    target = np.linspace(0.0, 3.0, 20)[::-1]
    emb = _emb(20, labels=target)
    items: dict = {}
    P.run_task(_task(kind="regression"), ModelSpec("m", None), emb, SETTINGS, items=items)
    it = items[("t", "m", "cls", 1.0, 0, "linear_r2")]
    order = it.values.astype(int)
    np.testing.assert_array_equal(it.target, target[order])
    assert it.target.dtype == np.float64


def test_a_fixed_split_is_probed_once_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list = []
    monkeypatch.setattr(P, "_probe_metrics", _row_index_probe(seeds))
    split = ["train"] * 12 + ["test"] * 4
    task = _task(seeds=[0, 1, 2], cross_validation=False)
    cache: dict = {}
    a = P.run_task(task, ModelSpec("a", None), _emb(16, split=split), SETTINGS, cache)
    assert a[0]["design"] == "split" and len(seeds) == 1 and len(cache) == 1
    # a second model in the same cache: its own fit, not the first model's
    P.run_task(task, ModelSpec("b", None), _emb(16, split=split), SETTINGS, cache)
    assert len(seeds) == 2 and len(cache) == 2
    # another task of the same model: its own fit too
    P.run_task(_task(name="u", seeds=[0], cross_validation=False), ModelSpec("a", None), _emb(16, split=split),
               SETTINGS, cache)  # fmt: skip
    assert len(seeds) == 3


def test_run_feature_tasks_fills_items(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "_probe_metrics", _row_index_probe([]))
    paths = {}
    for name in ("a", "b"):
        paths[name] = tmp_path / f"{name}.npz"
        _emb(16).save(paths[name])
    items: dict = {}
    rows = P.run_feature_tasks(
        SETTINGS, {}, [_task(embeddings=paths)], P.Loader(), progress=False, items=items
    )
    assert {r["model"] for r in rows} == {"a", "b"}
    assert {k[1] for k in items} == {"a", "b"} and len(items) == 4


def test_run_task_names_the_model_of_a_missing_label_column() -> None:
    with pytest.raises(ValueError) as info:
        P.run_task(_task(label_column="moa"), ModelSpec("m1", None), _emb(4), SETTINGS)
    assert str(info.value) == ("task 't': column 'moa' not in the embeddings of 'm1' "
                               "(columns: ['image_id', 'label'])")  # fmt: skip
