"""The report's paired words (chada.pipeline.paired_section, caveats): marks, tables, verdicts."""

from __future__ import annotations

import pandas as pd

from chada.pipeline.caveats import caveats
from chada.pipeline.paired_section import headline_marks, paired_table, seed_spread
from chada.pipeline.summary import HEADLINE_METRICS, headline_table

TASK = "synth_interchannel"


def _comp(
    model, reference, role, diff, p_adj, a=41, b=20, seed="all", fraction=1.0, task=TASK, metric="knn_top1"
):
    return dict(task=task, feature="cls", fraction=fraction, metric=metric, kind="accuracy", model=model,
                reference=reference, role=role, seed=seed, n=180, difference=diff, low=diff - 0.08, high=diff + 0.08,
                p=p_adj / 5, p_adj=p_adj, n_comparisons=5, n_a_only=a, n_b_only=b)  # fmt: skip


def _summary():
    rows = []
    for model, fam, mean in (("chada_vit", "learned", 0.70), ("chada_vit_untrained", "untrained", 0.58),
                             ("one_channel_vit", "learned", 0.55)):  # fmt: skip
        rows.append(dict(task=TASK, kind="classification", model=model, family=fam, feature="cls", fraction=1.0,
                         metric="knn_top1", mean=mean, std=0.0, n=5, chance=0.5, ci_low=mean - 0.07,
                         ci_high=mean + 0.07, n_test=180, design="split", mark="tie"))  # fmt: skip
    return pd.DataFrame(rows)


def test_marks_only_for_a_positive_difference_below_alpha_after_holm():
    comp = pd.DataFrame([
        _comp("chada_vit", "chada_vit_untrained", "untrained", 0.117, 0.04),
        _comp("chada_vit", "one_channel_vit", "one_channel", 0.155, 0.003),
        _comp("chada_vit", "handmade", "handmade", 0.2, 0.001),  # no mark for hand-made
        _comp("one_channel_vit", "one_channel_vit_untrained", "untrained", 0.05, 0.2),  # not significant
        _comp("chada_vit", "chada_vit_untrained", "untrained", 0.3, 0.001, fraction=0.1),  # not the headline fraction
        _comp("chada_vit", "chada_vit_untrained", "untrained", -0.1, 0.001, task="synth_size"),  # worse
    ])  # fmt: skip
    marks = headline_marks(comp)
    assert marks == {(TASK, "knn_top1", "chada_vit"): "▲u ▲1"}
    table = headline_table(_summary(), comparisons=comp)
    assert "▲u ▲1" in next(line for line in table.splitlines() if line.startswith("| chada_vit |"))
    assert "▲" not in next(line for line in table.splitlines() if line.startswith("| one_channel_vit |"))
    assert "▲" not in headline_table(_summary())  # no comparisons, no marks (older runs)
    text = paired_table(comp, HEADLINE_METRICS)
    row = next(line for line in text.splitlines() if "| chada_vit_untrained |" in line and TASK in line)
    assert "+11.7 [+3.7, +19.7]" in row and "41 / 20" in row and "**yes**" in row


def test_caveats_are_written_from_the_paired_numbers():
    comp = pd.DataFrame([
        _comp("chada_vit", "chada_vit_untrained", "untrained", 0.117, 0.04),
        _comp("chada_vit", "one_channel_vit", "one_channel", 0.155, 0.003, a=46, b=18),
    ])  # fmt: skip
    text = caveats(_summary(), comparisons=comp)
    assert "right where its untrained copy is wrong on 41 of 180 test images and the reverse on 20" in text
    assert (
        "The paired test separates them" in text
        and "46 of 180" in text
        and "better by the paired test" in text
    )
    assert "intervals overlap" not in text
    lost = pd.DataFrame([_comp("chada_vit", "chada_vit_untrained", "untrained", 0.03, 0.4, a=25, b=20)])
    text = caveats(_summary(), comparisons=lost)
    assert "does not separate them, so this run alone does not show" in text
    assert "intervals overlap" in caveats(_summary())  # a run without comparisons.csv: the interval words


def test_seed_spread_shows_each_pretraining_seed():
    comp = pd.DataFrame([
        _comp("chada_vit", "chada_vit_untrained", "untrained", 0.12, 0.01),
        _comp("chada_vit_s1", "chada_vit_s1_untrained", "untrained", 0.02, 0.6),
        _comp("chada_vit_s2", "chada_vit_s2_untrained", "untrained", 0.10, 0.02),
    ])  # fmt: skip
    text = seed_spread(comp, HEADLINE_METRICS)
    row = next(line for line in text.splitlines() if line.startswith("| chada_vit |"))
    assert "s0: +12.0, s1: +2.0, s2: +10.0" in row and "2 / 3" in row and "+8.0 ± 5.3" in row
    assert seed_spread(comp.iloc[:1], HEADLINE_METRICS) is None  # one seed: nothing to spread
