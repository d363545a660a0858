"""The whole-evaluation runner (chada.tasks.evaluation) on a tiny feature-file config: settings it adds,
the sections it hands on, the step log, where it writes, and what it records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import chada.tasks.evaluation as E
from chada.encode.store import EmbeddingSet

N = 40


def _files(tmp_path: Path) -> dict[str, Path]:
    """Two embedding files of 40 images in 2 well separated classes (10 test images)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], N // 2)
    meta = pd.DataFrame({"image_id": [f"im{i:02d}" for i in range(N)], "dataset": "toy",
                         "label": [f"c{v}" for v in y], "split": np.where(np.arange(N) % 4 == 0, "test", "train")})  # fmt: skip
    paths = {}
    for name, info in (("chada", {"model": "chada_vit_test"}), ("handmade", {"kind": "handmade"})):
        x = rng.normal(size=(N, 6)) + 4.0 * y[:, None]
        paths[name] = tmp_path / f"{name}.npz"
        EmbeddingSet({"cls": x}, meta, info).save(paths[name])
    return paths


def _config(tmp_path: Path, **extra) -> dict:
    paths = _files(tmp_path)
    return {"seeds": 1, "fractions": [1.0], "models": {n: str(p) for n, p in paths.items()},
            "tasks": [{"label_column": "label"}], **extra}  # fmt: skip


def test_settings_added_and_sections_handed_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def recon(raw, base, **kw):
        seen["recon"] = (raw, base, kw)
        return []

    def dense(raw, base, **kw):
        seen["dense"] = (raw, base, kw)
        return []

    def profiles(raw, base, paths):
        seen["profiles"] = (raw, base, dict(paths))
        return None

    monkeypatch.setattr(E, "parse_reconstruction_tasks", recon)
    monkeypatch.setattr(E, "parse_dense_tasks", dense)
    monkeypatch.setattr(E, "parse_profiles_section", profiles)
    cfg = _config(tmp_path, seeds=3, test_fraction=0.3, reconstruction=["r"], dense=["d"], profiles={"p": 1})
    settings, models, tasks = E.normalize_config(cfg)
    assert settings["torch_threads"] == 1
    assert seen["recon"][0] == ["r"] and seen["recon"][2] == {
        "seeds": [0, 1, 2],
        "test_fraction": 0.3,
        "num_threads": 1,
    }
    assert isinstance(seen["recon"][2]["test_fraction"], float) and isinstance(
        seen["recon"][2]["num_threads"], int
    )
    assert seen["dense"][0] == ["d"] and seen["dense"][2] == {"seeds": [0, 1, 2]}
    assert seen["profiles"][0] == {"p": 1} and seen["profiles"][2] == {
        n: Path(p) for n, p in cfg["models"].items()
    }
    assert seen["recon"][1] == seen["dense"][1] == seen["profiles"][1]
    assert set(models) == {"chada", "handmade"} and len(tasks) == 1
    settings, _, _ = E.normalize_config(dict(cfg, torch_threads=None))
    assert settings["torch_threads"] is None and seen["recon"][2]["num_threads"] is None
    settings, _, _ = E.normalize_config(dict(cfg, torch_threads="3"))
    assert seen["recon"][2]["num_threads"] == 3


def test_a_config_with_no_tasks_is_refused_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = "the config names no tasks (neither tasks:, reconstruction:, dense: nor profiles:)"
    cfg = _config(tmp_path)
    del cfg["tasks"]
    with pytest.raises(ValueError) as info:
        E.normalize_config(cfg)
    assert str(info.value) == message
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    for path in (f, str(f)):
        with pytest.raises(ValueError) as info:
            E.normalize_config(path)
        assert str(info.value) == f"{f}: {message}"
    # any one section is enough
    for key in ("reconstruction", "dense", "profiles"):
        monkeypatch.setattr(E, {"reconstruction": "parse_reconstruction_tasks", "dense": "parse_dense_tasks",
                                "profiles": "parse_profiles_section"}[key], lambda *a, **k: ["x"])  # fmt: skip
        settings, _, tasks = E.normalize_config(cfg)
        assert settings[key] == ["x"] and tasks == []
        monkeypatch.undo()


def test_steps_are_logged_and_results_recorded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lines: list[str] = []
    out = tmp_path / "out"
    res = E.run_evaluation(_config(tmp_path), out, print_table=False, plots=False, log=lines.append)
    assert [x.split(" ...")[0].split(": done in")[0] for x in lines] == [
        "probes, kNN and 1-NN: 1 task(s) x 2 model(s)", "probes, kNN and 1-NN: 1 task(s) x 2 model(s)",
        "diagnostics (baseline ratios, CKA, participation ratio, shortcut probes)",
        "diagnostics (baseline ratios, CKA, participation ratio, shortcut probes)",
        "paired comparisons (each learned model vs its references, image by image)",
        "paired comparisons (each learned model vs its references, image by image)",
    ]  # fmt: skip
    assert lines[0].endswith(" ...") and lines[1].endswith(" s") and "done in" in lines[1]
    assert capsys.readouterr().out == ""
    assert set(res.model) == {"chada", "handmade"} and res.attrs["elapsed_s"] > 0
    assert "dense" not in res.attrs and "reconstruction_info" not in res.attrs
    assert res.attrs["comparisons"] is not None and res.attrs["diagnostics"] is not None
    written = json.loads((out / "results.json").read_text())
    assert set(written["extra"]) == {"elapsed_s"}  # no encoder ran: no precision recorded
    assert json.loads((out / "DONE.json").read_text())["rows"] == len(res)
    assert not list(out.glob("*.png"))


def test_default_log_and_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    cfg = _config(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = E.run_evaluation(cfg, progress=False, plots=False)
    captured = capsys.readouterr()
    assert captured.err == ""  # quiet: no step lines
    assert "chada" in captured.out  # the tables are printed
    assert (tmp_path / "eval_results" / "DONE.json").exists()
    E.run_evaluation(
        dict(cfg, out_dir="elsewhere"), progress=True, print_table=False, write=True, plots=False
    )
    err = capsys.readouterr().err
    assert "probes, kNN and 1-NN: 1 task(s) x 2 model(s) ..." in err and "paired comparisons" in err
    assert (tmp_path / "elsewhere" / "DONE.json").exists()
    res2 = E.run_evaluation(cfg, tmp_path / "none", progress=False, print_table=False, write=False)
    assert not (tmp_path / "none").exists() and len(res2) == len(res)


def test_precision_reaches_the_dense_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    class Stop(Exception):
        pass

    def run_dense(task, progress):
        seen.append((task.precision, progress))
        raise Stop

    monkeypatch.setattr(E, "run_dense_task", run_dense)
    cfg = {"dense": [{"name": "n", "source": "dsb2018", "models": {"handmade": "handmade"}}]}
    for precision, progress in (("bf16", False), (None, True)):
        with pytest.raises(Stop):
            E.run_evaluation(cfg, tmp_path, precision=precision, progress=progress, log=lambda m: None)
    default = E.normalize_config(cfg)[0]["dense"][0].precision
    assert seen == [("bf16", False), (default, True)] and default != "bf16"


def test_figures_step_and_dense_section(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "out"
    E.run_evaluation(_config(tmp_path), out, print_table=False, plots=True, log=lines.append)
    assert "figures (Fig. 1 bars, Fig. 4 low-data curves, reconstruction examples) ..." in lines
    assert list(out.glob("*.png"))
    # _write_dense appends its section to results.md (an outcome stands in for a dense task's)
    written: list = []
    md = out / "results.md"
    before = md.read_text()
    orig_write, orig_md = E.write_dense_outputs, E.dense_markdown
    try:
        E.write_dense_outputs = lambda o, d, plots: written.append((o, d, plots))
        E.dense_markdown = lambda o: f"table {o}"
        E._write_dense(["a", "b"], out, False)
        E._write_dense([], tmp_path / "missing", True)
    finally:
        E.write_dense_outputs, E.dense_markdown = orig_write, orig_md
    assert written == [("a", out, False), ("b", out, False)]
    assert md.read_text() == "\n".join(
        [before.rstrip(), "\n## Dense segmentation (IoU / Dice with 95 % intervals)\n", "table a", "table b"]
    )
    assert not (tmp_path / "missing").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    E.write_dense_outputs, E.dense_markdown = (lambda o, d, plots: None), (lambda o: "t")
    try:
        E._write_dense(["a"], fresh, True)
    finally:
        E.write_dense_outputs, E.dense_markdown = orig_write, orig_md
    assert (
        fresh / "results.md"
    ).read_text() == "\n\n## Dense segmentation (IoU / Dice with 95 % intervals)\n\nt"


def test_write_hands_everything_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import chada.eval.report as report

    calls: list = []
    monkeypatch.setattr(report, "write_report", lambda *a, **k: calls.append(("report", a, k)))
    monkeypatch.setattr(report, "summarize", lambda r: "S")
    monkeypatch.setattr(E, "plot_results", lambda *a: calls.append(("results", a)))
    monkeypatch.setattr(E, "plot_paired_forest", lambda *a: calls.append(("forest", a)))
    monkeypatch.setattr(E, "plot_reconstruction_examples", lambda *a: calls.append(("recon", a)))
    monkeypatch.setattr(E, "_write_dense", lambda *a: calls.append(("dense", a)))
    monkeypatch.setattr(E, "_write_profiles", lambda *a: calls.append(("profiles", a)))
    res = pd.DataFrame({"x": [1]})
    res.attrs.update(elapsed_s=1.5, diagnostics="D", comparisons="C", reconstruction_info=["R"],
                     reconstruction_examples=["e1", "e2"], dense=["d1"])  # fmt: skip
    settings = {"reconstruction": [SimpleNamespace(precision="bf16")], "profiles": "P",
                "dense": [SimpleNamespace(precision="fp32"), SimpleNamespace(precision="bf16")]}  # fmt: skip
    lines: list = []
    E._write(res, settings, [], tmp_path, True, lines.append)
    assert calls == [
        ("report", (res, "D", tmp_path), {"extra": {"elapsed_s": 1.5, "precision": ["bf16", "fp32"],
                                                    "reconstruction": ["R"]}, "comparisons": "C"}),
        ("results", ("S", tmp_path)), ("forest", ("C", tmp_path)), ("recon", ("e1", tmp_path)),
        ("recon", ("e2", tmp_path)), ("dense", (["d1"], tmp_path, True)), ("profiles", ("P", tmp_path, lines.append)),
    ]  # fmt: skip
    assert [x.split(" ...")[0].split(":")[0] for x in lines] == ["figures (Fig. 1 bars, Fig. 4 low-data curves, "
                                                                 "reconstruction examples)"] * 2  # fmt: skip
    calls.clear()
    lines.clear()
    bare = pd.DataFrame({"x": [1]})
    bare.attrs.update(elapsed_s=2.0, diagnostics="D")
    E._write(bare, {}, [], tmp_path, True, lines.append)
    assert calls[0] == ("report", (bare, "D", tmp_path), {"extra": {"elapsed_s": 2.0}, "comparisons": None})
    assert (
        lines == []
        and ("dense", ([], tmp_path, True)) in calls
        and not any(c[0] == "profiles" for c in calls)
    )


def test_write_profiles_appends_its_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    seen = []
    monkeypatch.setattr(E, "run_profiling", lambda task, where, log: seen.append((task, where, log))
                        or (None, None, "## Profiles\n![m](figures/a.png)"))  # fmt: skip
    (tmp_path / "results.md").write_text("# Results\n\n")
    task = SimpleNamespace(tables={"a": 1, "b": 2})
    lines: list = []
    E._write_profiles(task, tmp_path, lines.append)
    assert seen == [(task, tmp_path / "profiles", lines.append)]
    assert (tmp_path / "results.md").read_text() == "# Results\n\n## Profiles\n![m](profiles/figures/a.png)"
    assert lines[0] == "profiles: 2 model(s), mAP and NSC/NSCB ..."
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    E._write_profiles(task, fresh, lines.append)
    assert (fresh / "results.md").read_text() == "\n\n## Profiles\n![m](profiles/figures/a.png)"


def test_defaults_show_progress_and_draw_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    E.run_evaluation(_config(tmp_path), out, print_table=False)
    assert "figures (Fig. 1 bars" in capsys.readouterr().err and list(out.glob("*.png"))
