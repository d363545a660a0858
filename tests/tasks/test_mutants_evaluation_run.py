"""The whole-evaluation runner (chada.tasks.evaluation) with reconstruction and dense tasks stood in:
their step lines, the rows and attributes they add, their comparisons' Holm tables, what is printed,
and the ``DONE.json`` of a written run. Expectations are written by hand."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import chada.eval.report as report
import chada.tasks.evaluation as E
from chada.encode.store import EmbeddingSet
from chada.eval.comparisons import COMPARISON_COLUMNS
from chada.eval.protocol import RESULT_COLUMNS

N = 40


@dataclasses.dataclass
class _Task:
    name: str
    models: list
    seeds: list
    heads: list
    precision: str = "fp32"


def _config(tmp_path: Path) -> dict:
    """Two embedding files of 40 images in 2 well separated classes, one feature-file task."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], N // 2)
    meta = pd.DataFrame({"image_id": [f"im{i:02d}" for i in range(N)], "dataset": "toy",
                         "label": [f"c{v}" for v in y], "split": np.where(np.arange(N) % 4 == 0, "test", "train")})  # fmt: skip
    models = {}
    for name, info in (("chada", {"model": "chada_vit_test"}), ("handmade", {"kind": "handmade"})):
        x = rng.normal(size=(N, 6)) + 4.0 * y[:, None]
        EmbeddingSet({"cls": x}, meta, info).save(tmp_path / f"{name}.npz")
        models[name] = str(tmp_path / f"{name}.npz")
    return {"seeds": 1, "fractions": [1.0], "models": models, "tasks": [{"label_column": "label"}],
            "reconstruction": ["r"], "dense": ["d"]}  # fmt: skip


def _row(task: str, metric: str) -> dict:
    return {**dict.fromkeys(RESULT_COLUMNS, np.nan), "task": task, "kind": task, "model": "chada",
            "family": "learned", "arch": "a", "feature": "cls", "fraction": 1.0, "seed": 0, "metric": metric,
            "value": 0.5}  # fmt: skip


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> list:
    seen: list = []
    monkeypatch.setattr(
        E, "parse_reconstruction_tasks", lambda raw, base, **kw: [_Task("rt", ["chada"], [0, 1], [])]
    )
    monkeypatch.setattr(
        E, "parse_dense_tasks", lambda raw, base, **kw: [_Task("dt", ["chada"], [0], ["lin", "mlp"])]
    )

    def recon(task, progress):
        seen.append(("recon", task.precision, progress))
        return SimpleNamespace(rows=[_row("rt", "recon_mse")], info=[{"model": "chada"}], examples="EX")

    comp = pd.DataFrame([{**dict.fromkeys(COMPARISON_COLUMNS, np.nan), "task": "dt", "feature": "lin",
                          "fraction": 1.0, "metric": "dense_iou", "model": "chada", "reference": "handmade",
                          "seed": "all", "p": 0.02, "difference": 0.1}], columns=COMPARISON_COLUMNS)  # fmt: skip

    def dense(task, progress):
        seen.append(("dense", task.precision, progress))
        return SimpleNamespace(rows=[_row("dt", "dense_iou")], comparisons=comp, name="dt")

    monkeypatch.setattr(E, "run_reconstruction_task", recon)
    monkeypatch.setattr(E, "run_dense_task", dense)
    monkeypatch.setattr(E, "dense_markdown", lambda o: f"DENSE TABLE {o.name}")
    monkeypatch.setattr(report, "print_tables", lambda res, diag: seen.append(("tables", diag)))
    return seen


def test_reconstruction_and_dense_tasks_join_the_results(tmp_path: Path, stand_ins: list, capsys) -> None:
    lines: list[str] = []
    t0 = time.perf_counter()
    res = E.run_evaluation(_config(tmp_path), tmp_path / "out", progress=True, write=False, precision="bf16",
                           log=lines.append)  # fmt: skip
    wall = time.perf_counter() - t0
    steps = [x.split(" ...")[0] for x in lines if x.endswith(" ...")]
    assert (
        "reconstruction rt: 1 model(s) x 2 seed(s)" in steps
        and "dense dt: 1 model(s), heads lin, mlp" in steps
    )
    assert stand_ins[:2] == [("recon", "bf16", True), ("dense", "bf16", True)]
    assert stand_ins[2] == ("tables", res.attrs["diagnostics"]) and res.attrs["diagnostics"] is not None
    assert "DENSE TABLE dt" in capsys.readouterr().out
    # the stand-ins' rows join the feature-file rows, in the result columns
    assert list(res.columns) == RESULT_COLUMNS
    assert {"rt", "dt"} <= set(res.task) and (res.task == "rt").sum() == 1 and len(set(res.task)) == 3
    assert res.attrs["reconstruction_info"] == [{"model": "chada"}] and res.attrs[
        "reconstruction_examples"
    ] == ["EX"]
    assert [d.name for d in res.attrs["dense"]] == ["dt"]
    assert 0 < res.attrs["elapsed_s"] <= wall
    # the dense comparison is its own Holm table of one test (p_adj = p); the feature-file ones stay
    comps = res.attrs["comparisons"]
    d = comps[comps.metric == "dense_iou"]
    assert len(d) == 1 and d.p_adj.iloc[0] == 0.02 and d.n_comparisons.iloc[0] == 1
    f = comps[comps.metric != "dense_iou"]
    assert len(f) > 0 and set(f.reference) == {"handmade"} and f.p_adj.notna().all()


def test_a_written_run_names_its_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = {k: v for k, v in _config(tmp_path).items() if k not in ("reconstruction", "dense")}
    E.run_evaluation(cfg, out, progress=False, print_table=False, plots=False)
    assert json.loads((out / "DONE.json").read_text())["command"] == "chada evaluate"
