"""The quickstart's data, embedding and evaluation stages (chada.pipeline.stages) with their heavy
callees replaced by recorders: which files they combine, which models and groups they embed, and the
evaluation config they write (issue 26 item 10, mutation testing of ``chada.pipeline``)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from chada.pipeline import stages
from chada.pipeline.settings import ENCODERS, QuickstartSettings


def _manifest(path: Path, names: list[str], **cols) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(names)
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "dataset": ["d"] * n, "channel_names": names,
                       "channel_files": [";".join(f"img/{k}_{c}.tif" for c in range(len(x.split(";"))))
                                         for k, x in enumerate(names)], **cols})  # fmt: skip
    df.to_csv(path, index=False)
    return path


def test_absolute_manifest_resolves_every_file_against_its_folder(tmp_path):
    m = _manifest(tmp_path / "a" / "m.csv", ["DAPI", "DAPI;Actin"])
    df = stages._absolute_manifest(m)
    root = (tmp_path / "a").resolve()
    assert list(df["channel_files"]) == [f"{root}/img/0_0.tif", f"{root}/img/1_0.tif;{root}/img/1_1.tif"]
    one = tmp_path / "b" / "m.csv"
    one.parent.mkdir()
    pd.DataFrame({"image_id": ["x", "y"], "dataset": ["d", "d"], "channel_names": ["A", "A"],
                  "file": ["sub/x.tif", ""]}).to_csv(one, index=False)  # fmt: skip
    got = stages._absolute_manifest(one)["file"].tolist()
    assert got[0] == f"{(tmp_path / 'b').resolve()}/sub/x.tif" and pd.isna(got[1])  # empty stays empty


def test_mean_pooled_groups_are_those_with_several_channel_counts(tmp_path):
    m = {
        "synth_all": _manifest(tmp_path / "s.csv", ["A", "A;B", "A;B;C;D;E", "A;B"]),
        "synth_markers_eval": _manifest(tmp_path / "e.csv", ["A;B", "A;B"]),
        "real_nuclei": _manifest(tmp_path / "n.csv", ["H"]),
        "real_ihc": _manifest(tmp_path / "i.csv", ["H;E;D", "H;E"]),
    }
    assert stages.mean_pooled_groups({k: str(v) for k, v in m.items()}) == {
        "synth_all": [1, 2, 5],
        "real_ihc": [2, 3],
    }


def test_has_interchannel_label_drops_missing_and_empty():
    meta = pd.DataFrame({"interchannel_label": [1.0, None, 0.0, ""]})
    assert stages._has_interchannel_label(meta).tolist() == [True, False, True, False]


def _files(runs):
    return {g: {**{r: f"{g}/{r}.npz" for r in runs}, **{f"{r}_untrained": f"{g}/{r}_u.npz" for r in runs},
                "handmade": f"{g}/h.npz", "shortcut": f"{g}/s.npz"}
            for g in stages.EMBED_GROUPS}  # fmt: skip


def test_evaluation_config_names_every_model_task_and_the_reconstruction(tmp_path):
    s = QuickstartSettings.make(tmp_path, pretrain_seeds=2, seeds=4, embed_size=24)
    runs = list(s.runs())
    files = _files(runs)
    files["synth_all"]["stray"] = "x.npz"  # a file of no model: not evaluated
    teachers = {r: f"t/{r}" for r in runs}
    untrained = {r: f"u/{r}" for r in runs}
    cfg = stages.evaluation_config(s, files, teachers, {"synth_all": "all.csv"}, untrained)
    models = cfg["models"]
    assert models["chada_vit_s1"] == {
        "path": "synth_all/chada_vit_s1.npz",
        "family": "learned",
        "arch": "chada_vit",
    }
    assert models["one_channel_vit_untrained"] == {"path": "synth_all/one_channel_vit_u.npz", "family": "untrained",
                                                   "arch": "one_channel_vit", "untrained_of": "one_channel_vit"}  # fmt: skip
    assert models["handmade"] == {"path": "synth_all/h.npz", "family": "handmade"}
    assert len(models) == 2 * len(runs) + 1
    assert (cfg["seeds"], cfg["fractions"], cfg["feature_kinds"]) == (4, [0.01, 0.1, 1.0], ["cls", "all"])
    assert cfg["diagnostics"] == {"shortcut_features": "synth_all/s.npz"}
    inter = next(t for t in cfg["tasks"] if t["name"] == "synth_interchannel")
    assert {k: inter[k] for k in ("label_column", "kind", "train_split", "test_split")} == {
        "label_column": "interchannel_label",
        "kind": "classification",
        "train_split": "train",
        "test_split": "test",
    }
    assert inter["models"] == list(models) and inter["embeddings"]["handmade"] == "synth_markers_eval/h.npz"
    assert [t["name"] for t in cfg["tasks"]] == ["synth_interchannel", "synth_size", "synth_radius",
                                                 "real_nuclei_size", "real_ihc_dab"]  # fmt: skip
    assert next(t for t in cfg["tasks"] if t["name"] == "synth_radius")["kind"] == "regression"
    (rec,) = cfg["reconstruction"]
    assert {k: v for k, v in rec.items() if k != "models"} == {
        "name": "synth_actin_reconstruction", "manifest": "all.csv", "datasets": ["cellpaint_3ch"],
        "target_channel": "Actin", "image_size": 24, "epochs": 15, "seeds": 4}  # fmt: skip
    assert rec["models"] == {**teachers, **{f"{r}_untrained": untrained[r] for r in runs}}
    fast = QuickstartSettings.make(tmp_path, fast=True)
    assert stages.evaluation_config(fast, _files(list(ENCODERS)), teachers, {"synth_all": "a"},
                                    untrained)["reconstruction"][0]["epochs"] == 3  # fmt: skip


def test_stage_evaluate_writes_the_config_and_prefixes_its_log(tmp_path, monkeypatch):
    import chada.tasks.evaluation as evaluation

    seen, lines = {}, []

    def fake(cfg, out, progress, print_table, log):
        seen.update(cfg=cfg, out=out, progress=progress, print_table=print_table)
        log("probe done")
        return [1, 2, 3]

    monkeypatch.setattr(evaluation, "run_evaluation", fake)
    runs = list(ENCODERS)
    t, u = {r: f"t/{r}" for r in runs}, {r: f"u/{r}" for r in runs}
    s = QuickstartSettings.make(tmp_path)
    r = stages.stage_evaluate(s, _files(runs), t, {"synth_all": "a.csv"}, u, log=lines.append)
    assert r == {"out": str(tmp_path / "evaluation"), "rows": 3}
    assert (
        seen["out"] == tmp_path / "evaluation" and seen["progress"] is True and seen["print_table"] is False
    )
    text = (tmp_path / "evaluation" / "eval_config.yaml").read_text()
    assert yaml.safe_load(text) == seen["cfg"] and text.startswith("seeds: 5\n")  # the config's own order
    assert lines == ["[evaluate] probe done"]
    stages.stage_evaluate(
        QuickstartSettings.make(tmp_path, fast=True), _files(runs), t, {"synth_all": "a"}, u, log=print
    )
    assert seen["progress"] is False


def test_stage_embed_embeds_each_group_once_per_model(tmp_path, monkeypatch):
    import chada
    import chada.encode.embed as embed_api
    import chada.encode.handmade as handmade

    groups = {
        "synth_all": _manifest(tmp_path / "m" / "s.csv", ["A", "A;B"]),
        "synth_markers_eval": _manifest(tmp_path / "m" / "e.csv", ["A;B"]),
        "real_nuclei": _manifest(tmp_path / "m" / "n.csv", ["H"]),
        "real_ihc": _manifest(tmp_path / "m" / "i.csv", ["H;E;D", "H"]),
    }
    manifests = {k: str(v) for k, v in groups.items()}
    embedded, feats, lines = [], [], []

    def fake_embed(model, m, out, **kw):
        embedded.append((model, m, Path(out).relative_to(tmp_path).as_posix(), kw))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("x")

    def fake_features(m, kind, out, **kw):
        assert m == manifests[Path(out).parent.name]
        feats.append((kind, Path(out).name, kw))

    monkeypatch.setattr(embed_api, "embed_manifest", fake_embed)
    monkeypatch.setattr(handmade, "features_for_manifest", fake_features)
    pools = {"t/one_channel_vit": {"cls": "mean", "all": "mean_all"}}
    monkeypatch.setattr(chada, "load_model", lambda p: SimpleNamespace(variable_size_pools=pools.get(p)))
    teachers = {
        "chada_vit": "t/chada_vit",
        "one_channel_vit": "t/one_channel_vit",
        "one_channel_vit_s1": "t/one_channel_vit",
    }
    untrained = {r: f"u/{r}" for r in teachers}
    s = QuickstartSettings.make(tmp_path, fast=True, embed_size=24, synth_size=40)
    r = stages.stage_embed(s, manifests, teachers, untrained, log=lines.append)
    assert r["mixed_groups"] == {"synth_all": [1, 2], "real_ihc": [1, 3]} and r["precision"] == "fp32"
    assert r["mean_pooled"] == {
        "one_channel_vit": ["real_ihc", "synth_all"],
        "one_channel_vit_s1": ["real_ihc", "synth_all"],
    }
    assert lines[0] == "[embed] precision: fp32 (as asked)"
    assert lines[1] == ("[embed] one_channel_vit: on synth_all ([1, 2] channels), real_ihc ([1, 3] channels) the "
                        "per-channel tokens are averaged ('cls' -> 'mean', 'all' -> 'mean_all'): one fixed-size vector per image is needed when the channel count varies; "
                        "the other groups keep the concatenation")  # fmt: skip
    assert lines[2] == "[embed] synth_all: 6 encoders (trained + untrained) and the hand-made features"
    assert len(lines) == 2 + len(stages.EMBED_GROUPS)  # the note once per encoder, not per seed
    assert [e[2] for e in embedded[:2]] == [
        "embeddings/synth_all/chada_vit.npz",
        "embeddings/synth_all/chada_vit_untrained.npz",
    ]
    assert [e[0] for e in embedded[:2]] == ["t/chada_vit", "u/chada_vit"] and embedded[0][1] == manifests[
        "synth_all"
    ]
    assert len(embedded) == 6 * len(stages.EMBED_GROUPS)
    kw = embedded[0][3]
    assert set(kw) == {"image", "run"} and kw["image"].size == 24
    assert (kw["run"].batch_size, kw["run"].progress, kw["run"].dtype) == (
        64,
        False,
        __import__("torch").float32,
    )
    assert [f[:2] for f in feats[:2]] == [("handmade", "handmade.npz"), ("shortcut", "shortcut.npz")]
    assert set(feats[0][2]) == {"image", "run"} and feats[0][2]["image"].size == 40
    assert (feats[0][2]["run"].batch_size, feats[0][2]["run"].progress) == (64, False)
    out = tmp_path / "embeddings"
    assert r["files"]["real_ihc"] == {
        **{tag: str(out / "real_ihc" / f"{tag}.npz") for tag in ("chada_vit", "chada_vit_untrained", "one_channel_vit",
                                                                  "one_channel_vit_untrained", "one_channel_vit_s1",
                                                                  "one_channel_vit_s1_untrained")},
        "handmade": str(out / "real_ihc" / "handmade.npz"), "shortcut": str(out / "real_ihc" / "shortcut.npz"),
    }  # fmt: skip
    embedded.clear()
    (out / "synth_all" / "handmade.npz").write_text("x")
    feats.clear()
    stages.stage_embed(QuickstartSettings.make(tmp_path), manifests, teachers, untrained, log=lines.append)
    assert embedded == [] and ("handmade", "handmade.npz") not in [
        f[:2] for f in feats[:1]
    ]  # files there: reused
    assert len(feats) == 2 * len(stages.EMBED_GROUPS) - 1 and feats[0][2]["run"].progress is True


def test_stage_data_writes_one_manifest_per_group_and_the_training_corpus(tmp_path, monkeypatch):
    from chada.data import bundled, synth

    calls = []

    def fake_generate(out, **kw):
        calls.append((Path(out).name, kw))
        eval_ = "assays" in kw
        return _manifest(Path(out) / "manifest.csv", ["A;B", "A;B", "A"],
                         split=["train", "test", "train"], interchannel_label=[1, "" if eval_ else None, None])  # fmt: skip

    monkeypatch.setattr(synth, "generate", fake_generate)
    prepared = []
    monkeypatch.setattr(bundled, "prepare", lambda out: prepared.append(out) or _manifest(
        Path(out) / "manifest.csv", ["N", "H;E"], split=["train", "test"]))  # fmt: skip
    s = QuickstartSettings.make(tmp_path, n_per_assay=7, synth_size=40, eval_n_per_assay=9)
    r = stages.stage_data(s)
    assert calls == [("synth", {"n_per_assay": 7, "size": 40, "seed": 0, "marker_pattern": "domain"}),
                     ("synth_eval", {"n_per_assay": 9, "size": 40, "seed": 1, "assays": ["markers_2ch", "coloc_5ch"],
                                     "marker_pattern": "domain"})]  # fmt: skip
    assert r["images"] == {"synth_all": 3, "synth_markers": 1, "synth_markers_eval": 3, "real_nuclei": 1,
                           "real_ihc": 1, "pretrain_corpus": 3}  # fmt: skip
    d = tmp_path / "data"
    assert r["manifests"] == {g: str(d / f"{g}.csv") for g in r["images"]}
    assert prepared == [d / "real"]
    nuclei = pd.read_csv(d / "real_nuclei.csv")
    assert list(nuclei.columns) == [
        "image_id",
        "dataset",
        "channel_names",
        "channel_files",
        "split",
    ]  # no index column
    assert pd.read_csv(d / "real_ihc.csv")["channel_names"].tolist() == ["H;E"]  # every multi-channel image
    assert nuclei["channel_names"].tolist() == ["N"] and Path(nuclei["channel_files"][0]).is_absolute()
    corpus = pd.read_csv(d / "pretrain_corpus.csv")
    assert corpus["split"].tolist() == ["train"] * 3 and corpus["channel_names"].tolist() == ["A;B", "A", "N"]


def test_attention_image_prefers_a_five_channel_test_image_with_label_one(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    names = ["A;B;C;D;E", "A;B;C;D;E", "A;B;C;D;E", "A;B"]
    m = _manifest(tmp_path / "m.csv", names, split=["train", "test", "test", "test"],
                  interchannel_label=[1, 0, 1, 1])  # fmt: skip
    import tifffile

    for k, x in enumerate(names):
        for c in range(len(x.split(";"))):
            tifffile.imwrite(img / f"{k}_{c}.tif", np.full((4, 4), 10 * k + c, np.uint16))
    image, chans, image_id = stages._attention_image({"synth_markers": str(m)})
    assert image_id == "i2" and chans == ["A", "B", "C", "D", "E"] and image.shape == (5, 4, 4)
    assert image[:, 0, 0].tolist() == [20, 21, 22, 23, 24]
    df = pd.read_csv(m)
    df["split"] = "train"  # no test image with label 1: the first 5-channel image
    df.to_csv(m, index=False)
    assert stages._attention_image({"synth_markers": str(m)})[2] == "i0"


@pytest.mark.parametrize("umap", [False, True])
def test_stage_figures_draws_both_figures_from_the_named_inputs(tmp_path, monkeypatch, umap):
    import chada
    import chada.encode.store as store
    import chada.viz.attention as attention
    import chada.viz.attention_figure as attention_figure
    import chada.viz.projection as projection
    import chada.viz.projection_figure as projection_figure

    seen = {}
    manifests = {"synth_markers": "m.csv"}
    monkeypatch.setattr(stages, "_attention_image",
                        lambda m: (np.ones((5, 8, 8), np.float32), list("ABCDE"), "img7") if m is manifests else None)  # fmt: skip
    monkeypatch.setattr(chada, "load_model", lambda p: f"model:{p}")
    monkeypatch.setattr(
        attention, "compute_model_attention", lambda model, x, title: (model, tuple(x.shape), title)
    )
    monkeypatch.setattr(attention_figure, "plot_attention_grid",
                        lambda x, results, names, path, title: seen.update(grid=(results, names, path, title), x=x))  # fmt: skip
    monkeypatch.setattr(store, "load_embeddings", lambda f: f"set:{f}")

    def fake_project(sets, **kw):
        seen["project"] = (sets, {k: v for k, v in kw.items() if k != "log"})
        kw["log"]("pca")
        return pd.DataFrame({"x": [1.0]}), {"n": 1}

    monkeypatch.setattr(projection, "project", fake_project)
    monkeypatch.setattr(
        projection_figure,
        "plot_projection",
        lambda c, st, path, color_by: seen.update(proj=(c.x.tolist(), st, path, color_by)),
    )
    files = {g: {"chada_vit": f"{g}.npz"} for g in ("synth_all", "real_nuclei", "real_ihc")}
    lines = []
    s = QuickstartSettings.make(tmp_path, embed_size=16, umap=umap)
    r = stages.stage_figures(
        s, manifests, {"chada_vit": "c", "one_channel_vit": "o"}, files, log=lines.append
    )
    assert tuple(seen["x"].shape) == (5, 16, 16) and seen["x"].dtype == __import__("torch").float32
    fig = tmp_path / "figures"
    results, names, path, title = seen["grid"]
    assert results == [
        ("model:c", (5, 16, 16), "ChAda-ViT (DINO)"),
        ("model:o", (5, 16, 16), "One-Channel ViT (DINO)"),
    ]
    assert (names, path, title) == (
        list("ABCDE"),
        fig / "attention.png",
        "Last-layer CLS attention, synthetic image img7",
    )
    sets, kw = seen["project"]
    assert sets == ["set:synth_all.npz", "set:real_nuclei.npz", "set:real_ihc.npz"]
    assert kw == {"feature": "cls", "color_by": "label", "methods": ("pca", "umap") if umap else ("pca",), "seed": 0,
                  "names": ["synthetic", "DSB2018 nuclei", "IHC"]}  # fmt: skip
    assert seen["proj"] == ([1.0], {"n": 1}, fig / "projection.png", "label")
    assert (fig / "projection.csv").read_text() == "x\n1.0\n"
    assert r == {"attention": str(fig / "attention.png"), "projection": str(fig / "projection.png"),
                 "projection_stats": {"n": 1}, "image_id": "img7"}  # fmt: skip
    assert lines[0] == "[figures] attention grid: ChAda-ViT and the One-Channel ViT on a 5-channel test image"
    assert lines[1] == "[figures] joint projection: pca"
    assert re.fullmatch(
        r"\[figures\] attention grid and projection drawn in \d s", lines[2]
    )  # seconds, not a clock
    stages.stage_figures(
        s, manifests, {"chada_vit": "c", "one_channel_vit": "o"}, files, log=lines.append
    )  # a rerun
