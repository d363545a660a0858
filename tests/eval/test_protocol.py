"""End-to-end `chada evaluate` on synthetic embedding files written here, and the report files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from chada.cli import main
from chada.encode.store import EmbeddingSet, load_embeddings
from chada.eval.config import infer_family
from chada.tasks.evaluation import normalize_config, run_evaluation

N, K = 160, 4


def _write(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(K), N // K)
    ids = np.array([f"im{i:03d}" for i in range(N)])
    split = np.where(np.arange(N) % 4 == 0, "test", "train")
    count = rng.poisson(20, N).astype(float)
    target = y + 0.3 * rng.normal(size=N)
    meta = pd.DataFrame(
        {"image_id": ids, "dataset": "toy", "label": [f"c{v}" for v in y], "split": split, "target": target}
    )
    centers = 3 * rng.normal(size=(K, 8))

    def emb(signal, d, name, info, shuffle=False):
        x = rng.normal(size=(N, d))
        x[:, :8] += signal * centers[y]
        x[:, 8] += 0.5 * count
        order = rng.permutation(N) if shuffle else np.arange(N)  # rows in another order: aligned by image_id
        es = EmbeddingSet(
            {"cls": x[order, : d // 2], "all": x[order]}, meta.iloc[order].reset_index(drop=True), info
        )
        path = tmp_path / f"{name}.npz"
        es.save(path)
        return path

    paths = {
        "chada": emb(1.0, 32, "chada", {"model": "chada_vit_test"}),
        "chada_untrained": emb(
            0.1, 32, "chada_untrained", {"model": "chada_vit_test", "untrained": True}, True
        ),
        "handmade": emb(0.5, 20, "handmade", {"kind": "handmade"}),
    }
    sm = meta.copy()
    sm["cell_count"] = count
    sm["mean_intensity"] = rng.random(N)
    EmbeddingSet({"shortcut": np.stack([count, sm["mean_intensity"]], 1)}, sm, {"kind": "shortcut"}).save(
        tmp_path / "shortcut.npz"
    )
    return paths


def test_family_inference():
    assert infer_family("x", {"untrained": True}) == "untrained"
    assert infer_family("chada_random_init") == "untrained"
    assert infer_family("hand", {"kind": "handmade"}) == "handmade"
    assert infer_family("chada", {}, explicit="handmade") == "handmade"
    assert infer_family("chada_vit") == "learned"
    # what `chada embed` writes (chada.encode.embed)
    assert infer_family("m", {"source": "random_init", "seed": 0}) == "untrained"
    assert infer_family("m", {"source": "handmade", "arch": "handmade"}) == "handmade"
    assert infer_family("m", {"source": "pretrained"}) == "learned"


def test_evaluate_config_end_to_end(tmp_path):
    paths = _write(tmp_path)
    cfg = {
        "seeds": 3,
        "models": {k: str(v.name) for k, v in paths.items()},
        "tasks": [
            {"name": "cls", "label_column": "label"},
            {"name": "cls_nosplit", "label_column": "label", "test_fraction": 0.25, "feature_kinds": ["cls"]},
            {"name": "reg", "label_column": "target", "kind": "regression", "fractions": [0.1, 1.0]},
        ],
        "diagnostics": {"shortcut_features": "shortcut.npz"},
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    rc = main(["evaluate", "--config", str(tmp_path / "eval.yaml"), "--out", str(out), "--quiet"])
    assert rc == 0
    for name in ("results.md", "results.json", "results_long.csv", "results_summary.csv", "diagnostics.csv",
                 "fig1_cls.png", "fig1_cls.svg", "fig4_all.png", "fig4_all.svg"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    long = pd.read_csv(out / "results_long.csv")
    # every task x model x feature x fraction x seed x 3 metrics
    expected = 3 * (3 * 2 * 3 * 3) + 3 * (3 * 1 * 3 * 3) + 3 * (3 * 2 * 2 * 3)
    assert len(long) == expected
    assert set(long.family) == {"learned", "untrained", "handmade"}
    s = long[(long.task == "cls") & (long.metric == "linear_top1") & (long.fraction == 1.0)]
    acc = s.groupby("model").value.mean()
    assert acc["chada"] > 0.95 > acc["chada_untrained"]
    lowdata = long[(long.task == "cls") & (long.fraction == 0.01)]
    assert (lowdata.n_train == K).all()  # one training image per class at 1 %
    assert (
        long[(long.task == "cls_nosplit") & (long.fraction == 1.0)].groupby("seed").value.mean().nunique() > 1
    )

    diag = pd.read_csv(out / "diagnostics.csv")
    assert {
        "ratio",
        "chance_normalised",
        "cka",
        "participation_ratio",
        "shortcut_r2_pcs",
        "shortcut_probe_r2",
    } <= set(diag.measure)
    assert set(diag[diag.measure == "ratio"].model) == {"chada"}
    cka = diag[(diag.measure == "cka") & (diag.other == "chada_untrained")]
    assert len(cka) == 2 and cka.value.between(0, 1).all()
    probe = diag[
        (diag.measure == "shortcut_probe_r2") & (diag.other == "cell_count") & (diag.model == "chada")
    ]
    assert probe.value.max() > 0.5  # the count was planted in one embedding dimension
    md = (out / "results.md").read_text()
    assert "chada_untrained" in md and "±" in md and "Linear CKA" in md
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert {"mean", "std", "n"} <= set(summary[0])
    # paired comparisons: chada (linear probe > 95 %) against its untrained copy, image by image
    comp = pd.read_csv(out / "comparisons.csv", dtype={"seed": str})
    assert len(json.loads((out / "results.json").read_text())["comparisons"]) == len(comp)
    assert set(comp.role) == {"untrained", "handmade"} and set(comp.model) == {"chada"}
    c = comp[(comp.task == "cls") & (comp.metric == "linear_top1") & (comp.fraction == 1.0) & (comp.seed == "all")
             & (comp.role == "untrained") & (comp.feature == "cls")].iloc[0]  # fmt: skip
    assert c.n == 160 and c.difference > 0.3 and c.low > 0 and c.p_adj < 0.01 and c.n_comparisons == 3
    assert c.n_a_only > c.n_b_only
    assert "Paired comparisons" in md and (out / "paired_untrained_cls.png").stat().st_size > 0


def test_evaluate_quick_form(tmp_path, capsys):
    paths = _write(tmp_path)
    out = tmp_path / "quick"
    rc = main(["evaluate", "--embeddings", *map(str, paths.values()), "--label-column", "label", "--seeds", "2",
               "--fractions", "0.1", "1.0", "--out", str(out), "--quiet", "--no-plots"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "chada_untrained" in printed and "5-fold CV over all 160 images, 2 repeats" in printed
    long = pd.read_csv(out / "results_long.csv")
    assert set(long.model) == set(paths) and set(long.seed) == {0, 1}
    assert not list(out.glob("*.png"))


def test_run_evaluation_api_and_errors(tmp_path, capsys):
    paths = _write(tmp_path)
    cfg = {"seeds": 1, "fractions": [1.0], "models": {"chada": str(paths["chada"])},
           "tasks": [{"label_column": "label"}]}  # fmt: skip
    res = run_evaluation(cfg, tmp_path / "o", progress=False, print_table=False, write=False)
    assert set(res.metric) == {"linear_top1", "knn_top1", "nn1_top1"}
    assert res.attrs["diagnostics"] is not None
    with pytest.raises(ValueError, match="no tasks"):
        normalize_config({"models": {}})
    bad = dict(cfg, tasks=[{"label_column": "nope"}])
    with pytest.raises(ValueError, match="nope"):
        run_evaluation(bad, tmp_path / "o", progress=False, print_table=False, write=False)
    assert main(["evaluate", "--config", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "list.yaml").write_text("- models\n- tasks\n")  # a YAML list, not a mapping
    assert main(["evaluate", "--config", str(tmp_path / "list.yaml")]) == 2
    assert "list.yaml: an evaluation config must be a mapping" in capsys.readouterr().err
    (tmp_path / "tasks.yaml").write_text(
        "models: {a: a.npz}\ntasks: [label]\n"
    )  # a task that is not a mapping
    assert main(["evaluate", "--config", str(tmp_path / "tasks.yaml")]) == 2
    assert "task 0: expected a mapping" in capsys.readouterr().err
    assert len(load_embeddings(paths["chada"])) == N
