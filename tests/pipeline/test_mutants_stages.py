"""The quickstart's settings, stage markers and stage wiring, without running a stage's heavy work.

Issue 26 item 10 (mutation testing of ``chada.pipeline``): every stage function is called with its
heavy callees (DINO, embedding, evaluation, profiling) replaced by recorders, and what it passes on
and writes is checked against values written out by hand here.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from chada.pipeline import dense_stage, pretraining, profile_stage, quickstart
from chada.pipeline.settings import ENCODERS, QuickstartSettings, Stages


# --------------------------------------------------------------------------------------- settings
def test_epochs_of_gives_baselines_their_own_budget_only_when_set():
    s = QuickstartSettings.make("o", epochs=7)
    assert [s.epochs_of(e) for e in ("chada_vit", "one_channel_vit", "inter_channel_vit")] == [7, 7, 7]
    s = QuickstartSettings.make("o", epochs=7, baseline_epochs=3, pretrain_seeds=2)
    assert s.epochs_of("chada_vit") == 7 and s.epochs_of("chada_vit_s1") == 7
    assert s.epochs_of("one_channel_vit") == 3 and s.epochs_of("inter_channel_vit_s1") == 3


def test_runs_name_each_seed_and_keep_seed_zero_under_the_encoder_name():
    s = QuickstartSettings.make("o", pretrain_seeds=2)
    assert s.runs() == {
        "chada_vit": ("chada_vit", 0), "one_channel_vit": ("one_channel_vit", 0),
        "inter_channel_vit": ("inter_channel_vit", 0), "chada_vit_s1": ("chada_vit", 1),
        "one_channel_vit_s1": ("one_channel_vit", 1), "inter_channel_vit_s1": ("inter_channel_vit", 1),
    }  # fmt: skip
    assert list(QuickstartSettings.make("o", pretrain_seeds=0).runs()) == list(ENCODERS)  # at least one


def test_make_fast_overrides_and_ignores_none():
    s = QuickstartSettings.make("out", fast=True, seeds=None, epochs=4)
    assert (s.out, s.fast, s.n_per_assay, s.synth_size, s.epochs, s.seeds, s.umap, s.eval_n_per_assay) == (
        Path("out"),
        True,
        24,
        32,
        4,
        2,
        False,
        24,
    )
    full = QuickstartSettings.make("out")
    assert (full.fast, full.n_per_assay, full.synth_size, full.epochs, full.seeds, full.umap) == (
        False,
        160,
        64,
        180,
        5,
        True,
    )


def test_stages_run_once_record_seconds_and_reuse(tmp_path):
    lines: list[str] = []
    st = Stages(tmp_path / "run", lines.append)
    assert st.dir == tmp_path / "run" / "stages" and st.dir.is_dir()
    assert st.done("a") is None
    calls = []
    r = st.run("a", lambda: calls.append(1) or {"x": 1})
    assert r["x"] == 1 and 0 <= r["seconds"] < 5
    assert json.loads((st.dir / "a.json").read_text()) == r
    assert st.run("b", lambda: {"seconds": 42.0})["seconds"] == 42.0  # a stage's own clock is kept
    assert st.run("c", lambda: None) == json.loads((st.dir / "c.json").read_text())  # None: an empty record
    assert st.reused == []
    again = Stages(tmp_path / "run", lines.append)
    assert again.run("b", lambda: calls.append(2)) == {"seconds": 42.0} and calls == [1]
    assert again.reused == ["b"]
    assert lines[:2] == ["[a] running", "[a] done in 0 s"]
    assert lines[-1] == "[b] already done (42 s), reusing it" and "[b] done in 42 s" in lines


# ------------------------------------------------------------------------------------ dense stage
def _paths():
    return {"chada_vit": "t/c", "one_channel_vit": "t/o"}, {"chada_vit": "u/c", "one_channel_vit": "u/o"}


@pytest.mark.parametrize(("fast", "seeds", "steps"), [(True, 2, 100), (False, 3, 300)])
def test_dense_config_lists_the_models_and_the_budget(fast, seeds, steps):
    teachers, untrained = _paths()
    s = QuickstartSettings.make("o", fast=fast, embed_size=24)
    models = {
        "chada_vit": {"model": "t/c", "family": "learned", "arch": "chada_vit"},
        "one_channel_vit": {"model": "t/o", "family": "learned", "arch": "one_channel_vit"},
        "chada_vit_untrained": {"model": "u/c", "family": "untrained", "arch": "chada_vit"},
        "one_channel_vit_untrained": {"model": "u/o", "family": "untrained", "arch": "one_channel_vit"},
        "handmade": {"model": "handmade", "family": "handmade"},
    }
    cfg = dense_stage.dense_config(s, teachers, untrained)
    assert cfg == {"seeds": seeds, "dense": [{"name": "dsb2018_nuclei", "source": "dsb2018", "tile": 24,
                                              "models": models, "seeds": seeds, "steps": steps}]}  # fmt: skip
    assert list(cfg["dense"][0]["models"]) == list(models)  # learned first, then their untrained copies


def test_stage_dense_writes_its_config_and_runs_it(tmp_path, monkeypatch):
    import chada.tasks.evaluation as evaluation

    seen = {}

    def fake(cfg, out, **kw):
        seen.update(cfg=cfg, out=out, **kw)
        outcome = SimpleNamespace(table=pd.DataFrame({"model": ["a"], "iou": [0.5]}), info={"tiles": 4})
        return SimpleNamespace(attrs={"dense": [outcome]})

    monkeypatch.setattr(evaluation, "run_evaluation", fake)
    s = QuickstartSettings.make(tmp_path, fast=True)
    r = dense_stage.stage_dense(s, *_paths())
    out = tmp_path / "dense"
    assert r == {"out": str(out), "table": [{"model": "a", "iou": 0.5}], "info": {"tiles": 4}}
    assert seen["out"] == out and seen["progress"] is False and seen["print_table"] is False
    assert (
        yaml.safe_load((out / "dense_config.yaml").read_text())
        == seen["cfg"]
        == dense_stage.dense_config(s, *_paths())
    )
    text = (out / "dense_config.yaml").read_text()
    assert text.index("seeds") < text.index("dense")  # written in the config's order
    dense_stage.stage_dense(QuickstartSettings.make(tmp_path), *_paths())
    assert seen["progress"] is True


def test_dense_section_reads_the_stage_table(tmp_path):
    assert dense_stage.dense_section(tmp_path) is None
    d = tmp_path / "dense"
    d.mkdir()
    (d / "dense_dsb2018_nuclei.md").write_text("### dsb2018_nuclei IoU\n\n| a |\n### dsb2018_nuclei again\n")
    sec = dense_stage.dense_section(tmp_path)
    assert sec.title == "Dense: nuclei segmentation from frozen tokens"
    assert sec.text.startswith(
        "Nucleus segmentation from frozen features on the real DSB2018 image: a linear"
    )
    assert (
        f"Rerun with `chada evaluate --config {d / 'dense_config.yaml'}`.\n\n`dsb2018_nuclei` IoU" in sec.text
    )
    assert sec.text.endswith("### dsb2018_nuclei again\n")  # only the first heading becomes the caption
    assert sec.images == [("dense", d / "dense_dsb2018_nuclei.png")]


# ---------------------------------------------------------------------------------- profile stage
def test_profiles_section_drops_heading_and_links_and_keeps_the_figures(tmp_path):
    assert profile_stage.profiles_section(tmp_path) is None
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "profiles.md").write_text(
        "## Profiles\n\nmAP table\n\n![mAP per model](map.png)\nafter\n![b](x/b.png)"
    )
    sec = profile_stage.profiles_section(tmp_path)
    assert sec.title == "Profiles: a synthetic plate, mAP and NSC/NSCB"
    assert sec.images == [("mAP per model", d / "map.png"), ("b", d / "x/b.png")]
    assert sec.text.endswith("docs/profiling.md explains the readouts.\n\nmAP table\n\nafter")
    assert sec.text.startswith(
        "Treatment profiles of a synthetic plate (`chada data synth-plate`, design `split`, seed 0:"
    )
    assert f"Files in `{d}`; `ground_truth.json`" in sec.text


def test_stage_profiles_embeds_three_models_once_and_profiles_them(tmp_path, monkeypatch):
    import chada.encode.embed as embed
    import chada.tasks.profiling as profiling

    calls, seen = [], {}
    monkeypatch.setattr(
        profile_stage, "_plate", lambda out: calls.append(("plate", out)) or out / "manifest.csv"
    )

    def fake_embed(model, manifest, out, pools, **kw):
        assert manifest == tmp_path / "profiles" / "plate" / "manifest.csv" and pools == ("cls",)
        calls.append((model, Path(out).name, kw))
        Path(out).write_text("x")

    def fake_profiling(task, out, log):
        seen.update(task=task, out=out)
        res = {m: SimpleNamespace(readouts={"map": {"value": 0.5, "ci": 1}}) for m in task.tables}
        return res, [1, 2, 3], None

    monkeypatch.setattr(embed, "embed_manifest", fake_embed)
    monkeypatch.setattr(profiling, "run_profiling", fake_profiling)
    import chada.encode.cp_measure as cpm

    measured = []
    monkeypatch.setattr(cpm, "cp_measure_for_manifest",
                        lambda m, out, **kw: measured.append((m, out, kw)) or Path(out).write_text("x"))  # fmt: skip
    s = QuickstartSettings.make(tmp_path, embed_size=24)
    r = profile_stage.stage_profiles(s, *_paths())
    out = tmp_path / "profiles"
    assert calls[0] == ("plate", out / "plate")
    assert [(c[0], c[1]) for c in calls[1:]] == [("t/c", "chada_vit.parquet"), ("u/c", "chada_vit_untrained.parquet"),
                                                ("handmade", "handmade.parquet")]  # fmt: skip
    kw = calls[1][2]
    assert kw["image"].size == 24 and (kw["run"].batch_size, kw["run"].progress) == (256, False)
    assert [c[2]["image"].normalize for c in calls[1:]] == ["percentile", "percentile", "none"]
    cells = tmp_path / "profiles" / "cells"
    assert measured == [(tmp_path / "profiles" / "plate" / "manifest.csv", cells / "cp_measure.parquet",
                         {"progress": False, "groups": {"texture": False, "correlation_costes": False}})]  # fmt: skip
    o = kw["objects"]
    assert (o.crop_size, o.mask_neighbours, o.skip_border) == (24, True, True)
    assert r == {
        "out": str(out),
        "readouts": {m: {"map": 0.5} for m in seen["task"].tables},
        "n_comparisons": 3,
    }
    t = seen["task"]
    assert seen["out"] == out and t.tables["handmade"] == out / "cells" / "handmade.parquet"
    assert (t.config.batch_cols, t.config.null_size, t.config.n_boot, t.config.seed) == (
        ["plate"],
        1000,
        200,
        0,
    )
    assert (t.projection, t.pool) == ("pca", "cls")
    profile_stage.stage_profiles(s, *_paths())
    assert len(calls) == 5  # a rerun embeds nothing again: only the plate step


def test_plate_is_kept_when_its_manifest_exists(tmp_path):
    (tmp_path / "manifest.csv").write_text("kept")
    assert profile_stage._plate(tmp_path) == tmp_path / "manifest.csv"
    assert (tmp_path / "manifest.csv").read_text() == "kept" and not (tmp_path / "images").exists()


# ------------------------------------------------------------------------------------- quickstart
def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path):
    s = QuickstartSettings.make(tmp_path, precision="fp32")
    quickstart._refuse_changed_settings(s)  # nothing there yet
    from dataclasses import asdict

    (tmp_path / "settings.json").write_text(json.dumps(asdict(s), default=str))
    quickstart._refuse_changed_settings(
        QuickstartSettings.make(tmp_path, precision="bf16")
    )  # no stages/: new
    (tmp_path / "stages").mkdir()
    quickstart._refuse_changed_settings(
        QuickstartSettings.make(tmp_path, precision="fp32", jobs=2)
    )  # speed only
    with pytest.raises(ValueError) as e:
        quickstart._refuse_changed_settings(QuickstartSettings.make(tmp_path, precision="bf16", seeds=3))
    assert str(e.value) == (
        f"{tmp_path} holds a quickstart run made with other settings (precision: 'fp32' -> 'bf16', seeds: 5 -> 3); "
        "its finished stages would be reused. Give another --out, or delete the folder to start over."
    )
    old = asdict(s)
    del old["precision"]  # written before the setting existed: not a change
    (tmp_path / "settings.json").write_text(json.dumps(old, default=str))
    quickstart._refuse_changed_settings(QuickstartSettings.make(tmp_path, precision="bf16"))
    (tmp_path / "settings.json").write_text("{not json")
    quickstart._refuse_changed_settings(QuickstartSettings.make(tmp_path, precision="bf16"))


def test_redo_keeps_a_stage_without_an_output_folder(tmp_path):
    stages = Stages(tmp_path, lambda m: None)
    stages.run("dense", lambda: {"table": []})
    quickstart._redo_if_unfinished(stages, "dense", lambda m: None)
    assert stages.done("dense") is not None
    stages.run("evaluate", lambda: {"out": str(tmp_path / "ev")})  # never finished
    lines = []
    quickstart._redo_if_unfinished(stages, "evaluate", lines.append)
    assert (
        stages.done("evaluate") is None
        and lines[0].startswith("[evaluate] ")
        and lines[0].endswith("; running it again")
    )


def test_run_quickstart_runs_the_stages_in_order_and_marks_the_folder(tmp_path, monkeypatch):
    import torch

    import chada.pipeline.summary as summary
    from chada.io import check_finished

    order = []
    teachers = {r: f"t/{r}" for r in ENCODERS}
    untrained = {r: f"u/{r}" for r in ENCODERS}
    ev_out = tmp_path / "out" / "evaluation"

    def stage(name, result):
        def fn(*a, **k):
            order.append((name, a))
            return dict(result)

        return fn

    monkeypatch.setattr(quickstart, "stage_data", stage("data", {"manifests": {"m": "m.csv"}}))
    monkeypatch.setattr(
        quickstart,
        "pretrain_all",
        stage(
            "pretrain",
            {r: {"teacher": teachers[r], "untrained": untrained[r], "seconds": 3} for r in ENCODERS},
        ),
    )
    monkeypatch.setattr(quickstart, "stage_embed", stage("embed", {"files": {"g": {}}}))
    monkeypatch.setattr(quickstart, "stage_evaluate", stage("evaluate", {"out": str(ev_out)}))
    monkeypatch.setattr(quickstart, "stage_figures", stage("figures", {"attention": "a.png"}))
    monkeypatch.setattr(quickstart, "stage_dense", stage("dense", {"table": []}))
    monkeypatch.setattr(quickstart, "stage_profiles", stage("profiles", {"readouts": {}}))
    threads = torch.get_num_threads()
    reports = []

    def fake_report(s, data, t, ev, figs, timings, emb):
        reports.append((data, t, ev, figs, timings, emb))
        md = s.out / "report.md"
        md.write_text("# r")
        md.with_suffix(".html").write_text("<p>")
        (s.out / "machine.json").write_text("{}")
        return md

    monkeypatch.setattr(summary, "build_report", fake_report)
    s = QuickstartSettings.make(tmp_path / "out", fast=True, threads=1)
    try:
        md = quickstart.run_quickstart(s, log=lambda m: None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert md == tmp_path / "out" / "report.md"
    assert [n for n, _ in order] == ["data", "pretrain", "embed", "evaluate", "figures", "dense", "profiles"]
    a = dict(order)
    assert a["embed"][1:4] == ({"m": "m.csv"}, teachers, untrained)
    assert a["evaluate"][1:5] == ({"g": {}}, teachers, {"m": "m.csv"}, untrained)
    assert a["figures"][1:4] == ({"m": "m.csv"}, teachers, {"g": {}})
    assert a["dense"][1:] == a["profiles"][1:] == (teachers, untrained)
    data, t, ev, figs, timings, emb = [{k: v for k, v in d.items() if k != "seconds"} for d in reports[0]]
    timings = reports[0][4]
    assert (data, t, ev, figs, emb) == ({"manifests": {"m": "m.csv"}}, teachers, {"out": str(ev_out)},
                                        {"attention": "a.png"}, {"files": {"g": {}}})  # fmt: skip
    assert set(timings) == {"data", "embed", "evaluate", "figures", "dense", "profiles", "total (this run)"}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["reused_stages"] == [] and run["total_s"] == timings["total (this run)"]
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["threads"] == 1
    files = check_finished(tmp_path / "out")["files"]
    assert sorted(files) == ["machine.json", "report.html", "report.md", "run.json", "settings.json"]
    # a rerun reuses every stage and says so
    order.clear()
    quickstart.run_quickstart(
        QuickstartSettings.make(tmp_path / "out", fast=True, threads=1), log=lambda m: None
    )
    # pretrain_all decides itself what to reuse; the evaluation folder never got its marker: run again
    assert [n for n, _ in order] == ["pretrain", "evaluate"]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["reused_stages"] == [
        "data",
        "embed",
        "figures",
        "dense",
        "profiles",
    ]  # evaluate: never finished


# ------------------------------------------------------------------------------------ pretraining
def test_last_epoch_reads_the_last_row(tmp_path):
    log = tmp_path / "log.csv"
    assert pretraining._last_epoch(log) == 0.0
    log.write_text("")
    assert pretraining._last_epoch(log) == 0.0
    rows = "".join(f"{i},{i / 10:.2f},0.5\n" for i in range(2000))  # longer than the 4 kB tail
    log.write_text("step,epoch,loss\n" + rows)
    assert pretraining._last_epoch(log) == pytest.approx(199.9)
    log.write_text("step,epoch,loss\n5,oops,1\n")
    assert pretraining._last_epoch(log) == 0.0


def test_model_overrides_keep_only_fields_the_model_has():
    assert pretraining._model_overrides("chada_vit_test") == [
        'model.overrides={"img_size": 32, "pos_embed_std": 0.2}'
    ]
    # the Inter-Channel ViT has no positional embedding
    assert pretraining._model_overrides("inter_channel_vit_test") == ['model.overrides={"img_size": 32}']


def _fake_pretrain(seen, export=True):
    def pretrain(config, overrides, resume):
        seen.update(config=config, overrides=overrides, resume=resume)
        folder = Path(next(o for o in overrides if o.startswith("run.output_dir=")).split("=", 1)[1])
        for sub in ("teacher", "init"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            if export:
                (folder / sub / "config.json").write_text("{}")
        return folder

    return pretrain


def test_stage_pretrain_passes_the_recipe_overrides(tmp_path, monkeypatch):
    import chada.ssl as ssl

    seen = {}
    monkeypatch.setattr(ssl, "pretrain", _fake_pretrain(seen))
    s = QuickstartSettings.make(tmp_path, fast=True, synth_size=40, steps_cap=9)
    r = pretraining.stage_pretrain(s, {"pretrain_corpus": "c.csv"}, "one_channel_vit", "one_channel_vit_test",
                                   seed=2, run="one_channel_vit_s2")  # fmt: skip
    out = tmp_path / "pretrain" / "one_channel_vit_s2"
    assert seen["config"] == pretraining._pretrain_config() and seen["resume"] is False
    assert (
        pretraining._pretrain_config().name == "quickstart.yaml" and pretraining._pretrain_config().exists()
    )
    assert seen["overrides"] == [
        "model.name=one_channel_vit_test", 'model.overrides={"img_size": 32, "pos_embed_std": 0.2}',
        "data.manifest=c.csv", "data.split=train", "data.size=40", "optim.epochs=1", f"run.output_dir={out}",
        "run.device=cpu", "data.num_workers=0", "run.seed=2",
        "optim.warmup_epochs=1", "dino.warmup_teacher_temp_epochs=1",  # warm-ups no longer than the run
        "run.max_steps=9", "run.tensorboard=false", "run.progress=false",
    ]  # fmt: skip
    assert {k: r[k] for k in ("teacher", "untrained", "epochs", "output", "parallel", "encoder", "seed")} == {
        "teacher": str(out / "teacher"), "untrained": str(out / "init"), "epochs": 1, "output": str(out),
        "parallel": False, "encoder": "one_channel_vit", "seed": 2}  # fmt: skip
    assert 0 <= r["seconds"] < 5
    (out / "checkpoint.pt").write_text("x")
    s = QuickstartSettings.make(tmp_path, epochs=30)
    pretraining.stage_pretrain(s, {"pretrain_corpus": "c.csv"}, "chada_vit", "chada_vit_test", quiet=True)
    o = seen["overrides"]
    assert (
        "optim.epochs=30" in o
        and "run.seed=0" in o
        and f"run.output_dir={tmp_path / 'pretrain' / 'chada_vit'}" in o
    )
    assert not any(x.startswith(("optim.warmup_epochs", "dino.warmup")) for x in o)  # 3 and 30 <= 30
    assert o[-3:] == ["run.threads=1", "run.tensorboard=false", "run.progress=false"]
    pretraining.stage_pretrain(QuickstartSettings.make(tmp_path, epochs=30, threads=2), {"pretrain_corpus": "c"},
                               "chada_vit", "chada_vit_test")  # fmt: skip
    assert seen["overrides"][-1] == "run.threads=2"
    pretraining.stage_pretrain(QuickstartSettings.make(tmp_path / "b", epochs=30), {"pretrain_corpus": "c"},
                               "chada_vit", "chada_vit_test")  # fmt: skip
    assert seen["overrides"][-1] == "run.seed=0" and seen["resume"] is False
    (tmp_path / "b" / "pretrain" / "chada_vit" / "checkpoint.pt").write_text("x")
    pretraining.stage_pretrain(QuickstartSettings.make(tmp_path / "b", epochs=30), {"pretrain_corpus": "c"},
                               "chada_vit", "chada_vit_test")  # fmt: skip
    assert seen["resume"] is True


def test_stage_pretrain_refuses_a_run_that_exported_nothing(tmp_path, monkeypatch):
    import chada.ssl as ssl

    monkeypatch.setattr(ssl, "pretrain", _fake_pretrain({}, export=False))
    with pytest.raises(
        RuntimeError, match=r"^pretraining of chada_vit finished without exporting .*teacher$"
    ):
        pretraining.stage_pretrain(
            QuickstartSettings.make(tmp_path), {"pretrain_corpus": "c"}, "chada_vit", "chada_vit_test"
        )


def test_pretrain_all_one_at_a_time_records_every_run(tmp_path, monkeypatch):
    got = []
    monkeypatch.setattr(pretraining, "stage_pretrain", lambda *a: got.append(a) or {"teacher": a[-1]})
    s = QuickstartSettings.make(tmp_path, jobs=1, pretrain_seeds=2)
    stages = Stages(tmp_path, lambda m: None)
    res = pretraining.pretrain_all(s, stages, {"m": 1})
    assert list(res) == list(s.runs())
    assert got[3] == (s, {"m": 1}, "chada_vit", "chada_vit_test", False, 1, "chada_vit_s1")
    assert all(stages.done(f"pretrain_{r}")["teacher"] == r for r in s.runs())


def test_pretrain_all_with_one_pending_run_does_not_start_a_pool(tmp_path, monkeypatch):
    got = []
    monkeypatch.setattr(pretraining, "stage_pretrain", lambda *a: got.append(a[-1]) or {"teacher": a[-1]})
    s = QuickstartSettings.make(tmp_path, jobs=3)
    stages = Stages(tmp_path, lambda m: None)
    stages.run("pretrain_chada_vit", lambda: {"teacher": "old"})
    stages.run("pretrain_one_channel_vit", lambda: {"teacher": "old"})
    res = pretraining.pretrain_all(s, stages, {})
    assert got == ["inter_channel_vit"] and res["chada_vit"]["teacher"] == "old"


class _Job:
    def __init__(self, ready, ok=True):
        self._ready, self._ok = ready, ok

    def ready(self):
        return self._ready

    def successful(self):
        return self._ok


def test_watch_returns_when_all_finish_or_one_fails_and_names_a_dead_worker(tmp_path):
    s = QuickstartSettings.make(tmp_path, fast=True)
    pretraining._watch_pretraining(s, {"chada_vit": _Job(True), "one_channel_vit": _Job(True)})
    pretraining._watch_pretraining(s, {"chada_vit": _Job(True, ok=False), "one_channel_vit": _Job(False)})
    pool = SimpleNamespace(
        _pool=[SimpleNamespace(exitcode=None, pid=1), SimpleNamespace(exitcode=-9, pid=77)]
    )
    with pytest.raises(RuntimeError) as e:
        pretraining._watch_pretraining(s, {"chada_vit": _Job(True), "one_channel_vit": _Job(False)}, pool)
    assert str(e.value) == (
        "a pretraining process (pid 77) ended with exit code -9 (killed, or out of memory?) before one_channel_vit "
        f"finished; logs in {tmp_path / 'pretrain'}. Run the same `chada quickstart` command again: it resumes "
        "from the checkpoints"
    )


def test_epochs_of_an_unknown_run_and_a_stage_without_seconds(tmp_path):
    s = QuickstartSettings.make("o", epochs=7, baseline_epochs=3)
    assert s.epochs_of("some_other_vit") == 3
    lines: list[str] = []
    st = Stages(tmp_path, lines.append)
    (st.dir / "old.json").write_text("{}")  # written before stages recorded their seconds
    assert st.run("old", lambda: {"x": 1}) == {}
    assert lines == ["[old] already done (0 s), reusing it"]
    st.run("new", lambda: {"seconds": 1.5, "where": tmp_path})
    assert (st.dir / "new.json").read_text() == '{\n  "seconds": 1.5,\n  "where": "' + str(tmp_path) + '"\n}'


def test_plate_is_drawn_scanned_and_written_with_its_own_seed(tmp_path):
    import hashlib

    m = profile_stage._plate(tmp_path / "a")
    assert m == tmp_path / "a" / "manifest.csv"
    df = pd.read_csv(m)
    assert (
        len(df) == 64 and set(df.plate) == {"P1", "P2"} and set(df.dataset) == {"synth_plate"}
    )  # 2 plates x 32 wells
    assert df.columns.tolist() == ["image_id", "dataset", "channel_files", "channel_names", "objects_file", "plate",
                                   "well", "site", "compound", "dose", "moa", "control_type"]  # fmt: skip
    row = df.iloc[0]
    assert (row.image_id, row.channel_names, row.site) == ("P1_A01_1", "DAPI;Tubulin;Actin", 1)
    assert row.channel_files.split(";")[0] == "images/P1/A01_s1_w1.tif"  # relative to the plate folder
    assert (
        row.objects_file == "images/P1/A01_s1_cp_masks.tif" and (tmp_path / "a" / row.objects_file).exists()
    )
    assert (df.control_type == "trt").any() and df.dose.isin([1.0, 10.0]).any()
    treated = df[df.control_type == "trt"].groupby(["compound", "dose"]).size()
    assert treated.tolist() == [3] * 16  # 3 replicate wells of each (compound, dose)
    again = profile_stage._plate(tmp_path / "b")  # seed 0 both times: the same plate, pixel for pixel

    def digest(folder):
        return hashlib.sha256(
            b"".join((folder / f).read_bytes() for f in sorted(df.channel_files.str.split(";").sum()))
        ).hexdigest()

    assert pd.read_csv(again).equals(df) and digest(tmp_path / "a") == digest(tmp_path / "b")
