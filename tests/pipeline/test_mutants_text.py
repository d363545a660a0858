"""The report's words from the run's numbers (chada.pipeline.caveats, paired_section): every branch of
every claim, checked as the whole sentence a reader gets for a hand-made summary (issue 26 item 10,
mutation testing of ``chada.pipeline``)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from chada.pipeline import caveats as cv
from chada.pipeline import paired_section as ps

TASK = "synth_interchannel"


def _row(model, mean, lo, hi, chance=0.5, task=TASK, metric="knn_top1", fraction=1.0, feature="cls", **kw):
    return dict(task=task, model=model, metric=metric, feature=feature, fraction=fraction, mean=mean, ci_low=lo,
                ci_high=hi, chance=chance, n_test=kw.pop("n_test", 180), design=kw.pop("design", "split"), **kw)  # fmt: skip


def _summary(*rows):
    return pd.DataFrame(list(rows))


def _comp(model="chada_vit", role="untrained", diff=0.1, p_adj=0.01, task=TASK, metric="knn_top1", **kw):
    base = dict(task=task, feature="cls", fraction=1.0, metric=metric, model=model, reference=f"{model}_{role}",
                role=role, seed="all", n=180, difference=diff, low=diff - 0.05, high=diff + 0.05, p=p_adj / 2,
                p_adj=p_adj, n_comparisons=5, n_a_only=30, n_b_only=12)  # fmt: skip
    base.update(kw)
    return base


# ------------------------------------------------------------------------------------------ caveats
def test_row_picks_the_largest_fraction_of_the_asked_feature():
    s = _summary(_row("chada_vit", 0.6, 0.5, 0.7, fraction=0.1), _row("chada_vit", 0.8, 0.7, 0.9),
                 _row("chada_vit", 0.3, 0.2, 0.4, feature="all"), _row("chada_vit", 0.1, 0, 0.2, metric="nn1_top1"))  # fmt: skip
    assert cv._row(s, TASK, "chada_vit", "knn_top1")["mean"] == 0.8
    assert cv._row(s, TASK, "chada_vit", "knn_top1", feature="all")["mean"] == 0.3
    assert cv._row(s, TASK, "other", "knn_top1") is None
    assert cv._row(s, "synth_size", "chada_vit", "knn_top1") is None


def test_interval_verdicts():
    hi, lo = _row("a", 0.8, 0.72, 0.88), _row("b", 0.6, 0.52, 0.68)
    assert cv._interval_verdict(hi, lo).startswith(
        "the intervals do not overlap: pretraining taught ChAda-ViT"
    )
    assert cv._interval_verdict(hi, lo).endswith("the mechanism the paper claims for inter-channel attention")
    base = "the intervals overlap, so this run alone does not show that pretraining learned the relation"
    assert cv._interval_verdict(lo, hi) == base  # separated, but the pretrained one is lower
    a, b = _row("a", 0.6, 0.51, 0.69), _row("b", 0.55, 0.45, 0.65)
    assert (
        cv._interval_verdict(a, b)
        == base + " (though only the pretrained model's interval lies above chance)"
    )
    b_above = _row("b", 0.56, 0.505, 0.65)
    assert cv._interval_verdict(a, b_above) == base
    assert cv._interval_verdict(_row("a", 0.55, 0.5, 0.6), b) == base  # ci_low == chance: not above
    # separated intervals but equal means (an interval that does not hold its mean): no claim
    assert cv._interval_verdict(_row("a", 0.6, 0.7, 0.8), _row("b", 0.6, 0.51, 0.55)) == base
    assert not cv._above_chance(_row("a", 0.5, float("nan"), 0.6))


def test_pct_and_ci():
    r = _row("a", 0.6789, 0.61234, 0.7456)
    assert cv._pct(r) == "67.9 % [61.2, 74.6]" and cv._ci(r) == (0.61234, 0.7456)


def test_interchannel_bullets_without_comparisons_use_the_intervals():
    s = _summary(_row("chada_vit", 0.8, 0.72, 0.88), _row("chada_vit_untrained", 0.6, 0.52, 0.68),
                 _row("one_channel_vit", 0.5, 0.42, 0.58), _row("handmade", 0.7, 0.62, 0.78, metric="linear_top1"))  # fmt: skip
    first, one, hand = cv._interchannel(s)
    assert first.startswith("- **Inter-channel label.** It says whether MarkerB fills the same sector of the cell as "
                            "MarkerA or the opposite one; each channel alone has the same distribution in both classes.")  # fmt: skip
    assert ("ChAda-ViT's kNN accuracy is 80.0 % [72.0, 88.0] against 60.0 % [52.0, 68.0] for its untrained copy "
            "(chance 50.0 %). The intervals do not overlap: pretraining") in first  # fmt: skip
    assert first.endswith(
        "attention; over 4 pretraining seeds the kNN margin at k=20 was +0.09 (Appendix A of the README)."
    )
    assert one == ("- The One-Channel ViT scores 50.0 % [42.0, 58.0] in kNN there: its interval includes chance, as "
                   "expected of a model whose channels never meet.")  # fmt: skip
    assert hand.startswith("- The hand-made features reach 70.0 % [62.0, 78.0] with a linear probe (chance 50.0 %). "
                           "They are not blind to channel relations: every channel is measured inside objects")  # fmt: skip
    assert hand.endswith("CellProfiler's compartment measurements are a real co-localisation readout, and a serious "
                         "benchmark should keep them as a baseline.")  # fmt: skip


def test_interchannel_bullets_the_other_way_round_and_with_comparisons():
    s = _summary(_row("chada_vit", 0.8, 0.72, 0.88), _row("one_channel_vit", 0.6, 0.55, 0.65),
                 _row("handmade", 0.5, 0.42, 0.58, metric="linear_top1"))  # fmt: skip
    one, hand = cv._interchannel(s)  # no untrained row: no first bullet
    assert one == ("- The One-Channel ViT scores 60.0 % [55.0, 65.0] in kNN there: above chance, although it never "
                   "lets channels meet: the per-channel tokens it averages still carry some of the relation.")  # fmt: skip
    assert hand == ("- The hand-made features stay at chance there (50.0 % [42.0, 58.0], chance 50.0 %): their "
                    "per-channel statistics do not see the relation between the channels.")  # fmt: skip
    win = pd.DataFrame([_comp(role="one_channel", p_adj=0.01)])
    one = cv._interchannel(s, win)[0]
    assert one.startswith("- The One-Channel ViT scores 60.0 % [55.0, 65.0] in kNN there: above chance")
    assert one.endswith(" Against it, " + ps.verdict(win.iloc[0], "ChAda-ViT", "the One-Channel ViT")
                        + ": ChAda-ViT is better by the paired test.")  # fmt: skip
    lose = pd.DataFrame([_comp(role="one_channel", p_adj=0.2)])
    assert cv._interchannel(s, lose)[0].endswith(": the paired test does not separate them.")
    assert cv._interchannel(_summary(_row("x", 0.5, 0.4, 0.6))) == []


def test_paired_verdict_both_ways():
    r = pd.Series(_comp(p_adj=0.01))
    words = ps.verdict(r, "ChAda-ViT", "its untrained copy")
    assert cv._paired_verdict(r) == (f"{words}. The paired test separates them: pretraining taught ChAda-ViT something "
                                     "about how the channels relate, the mechanism the paper claims for inter-channel "
                                     "attention")  # fmt: skip
    r = pd.Series(_comp(p_adj=0.3))
    assert cv._paired_verdict(r) == (f"{ps.verdict(r, 'ChAda-ViT', 'its untrained copy')}. The paired test does not "
                                     "separate them, so this run alone does not show that pretraining learned the relation")  # fmt: skip


def test_small_tasks_bullet_lists_each_cross_validated_task_once():
    s = _summary(_row("a", 0.5, 0.4, 0.6, task="real_nuclei_size", design="CV 5-fold", n_test=90),
                 _row("b", 0.5, 0.4, 0.6, task="real_nuclei_size", design="CV 5-fold", n_test=90),
                 _row("a", 0.5, 0.4, 0.6, task="real_ihc_dab", design="CV 5-fold", n_test=30),
                 _row("a", 0.5, 0.4, 0.6, task="real_big", design="CV 5-fold", n_test=7, fraction=0.1),
                 _row("a", 0.5, 0.4, 0.6, task="synth_size", design=None))  # fmt: skip
    assert cv._small_tasks(s) == (
        "- The real labels shipped here are weak (nucleus-area tercile, DAB level) and the datasets small: "
        "`real_nuclei_size` (90 images: one image is 1.1 points), `real_ihc_dab` (30 images: one image is 3.3 points). "
        "They are scored by stratified 5-fold cross-validation over all their images, repeated once per seed, so every "
        "image is tested; even so most differences there sit inside the intervals. Treat them as a check that real "
        "cells run through the pipeline, not as biology."
    )
    assert cv._small_tasks(_summary(_row("a", 0.5, 0.4, 0.6))) is None


def test_task_by_task_bullet():
    comp = pd.DataFrame([
        _comp(task="synth_size", metric="linear_top1", diff=0.123, p_adj=0.004, n_a_only=20, n_b_only=5),
        _comp(task="synth_radius", metric="linear_r2", diff=-0.02, p_adj=0.5),
        _comp(task="synth_interchannel", metric="knn_top1", diff=0.05, p_adj=0.2),
        _comp(task="not_a_quickstart_task", metric="knn_top1"),
    ])  # fmt: skip
    assert cv._task_by_task(comp) == (
        "- **Did pretraining help, task by task?** ChAda-ViT minus its untrained copy, paired on the same test images "
        "(100 % labels, CLS): `synth_interchannel` kNN +5.0 (30 vs 12 images, Holm p 0.2: not separated); "
        "`synth_size` probe +12.3 (20 vs 5 images, Holm p 0.004: better); `synth_radius` ridge R² -2.0 (30 vs 12 "
        "images, Holm p 0.5: not separated)."
    )
    assert cv._task_by_task(None) is None


def test_caveats_sections_by_pretraining_seeds():
    s = _summary(_row("chada_vit", 0.8, 0.72, 0.88))
    text = cv.caveats(s)
    lines = text.split("\n")
    assert lines[0].startswith(
        "These are small-scale numbers: tiny encoders (about 28 k parameters, 32 px inputs)"
    )
    assert lines[0].endswith("pretrained for 400 epochs on 104k images on 32 GPUs.") and lines[1] == ""
    assert lines[2].startswith(
        "- Untrained networks and hand-made features often score close to learned encoders"
    )
    assert (
        lines[3]
        == (
            "- **One pretraining seed.** Every learned model here is one DINO run (`--pretrain-seeds 1`, the default: each "
            "further seed adds a full pretraining stage). The ± std and the intervals cover the evaluation's seeds and test "
            "images, not the pretraining seed, which moves the inter-channel margin by several points (Appendix A of the "
            "README)."
        )
        and len(lines) == 4
    )
    assert ", 12 minutes in this run). The ± std" in cv.caveats(s, 1, 12.4)
    assert cv.caveats(s, 3).split("\n")[-1] == (
        "- **3 pretraining seeds.** Each learned model was pretrained 3 times (`<encoder>_s<k>` rows); the table "
        '"Learned models over pretraining seeds" gives their mean and spread.'
    )
    assert (
        cv.caveats(s, 2)
        .split("\n")[-1]
        .startswith("- **2 pretraining seeds.** Each learned model was pretrained 2 times")
    )
    small = _summary(_row("chada_vit", 0.8, 0.72, 0.88, design="CV", n_test=50))
    assert cv.caveats(small).split("\n")[3].startswith("- The real labels shipped here are weak")
    comp = pd.DataFrame([_comp(task="synth_size", metric="linear_top1")])
    assert (
        cv.caveats(s, comparisons=comp).split("\n")[2].startswith("- **Did pretraining help, task by task?**")
    )


def test_determinism_and_reading_guide_state_the_measured_facts():
    d = cv.determinism()
    assert d.startswith("- **Deterministic:** the same machine (CPU model), the same thread counts")
    assert "\n- **Not deterministic across machines:** another CPU model" in d
    assert "13 of 55 headline cells differed" in d and d.endswith(
        "read differences between machines against the intervals."
    )
    g = cv.reading_guide()
    assert g.startswith(
        "Every score carries its **95 % interval over the test images**: the Wilson score interval"
    )
    assert "a percentile bootstrap over the test images (1,000 resamples) for R²" in g
    assert g.endswith("Tasks with fewer than 200 labelled images are scored by stratified 5-fold cross-validation over "
                      "all their images, repeated once per seed, instead of one fixed split.")  # fmt: skip


def test_one_channel_note_names_fixed_and_mixed_tasks():
    text = cv.one_channel_note({"synth_all": [1, 2, 3, 5]})
    assert text == (
        "The One-Channel ViT encodes each channel alone. On tasks whose images all have the same channel count "
        "(`synth_interchannel`, `real_nuclei_size`, `real_ihc_dab`) its embedding concatenates the per-channel CLS "
        "tokens (C x D, as in the paper). On the mixed-channel tasks (`synth_size`, `synth_radius`) it is their "
        "**mean** (D): a probe needs one vector of one size per image, and a concatenation would be 1 x D for one "
        "image and 5 x D for the next."
    )
    assert cv.one_channel_note({}).endswith("(C x D, as in the paper).")
    every = {g: [1, 2] for g in ("synth_all", "synth_markers_eval", "real_nuclei", "real_ihc")}
    assert "same channel count (none here) its" in cv.one_channel_note(every)


def test_one_channel_note_is_empty_without_the_encoder(monkeypatch):
    monkeypatch.setattr(cv, "ENCODERS", {"chada_vit": "chada_vit_test"})
    assert cv.one_channel_note({"synth_all": [1, 2]}) == ""


# ------------------------------------------------------------------------------------ paired_section
def test_load_comparisons_reads_seed_as_text(tmp_path):
    assert ps.load_comparisons(tmp_path) is None
    pd.DataFrame([_comp(seed="0"), _comp(seed="all")]).to_csv(tmp_path / "comparisons.csv", index=False)
    c = ps.load_comparisons(tmp_path)
    assert c.seed.tolist() == ["0", "all"]


def test_top_keeps_over_seed_rows_of_the_feature_at_each_tasks_largest_fraction():
    c = pd.DataFrame([_comp(fraction=0.1, model="a"), _comp(fraction=1.0, model="b"), _comp(seed="0", model="c"),
                      _comp(feature="all", model="d"), _comp(task="t2", fraction=0.5, model="e")])  # fmt: skip
    assert ps._top(c, "cls").model.tolist() == ["b", "e"]
    assert ps._top(c, "patch").empty


def test_significant_needs_a_positive_difference_and_a_small_holm_p():
    assert ps.significant({"p_adj": 0.049, "difference": 0.01})
    assert not ps.significant({"p_adj": 0.05, "difference": 0.01})
    assert not ps.significant({"p_adj": 0.01, "difference": 0.0})
    assert not ps.significant({"p_adj": float("nan"), "difference": 0.2})


def test_headline_marks_order_and_uniqueness():
    c = pd.DataFrame([_comp(role="one_channel"), _comp(role="untrained"), _comp(role="untrained", reference="x"),
                      _comp(role="handmade"), _comp(model="m2", role="one_channel", feature="all")])  # fmt: skip
    assert ps.headline_marks(c) == {(TASK, "knn_top1", "chada_vit"): "▲u ▲1"}
    assert ps.headline_marks(c, feature="all") == {(TASK, "knn_top1", "m2"): "▲1"}
    assert ps.headline_marks(None) == {} and ps.headline_marks(c.iloc[:0]) == {}


def test_best_row_filters_every_key():
    c = pd.DataFrame([_comp(model="a", p_adj=0.3), _comp(model="b", role="one_channel"),
                      _comp(model="b", metric="linear_top1"), _comp(model="b", task="t2"), _comp(model="b", feature="all"),
                      _comp(model="b", p_adj=0.02)])  # fmt: skip
    assert ps.best_row(c, TASK, "b", "untrained", "knn_top1")["p_adj"] == 0.02
    assert ps.best_row(c, TASK, "b", "untrained", "knn_top1", feature="all")["p_adj"] == 0.01
    assert ps.best_row(c, TASK, "c", "untrained", "knn_top1") is None
    assert ps.best_row(None, TASK, "b", "untrained", "knn_top1") is None
    assert ps.best_row(c.iloc[:0], TASK, "b", "untrained", "knn_top1") is None


def test_p_formatting():
    assert ps._p(float("nan")) == "-" and ps._p(0.04321) == "0.043" and ps._p(0.001) == "0.001"
    assert ps._p(0.000123) == "1.2e-04" and ps._pts(0.1234) == "+12.3" and ps._pts(-0.05) == "-5.0"


def test_verdict_for_accuracy_and_for_r2():
    r = _comp(diff=0.117, p_adj=0.04, n_a_only=41, n_b_only=20)
    assert ps.verdict(r, "A", "B") == (
        "A is right where B is wrong on 41 of 180 test images and the reverse on 20 (paired difference +11.7 points, "
        "95 % interval [+6.7, +16.7]; exact McNemar p = 0.02, Holm-adjusted over 5 tasks p = 0.04)"
    )
    r = _comp(metric="linear_r2", diff=-0.03, p_adj=0.0004, n_a_only=70, n_b_only=110)
    assert ps.verdict(r, "A", "B") == (
        "A predicts closer than B on 70 of 180 test images and farther on 110 (paired difference -3.0 R² x 100, 95 % "
        "interval [-8.0, +2.0]; paired bootstrap p = 2.0e-04, Holm-adjusted over 5 tasks p = 4.0e-04)"
    )


def test_paired_table_rows_sorted_and_filtered():
    c = pd.DataFrame([_comp(model="z", role="one_channel", diff=0.02, p_adj=0.3, reference="one_channel_vit"),
                      _comp(model="a", role="untrained", reference="a_untrained"),
                      _comp(model="a", role="handmade"), _comp(model="a", metric="nn1_top1")])  # fmt: skip
    text = ps.paired_table(c, {"knn_top1": "kNN"}, feature="cls")
    intro, table = text.split("\n\n")
    assert intro.startswith("Each learned model against its untrained copy and the One-Channel ViT on the same test "
                            "images (100 % labels, CLS features; differences x 100")  # fmt: skip
    assert intro.endswith("the per-seed tests and the hand-made baselines: `comparisons.csv`.")
    assert table.split("\n")[:4] == [
        "| task | metric | model | reference | images | difference [95 %] | a / b | p | Holm p (m) | better? |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {TASK} | kNN | a | a_untrained | 180 | +10.0 [+5.0, +15.0] | 30 / 12 | 0.005 | 0.01 (5) | **yes** |",
        f"| {TASK} | kNN | z | one_channel_vit | 180 | +2.0 [-3.0, +7.0] | 30 / 12 | 0.15 | 0.3 (5) | no |",
    ]
    assert "ALL features" in ps.paired_table(c.assign(feature="all"), {"knn_top1": "kNN"}, feature="all")
    assert ps.paired_table(c, {"linear_r2": "R²"}) is None and ps.paired_table(None, {}) is None
    assert ps.paired_table(c.iloc[:0], {"knn_top1": "kNN"}) is None
    other = ps.paired_table(c, {"nn1_top1": "1-NN", "knn_top1": "kNN"})
    assert "| 1-NN |" in other


def test_seed_spread_counts_wins_and_needs_two_seeds():
    c = pd.DataFrame([_comp(model="chada_vit", diff=0.10, p_adj=0.01), _comp(model="chada_vit_s2", diff=0.04, p_adj=0.2),
                      _comp(model="chada_vit_s1", diff=0.07, p_adj=0.03),
                      _comp(model="chada_vit", role="one_channel", diff=0.2, p_adj=0.01),
                      _comp(model="one_channel_vit", diff=0.3)])  # fmt: skip
    text = ps.seed_spread(c, {"knn_top1": "kNN"})
    intro, table = text.split("\n\n")
    assert intro == ("The paired analysis once per pretraining seed: a result that one lucky seed carries shows as "
                     "one \"better\" out of N.")  # fmt: skip
    rows = table.strip().split("\n")
    assert (
        rows[0] == "| encoder | task | metric | reference | difference per seed | mean ± std | seeds better |"
    )
    sd = pd.Series([0.10, 0.07, 0.04]).std(ddof=1) * 100
    assert rows[2] == f"| chada_vit | {TASK} | kNN | one_channel | s0: +20.0 | - | 1 / 1 |"
    assert (
        rows[3]
        == f"| chada_vit | {TASK} | kNN | untrained | s0: +10.0, s1: +7.0, s2: +4.0 | +7.0 ± {sd:.1f} | 2 / 3 |"
    )
    assert math.isclose(sd, 3.0) and len(rows) == 4  # one_channel_vit has one seed: not listed
    assert ps.seed_spread(None, {}) is None and ps.seed_spread(c.iloc[:0], {"knn_top1": "kNN"}) is None
    assert ps.seed_spread(c, {"linear_top1": "probe"}) is None


@pytest.mark.parametrize("role", ["untrained", "one_channel"])
def test_marks_cover_both_roles(role):
    assert ps.headline_marks(pd.DataFrame([_comp(role=role)])) == {
        (TASK, "knn_top1", "chada_vit"): ps.MARKS[role]
    }


def test_load_comparisons_keeps_numeric_seeds_as_text(tmp_path):
    pd.DataFrame([_comp(seed=0), _comp(seed=1)]).to_csv(tmp_path / "comparisons.csv", index=False)
    assert ps.load_comparisons(tmp_path).seed.tolist() == ["0", "1"]


def test_seed_spread_of_exactly_two_seeds():
    c = pd.DataFrame(
        [_comp(model="chada_vit", diff=0.10, p_adj=0.01), _comp(model="chada_vit_s1", diff=0.30, p_adj=0.01)]
    )
    rows = ps.seed_spread(c, {"knn_top1": "kNN"}).split("\n\n")[1].strip().split("\n")
    assert (
        rows[2] == f"| chada_vit | {TASK} | kNN | untrained | s0: +10.0, s1: +30.0 | +20.0 ± 14.1 | 2 / 2 |"
    )
