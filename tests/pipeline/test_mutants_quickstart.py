"""run_quickstart's wiring (chada.pipeline.quickstart) with every stage replaced by a recorder: the
settings, log and stage markers each stage gets, the files it writes (settings.json, run.json, the
completion marker) and the dense stage rerun when its folder is unfinished (issue 26 item 10,
mutation testing of ``chada.pipeline``)."""

from __future__ import annotations

import json
import re

import pytest

from chada.pipeline import quickstart
from chada.pipeline.settings import ENCODERS, QuickstartSettings, Stages


def test_each_stage_gets_the_settings_the_log_and_the_markers(tmp_path, monkeypatch):
    import chada.pipeline.summary as summary

    out = tmp_path / "a" / "out"  # two missing folders
    seen = {}
    teachers = {r: f"t/{r}" for r in ENCODERS}

    def rec(name, result):
        def fn(*a):
            seen[name] = a
            if name == "dense":
                (out / "dense").mkdir(parents=True, exist_ok=True)
                (out / "dense" / "DONE.json").write_text("{}")
            return dict(result)

        return fn

    monkeypatch.setattr(quickstart, "stage_data", rec("data", {"manifests": {"m": 1}}))
    monkeypatch.setattr(quickstart, "pretrain_all",
                        rec("pretrain", {r: {"teacher": teachers[r], "untrained": "u"} for r in ENCODERS}))  # fmt: skip
    for name in ("embed", "evaluate", "figures", "dense", "profiles"):
        monkeypatch.setattr(
            quickstart, f"stage_{name}", rec(name, {"files": {}, "out": str(out / "evaluation")})
        )

    def fake_report(s, data, t, ev, figs, timings, emb):
        seen["timings"] = timings
        md = s.out / "report.md"
        md.write_text("# r")
        return md

    monkeypatch.setattr(summary, "build_report", fake_report)

    def log(m):
        pass

    s = QuickstartSettings.make(out, fast=True)
    s.out.mkdir(parents=True)
    (s.out / "stages").mkdir()
    (s.out / "stages" / "pretrain_old.json").write_text("{}")  # a marker without seconds
    (s.out / "stages" / "dense.json").write_text(
        json.dumps({"out": str(out / "gone")})
    )  # unfinished: run again
    quickstart.run_quickstart(s, log=log)
    for name in ("data", "embed", "evaluate", "figures", "dense", "profiles"):
        assert seen[name][0] is s, name
    for name in ("embed", "evaluate", "figures"):
        assert seen[name][-1] is log, name
    ps, stages, manifests, queue = seen["pretrain"]
    assert ps is s and isinstance(stages, Stages) and stages.dir == out / "stages" and manifests == {"m": 1}
    assert queue is not None and hasattr(queue, "put")
    t = seen["timings"]
    assert (
        t["pretrain_old"] == 0.0
        and t["data"] == json.loads((out / "stages" / "data.json").read_text())["seconds"]
    )
    assert 0 <= t["total (this run)"] < 60
    run_text = (out / "run.json").read_text()
    assert run_text.startswith('{\n "total_s": ')
    run = json.loads(run_text)
    assert run["total_s"] == t["total (this run)"] and re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d \S+", run["finished"]
    )
    assert (out / "settings.json").read_text().startswith('{\n  "out": "')
    done = json.loads((out / "DONE.json").read_text())
    assert done["command"] == "chada quickstart" and "dense/DONE.json" in done["files"]


def test_an_unfinished_dense_folder_is_run_again(tmp_path):
    lines = []
    stages = Stages(tmp_path, lines.append)
    (tmp_path / "dense").mkdir()
    stages.run("dense", lambda: {"out": str(tmp_path / "dense")})
    quickstart._redo_if_unfinished(stages, "dense", lines.append)
    assert stages.done("dense") is None
    assert lines[-1].startswith(f"[dense] {tmp_path / 'dense'}: not a finished evaluation (")


def test_the_output_folder_is_made_with_its_parents(tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def stop(s):
        raise Stop

    monkeypatch.setattr(quickstart, "_refuse_changed_settings", stop)
    out = tmp_path / "x" / "y" / "out"
    for _ in range(2):  # a missing parent, then the existing folder
        with pytest.raises(Stop):
            quickstart.run_quickstart(QuickstartSettings.make(out), log=lambda m: None)
        assert out.is_dir()
