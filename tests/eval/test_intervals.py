"""Chance, 95 % intervals, small-data cross-validation and tie marks, pinned on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chada.encode.store import EmbeddingSet
from chada.eval.config import ModelSpec, TaskSpec
from chada.eval.diagnostics import chance_level
from chada.eval.intervals import bootstrap_r2_interval, chance_score, separated, wilson_interval
from chada.eval.protocol import run_task
from chada.eval.report import diagnostics_markdown, format_score, mark_ties, summarize

SETTINGS = {
    "knn": {"k": 20, "temperature": 0.07}, "probe": {"C": 1.0, "max_iter": 300}, "max_dim": 256,
    "test_fraction": 0.2, "small_data": {"max_images": 200, "folds": 5},
}  # fmt: skip


def test_chance_is_the_best_constant_predictor_on_the_test_labels():
    # real_ihc_dab as reported in issue 19: 9 test images, 6 of them "low"; the training majority is
    # "high". Always answering "low" scores 6/9, so that is chance (the old rule said 3/9).
    y_train = ["high"] * 30 + ["low"] * 20
    y_test = ["low"] * 6 + ["high"] * 3
    assert chance_score(y_test, "classification") == pytest.approx(6 / 9)
    assert chance_level(y_train, y_test) == pytest.approx(6 / 9)  # the diagnostics' name for it
    # Regression: R² of the training mean. Train mean 1; test [1, 3]: SSE 0 + 4, SST 1 + 1 -> 1 - 4/2.
    assert chance_score([1.0, 3.0], "regression", y_train=[0.0, 2.0]) == pytest.approx(-1.0)
    assert chance_score([1.0, 3.0], "regression", y_train=[2.0]) == pytest.approx(0.0)  # the test mean
    with pytest.raises(ValueError, match="training targets"):
        chance_score([1.0], "regression")


def test_wilson_interval_by_hand():
    # 6 of 9: centre (p + z²/2n) / (1 + z²/n), half z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n), z = 1.96.
    lo, hi = wilson_interval(6 / 9, 9)
    assert (lo, hi) == pytest.approx((0.3542, 0.8794), abs=1e-4)
    # 9 of 9: the interval keeps a width where p ± z sqrt(p(1-p)/n) would collapse to [1, 1].
    assert wilson_interval(1.0, 9) == pytest.approx((0.7009, 1.0), abs=1e-4)
    assert wilson_interval(0.0, 9)[0] == 0.0
    assert all(np.isnan(wilson_interval(0.5, 0)))


def test_bootstrap_r2_interval():
    y = np.arange(30, dtype=float)
    assert bootstrap_r2_interval(y, y) == (1.0, 1.0)
    pred = y + np.random.default_rng(0).normal(0, 5, size=30)
    lo, hi = bootstrap_r2_interval(y, pred, seed=3)
    point = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert lo < point < hi and hi - lo > 0.05
    assert bootstrap_r2_interval(y, pred, seed=3) == (lo, hi)


def test_separated():
    assert separated((0.6, 0.8), (0.3, 0.5))
    assert not separated((0.6, 0.8), (0.3, 0.61))
    assert not separated((0.6, 0.8), (float("nan"), 0.2))


def _emb(n_per_class, signal, classes=("a", "b", "c")):
    rng = np.random.default_rng(1)
    y = np.repeat(classes, n_per_class)
    centres = {c: 5 * rng.normal(size=6) for c in classes}
    x = rng.normal(size=(len(y), 6)) + signal * np.stack([centres[c] for c in y])
    ids = [f"im{i:03d}" for i in range(len(y))]
    split = np.where(np.arange(len(y)) % 5 == 0, "test", "train")
    meta = pd.DataFrame({"image_id": ids, "label": y, "split": split})
    return EmbeddingSet({"cls": x.astype(np.float32)}, meta, {})


def test_small_task_is_cross_validated_over_every_image():
    emb = _emb([20, 10, 6], signal=1.0)  # 36 labelled images < small_data.max_images
    task = TaskSpec("t", "label", "classification", {}, feature_kinds=["cls"], fractions=[1.0], seeds=[0, 1])
    rows = pd.DataFrame(run_task(task, ModelSpec("m", None, "learned"), emb, SETTINGS))
    assert set(rows.design) == {"5-fold CV"}
    assert (rows.n_test == 36).all()  # every image tested once per repeat
    assert rows.chance.eq(20 / 36).all()  # the most frequent class over all the tested images
    lin = rows[rows.metric == "linear_top1"]
    assert lin.value.eq(1.0).all()  # well separated classes
    assert lin.ci_low.iloc[0] == pytest.approx(wilson_interval(1.0, 36)[0])
    # The same task on the fixed split column, when cross-validation is off: 8 test images.
    fixed = TaskSpec("t", "label", "classification", {}, feature_kinds=["cls"], fractions=[1.0], seeds=[0],
                     cross_validation=False)  # fmt: skip
    rows = pd.DataFrame(run_task(fixed, ModelSpec("m", None, "learned"), emb, SETTINGS))
    assert set(rows.design) == {"split"} and (rows.n_test == 8).all()


def test_regression_rows_carry_a_bootstrap_interval_and_train_mean_chance():
    emb = _emb([30, 30, 30], signal=1.0)
    emb.meta["target"] = emb.get("cls")[:, 0] * 2.0 + 1.0
    task = TaskSpec("r", "target", "regression", {}, feature_kinds=["cls"], fractions=[1.0], seeds=[0])
    rows = pd.DataFrame(run_task(task, ModelSpec("m", None, "learned"), emb, SETTINGS))
    lin = rows[rows.metric == "linear_r2"].iloc[0]
    assert lin.value > 0.99 and lin.ci_low <= lin.value <= lin.ci_high
    assert -0.2 < lin.chance <= 0.0  # each fold predicts its own training mean


def _summary(rows):
    return pd.DataFrame(
        [
            dict(
                task="t",
                kind="classification",
                model=m,
                family="learned",
                feature="cls",
                fraction=1.0,
                metric="linear_top1",
                mean=v,
                std=0.0,
                n=1,
                chance=0.5,
                ci_low=lo,
                ci_high=hi,
                n_test=9,
                design="split",
            )
            for m, v, lo, hi in rows
        ]  # fmt: skip
    )


def test_tie_marks():
    clear = mark_ties(_summary([("a", 0.9, 0.8, 0.97), ("b", 0.5, 0.3, 0.7), ("c", 0.4, 0.2, 0.6)]))
    assert list(clear.mark) == ["best", "", ""]
    assert format_score(clear.iloc[0], 100.0) == "**90.0** ± 0.0 [80.0, 97.0]"
    close = mark_ties(_summary([("a", 0.9, 0.6, 0.97), ("b", 0.7, 0.4, 0.85), ("c", 0.3, 0.1, 0.55)]))
    assert list(close.mark) == ["tie", "tie", ""]
    assert format_score(close.iloc[1], 100.0).startswith("~70.0")


def test_summary_keeps_the_interval_and_a_model_at_chance_prints_a_dash():
    results = pd.DataFrame(
        [
            dict(
                task="t",
                kind="classification",
                model="m",
                family="learned",
                arch="x",
                feature="cls",
                fraction=1.0,
                seed=s,
                metric="linear_top1",
                value=0.5,
                chance=0.5,
                n_train=10,
                n_test=10,
                ci_low=0.2,
                ci_high=0.8,
                design="split",
            )
            for s in (0, 1)
        ]  # fmt: skip
    )
    s = summarize(results)
    assert s.iloc[0][["ci_low", "ci_high", "n_test"]].tolist() == [0.2, 0.8, 10]
    diag = pd.DataFrame(
        [
            dict(
                measure=m,
                model="m",
                family="untrained",
                other="u",
                task="t",
                feature="cls",
                fraction=1.0,
                metric="linear_top1",
                value=v,
            )
            for m, v in (("ratio", 0.9), ("chance_normalised", float("nan")))
        ]  # fmt: skip
    )
    md = diagnostics_markdown(diag, s)
    row = next(line for line in md.splitlines() if line.startswith("| t |"))
    assert "nan" not in row and "| - |" in row and "0.900" in row
    assert "at or below chance" in md


def test_reconstruction_intervals_resample_whole_images():
    from chada.tasks.reconstruction.fit import reconstruction_intervals, reconstruction_metrics

    rng = np.random.default_rng(0)
    target = rng.random((12, 8, 8))
    assert reconstruction_intervals(target, target)["r2"] == (1.0, 1.0)
    pred = target + 0.2 * rng.normal(size=target.shape)
    ci, point = reconstruction_intervals(pred, target), reconstruction_metrics(pred, target)
    for k in ("mse", "mae", "r2"):
        assert ci[k][0] < point[k] < ci[k][1], k
    # One bad image among 12: resampling images (not pixels) gives a wide interval.
    pred[0] = 1 - target[0]
    lo, hi = reconstruction_intervals(pred, target)["r2"]
    assert hi - lo > 0.2
