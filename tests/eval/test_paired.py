"""Paired comparisons (chada.eval.paired, chada.eval.comparisons) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from chada.encode.store import EmbeddingSet
from chada.eval.comparisons import comparison_table, reference_pairs
from chada.eval.config import DEFAULTS, ModelSpec, TaskSpec
from chada.eval.intervals import separated, wilson_interval
from chada.eval.paired import PairedItems, compare, holm, mcnemar_exact, paired_bootstrap
from chada.eval.protocol import run_task


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at 1/2 by summing the tail (symmetric: twice the smaller tail)."""
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_mcnemar_matches_the_binomial_tail_by_hand():
    # The hand computation: 41 images only ChAda-ViT gets right, 20 only its untrained copy.
    a = np.r_[np.ones(41), np.zeros(20), np.ones(100), np.zeros(19)].astype(bool)
    b = np.r_[np.zeros(41), np.ones(20), np.ones(100), np.zeros(19)].astype(bool)
    n01, n10, p = mcnemar_exact(a, b)
    assert (n01, n10) == (41, 20)
    assert p == pytest.approx(_binom_two_sided(41, 61), rel=1e-9)
    assert round(p, 2) == 0.01
    # 5 discordant images, all one way: p = 2 / 2**5
    assert mcnemar_exact(np.ones(5, bool), np.zeros(5, bool)) == (5, 0, pytest.approx(0.0625))
    assert mcnemar_exact(np.ones(4, bool), np.ones(4, bool))[2] == 1.0


def test_paired_bootstrap_matches_the_exact_bootstrap_distribution():
    # d = a - b = [1, 0, 0]: the resampled mean is k/3 with k ~ Binomial(3, 1/3):
    # P(k=0) = 8/27, P(1) = 12/27, P(2) = 6/27, P(3) = 1/27 -> 2.5 % quantile 0, 97.5 % quantile 1 (26/27 < 0.975).
    a, b = np.array([1.0, 1.0, 0.0]), np.array([0.0, 1.0, 0.0])
    diff, low, high = paired_bootstrap(a, b, n_boot=20000, seed=1)
    assert diff == pytest.approx(1 / 3)
    assert (low, high) == (0.0, 1.0)
    # d = [1, 1, 0, -1]: every resample of 4 has mean in {-1, -.75, ..., 1}; P(mean <= -0.5) by hand is
    # the share of draws with (#1 - #(-1)) <= -2 over 4^4 equally likely draws.
    a4, b4 = np.array([1.0, 1, 0, 0]), np.array([0.0, 0, 0, 1])
    draws = np.array(np.meshgrid(*[range(4)] * 4)).reshape(4, -1).T
    means = np.sort((a4 - b4)[draws].mean(1))
    lo_exact = means[int(np.floor(0.025 * len(means)))]
    hi_exact = means[int(np.ceil(0.975 * len(means))) - 1]
    _, lo, hi = paired_bootstrap(a4, b4, n_boot=20000, seed=2)
    assert (lo, hi) == (lo_exact, hi_exact)


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06 for the last.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.1, np.nan, 0.4])  # m = 2 (NaN is not a test): 0.1 x 2, then max(0.2, 0.4 x 1)
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.2, 0.4])


def _dominating(n: int = 200, base: int = 120, extra: int = 14, seed: int = 0):
    """b right on ``base`` images; a right on those and ``extra`` more: a is better on every discordant image."""
    rng = np.random.default_rng(seed)
    b = np.zeros(n)
    b[:base] = 1
    a = b.copy()
    a[base : base + extra] = 1
    order = rng.permutation(n)
    ids = np.array([f"im{i:03d}" for i in range(n)])
    return PairedItems(ids, a[order]), PairedItems(ids, b[order])


def test_paired_excludes_zero_where_the_unpaired_intervals_overlap():
    a, b = _dominating()
    acc_a, acc_b = a.values.mean(), b.values.mean()
    assert not separated(wilson_interval(acc_a, 200), wilson_interval(acc_b, 200))  # 0.67 vs 0.60: overlap
    c = compare(a, b, "accuracy")
    assert (c.n, c.n_a_only, c.n_b_only) == (200, 14, 0)
    assert c.difference == pytest.approx(0.07)
    assert c.low > 0 and c.p == pytest.approx(2 / 2**14)


def test_pairing_is_by_item_id_and_breaking_it_is_seen():
    a, b = _dominating()
    # the same items in another row order and with extra unmatched items: the same comparison
    perm = np.random.default_rng(5).permutation(len(b.ids))
    b2 = PairedItems(np.r_[b.ids[perm], ["x1", "x2"]], np.r_[b.values[perm], [1, 0]])
    c1, c2 = compare(a, b), compare(a, b2)
    assert (c2.n, c2.difference, c2.low, c2.high, c2.p) == (c1.n, c1.difference, c1.low, c1.high, c1.p)
    # the pairing broken on purpose: b's outcomes shuffled over its images (same accuracy, lost pairing)
    broken = PairedItems(b.ids, b.values[perm])
    cb = compare(a, broken)
    assert cb.difference == pytest.approx(c1.difference)
    assert cb.n_b_only > 0 and cb.p > 0.01 and cb.low < c1.low


def test_r2_comparison_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    pa = y + np.array([0.1, -0.1, 0.1, -0.1, 0.1, -0.1])
    pb = y + np.array([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])
    sst = ((y - y.mean()) ** 2).sum()  # 17.5
    r2a, r2b = 1 - 0.06 / sst, 1 - 4.5 / sst
    ids = np.arange(6)
    c = compare(PairedItems(ids, pa, y), PairedItems(ids, pb, y), "r2", n_boot=2000)
    assert c.difference == pytest.approx(r2a - r2b)
    assert (c.n_a_only, c.n_b_only) == (6, 0)
    assert c.low > 0 and c.p <= 2 / 2000 + 1e-12
    with pytest.raises(ValueError, match="not paired"):
        compare(PairedItems(ids, pa, y), PairedItems(ids, pb, y[::-1]), "r2")


def test_reference_pairs():
    models = pd.DataFrame({
        "model": ["chada_vit_s0", "chada_vit_s1", "chada_vit_s0_untrained", "chada_vit_s1_untrained",
                  "one_channel_vit_s0", "one_channel_vit_s1", "handmade", "mine", "mine_random"],
        "family": ["learned", "learned", "untrained", "untrained", "learned", "learned", "handmade", "learned",
                   "untrained"],
        "arch": ["chada_vit", "chada_vit", "chada_vit", "chada_vit", "one_channel_vit", "one_channel_vit", "nan",
                 "plain", "plain"],
    })  # fmt: skip
    pairs = set(reference_pairs(models))
    assert ("chada_vit_s1", "chada_vit_s1_untrained", "untrained") in pairs
    assert ("chada_vit_s1", "chada_vit_s0_untrained", "untrained") not in pairs
    assert ("chada_vit_s1", "one_channel_vit_s1", "one_channel") in pairs
    assert ("chada_vit_s1", "one_channel_vit_s0", "one_channel") not in pairs
    assert ("mine", "mine_random", "untrained") in pairs  # the only untrained model of its architecture
    assert not any(m == r for m, r, _ in pairs) and ("one_channel_vit_s0", "handmade", "handmade") in pairs
    spec = {"mine_random": ModelSpec("mine_random", "x", untrained_of="chada_vit_s0")}
    assert ("chada_vit_s0", "mine_random", "untrained") in set(reference_pairs(models, spec))


def _emb(signal: float, n: int = 60, seed: int = 0) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 6))
    x[:, 0] += signal * (2 * y - 1)
    meta = pd.DataFrame({"image_id": [f"im{i:02d}" for i in range(n)], "label": [f"c{v}" for v in y]})
    return EmbeddingSet({"cls": x}, meta, {})


def test_cross_validated_items_pair_every_image_out_of_fold():
    task = TaskSpec(name="t", label_column="label", kind="classification", embeddings={}, fractions=[1.0],
                    feature_kinds=["cls"], seeds=[0, 1], cross_validation=True)  # fmt: skip
    settings = {**DEFAULTS, "knn": {"k": 5, "temperature": 0.07}}
    items: dict = {}
    rows = []
    for name, fam, sig in (("good", "learned", 3.0), ("good_untrained", "untrained", 0.0)):
        for r in run_task(task, ModelSpec(name, "x", family=fam, arch="a"), _emb(sig), settings, {}, items):
            rows.append(r)
    it = items[("t", "good", "cls", 1.0, 0, "knn_top1")]
    assert sorted(it.ids) == [f"im{i:02d}" for i in range(60)]  # every image once, out of fold
    long = pd.DataFrame(rows)
    acc = long[(long.model == "good") & (long.metric == "knn_top1") & (long.seed == 0)].value.iloc[0]
    assert it.values.mean() == pytest.approx(acc)  # the items are what the score was computed from
    table = comparison_table(items, long)
    over = table[(table.seed == "all") & (table.metric == "knn_top1")].iloc[0]
    assert (over.model, over.reference, over.role, over.n, over.n_seeds) == (
        "good",
        "good_untrained",
        "untrained",
        60,
        2,
    )
    assert over.difference > 0.3 and over.p_adj < 1e-4 and over.n_comparisons == 1
    per_seed = table[(table.seed != "all") & (table.metric == "knn_top1")]
    assert sorted(per_seed.seed) == ["0", "1"]


def test_markdown_table_is_one_pipe_table():
    from chada.eval.markdown import markdown_table

    text = markdown_table(["a", "b"], [[1, "x|y"], [2.5, ""]])
    assert text == "| a | b |\n|---|---|\n| 1 | x\\|y |\n| 2.5 |  |\n"  # a "|" in a cell cannot split it
    with pytest.raises(ValueError, match="2 cells, the header 3"):
        markdown_table(["a", "b", "c"], [[1, 2]])


def test_repeated_image_ids_still_pair():
    emb = _emb(3.0, n=40)
    emb.meta["image_id"] = [f"im{i % 30:02d}" for i in range(40)]  # ten ids twice
    task = TaskSpec(name="t", label_column="label", kind="classification", embeddings={}, fractions=[1.0],
                    feature_kinds=["cls"], seeds=[0], cross_validation=True)  # fmt: skip
    items: dict = {}
    run_task(task, ModelSpec("m", "x"), emb, {**DEFAULTS, "knn": {"k": 5, "temperature": 0.07}}, {}, items)
    it = items[("t", "m", "cls", 1.0, 0, "knn_top1")]
    assert len(set(it.ids)) == 40 and "im05#1" in set(it.ids)
