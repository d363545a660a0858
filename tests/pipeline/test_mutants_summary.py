"""The quickstart report's tables and assembly (chada.pipeline.summary) on a run with two pretraining
seeds: column order, chance per column, one row per model, the seed sections, figures, settings and
timings, against hand-written expectations (issue 26 item 10, mutation testing of ``chada.pipeline``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chada.io import UnfinishedFolderError, mark_finished
from chada.pipeline import summary as sm
from chada.pipeline.caveats import reading_guide
from chada.pipeline.paired_section import MARK_NOTE
from chada.pipeline.settings import QuickstartSettings


def _s(task, metric, model, family, mean, chance=0.5, feature="cls", **kw):
    return dict(task=task, metric=metric, model=model, family=family, mean=mean, std=0.0, ci_low=mean - 0.05,
                ci_high=mean + 0.05, fraction=1.0, feature=feature, chance=chance, design=kw.get("design", "split"),
                n_test=kw.get("n_test", 100), mark="")  # fmt: skip


def test_columns_follow_the_summary_and_chance_is_per_column():
    s = pd.DataFrame([
        _s("zeta", "knn_top1", "a", "learned", 0.6, chance=0.5), _s("zeta", "linear_top1", "a", "learned", 0.7, chance=0.3),
        _s("alpha", "other", "a", "learned", 0.4, chance=0.2), _s("alpha", "weird", "a", "learned", 0.45, chance=0.1),
        _s("alpha", "other", "b", "mystery", 0.3, chance=0.2), _s("zeta", "knn_top1", "a", "untrained", 0.1),
    ])  # fmt: skip
    lines = sm.headline_table(s).split("\n")
    assert (
        lines[0] == "| model | family | zeta kNN | zeta probe | alpha other |"
    )  # the task without a known metric: its first
    assert (
        lines[2] == "| a | learned | 60.0 [55.0, 65.0] | 70.0 [65.0, 75.0] | 40.0 [35.0, 45.0] |"
    )  # one row per model
    assert lines[3] == "| b | mystery | - | - | 30.0 [25.0, 35.0] |"
    assert lines[4] == "| chance | constant | 50.0 | 30.0 | 20.0 |"
    seeds = sm.seed_table(s.assign(model=s.model.replace({"b": "a_s1"})), {"a": ("a", 0), "a_s1": ("a", 1)})
    assert seeds.split("\n")[0] == "| encoder | seeds | zeta kNN | zeta probe | alpha other |"
    assert (
        seeds.split("\n")[2] == "| a | 2 | 35.0 ± 35.4 | - | 35.0 ± 7.1 |"
    )  # exactly two seeds make a table


def test_headline_marks_follow_the_feature():
    s = pd.DataFrame([_s("t", "knn_top1", "a", "learned", 0.6, feature="all")])
    comp = pd.DataFrame([dict(task="t", feature="all", fraction=1.0, metric="knn_top1", model="a", role="untrained",
                              seed="all", difference=0.1, p_adj=0.01)])  # fmt: skip
    assert "| a | learned | 60.0 [55.0, 65.0] ▲u |" in sm.headline_table(s, feature="all", comparisons=comp)


MACHINE = {"cpu": "CPU X", "cores": "2", "torch": "2.x", "torch_threads": "1", "cuda": "no", "python": "3.y"}
DATA = {"images": {"synth_all": 1, "real_nuclei": 2, "real_ihc": 3, "pretrain_corpus": 4}}


def _comp(model, diff, p_adj):
    return dict(task="synth_interchannel", feature="cls", fraction=1.0, metric="knn_top1", model=model,
                reference=f"{model}_untrained", role="untrained", seed="all", n=100, difference=diff, low=diff - 0.05,
                high=diff + 0.05, p=p_adj / 2, p_adj=p_adj, n_comparisons=5, n_a_only=20, n_b_only=10)  # fmt: skip


def _run(tmp_path):
    ev = tmp_path / "run" / "evaluation"
    ev.mkdir(parents=True)
    rows = [_s("synth_interchannel", "knn_top1", m, f, v) for m, f, v in
            (("chada_vit", "learned", 0.7), ("chada_vit_untrained", "untrained", 0.6), ("chada_vit_s1", "learned", 0.8),
             ("chada_vit_s1_untrained", "untrained", 0.5))]  # fmt: skip
    rows.append(
        dict(
            _s("synth_interchannel", "knn_top1", "handmade", "handmade", 0.55), ci_low=np.nan, ci_high=np.nan
        )
    )
    pd.DataFrame(rows).to_csv(ev / "results_summary.csv", index=False)
    (ev / "results.md").write_text("# R\n\n## S\n\nx\n")
    pd.DataFrame([_comp("chada_vit", 0.1, 0.01), _comp("chada_vit_s1", 0.3, 0.001)]).to_csv(ev / "comparisons.csv",
                                                                                           index=False)  # fmt: skip
    mark_finished(ev, [ev / "results_summary.csv", ev / "results.md", ev / "comparisons.csv"])
    for n in ("a.png", "p.png"):
        (tmp_path / n).write_bytes(b"png")
    return ev


def test_build_report_of_a_two_seed_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sm, "machine_description", lambda: dict(MACHINE))
    ev = _run(tmp_path)
    s = QuickstartSettings.make(tmp_path / "run", pretrain_seeds=2)
    stats = {"where": Path("/x/y"), "long": "a" * 5000}
    figs = {"image_id": "i", "attention": str(tmp_path / "a.png"), "projection": str(tmp_path / "p.png"),
            "projection_stats": stats}  # fmt: skip
    teachers = {"chada_vit": "t/c", "chada_vit_s1": "t/c1"}
    md = sm.build_report(
        s, DATA, teachers, {"out": str(ev)}, figs, {"data": 2.0, "pretrain_chada_vit": 930.0}
    )
    text = md.read_text()
    assert text.startswith("# ChAda-ViT quickstart report\n\n## What ran\n\n- Date: ")
    assert re.search(r"\n- Date: \d{4}-\d\d-\d\d \d\d:\d\d \S+; mode: full\n", text)
    assert f"\n## How to read the numbers\n\n{reading_guide()}\n\n## Headline" in text
    assert "| handmade | handmade | 55.0 |" in text  # a missing interval stays missing
    assert f"| test images |  | 100 |\n\n{MARK_NOTE}\n\n## Paired tests: did pretraining help?" in text
    seeds = text.split("\n## Learned models over pretraining seeds (mean ± std over seeds)\n\n")[1].split(
        "\n## "
    )[0]
    assert seeds.startswith("| encoder | seeds | synth_interchannel kNN |\n|---|---|---|\n| chada_vit | 2 | 75.0 ± 7.1 |\n"
                            "| chada_vit_untrained | 2 | 55.0 ± 7.1 |")  # fmt: skip
    spread = text.split("\n## Paired tests per pretraining seed\n\n")[1].split("\n## ")[0]
    assert spread.startswith("The paired analysis once per pretraining seed")
    assert (
        "| chada_vit | synth_interchannel | kNN | untrained | s0: +10.0, s1: +30.0 | +20.0 ± 14.1 | 2 / 2 |"
        in spread
    )
    assert (
        "![attention](../a.png)\n\n*attention*" in text and "![projection](../p.png)\n\n*projection*" in text
    )
    block = text.split("projected together.\n\n```\n")[1].split("\n```")[0]
    assert len(block) == 3000 and block.startswith('{\n "where": "/x/y",\n "long": "aaa')
    caveats = text.split("## What these numbers can and cannot tell\n\n")[1]
    assert "The paired test separates them" in caveats and "**2 pretraining seeds.**" in caveats
    assert (
        "\n## Timings (seconds)\n\n| stage | seconds |\n|---|---|\n| data | 2.0 |\n| pretrain_chada_vit | 930.0 |"
        in text
    )
    settings = text.split("## Settings and files\n\n```\n")[1].split("\n```")[0]
    assert settings.startswith('{\n "out": "') and json.loads(settings)["pretrain_seeds"] == "2"
    assert "- teacher `chada_vit`: `t/c`\n- teacher `chada_vit_s1`: `t/c1`\n- evaluation tables: " in text
    machine = (tmp_path / "run" / "machine.json").read_text()
    assert (
        machine
        == '{\n "cpu": "CPU X",\n "cores": "2",\n "torch": "2.x",\n "torch_threads": "1",\n "cuda": "no",\n "python": "3.y"\n}'
    )


def test_build_report_names_the_unfinished_evaluation(tmp_path):
    ev = tmp_path / "evaluation"
    ev.mkdir()
    s = QuickstartSettings.make(tmp_path)
    with pytest.raises(
        UnfinishedFolderError, match=rf"^{re.escape(str(ev))}: not a finished evaluation \(no readable"
    ):
        sm.build_report(s, DATA, {}, {"out": str(ev)}, {}, {})


def test_one_seed_report_gives_the_longest_pretraining_in_minutes(tmp_path, monkeypatch):
    monkeypatch.setattr(sm, "machine_description", lambda: dict(MACHINE))
    ev = _run(tmp_path)
    s = QuickstartSettings.make(tmp_path / "run")
    figs = {"attention": "a", "projection": "p"}
    timings = {"pretrain_chada_vit": 930.0, "pretrain_one_channel_vit": 100.0, "embed": 5000.0}
    text = sm.build_report(s, DATA, {}, {"out": str(ev)}, figs, timings).read_text()
    assert ", 16 minutes in this run)" in text  # 930 s / 60 = 15.5
    assert "## Learned models over pretraining seeds" not in text  # one seed per encoder in these settings
