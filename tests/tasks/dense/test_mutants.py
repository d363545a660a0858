"""The dense task's scores (chada.tasks.dense.metrics, .paired) against counts and loops written here.

Expectations are hand counts on tiny masks, or plain loops over the same bootstrap draws
(``numpy.random.default_rng(seed).integers(0, N, (n_boot, N))``), never the functions under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from chada.tasks.dense.data import IGNORE
from chada.tasks.dense.metrics import (
    bootstrap_interval,
    confusion_counts,
    iou_dice,
    object_scores,
    otsu_threshold,
)
from chada.tasks.dense.paired import dense_comparisons, pooled_iou_rows


def test_confusion_counts_by_hand() -> None:
    pred = np.array([[1, 1, 0], [0, 1, 0]], bool)
    labels = np.array([[1, 0, 1], [IGNORE, 0, 0]])
    # TP (0,0); FP (0,1) (1,1); FN (0,2); TN (1,2); (1,0) ignored
    counts = confusion_counts(pred, labels)
    assert counts.tolist() == [[1, 2, 1, 1]] and counts.dtype == np.int64
    both = confusion_counts(np.stack([pred, ~pred]), np.stack([labels, labels]))
    assert both.tolist() == [[1, 2, 1, 1], [1, 1, 1, 2]]
    # an ignored pixel counts nowhere, whatever was predicted
    assert confusion_counts(np.ones((1, 2, 2), bool), np.full((1, 2, 2), IGNORE)).tolist() == [[0, 0, 0, 0]]
    with pytest.raises(ValueError) as info:
        confusion_counts(np.zeros((2, 3), bool), np.zeros((3, 2)))
    assert str(info.value) == "prediction (2, 3) and labels (3, 2) differ in shape"


def test_iou_dice_by_hand() -> None:
    iou, dice = iou_dice(np.array([[2, 1, 1, 9], [0, 0, 0, 5], [0, 3, 0, 0]]))
    np.testing.assert_allclose(iou, [0.5, 1.0, 0.0])
    np.testing.assert_allclose(dice, [4 / 6, 1.0, 0.0])
    iou, dice = iou_dice(np.array([1, 0, 3, 0]))
    assert float(iou) == 0.25 and float(dice) == 2 / 5


def _plain_interval(c: np.ndarray, n_boot: int, level: float, seed: int) -> dict:
    """Loops over the bootstrap draws: pooled counts per seed, IoU/Dice, mean over seeds, percentiles."""
    s_count, n = c.shape[:2]
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    vals = np.zeros((n_boot, 2))
    for b in range(n_boot):
        for s in range(s_count):
            tp, fp, fn, _ = c[s, idx[b]].sum(0)
            vals[b, 0] += (tp / (tp + fp + fn) if tp + fp + fn else 1.0) / s_count
            vals[b, 1] += (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0) / s_count
    a = (1 - level) / 2
    return {
        k: (np.quantile(vals[:, j], a), np.quantile(vals[:, j], 1 - a)) for j, k in enumerate(("iou", "dice"))
    }


def test_bootstrap_interval_against_a_loop() -> None:
    rng = np.random.default_rng(3)
    c = rng.integers(0, 20, (2, 7, 4))
    for n_boot, level, seed in ((200, 0.95, 0), (150, 0.8, 5)):
        got = bootstrap_interval(c, n_boot=n_boot, level=level, seed=seed)
        want = _plain_interval(c, n_boot, level, seed)
        assert set(got) == {"iou", "dice"}
        for k in got:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
            assert all(type(v) is float for v in got[k])
    # the defaults: 2000 draws, 95 %, seed 0 (a [N, 4] array is one seed)
    np.testing.assert_allclose(bootstrap_interval(c[0])["iou"], _plain_interval(c[:1], 2000, 0.95, 0)["iou"])


def test_bootstrap_interval_of_identical_tiles_is_the_seed_mean() -> None:
    c = np.array([[[1, 1, 0, 0]] * 5, [[1, 0, 0, 0]] * 5])  # seed 0: IoU 1/2, Dice 2/3; seed 1: 1, 1
    got = bootstrap_interval(c, n_boot=50)
    np.testing.assert_allclose(got["iou"], (0.75, 0.75))
    np.testing.assert_allclose(got["dice"], (5 / 6, 5 / 6))


@pytest.mark.parametrize("shape", [(2, 0, 4), (3, 3), (2, 3, 3), (1, 2, 3, 4)])
def test_bootstrap_interval_refuses_other_shapes(shape: tuple) -> None:
    with pytest.raises(ValueError) as info:
        bootstrap_interval(np.zeros(shape, int))
    shown = shape if len(shape) != 2 else (1, *shape)
    assert str(info.value) == f"counts must be [seeds, tiles, 4] with at least one tile, got {shown}"


def test_object_scores_by_hand() -> None:
    inst = np.zeros((20, 20), int)
    inst[5:8, 5:8] = 1  # area 9: diameter 3.39, grown by max(2, round(1.69)) = 2 px
    inst[0:2, 0:2] = 2  # in the corner: the grown box is clipped at 0
    inst[17:19, 17:19] = 3  # one pixel not scored: left out
    inst[12:14, 2:4] = 4  # ignored: left out
    inst[5:8, 9] = 5  # another object inside object 1's grown box
    ignore = inst == 4
    ignore[9, 6] = True
    scored = np.ones((20, 20), bool)
    scored[18, 18] = False
    pred = np.zeros((20, 20), bool)
    pred[5:7, 5:8] = True  # 6 of object 1's 9 pixels
    pred[4, 5] = True  # background inside the grown box: a false positive
    pred[2, 6] = True  # 3 rows above the box: outside it
    pred[6, 9] = True  # object 5's pixel: not object 1's business
    pred[9, 6] = True  # ignored
    rows = object_scores(pred, inst, ignore, scored)
    assert [r["object"] for r in rows] == [1, 2, 5]
    r1, r2, r5 = rows
    assert r1["area"] == 9 and type(r1["area"]) is int
    assert r1["diameter"] == pytest.approx(2 * np.sqrt(9 / np.pi)) and type(r1["diameter"]) is float
    assert r1["iou"] == pytest.approx(6 / 10)
    assert (r2["area"], r2["iou"]) == (4, 0.0)
    # object 5 (3 px, grown by 2): its predicted pixel, object 1's 6 predicted pixels and (4, 5) are
    # others' or background; object 1's pixels are left out, (4, 5) is outside [3, 10) x [7, 12)
    assert r5["area"] == 3 and r5["iou"] == pytest.approx(1 / 3)
    assert object_scores(pred, np.zeros((4, 4), int), np.zeros((4, 4), bool), np.ones((4, 4), bool)) == []


def test_object_scores_near_the_far_edges() -> None:
    inst = np.zeros((6, 6), int)
    inst[4:6, 4:6] = 1  # grown box clipped at the bottom right
    pred = np.zeros((6, 6), bool)
    pred[1, 1] = True  # outside the grown box [2, 6) x [2, 6)
    pred[2, 2] = True  # inside it: a false positive
    pred[5, 5] = True
    [r] = object_scores(pred, inst, np.zeros((6, 6), bool), np.ones((6, 6), bool))
    assert r["iou"] == pytest.approx(1 / 5)


def test_otsu_threshold() -> None:
    v = np.r_[np.zeros(10), np.full(10, 10.0), np.nan, np.inf]
    t = otsu_threshold(v.reshape(2, 11))
    assert 0.0 <= t < 10.0 and type(t) is float
    assert otsu_threshold(np.array([[3.5, 3.5], [3.5, np.nan]])) == 3.5
    for empty in (np.array([]), np.array([np.nan, np.inf])):
        with pytest.raises(ValueError) as info:
            otsu_threshold(empty)
        assert str(info.value) == "Otsu threshold of an empty set of pixels"


def test_pooled_iou_rows_by_hand() -> None:
    x = np.zeros((2, 2, 2, 4))
    x[0, :, 0] = [[1, 1, 0, 0], [1, 0, 0, 5]]  # resample 0, seed 0: pooled (2, 1, 0) -> 2/3
    x[0, :, 1] = [[0, 0, 1, 0], [1, 0, 0, 0]]  # seed 1: (1, 0, 1) -> 1/2
    x[1, :, 0] = [[0, 0, 0, 3], [0, 0, 0, 1]]  # resample 1, seed 0: nothing anywhere -> 1
    x[1, :, 1] = [[0, 2, 0, 0], [0, 0, 0, 0]]  # seed 1: 0
    np.testing.assert_allclose(pooled_iou_rows(x), [(2 / 3 + 1 / 2) / 2, 0.5])


def _seed_mean_iou(c: np.ndarray) -> float:
    """``[S, N, 4]`` -> pooled IoU per seed, mean over seeds (a loop)."""
    out = []
    for s in range(c.shape[0]):
        tp, fp, fn, _ = c[s].sum(0)
        out.append(tp / (tp + fp + fn))
    return float(np.mean(out))


def test_dense_comparisons_against_loops() -> None:
    rng = np.random.default_rng(0)
    ca = rng.integers(1, 30, (2, 9, 4))
    cb = rng.integers(1, 30, (2, 9, 4))
    ch = rng.integers(1, 30, (2, 9, 4))
    ca[:, 0] = [5, 0, 0, 1]  # tile 0: the model wins it
    cb[:, 0] = [0, 5, 5, 1]
    metas = {"chada": {"family": "learned", "arch": "chada_vit"}, "chada_untrained": {"family": "untrained",
             "arch": "chada_vit"}, "handmade": {"family": "handmade"}}  # fmt: skip
    counts = {("chada", "linear"): ca, ("chada_untrained", "linear"): cb, ("handmade", "linear"): ch,
              ("chada", "mlp"): ca, ("handmade", "mlp"): ch}  # fmt: skip
    n_boot = 120
    table = dense_comparisons("nuclei", counts, metas, n_boot=n_boot)
    keys = list(zip(table.reference, table.feature))
    assert sorted(keys) == [("chada_untrained", "linear"), ("handmade", "linear"), ("handmade", "mlp")]
    row = table[(table.reference == "chada_untrained") & (table.feature == "linear")].iloc[0]
    assert (row.task, row.model, row.role, row.metric, row.kind, row.fraction, row.seed) == (
        "nuclei",
        "chada",
        "untrained",
        "dense_iou",
        "iou",
        1.0,
        "all",
    )
    assert (row.n, row.n_seeds, row.n_comparisons) == (9, 2, 0)
    assert np.isnan(row.p_adj) and np.isnan(row.seeds_p05)
    assert row.difference == pytest.approx(_seed_mean_iou(ca) - _seed_mean_iou(cb))
    idx = np.random.default_rng(0).integers(0, 9, (n_boot, 9))
    d = np.array([_seed_mean_iou(ca[:, i]) - _seed_mean_iou(cb[:, i]) for i in idx])
    assert (row.low, row.high) == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])))
    assert row.p == pytest.approx(min(1.0, max(2 * min((d <= 0).mean(), (d >= 0).mean()), 1 / n_boot)))
    tile_a = [np.mean([iou_dice(ca[s, t])[0] for s in range(2)]) for t in range(9)]
    tile_b = [np.mean([iou_dice(cb[s, t])[0] for s in range(2)]) for t in range(9)]
    assert row.n_a_only == sum(x > y for x, y in zip(tile_a, tile_b))
    assert row.n_b_only == sum(x < y for x, y in zip(tile_a, tile_b))
    assert row.n_a_only + row.n_b_only == 9 and row.n_a_only >= 1
    with pytest.raises(ValueError) as info:
        dense_comparisons("nuclei", {("chada", "linear"): ca, ("handmade", "linear"): ch[:, :5]}, metas)
    assert str(info.value) == "dense task 'nuclei': chada and handmade were scored on different tiles"


def test_dense_comparisons_arch_defaults_to_the_model_name() -> None:
    # no arch: the untrained copy is found by its name, and the learned model's arch is its name
    c = np.ones((1, 3, 4), int)
    metas = {
        "m": {"family": "learned"},
        "m_untrained": {"family": "untrained"},
        "other": {"family": "untrained"},
    }
    table = dense_comparisons("t", {("m", "linear"): c, ("m_untrained", "linear"): c, ("other", "linear"): c}, metas,
                              n_boot=20)  # fmt: skip
    assert table.reference.tolist() == ["m_untrained"]


def test_a_union_of_one_pixel_and_a_single_pixel_threshold() -> None:
    iou, dice = iou_dice(np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]))
    np.testing.assert_allclose(iou, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(dice, [0.0, 0.0, 1.0])
    assert otsu_threshold(np.array([2.0, np.nan])) == 2.0
