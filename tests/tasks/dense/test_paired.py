"""Paired IoU differences of dense probes over the same test tiles (chada.tasks.dense.paired)."""

from __future__ import annotations

import numpy as np
import pytest

from chada.tasks.dense.paired import dense_comparisons

METAS = {"enc": {"family": "learned", "arch": "enc"}, "enc_untrained": {"family": "untrained", "arch": "enc"},
         "handmade": {"family": "handmade", "arch": None}, "otsu": {"family": "chance", "arch": "otsu"}}  # fmt: skip


def _tiles(tp_fp_fn: list[tuple[int, int, int]], seeds: int = 2) -> np.ndarray:
    c = np.array([[tp, fp, fn, 100 - tp - fp - fn] for tp, fp, fn in tp_fp_fn], float)
    return np.repeat(c[None], seeds, 0)  # [S, N, 4]


def test_difference_is_the_pooled_iou_difference_by_hand():
    a = _tiles([(8, 1, 1)] * 10)  # pooled IoU 80 / 100 = 0.8
    b = _tiles([(6, 2, 2)] * 5 + [(8, 1, 1)] * 5)  # pooled (30 + 40) / (50 + 50) = 0.7
    counts = {("enc", "linear"): a, ("enc_untrained", "linear"): b, ("handmade", "linear"): a,
              ("otsu", "threshold"): b}  # fmt: skip
    table = dense_comparisons("t", counts, METAS, n_boot=500)
    assert set(zip(table.reference, table.role)) == {("enc_untrained", "untrained"), ("handmade", "handmade")}
    u = table[table.role == "untrained"].iloc[0]
    assert u.difference == pytest.approx(0.1) and (u.n_a_only, u.n_b_only, u.n) == (5, 0, 10)
    # better on every differing tile: only a resample drawing none of them (0.5^10 = 0.001) gives 0
    assert u.low > 0 and u.p < 0.05
    h = table[table.role == "handmade"].iloc[0]
    assert (h.difference, h.low, h.high, h.n_a_only, h.n_b_only) == (0, 0, 0, 0, 0) and h.p == 1.0


def test_tiles_are_resampled_together():
    # b = a with a constant IoU loss on every tile: paired, every resample shows the same positive gap,
    # so the interval is narrow; an unpaired resampling would spread it over the tiles' own variation.
    rng = np.random.default_rng(0)
    tp = rng.integers(10, 60, 40)
    a = _tiles([(int(t), 5, 5) for t in tp])
    b = _tiles([(int(t) - 2, 6, 6) for t in tp])
    t = dense_comparisons("t", {("enc", "h"): a, ("enc_untrained", "h"): b}, METAS, n_boot=1000).iloc[0]
    assert t.low > 0 and t.high - t.low < 0.5 * t.difference
    with pytest.raises(ValueError, match="different tiles"):
        dense_comparisons("t", {("enc", "h"): a, ("enc_untrained", "h"): b[:, :30]}, METAS)
