"""The main job end to end: ``chada quickstart --fast`` in a temporary folder (about a minute)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from browser import browser_check
from chada.cli import main
from chada.pipeline.settings import ENCODERS, RECONSTRUCTION_TASK, TASKS


@pytest.fixture(scope="module")
def quickstart_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    assert main(["quickstart", "--fast", "--out", str(out)]) == 0
    return out


def test_report_files_exist_and_are_not_empty(quickstart_dir) -> None:
    for name in ("report.md", "report.html", "figures/attention.png", "figures/projection.png",
                 "evaluation/fig1_cls.png", "evaluation/fig4_cls.png", "evaluation/results_summary.csv",
                 "dense/dense_dsb2018_nuclei.png", "dense/probes/dsb2018_nuclei/chada_vit_mlp.safetensors"):  # fmt: skip
        path = quickstart_dir / name
        assert path.exists() and path.stat().st_size > 1000, name
    html = (quickstart_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # pictures are embedded, the file stands alone
    assert "## Dense: nuclei segmentation" in (quickstart_dir / "report.md").read_text()


def test_profiling_stage_scores_the_encoders_and_cp_measure(quickstart_dir) -> None:
    readouts = pd.read_csv(quickstart_dir / "profiles" / "readouts.csv")
    assert set(readouts.model) == {"chada_vit", "chada_vit_untrained", "handmade", "cp_measure"}
    assert readouts["value"].notna().all()
    md = (quickstart_dir / "report.md").read_text()
    section = md.split("## Profiles: a synthetic plate")[1]
    assert "| chada_vit_untrained |" in section and "](profiles/figures/map_scatter.png)" in section
    assert json.loads((quickstart_dir / "stages" / "profiles.json").read_text())["seconds"] < 120


def test_report_table_has_every_model_and_task(quickstart_dir) -> None:
    md = (quickstart_dir / "report.md").read_text()
    headline = md.split("## Headline")[1].split("\n## ")[0]
    rows = [line for line in headline.splitlines() if line.startswith("| ") and "---" not in line][1:]
    models = {r.split("|")[1].strip() for r in rows} - {"chance", "test images"}
    expected = set(ENCODERS) | {f"{e}_untrained" for e in ENCODERS} | {"handmade"}
    assert models == expected
    summary = pd.read_csv(quickstart_dir / "evaluation" / "results_summary.csv")
    assert set(summary.task) == set(TASKS) | {RECONSTRUCTION_TASK}
    assert (summary[summary.task == RECONSTRUCTION_TASK].metric == "recon_r2").any()
    assert set(summary.fraction) == {0.01, 0.1, 1.0}
    assert summary["mean"].notna().all()


def test_rerun_reuses_finished_stages(quickstart_dir, capsys) -> None:
    stages = {p.stem: json.loads(p.read_text()) for p in (quickstart_dir / "stages").glob("*.json")}
    assert {"data", "embed", "evaluate", "figures"} <= set(stages)
    settings = json.loads((quickstart_dir / "settings.json").read_text())
    assert settings["precision"] == stages["embed"]["precision"] == "fp32"  # the README's numbers are fp32
    assert main(["quickstart", "--fast", "--out", str(quickstart_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count("already done") == len(stages)


def test_rerun_with_other_settings_is_refused_before_any_work(quickstart_dir, capsys) -> None:
    before = (quickstart_dir / "settings.json").read_bytes()
    assert main(["quickstart", "--fast", "--out", str(quickstart_dir), "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "precision: 'fp32' -> 'bf16'" in err and "another --out" in err and "Traceback" not in err
    assert (quickstart_dir / "settings.json").read_bytes() == before


def test_encoders_pretrain_with_one_recipe_and_untrained_copies_are_their_init(quickstart_dir) -> None:
    import chada
    from chada.ssl.config import load_config

    for enc, name in ENCODERS.items():
        run = quickstart_dir / "pretrain" / enc
        cfg = load_config(run / "config.yaml")
        assert cfg.model.name == name and cfg.optim.epochs == 1
        # pos_embed_std goes to every architecture that has a positional embedding, and only to those.
        assert cfg.model.overrides.get("pos_embed_std") == (None if enc == "inter_channel_vit" else 0.2)
        stage = json.loads((quickstart_dir / "stages" / f"pretrain_{enc}.json").read_text())
        assert stage["untrained"] == str(run / "init")
        init, teacher = chada.load_model(run / "init"), chada.load_model(run / "teacher")
        assert type(init) is type(teacher)
        assert any(not a.equal(b) for a, b in zip(init.state_dict().values(), teacher.state_dict().values()))


def test_interchannel_task_is_scored_on_held_out_marker_images(quickstart_dir) -> None:
    import yaml

    cfg = yaml.safe_load((quickstart_dir / "evaluation" / "eval_config.yaml").read_text())
    task = next(t for t in cfg["tasks"] if t["name"] == "synth_interchannel")
    assert all("synth_markers_eval" in p for p in task["embeddings"].values())
    held_out = pd.read_csv(quickstart_dir / "data" / "synth_markers_eval.csv")
    corpus = pd.read_csv(quickstart_dir / "data" / "pretrain_corpus.csv")
    assert set(held_out["marker_pattern"]) == {"domain"}
    assert not set(held_out["file"].dropna()) & set(corpus["file"].dropna())
    assert not set(held_out["channel_files"].dropna()) & set(corpus["channel_files"].dropna())


def test_readme_results_block_is_regenerated_from_the_run(quickstart_dir, tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from chada.pipeline.readme import BEGIN, END

    before, after = "# title\n\nintro text\n\n", "\n\n## Next section\n\nunchanged.\n"
    readme = tmp_path / "README.md"
    readme.write_text(before + BEGIN + "\nold numbers\n" + END + after)
    script = Path(__file__).resolve().parents[1] / "scripts" / "readme_results.py"
    subprocess.run([sys.executable, str(script), str(quickstart_dir), str(readme)], check=True, capture_output=True)
    text = readme.read_text()
    assert text.startswith(before + BEGIN) and text.endswith(END + after)
    assert "old numbers" not in text and text.count(BEGIN) == 1
    machine = json.loads((quickstart_dir / "machine.json").read_text())
    block = text.split(BEGIN)[1].split(END)[0]
    assert machine["cpu"] in block and "smoke run" in block and "The whole run took" in block
    dense_s = json.loads((quickstart_dir / "stages" / "dense.json").read_text())["seconds"]
    assert f"figures and {dense_s:.0f} s of dense probes." in block
    assert "| chada_vit | learned |" in block and "| chance | constant |" in block
    for name in ("fig1_cls.png", "fig4_cls.png", "attention.png", "projection.png"):
        assert (tmp_path / "docs" / "images" / name).stat().st_size > 1000
    # A README without the markers is refused, and left as it was.
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    r = subprocess.run([sys.executable, str(script), str(quickstart_dir), str(bare)], capture_output=True, text=True)
    assert r.returncode == 2 and "results:begin" in r.stderr and bare.read_text() == "no markers\n"


def test_console_names_the_encoder_and_prints_the_pool_note_once(quickstart_dir) -> None:
    report = (quickstart_dir / "report.md").read_text()
    assert "concatenates the per-channel CLS tokens" in report and "**mean** (D)" in report


def test_report_states_the_paired_comparisons(quickstart_dir) -> None:
    comp = pd.read_csv(quickstart_dir / "evaluation" / "comparisons.csv", dtype={"seed": str})
    top = comp[(comp.seed == "all") & (comp.feature == "cls") & (comp.metric == "knn_top1") & (comp.fraction == 1.0)]
    pairs = set(zip(top.model, top.reference, top.role))
    assert {("chada_vit", "chada_vit_untrained", "untrained"), ("chada_vit", "one_channel_vit", "one_channel"),
            ("chada_vit", "handmade", "handmade")} <= pairs  # fmt: skip
    inter = top[(top.task == "synth_interchannel") & (top.model == "chada_vit") & (top.role == "untrained")]
    assert len(inter) == 1 and inter.n_comparisons.iloc[0] == len(TASKS)  # Holm over the 5 tasks of the kNN table
    report = (quickstart_dir / "report.md").read_text()
    assert "## Paired tests: did pretraining help?" in report and "Did pretraining help, task by task?" in report
    assert "paired_untrained_cls" in report


def test_report_reads_in_a_browser(quickstart_dir) -> None:
    """The quickstart's own report.html in headless Chromium: no table off the page, every figure loads."""
    facts = browser_check(quickstart_dir / "report.html")
    assert len(facts["imgs"]) >= 5
