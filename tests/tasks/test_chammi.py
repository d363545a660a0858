"""CHAMMI: import of the published layout, the benchmark command, and the protocol's numbers by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chada.data.importers import ImportLayoutError, import_dataset
from chada.data.importers.chammi import read_chammi_image
from chada.data.manifest import check_manifest, load_manifest, read_row_image
from chada.tasks.chammi import ANCHORS, chammi_score, evaluate_dataset, nn1_predict, score_features
from tests.helpers.chammi import N_CH, TASKS, make_chammi


def test_read_chammi_image_splits_side_by_side(tmp_path):
    chans = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(3, 2, 4)  # C=3, H=2, W=4
    Image.fromarray(np.concatenate(list(chans), axis=1)).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_chammi_image(tmp_path / "x.png", 4, 3), chans)
    with pytest.raises(ImportLayoutError, match="expected 4"):
        read_chammi_image(tmp_path / "x.png", 4, 4)
    with pytest.raises(ImportLayoutError, match="multiple of channel_width=5"):
        read_chammi_image(tmp_path / "x.png", 5)


def test_import_chammi(tmp_path):
    root = tmp_path / "CHAMMI"
    planes = make_chammi(root)
    m = import_dataset("chammi", root, tmp_path / "out")
    assert check_manifest(m) == []
    df = load_manifest(m)
    assert df.groupby("dataset").size().to_dict() == {"Allen": 12, "CP": 18, "HPA": 15}
    row = df[(df["dataset"] == "CP") & (df["chammi_row"] == 7)].iloc[0]
    np.testing.assert_array_equal(read_row_image(row, tmp_path / "out"), planes[("CP", 7)].astype(np.float32))
    assert row["channel_names"] == "CP_ch0;CP_ch1;CP_ch2;CP_ch3;CP_ch4"
    assert set(df["split"]) == {"train", "test"} and bool(row["Task_one"]) in (True, False)
    (root / "HPA" / "enriched_meta.csv").write_text("file_path,Label\nHPA/x.png,a\n")
    with pytest.raises(ImportLayoutError, match="channel_width"):
        import_dataset("chammi", root, tmp_path / "out2")


def test_nn1_by_hand():
    tr = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0]])
    y = np.array([0, 1, 2])
    te = np.array([[6.0, 0.0], [0.0, 1.0], [1.0, 2.9]])
    assert nn1_predict(tr, y, te, "l2").tolist() == [1, 0, 2]
    # cosine ignores norms: [6,0] is parallel to [10,0]; [0,1] to [0,3]; [0,0] normalises to 0 (never nearest)
    assert nn1_predict(tr, y, te, "cosine").tolist() == [1, 2, 2]
    with pytest.raises(ValueError, match="metric"):
        nn1_predict(tr, y, te, "l1")


def test_protocol_numbers_by_hand():
    # 4 train rows, Task_one = 3 rows, Task_two = 4 rows scored leave-one-group-out by "g"
    meta = pd.DataFrame({
        "Label": ["A", "B", "A", "C", "A", "B", "C", "C", "B", "A", "B"],
        "train_test_split": ["Train"] * 4 + ["Task_one"] * 3 + ["Task_two"] * 4,
        "Task_one": [False] * 4 + [True] * 3 + [False] * 4,
        "Task_two": [False] * 7 + [True] * 4,
        "g": [""] * 7 + ["p", "p", "q", "q"],
    })  # fmt: skip
    x = np.array([[0.0], [10.0], [1.0], [20.0],      # train: A B A C
                  [0.4], [9.0], [11.0],              # Task_one rows -> A, B, B  (truth A, B, C)
                  [30.0], [31.0], [12.0], [10.9]])  # Task_two rows, groups p=(C,B), q=(A,B)  # fmt: skip
    res = {r["task"]: r for r in evaluate_dataset(x, meta, leave_out=("Task_two", "g"))}
    # Task_one: predictions A, B, B vs truth A, B, C -> acc 2/3; F1: A=1, B=2/3, C=0 -> macro 5/9
    assert res["Task_one"]["accuracy"] == pytest.approx(2 / 3)
    assert res["Task_one"]["f1_macro"] == pytest.approx(5 / 9)
    # Task_two, group p held out: fit on train + q rows (12->A, 10.9->B): 30 -> C (20), 31 -> C  => C, C vs C, B
    # group q held out: fit on train + p rows (30->C, 31->B): 12 -> B (10), 10.9 -> B  => B, B vs A, B
    # all: pred C C B B, truth C B A B -> acc 2/4; F1 over the labels in the truth {A, B, C}:
    # A: tp0 -> 0; B: tp1 fp1 fn1 -> 2/(2+1+1) = 0.5; C: tp1 fp1 fn0 -> 2/3
    assert res["Task_two"]["accuracy"] == pytest.approx(0.5)
    assert res["Task_two"]["f1_macro"] == pytest.approx((0 + 0.5 + 2 / 3) / 3)
    assert res["Task_two"]["n_test"] == 4


def test_chammi_score_formula():
    f1 = {("Allen", "Task_two"): 0.3, ("HPA", "Task_two"): 0.6, ("HPA", "Task_three"): 0.3,
          ("CP", "Task_two"): 0.9, ("CP", "Task_three"): 0.6, ("CP", "Task_four"): 0.3}  # fmt: skip
    assert chammi_score(f1) == pytest.approx(0.1 + 0.15 + 0.2)
    assert chammi_score({("Allen", "Task_two"): 0.3}) is None
    dino = ANCHORS["DINOv2 ViT-S/14-reg (MorphEm README)"]
    assert chammi_score(dino) == pytest.approx(0.46 / 3 + (0.50 + 0.26) / 6 + (0.46 + 0.24 + 0.11) / 9)


def test_benchmark_cli_end_to_end(tmp_path, capsys):
    from chada.cli import main

    root = tmp_path / "CHAMMI"
    make_chammi(root)
    out = tmp_path / "bench"
    rc = main(["benchmark", "chammi", "--model", "chada_vit_test", "--root", str(root), "--out", str(out),
               "--image-size", "16", "--batch-size", "4", "--quiet"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "CHAMMI score" in text and "DINOv2" in text
    for ds, n in (("Allen", 12), ("HPA", 15), ("CP", 18)):
        f = np.load(out / "features" / ds / "chada_vit_test.npy")
        assert f.shape == (n, 32) and np.isfinite(f).all()
    res = json.loads((out / "results" / "chada_vit_test_1nn_l2_results.json").read_text())
    assert [(t["dataset"], t["task"]) for t in res["tasks"]] == [
        (d, t) for d in ("Allen", "HPA", "CP") for t in TASKS[d]
    ]
    assert res["chammi_score"] is not None and 0.0 <= res["chammi_score"] <= 1.0
    # the scorer on the written files reproduces the saved table; features are in enriched_meta row order
    table, _ = score_features(root, out / "features", "chada_vit_test.npy", "l2")
    assert table["f1_score_macro"].tolist() == pytest.approx([t["f1_score_macro"] for t in res["tasks"]])
    # score-only on planted features: Label one-hot features give a perfect 1-NN
    for ds in N_CH:
        meta = pd.read_csv(root / ds / "enriched_meta.csv")
        onehot = pd.get_dummies(meta["Label"]).to_numpy(dtype=np.float32)
        np.save(out / "features" / ds / "oracle.npy", onehot)
    assert main(["benchmark", "chammi", "--model", "oracle", "--root", str(root), "--out", str(out),
                 "--score-only", "--metric", "cosine", "--quiet"]) == 0  # fmt: skip
    oracle = json.loads((out / "results" / "oracle_1nn_cosine_results.json").read_text())
    assert all(t["accuracy"] == 1.0 and t["f1_score_macro"] == 1.0 for t in oracle["tasks"])
    assert oracle["chammi_score"] == pytest.approx(1.0)


def test_feature_files_made_another_way_are_embedded_again(tmp_path, capsys):
    """A kept feature file must have been made with the same weights, size, pool, normalisation and
    precision: a rerun with another precision (or an older file with no record) embeds again."""
    from chada.cli import main

    root = tmp_path / "CHAMMI"
    make_chammi(root, n_train=3, n_per_task=1)
    out = tmp_path / "bench"
    feat = out / "features" / "CP" / "chada_vit_test.npy"

    def run(*extra: str) -> str:
        assert main(["benchmark", "chammi", "--model", "chada_vit_test", "--root", str(root), "--out", str(out),
                     "--image-size", "16", "--datasets", "CP", *extra]) == 0  # fmt: skip
        return capsys.readouterr().err

    run("--precision", "fp32")
    made = json.loads(feat.with_suffix(".json").read_text())
    assert made["settings"]["precision"] == "fp32" and made["settings"]["image_size"] == 16
    assert len(made["settings"]["weights_sha1"]) == 40 and made["rows"] == len(np.load(feat))
    first = feat.read_bytes()
    assert "embedding again" not in run("--precision", "fp32")  # same settings: kept
    assert feat.read_bytes() == first
    err = run("--precision", "bf16")
    assert "was made with other settings (precision: 'fp32' -> 'bf16'); embedding again" in err
    assert feat.read_bytes() != first
    assert "(pool: 'cls' -> 'all')" in run("--precision", "bf16", "--pool", "all")
    feat.with_suffix(".json").unlink()
    assert "has no record of the settings it was made with; embedding again" in run("--precision", "bf16")
    assert "embedding again" not in run("--precision", "bf16", "--seed", "0")
    assert "weights_sha1" in run("--precision", "bf16", "--seed", "1")  # other random weights
