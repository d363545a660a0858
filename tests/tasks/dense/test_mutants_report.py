"""The dense task's results table and files (chada.tasks.dense.report) on a hand-made outcome: the exact
Markdown (row order, numbers, intervals, size bins, paired rows) and the files written."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import chada.tasks.dense.report as R


def _table() -> pd.DataFrame:
    rows = [  # model, family, head, iou, lo, hi, dice, lo, hi
        ("zz", "mystery", "linear", 0.1, 0.0, 0.2, 0.2, 0.1, 0.3),
        ("all_background", "chance", "constant", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ("handmade", "handmade", "linear", 0.5, 0.4, 0.6, 0.6, 0.5, 0.7),
        ("vit_untrained", "untrained", "mlp", 0.3, 0.25, 0.35, 0.4, 0.35, 0.45),
        ("vit", "learned", "mlp", 0.81234, 0.8, 0.82, 0.9, 0.85, 0.95),
        ("vit", "learned", "linear", 0.7, 0.65, 0.75, 0.8, 0.75, 0.85),
        ("otsu", "chance", "threshold", 0.4, 0.3, 0.5, 0.5, 0.4, 0.6),
        ("beta", "learned", "linear", 0.6, 0.55, 0.65, 0.7, 0.65, 0.75),
    ]
    cols = ["model", "family", "head", "iou", "iou_lo", "iou_hi", "dice", "dice_lo", "dice_hi"]
    return pd.DataFrame(rows, columns=cols)


def _outcome(**kw) -> SimpleNamespace:
    sizes = pd.DataFrame([
        dict(model="vit", head="mlp", bin="<1", n_objects=3, iou=0.25),
        dict(model="vit", head="mlp", bin="1-2", n_objects=5, iou=0.5),
        dict(model="vit", head="mlp", bin=">=2", n_objects=0, iou=np.nan),
        dict(model="otsu", head="threshold", bin="1-2", n_objects=5, iou=0.75),
        dict(model="otsu", head="threshold", bin="<1", n_objects=3, iou=0.125),
    ])  # fmt: skip
    comps = pd.DataFrame([dict(model="vit", reference="handmade", feature="mlp", difference=0.1234, low=-0.05,
                               high=0.25, n_a_only=7.0, n_b_only=2.0, p=0.0123)])  # fmt: skip
    info = {"mask": "nucleus", "seeds": [0, 1], "n_test_tiles": 8, "n_train_tiles": 10, "tile": 32,
            "image_size": 64, "notes": ["note one", "note two"], "otsu": 0.12345, "patch": 16,
            "px_per_patch": 8.0, "figure_head": "mlp"}  # fmt: skip
    base = dict(task="nuc/lei", table=_table(), sizes=sizes, comparisons=comps, info=info, probes={})
    return SimpleNamespace(**(base | kw))


TABLE = """| model | family | head | IoU [95 % CI] | Dice [95 % CI] |
|---|---|---|---|---|
| beta | learned | linear | 0.600 [0.550, 0.650] | 0.700 [0.650, 0.750] |
| vit | learned | linear | 0.700 [0.650, 0.750] | 0.800 [0.750, 0.850] |
| vit | learned | mlp | 0.812 [0.800, 0.820] | 0.900 [0.850, 0.950] |
| vit_untrained | untrained | mlp | 0.300 [0.250, 0.350] | 0.400 [0.350, 0.450] |
| handmade | handmade | linear | 0.500 [0.400, 0.600] | 0.600 [0.500, 0.700] |
| all_background | chance | constant | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] |
| otsu | chance | threshold | 0.400 [0.300, 0.500] | 0.500 [0.400, 0.600] |
| zz | mystery | linear | 0.100 [0.000, 0.200] | 0.200 [0.100, 0.300] |"""

SIZES = """| model | head | <1 (n=3) | 1-2 (n=5) | >=2 (n=0) |
|---|---|---|---|---|
| vit | mlp | 0.250 | 0.500 | - |
| otsu | threshold | 0.125 | 0.750 | - |"""

PAIRED = """| model | reference | head | IoU difference [95 %] | tiles + / - | p |
|---|---|---|---|---|---|
| vit | handmade | mlp | +12.3 [-5.0, +25.0] | 7 / 2 | 0.012 |"""


def test_interval_table_order_and_numbers() -> None:
    assert R.dense_table_markdown(_outcome()) == TABLE


def test_section_text() -> None:
    text = R.dense_markdown(_outcome())
    assert text == "\n".join([
        "### nuc/lei (dense; mask `nucleus`; pooled test IoU / Dice, mean over 2 probe seeds; 95 % bootstrap "
        "interval over the 8 test tiles; chance (all background) 0)\n",
        "- note one\n- note two",
        "- tiles of 32 px, model input 64 px; 10 train / 8 test tiles; Otsu threshold 0.123",
        "", TABLE, "",
        "Paired IoU differences on the same test tiles (x 100; tiles better / worse; bootstrap p; Holm over the "
        "dense tasks in `comparisons.csv`):", "", PAIRED, "",
        "Mean per-object IoU by object diameter, in patches (8 px of the tile each); n = objects in the test set:",
        "", SIZES,
    ]) + "\n"  # fmt: skip


def test_section_without_patches_pairs_sizes_or_otsu() -> None:
    info = _outcome().info | {"patch": None, "otsu": None, "notes": []}
    del info["seeds"], info["mask"]
    text = R.dense_markdown(_outcome(info=info, comparisons=pd.DataFrame()))
    assert text.startswith(
        "### nuc/lei (dense; mask `None`; pooled test IoU / Dice, mean over 0 probe seeds;"
    )
    assert "- tiles of 32 px, model input 64 px; 10 train / 8 test tiles\n" in text and "Otsu" not in text
    assert "by object diameter, in pixels; n = objects" in text and "Paired" not in text
    text = R.dense_markdown(_outcome(info=info, comparisons=None, sizes=pd.DataFrame()))
    assert "Paired" not in text and "Mean per-object" not in text and text.endswith(TABLE + "\n")
    assert "Mean per-object" not in R.dense_markdown(_outcome(sizes=None))
    no_notes = _outcome().info
    del no_notes["notes"]
    assert "- tiles of 32 px" in R.dense_markdown(_outcome(info=no_notes))
    no_attr = _outcome()
    del no_attr.comparisons
    assert "Paired" not in R.dense_markdown(no_attr)


def test_size_bins_keep_their_first_seen_order_and_count() -> None:
    sizes = pd.DataFrame([dict(model="m", head="h", bin="b2", n_objects=4, iou=0.5),
                          dict(model="m", head="h", bin="a1", n_objects=2, iou=1.0),
                          dict(model="n", head="h", bin="a1", n_objects=9, iou=0.0)])  # fmt: skip
    text = R._sizes_markdown(_outcome(sizes=sizes))
    assert text.splitlines()[0] == "| model | head | b2 (n=4) | a1 (n=2) |"
    assert text.splitlines()[2:] == ["| m | h | 0.500 | 1.000 |", "| n | h | - | 0.000 |"]


def test_files_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved, plotted = [], []

    class Probe:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def save(self, stem: Path) -> tuple[Path, Path]:
            saved.append((self.tag, stem))
            st, js = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
            return st, js

    def plot(outcome_, out, best):
        assert outcome_ is outcome
        plotted.append((out, best))
        return out / "dense_x.png"

    monkeypatch.setattr(R, "plot_dense_examples", plot)
    out = tmp_path / "new" / "folder"
    outcome = _outcome(probes={"vit_mlp": Probe("a"), "hand/made_linear": Probe("b")})
    files = R.write_dense_outputs(outcome, out)
    name = "nuc_lei"
    assert (out / f"dense_{name}.md").read_text() == R.dense_markdown(outcome)
    csv = pd.read_csv(out / f"dense_{name}.csv")
    assert csv.model.tolist() == [
        "beta",
        "vit",
        "vit",
        "vit_untrained",
        "handmade",
        "all_background",
        "otsu",
        "zz",
    ]
    assert pd.read_csv(out / f"dense_{name}_sizes.csv").shape == (5, 5)
    assert (out / f"dense_{name}.csv").read_text().splitlines()[0] == ",".join(_table().columns)
    assert (out / f"dense_{name}_sizes.csv").read_text().splitlines()[0] == "model,head,bin,n_objects,iou"
    assert files["dense_x.png"] == out / "dense_x.png"
    assert saved == [
        ("a", out / "probes" / name / "vit_mlp"),
        ("b", out / "probes" / name / "hand_made_linear"),
    ]
    assert plotted == [(out, {"all_background": 0.0, "vit_untrained": 0.3, "vit": 0.81234, "otsu": 0.4})]
    assert set(files) == {f"dense_{name}.md", f"dense_{name}.csv", f"dense_{name}_sizes.csv", "vit_mlp.safetensors",
                          "hand_made_linear.safetensors", "dense_x.png"}  # fmt: skip
    assert files["vit_mlp.safetensors"] == out / "probes" / name / "vit_mlp.safetensors"
    assert files[f"dense_{name}.md"] == out / f"dense_{name}.md"
    plotted.clear()
    outcome = _outcome()
    R.write_dense_outputs(outcome, out)  # the folder exists already: written again
    plotted.clear()
    files = R.write_dense_outputs(_outcome(), tmp_path / "np", plots=False)
    assert plotted == [] and "dense_x.png" not in files
    monkeypatch.setattr(R, "plot_dense_examples", lambda *a: None)
    assert "dense_x.png" not in R.write_dense_outputs(_outcome(), tmp_path / "none")
