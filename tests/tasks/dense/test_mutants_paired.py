"""Which references chada.tasks.dense.paired pairs a model with, its empty table and its default draws.

Expectations are written by hand (the pairs) or computed here with numpy over the same bootstrap draws
(``numpy.random.default_rng(0).integers(0, N, (2000, N))``), never with the functions under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from chada.tasks.dense.paired import dense_comparisons


def _counts(seed: int, s: int = 2, n: int = 9) -> np.ndarray:
    """``[S, N, 4]`` random (tp, fp, fn, tn) counts, all positive."""
    return np.random.default_rng(seed).integers(1, 30, (s, n, 4))


def test_an_untrained_copy_is_found_by_its_arch_alone() -> None:
    # no name links "random_init" to "enc": only the shared arch does (and it is the only untrained one of it)
    metas = {"enc": {"family": "learned", "arch": "vit_small"},
             "random_init": {"family": "untrained", "arch": "vit_small"},
             "tiny_init": {"family": "untrained", "arch": "vit_tiny"}}  # fmt: skip
    c = _counts(0)
    counts = {("enc", "linear"): c, ("random_init", "linear"): c, ("tiny_init", "linear"): c}
    table = dense_comparisons("t", counts, metas, n_boot=20)
    assert list(zip(table.model, table.reference, table.role)) == [("enc", "random_init", "untrained")]


def test_a_model_without_an_arch_is_known_by_its_name() -> None:
    # the One-Channel ViT is recognised by an arch starting with "one_channel": here its name stands in
    metas = {"chada_s0": {"family": "learned", "arch": "chada_vit"},
             "one_channel_vit_s0": {"family": "learned"}}  # fmt: skip
    c = _counts(1)
    counts = {("chada_s0", "linear"): c, ("one_channel_vit_s0", "linear"): c}
    table = dense_comparisons("t", counts, metas, n_boot=20)
    assert list(zip(table.model, table.reference, table.role)) == [
        ("chada_s0", "one_channel_vit_s0", "one_channel")
    ]


def test_no_pair_gives_an_empty_table_with_the_comparison_columns() -> None:
    # Holm and the report concatenate this table with the feature-file comparisons: it needs its columns
    metas = {"enc": {"family": "learned", "arch": "vit"}}
    table = dense_comparisons("t", {("enc", "linear"): _counts(2)}, metas)
    assert len(table) == 0
    assert {
        "task",
        "feature",
        "model",
        "reference",
        "role",
        "difference",
        "low",
        "high",
        "p",
        "p_adj",
    } <= set(table.columns)


def test_the_default_draws_2000_resamples() -> None:
    ca, cb = _counts(3), _counts(4)
    metas = {
        "enc": {"family": "learned", "arch": "vit"},
        "enc_untrained": {"family": "untrained", "arch": "vit"},
    }
    row = dense_comparisons("t", {("enc", "h"): ca, ("enc_untrained", "h"): cb}, metas).iloc[0]
    idx = np.random.default_rng(0).integers(0, 9, (2000, 9))  # [B, N]

    def seed_mean_iou(c: np.ndarray) -> np.ndarray:
        pooled = c[:, idx].sum(2)  # [S, B, 4]
        tp, fp, fn = pooled[..., 0], pooled[..., 1], pooled[..., 2]
        return (tp / (tp + fp + fn)).mean(0)  # [B]

    d = seed_mean_iou(ca) - seed_mean_iou(cb)
    assert (row.low, row.high) == pytest.approx(tuple(np.quantile(d, [0.025, 0.975])), rel=1e-12)
    assert row.p == pytest.approx(min(1.0, max(2 * min((d <= 0).mean(), (d >= 0).mean()), 1 / 2000)))
