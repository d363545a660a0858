"""The quickstart's report files (chada.pipeline.report, summary): the machine line, the HTML cells, the
headline and seed tables and the assembled report, against hand-written expectations (issue 26 item 10,
mutation testing of ``chada.pipeline``)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from chada.io import mark_finished
from chada.pipeline import report as rp
from chada.pipeline import summary as sm
from chada.pipeline.settings import QuickstartSettings

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000: fast
flags\t\t: fpu avx512f amx_bf16 sse
processor\t: 1
model name\t: Other CPU
flags\t\t: fpu avx512_bf16
"""


class _FakePath:
    def __init__(self, text):
        self.text = text

    def __call__(self, p):
        assert p == "/proc/cpuinfo"
        return self

    def read_text(self):
        if self.text is None:
            raise OSError("no /proc")
        return self.text


def test_machine_description_reads_the_first_processor(monkeypatch):
    import torch

    monkeypatch.setattr(rp, "Path", _FakePath(CPUINFO))
    d = rp.machine_description()
    assert d["cpu"] == "Test CPU 9000: fast"
    assert d["cpu_flags"] == "avx512f: yes, avx512_bf16: no, amx_bf16: yes"
    assert (d["cores"], d["torch_threads"], d["torch"]) == (
        str(os.cpu_count()),
        str(torch.get_num_threads()),
        torch.__version__,
    )
    assert d["cuda"] == ("yes" if torch.cuda.is_available() else "no")
    assert d["python"].count(".") == 2 and d["platform"]


def test_machine_description_without_cpuinfo(monkeypatch):
    monkeypatch.setattr(rp, "Path", _FakePath(None))
    monkeypatch.setattr(rp.platform, "processor", lambda: "")
    d = rp.machine_description()
    assert d["cpu"] == "unknown" and d["cpu_flags"] == "unknown"
    monkeypatch.setattr(rp.platform, "processor", lambda: "x86_64")
    assert rp.machine_description()["cpu"] == "x86_64"


def test_table_cells_put_marks_in_colour_and_the_interval_underneath():
    md = "| model | a | b |\n|---|---|---|\n| m | 67.2 [60.1, 74.0] ▲u ▲1 | +3.3 [-1e-05, +2.0e+01] |\n| n | - | 5 |"
    out = rp.markdown_to_html(md)
    assert ('<td>67.2<span class="mark">▲u</span><span class="mark">▲1</span><span class="ci">[60.1, 74.0]</span>'
            "</td>") in out  # fmt: skip
    assert '<td>+3.3<span class="ci">[-1e-05, +2.0e+01]</span></td>' in out
    assert "<td>-</td>" in out and "<td>5</td>" in out
    assert out.count('<div class="table-wrap"><table>') == 1 and out.count("</table></div>") == 1
    assert rp.markdown_to_html("<b>x</b> and `c`") == "<p>&lt;b&gt;x&lt;/b&gt; and <code>c</code></p>\n"


def test_write_report_links_and_inlines_images(tmp_path):
    png = tmp_path / "figs" / "a.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG fake")
    out = tmp_path / "out"
    out.mkdir()
    secs = [rp.Section("One & two", "  text *x*  ", [("cap <1>", png), ("gone", tmp_path / "missing.png")]),
            rp.Section("Empty")]  # fmt: skip
    md_path, html_path = rp.write_report(secs, out, "T <1>")
    assert (md_path, html_path) == (out / "report.md", out / "report.html")
    assert md_path.read_text() == ("# T <1>\n\n## One & two\n\ntext *x*\n\n![cap <1>](../figs/a.png)\n\n*cap <1>*\n\n"
                                   "## Empty\n\n\n")  # fmt: skip
    h = html_path.read_text()
    assert h.startswith(
        "<!doctype html><html><head><meta charset='utf-8'><title>T &lt;1&gt;</title>\n<style>\nbody{"
    )
    assert "</style></head><body><h1>T &lt;1&gt;</h1>\n<h2>One &amp; two</h2>\n<p>text <em>x</em></p>\n" in h
    data = base64.b64encode(b"\x89PNG fake").decode()
    assert (f"<figure><img alt='cap &lt;1&gt;' src='data:image/png;base64,{data}'><figcaption>cap &lt;1&gt;"
            "</figcaption></figure>") in h  # fmt: skip
    assert h.endswith("<h2>Empty</h2>\n\n</body></html>") and "gone" not in h


# -------------------------------------------------------------------------------------------- summary
def _s(
    task,
    metric,
    model,
    family,
    mean,
    fraction=1.0,
    feature="cls",
    chance=0.5,
    design="split",
    n_test=100,
    **kw,
):
    return dict(task=task, metric=metric, model=model, family=family, mean=mean, std=0.01, ci_low=mean - 0.05,
                ci_high=mean + 0.05, fraction=fraction, feature=feature, chance=chance, design=design,
                n_test=n_test, mark=kw.get("mark", ""))  # fmt: skip


def _summary():
    rows = [
        _s("t1", "knn_top1", "b_vit", "learned", 0.7), _s("t1", "linear_top1", "b_vit", "learned", 0.8),
        _s("t1", "nn1_top1", "b_vit", "learned", 0.1), _s("t1", "knn_top1", "b_vit", "learned", 0.2, fraction=0.1),
        _s("t1", "knn_top1", "hand", "handmade", 0.6), _s("t1", "knn_top1", "a_vit_untrained", "untrained", 0.55),
        _s("t1", "knn_top1", "z", "other", 0.3), _s("t1", "knn_top1", "b_vit", "learned", 0.9, feature="all"),
        _s("t2", "weird", "b_vit", "learned", 0.4, chance=-0.0001, design="CV 5-fold", n_test=40),
        _s("t2", "weird", "a_vit", "learned", 0.45, chance=-0.0001, design="CV 5-fold", n_test=42),
        _s("t2", "other", "a_vit", "learned", 0.3),
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_headline_table_rows_columns_chance_and_design():
    comp = pd.DataFrame([dict(task="t1", feature="cls", fraction=1.0, metric="knn_top1", model="b_vit", role="untrained",
                              seed="all", difference=0.1, p_adj=0.01)])  # fmt: skip
    lines = sm.headline_table(_summary(), comparisons=comp).split("\n")
    assert lines[0] == "| model | family | t1 kNN | t1 probe | t2 weird |"  # in the summary's order
    assert lines[2] == "| a_vit | learned | - | - | 45.0 [40.0, 50.0] |"
    assert lines[3] == "| b_vit | learned | 70.0 [65.0, 75.0] ▲u | 80.0 [75.0, 85.0] | 40.0 [35.0, 45.0] |"
    assert lines[4] == "| a_vit_untrained | untrained | 55.0 [50.0, 60.0] | - | - |"
    assert lines[5].startswith("| hand | handmade |") and lines[6].startswith("| z | other |")
    assert lines[7] == "| chance | constant | 50.0 | 50.0 | 0.0 |"  # -0.01 % rounds to 0.0, never -0.0
    assert lines[8] == "| test images |  | 100 | 100 | 42 (CV) |" and len(lines) == 9
    assert sm.headline_table(_summary(), feature="none") == "(no results)"
    all_ = sm.headline_table(_summary(), feature="all").split("\n")
    assert all_[0] == "| model | family | t1 kNN |" and all_[2] == "| b_vit | learned | 90.0 [85.0, 95.0] |"


def test_headline_rows_take_the_first_metric_of_a_task_without_a_known_one():
    rows = sm._headline_rows(_summary(), "cls")
    assert sorted(set(zip(rows.task, rows.metric))) == [
        ("t1", "knn_top1"),
        ("t1", "linear_top1"),
        ("t2", "weird"),
    ]
    assert (rows.fraction == 1.0).all()
    assert sm._headline_rows(_summary(), "none").empty


def test_seed_table_mean_and_spread_over_seeds():
    rows = [
        _s("t1", "knn_top1", m, "learned", v)
        for m, v in (("c", 0.6), ("c_s1", 0.7), ("c_s2", 0.8), ("o", 0.5))
    ]
    rows += [
        _s("t1", "knn_top1", "c_untrained", "untrained", 0.4),
        _s("t1", "knn_top1", "c_s1_untrained", "untrained", 0.5),
    ]
    runs = {"c": ("c", 0), "c_s1": ("c", 1), "c_s2": ("c", 2), "o": ("o", 0)}
    lines = sm.seed_table(pd.DataFrame(rows), runs).split("\n")
    assert lines == [
        "| encoder | seeds | t1 kNN |", "|---|---|---|", "| c | 3 | 70.0 ± 10.0 |", "| c_untrained | 3 | 45.0 ± 7.1 |",
        "| o | 1 | - |", "| o_untrained | 1 | - |",
    ]  # fmt: skip
    assert sm.seed_table(pd.DataFrame(rows), {"c": ("c", 0), "o": ("o", 0)}) is None


def _settings(tmp_path, **kw):
    return QuickstartSettings.make(tmp_path, fast=kw.pop("fast", False), **kw)


DATA = {
    "images": {
        "synth_all": 11,
        "real_nuclei": 12,
        "real_ihc": 13,
        "pretrain_corpus": 14,
        "synth_markers_eval": 15,
    }
}
MACHINE = {"cpu": "CPU X", "cores": "2", "torch": "2.x", "torch_threads": "1", "cuda": "no", "python": "3.y"}


def test_what_ran_lists_the_run(tmp_path):
    s = _settings(tmp_path, epochs=9, pretrain_seeds=2, seeds=4, embed_size=24, synth_size=48)
    lines = sm._what_ran(s, DATA, MACHINE).split("\n")
    assert lines[0].startswith("- Date: ") and lines[0].endswith("; mode: full")
    assert (
        sm._what_ran(_settings(tmp_path, fast=True), DATA, MACHINE)
        .split("\n")[0]
        .endswith("; mode: --fast smoke run")
    )
    assert lines[1] == "- Machine: CPU X, 2 cores, torch 2.x (1 threads), CUDA: no, Python 3.y"
    assert lines[2] == ("- Data: 11 synthetic images (assays with 1, 2, 3 and 5 channels, 48 px), 12 real DSB2018 "
                        "nucleus crops (1 channel), 13 real IHC tiles (3 channels); DINO corpus: 14 training images "
                        "of all of them; the inter-channel task is scored on 15 held-out marker images (another seed)")  # fmt: skip
    assert lines[3] == ("- Encoders (`chada_vit_test`, `one_channel_vit_test`, `inter_channel_vit_test`): DINO with one "
                        "recipe and budget (9 epochs, `chada/configs/quickstart.yaml`), 2 pretraining seed(s), embeddings "
                        "at 24 px; untrained copies (each run's step-0 weights, `init/`); hand-made features (`chada "
                        "features --kind handmade`)")  # fmt: skip
    assert lines[4] == ("- Evaluation: linear probe, weighted kNN (k=20, T=0.07), 1-NN; 1/10/100 % of the training labels; "
                        "4 seeds; mean ± std over seeds and the 95 % interval over the test images")  # fmt: skip
    no_eval = {"images": {k: v for k, v in DATA["images"].items() if k != "synth_markers_eval"}}
    assert "scored on 0 held-out" in sm._what_ran(s, no_eval, MACHINE)


def test_tasks_section_lists_every_task_and_the_reconstruction():
    text = sm._tasks({})
    lines = text.split("\n")
    assert lines[0] == ("- `synth_interchannel` (classification, label `interchannel_label`): synthetic (held-out seed): "
                        "MarkerB on the same side of the cell as MarkerA or the opposite one; invisible to any single "
                        "channel")  # fmt: skip
    assert lines[5] == ("- `synth_actin_reconstruction` (reconstruction): the Actin channel of the synthetic 3-channel "
                        "assay predicted from the frozen CLS embedding of DAPI + Mito by a decoder of 2 fully-connected "
                        "+ 5 conv layers (the paper's BBBC021 protocol, decoder size scaled to 32 px, equal for every "
                        "encoder)")  # fmt: skip
    assert lines[6] == "" and lines[7].startswith("The One-Channel ViT encodes each channel alone.")
    assert "mixed-channel tasks (`synth_size`" in sm._tasks({"synth_all": [1, 2]})


def _eval_dir(tmp_path, comparisons=True):
    ev = tmp_path / "evaluation"
    ev.mkdir(parents=True)
    rows = [_s("synth_interchannel", "knn_top1", m, f, v) for m, f, v in
            (("chada_vit", "learned", 0.7), ("chada_vit_untrained", "untrained", 0.6))]  # fmt: skip
    rows[0]["design"] = None
    pd.DataFrame(rows).to_csv(ev / "results_summary.csv", index=False)
    (ev / "results.md").write_text("# Results\n\n## Scores\n\nscore text\n\n## Paired comparisons\n\nlong table\n\n"
                                   "## Diagnostics\n\ndiag text\n")  # fmt: skip
    files = [ev / "results_summary.csv", ev / "results.md"]
    if comparisons:
        pd.DataFrame([dict(task="synth_interchannel", feature="cls", fraction=1.0, metric="knn_top1", model="chada_vit",
                           reference="chada_vit_untrained", role="untrained", seed="all", n=100, difference=0.1,
                           low=0.02, high=0.18, p=0.01, p_adj=0.02, n_comparisons=5, n_a_only=20,
                           n_b_only=10)]).to_csv(ev / "comparisons.csv", index=False)  # fmt: skip
        files.append(ev / "comparisons.csv")
    for name in ("fig1_cls.png", "fig4_cls.png", "paired_untrained_cls.png", "reconstruction_x.png"):
        (ev / name).write_bytes(b"png")
    mark_finished(ev, files)
    return ev


def test_build_report_assembles_the_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(sm, "machine_description", lambda: dict(MACHINE))
    ev = _eval_dir(tmp_path / "run")
    s = _settings(tmp_path / "run", epochs=9)
    figs = {"image_id": "img3", "attention": str(tmp_path / "a.png"), "projection": str(tmp_path / "p.png"),
            "projection_stats": {"n": 3}}  # fmt: skip
    timings = {"data": 1.0, "pretrain_chada_vit": 600.0, "pretrain_one_channel_vit": 300.0}
    md = sm.build_report(
        s,
        DATA,
        {"chada_vit": "t/c"},
        {"out": str(ev)},
        figs,
        timings,
        {"mixed_groups": {"synth_all": [1, 2]}},
    )
    assert md == tmp_path / "run" / "report.md"
    assert json.loads((tmp_path / "run" / "machine.json").read_text()) == MACHINE
    text = md.read_text()
    heads = [line for line in text.split("\n") if line.startswith("## ")]
    assert heads == [
        "## What ran", "## Tasks", "## How to read the numbers",
        "## Headline: 100 % labels, CLS features (accuracy % / R² x 100; mean [95 % interval])",
        "## Paired tests: did pretraining help? (same test images)", "## All results and diagnostics",
        "## Attention maps", "## One embedding space for three datasets", "## What these numbers can and cannot tell",
        "## Timings (seconds)", "## Settings and files",
    ]  # fmt: skip
    assert (
        "| chada_vit | learned | 70.0 [65.0, 75.0] ▲u |" in text
        and "**▲u**: beats its untrained copy" in text
    )
    assert "mixed-channel tasks (`synth_size`, `synth_radius`)" in text
    # results.md without its title and its paired section, one heading level down
    assert (
        "## All results and diagnostics\n\n### Scores\n\nscore text\n\n\n### Diagnostics\n\ndiag text\n\n!["
        in text
    )
    assert "long table" not in text and "# Results" not in text
    assert "![paired_untrained_cls](evaluation/paired_untrained_cls.png)" in text
    figs_md = [line for line in text.split("\n") if line.startswith("![")]
    assert figs_md == ["![paired_untrained_cls](evaluation/paired_untrained_cls.png)", "![fig1_cls](evaluation/fig1_cls.png)",
                       "![fig4_cls](evaluation/fig4_cls.png)", "![reconstruction_x](evaluation/reconstruction_x.png)"]  # fmt: skip
    assert ("Last-layer CLS attention on the synthetic 5-channel test image `img3` (MarkerB on the same side of the "
            "cell as MarkerA), ChAda-ViT against the One-Channel ViT.") in text  # fmt: skip
    assert 'projected together.\n\n```\n{\n "n": 3\n}\n```' in text
    assert ", 10 minutes in this run)" in text  # the longest pretraining
    assert "\n- **Deterministic:**" in text
    assert "| data | 1.0 |\n| pretrain_chada_vit | 600.0 |" in text
    settings = json.loads(text.split("## Settings and files\n\n```\n")[1].split("\n```")[0])
    assert settings["epochs"] == "9" and "timings" not in settings
    assert f"- teacher `chada_vit`: `t/c`\n- evaluation tables: `{ev}`" in text


def test_build_report_without_comparisons_or_pretraining_times(tmp_path, monkeypatch):
    monkeypatch.setattr(sm, "machine_description", lambda: dict(MACHINE))
    ev = _eval_dir(tmp_path / "run", comparisons=False)
    s = _settings(tmp_path / "run", pretrain_seeds=2)
    figs = {"attention": "a.png", "projection": "p.png"}
    text = sm.build_report(s, DATA, {}, {"out": str(ev)}, figs, {"data": 2.0}).read_text()
    assert "\n## Paired tests" not in text and "**▲u**" not in text
    assert "| test images |  | 100 |\n\n## Learned models over" in text  # nothing after the table
    assert "| chada_vit | learned | 70.0 [65.0, 75.0] |" in text
    assert "synthetic 5-channel test image `None`" in text and "```\n{}\n```" in text
    assert "minutes in this run" not in text and "**2 pretraining seeds.**" in text


def test_build_report_refuses_an_unfinished_evaluation(tmp_path):
    from chada.io import UnfinishedFolderError

    (tmp_path / "evaluation").mkdir()
    with pytest.raises(UnfinishedFolderError, match=r"run `chada quickstart --out .*` again"):
        sm.build_report(
            SimpleNamespace(out=tmp_path), DATA, {}, {"out": str(tmp_path / "evaluation")}, {}, {}
        )


def test_pngs_are_sorted(tmp_path):
    for n in ("fig1_b.png", "fig1_a.png", "x.png"):
        (tmp_path / n).write_bytes(b"")
    assert sm._pngs(tmp_path, "fig1_*.png") == [tmp_path / "fig1_a.png", tmp_path / "fig1_b.png"]
    assert Path(sm._pngs(tmp_path, "*.png")[-1]).name == "x.png"


def test_machine_with_cuda_and_a_table_wrapped_exactly(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rp.machine_description()["cuda"] == "yes"
    out = rp.markdown_to_html("| a |\n|---|\n| 1 |")
    assert out.startswith('<div class="table-wrap"><table>\n<thead>') and out.endswith(
        "</tbody>\n</table></div>\n"
    )


def test_a_missing_picture_does_not_hide_the_next_one(tmp_path):
    png = tmp_path / "b.png"
    png.write_bytes(b"B")
    md, html_path = rp.write_report(
        [rp.Section("S", "t", [("gone", tmp_path / "a.png"), ("b", png)])], tmp_path, "T"
    )
    assert "![b](b.png)" in md.read_text() and "<figcaption>b</figcaption>" in html_path.read_text()
