"""Each importer on small files written in its dataset's own published layout."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from chada.data.importers import ImportLayoutError, import_dataset
from chada.data.manifest import check_manifest, load_manifest, read_row_image


def _ok(manifest):
    problems = check_manifest(manifest)
    assert problems == [], "\n".join(map(str, problems))
    return load_manifest(manifest)


# ------------------------------------------------------------------------------- BloodMNIST
def _bloodmnist(path, n=(5, 2, 3), drop=None):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 255, (k, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 8).reshape(-1, 1)
    if drop:
        arrays.pop(drop)
    np.savez(path, **arrays)
    return arrays


def test_bloodmnist(tmp_path):
    arrays = _bloodmnist(tmp_path / "bloodmnist.npz")
    df = _ok(import_dataset("bloodmnist", tmp_path, tmp_path / "out"))
    assert len(df) == 10
    assert df["split"].value_counts().to_dict() == {"train": 5, "test": 3, "val": 2}
    assert set(df["channel_names"]) == {"red;green;blue"}
    row = df[df["image_id"] == "bloodmnist_val_00001"].iloc[0]
    assert int(row["label"]) == 1 and row["label_name"] == "eosinophil"
    img = read_row_image(row, tmp_path / "out")
    np.testing.assert_array_equal(img, np.moveaxis(arrays["val_images"][1], -1, 0).astype(np.float32))


def test_bloodmnist_missing_key(tmp_path):
    _bloodmnist(tmp_path / "bloodmnist.npz", drop="val_labels")
    with pytest.raises(ImportLayoutError, match="val_labels"):
        import_dataset("bloodmnist", tmp_path, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportLayoutError, match="bloodmnist.npz"):
        import_dataset("bloodmnist", tmp_path / "empty", tmp_path / "o2")


# --------------------------------------------------------------------------------- CYCLoPs
def _cyclops(root, classes=("ACTIN", "ER", "GOLGI"), per=4, skip=None):
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per):
            for ch in ("gfp", "rfp"):
                if skip == (c, i, ch):
                    continue
                tifffile.imwrite(
                    root / c / f"{c}_{100 + i}_{ch}.tif", rng.integers(0, 255, (16, 16), dtype=np.uint8)
                )


def test_cyclops_scan_and_split_files(tmp_path):
    src = tmp_path / "cyclops"
    _cyclops(src)
    df = _ok(import_dataset("cyclops", src, tmp_path / "a", seed=3))
    assert len(df) == 12 and set(df["label"]) == {"ACTIN", "ER", "GOLGI"}
    assert set(df["channel_names"]) == {"GFP;RFP"}
    assert df["channel_files"].iloc[0].split(";")[0].endswith("_gfp.tif")
    again = load_manifest(import_dataset("cyclops", src, tmp_path / "b", seed=3))
    assert list(again["split"]) == list(df["split"])  # seeded
    # the authors' split lists (no header: CLASS,id,channel set) take precedence
    (src / "train.csv").write_text("ACTIN,100,\"{'rfp', 'gfp'}\"\nER,101,\"{'rfp', 'gfp'}\"\n")
    (src / "val.csv").write_text("GOLGI,102,\"{'rfp', 'gfp'}\"\n")
    df = _ok(import_dataset("cyclops", src, tmp_path / "c"))
    assert list(df["split"]) == ["train", "train", "val"] and list(df["label"]) == ["ACTIN", "ER", "GOLGI"]


def test_cyclops_missing_channel(tmp_path):
    _cyclops(tmp_path / "cy", skip=("ER", 2, "rfp"))
    with pytest.raises(ImportLayoutError, match="ER_102_rfp.tif"):
        import_dataset("cyclops", tmp_path / "cy", tmp_path / "out")


# --------------------------------------------------------------------------------- BBBC048
def _bbbc048(root, stages=("G1", "G2", "Prophase"), per=3, skip=None):
    rng = np.random.default_rng(2)
    for s in stages:
        (root / s).mkdir(parents=True)
        for i in range(per):
            for ch in ("Ch3", "Ch4", "Ch6"):
                if skip == (s, i, ch):
                    continue
                Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(
                    root / s / f"{s}{i}_{ch}.ome.jpg", format="JPEG"
                )


def test_bbbc048(tmp_path):
    src = tmp_path / "bbbc048"
    _bbbc048(src)
    df = _ok(import_dataset("bbbc048", src, tmp_path / "out"))
    assert len(df) == 9 and set(df["label"]) == {"G1", "G2", "Prophase"}
    assert set(df["channel_names"]) == {"Ch3;Ch4;Ch6"}
    (src / "train.csv").write_text(
        "G10,4,\"['G1/G10_Ch3.ome.jpg', 'G1/G10_Ch4.ome.jpg', 'G1/G10_Ch6.ome.jpg']\"\n"
    )
    (src / "test.csv").write_text(
        "Prophase2,2,\"['Prophase/Prophase2_Ch3.ome.jpg', 'Prophase/Prophase2_Ch4.ome.jpg', 'Prophase/Prophase2_Ch6.ome.jpg']\"\n"
    )
    df = _ok(import_dataset("bbbc048", src, tmp_path / "out2"))
    assert list(df["split"]) == ["train", "test"] and list(df["label"]) == ["G1", "Prophase"]


def test_bbbc048_missing_channel(tmp_path):
    _bbbc048(tmp_path / "b", skip=("G2", 1, "Ch4"))
    with pytest.raises(ImportLayoutError, match=r"G2/G21_Ch4"):
        import_dataset("bbbc048", tmp_path / "b", tmp_path / "out")


# --------------------------------------------------------------------------------- BBBC021
def _bbbc021(root, drop_col=None, missing_file=False):
    rng = np.random.default_rng(3)
    plate = "Week1_22123"
    (root / "Week1" / plate).mkdir(parents=True)
    treatments = [
        ("taxol", 1.0),
        ("taxol", 1.0),
        ("docetaxel", 0.3),
        ("ALLN", 3.0),
        ("DMSO", 0.0),
        ("mystery", 5.0),
    ]
    rows = []
    for i, (comp, conc) in enumerate(treatments):
        r = {"TableNumber": 1, "ImageNumber": i + 1, "Image_Metadata_Plate_DAPI": plate,
             "Image_Metadata_Well_DAPI": f"B0{i + 1}", "Replicate": 1,
             "Image_Metadata_Compound": comp, "Image_Metadata_Concentration": conc}  # fmt: skip
        for w, ch in enumerate(("DAPI", "Tubulin", "Actin"), start=1):
            name = f"Week1_150607_B0{i + 1}_s1_w{w}.tif"
            r[f"Image_FileName_{ch}"] = name
            r[f"Image_PathName_{ch}"] = f"Week1/{plate}"
            if not (missing_file and i == 2 and ch == "Actin"):
                tifffile.imwrite(
                    root / "Week1" / plate / name, rng.integers(0, 4000, (24, 32), dtype=np.uint16)
                )
        rows.append(r)
    df = pd.DataFrame(rows)
    if drop_col:
        df = df.drop(columns=[drop_col])
    df.to_csv(root / "BBBC021_v1_image.csv", index=False)
    pd.DataFrame({"compound": ["taxol", "docetaxel", "ALLN", "DMSO"], "concentration": [1.0, 0.3, 3.0, 0.0],
                  "moa": ["Microtubule stabilizers", "Microtubule stabilizers", "Protein degradation", "DMSO"]}
                 ).to_csv(root / "BBBC021_v1_moa.csv", index=False)  # fmt: skip


def test_bbbc021(tmp_path):
    src = tmp_path / "bbbc021"
    _bbbc021(src)
    df = _ok(import_dataset("bbbc021", src, tmp_path / "out"))
    assert len(df) == 6 and set(df["channel_names"]) == {"DAPI;Actin;Tubulin"}
    first = df.iloc[0]
    assert first["channel_files"].split(";")[1].endswith("_w3.tif")  # Actin second
    assert first["reconstruction_target"] == "Actin" and first["label"] == "Microtubule stabilizers"
    assert pd.isna(df[df["compound"] == "mystery"]["label"]).all()
    # not-same-compound: the two compounds of one MoA never share a split side
    stab = df[df["moa"] == "Microtubule stabilizers"].groupby("compound")["split"].first()
    assert sorted(stab) == ["test", "train"]
    assert len(load_manifest(import_dataset("bbbc021", src, tmp_path / "o2", moa_only=True))) == 5


def test_bbbc021_errors(tmp_path):
    _bbbc021(tmp_path / "a", drop_col="Image_FileName_Actin")
    with pytest.raises(ImportLayoutError, match="Image_FileName_Actin"):
        import_dataset("bbbc021", tmp_path / "a", tmp_path / "out")
    _bbbc021(tmp_path / "b", missing_file=True)
    with pytest.raises(ImportLayoutError, match="B03_s1_w3.tif"):
        import_dataset("bbbc021", tmp_path / "b", tmp_path / "out")
    (tmp_path / "c").mkdir()
    with pytest.raises(ImportLayoutError, match="BBBC021_v1_image.csv"):
        import_dataset("bbbc021", tmp_path / "c", tmp_path / "out")


# ------------------------------------------------------------------------------------ NF-kB
def _nfkb(root, bad_col=False):
    rng = np.random.default_rng(4)
    (root / "analyse_256x256").mkdir(parents=True)
    for split, items in (
        ("train", [(0, "a.png", 1.0896), (10, "b.png", 0.42)]),
        ("val", [(20, "c.png", 0.2061)]),
    ):
        for cat, name, _ in items:
            (root / "256x256" / str(cat)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                root / "256x256" / str(cat) / name
            )
        df = pd.DataFrame(items, columns=["cat", "image_name", "ratio" if not bad_col else "value"])
        df.to_csv(root / "analyse_256x256" / f"single_ratio_images_{split}.csv", index=False)


def test_nfkb(tmp_path):
    _nfkb(tmp_path / "nfkb")
    df = _ok(import_dataset("nfkb", tmp_path / "nfkb", tmp_path / "out"))
    assert list(df["split"]) == ["train", "train", "val"]
    assert df["target"].tolist() == pytest.approx([1.0896, 0.42, 0.2061]) and "ratio" in df.columns
    assert set(df["channel_names"]) == {"red;green;blue"}
    named = load_manifest(
        import_dataset("nfkb", tmp_path / "nfkb", tmp_path / "o2", channel_names=["NFkB", "DAPI", "x"])
    )
    assert set(named["channel_names"]) == {"NFkB;DAPI;x"}


def test_nfkb_missing_column(tmp_path):
    _nfkb(tmp_path / "nfkb", bad_col=True)
    with pytest.raises(ImportLayoutError, match=r"\['ratio'\]"):
        import_dataset("nfkb", tmp_path / "nfkb", tmp_path / "out")


# ------------------------------------------------------------------------------------- Bray
def _bray(root, missing=False):
    rng = np.random.default_rng(5)
    rows = []
    for i in range(4):
        r = {"Image_Metadata_PlateID": 20585, "Image_Metadata_CPD_WELL_POSITION": f"A0{i + 1}",
             "Image_Metadata_BROAD_ID": ["BRD-1", "BRD-2", "BRD-1", "BRD-3"][i]}  # fmt: skip
        for w, ch in enumerate(("Hoechst", "ER", "Syto", "Ph_golgi", "Mito"), start=1):
            name = f"IXMtest_A0{i + 1}_s1_w{w}ABC.tif"
            r[f"Image_FileName_Orig{ch}"] = name
            r[f"Image_PathName_Orig{ch}"] = f"/nfs/broad/plates/20585-{ch}"  # a path from another machine
            if not (missing and i == 3 and ch == "Mito"):
                (root / f"20585-{ch}").mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(
                    root / f"20585-{ch}" / name, rng.integers(0, 4000, (20, 20), dtype=np.uint16)
                )
        rows.append(r)
    pd.DataFrame(rows).to_csv(root / "BBBC022_v1_image.csv", index=False)


def test_bray(tmp_path):
    _bray(tmp_path / "bray")
    df = _ok(import_dataset("bray", tmp_path / "bray", tmp_path / "out"))
    assert len(df) == 4 and set(df["channel_names"]) == {"Hoechst;ER;Syto;Ph_golgi;Mito"}
    assert list(df["label"]) == ["BRD-1", "BRD-2", "BRD-1", "BRD-3"]
    assert df.groupby("label")["split"].nunique().max() == 1  # one treatment, one split
    assert "plateid" in df.columns and "cpd_well_position" in df.columns


def test_bray_missing_file(tmp_path):
    _bray(tmp_path / "bray", missing=True)
    with pytest.raises(ImportLayoutError, match="IXMtest_A04_s1_w5ABC.tif"):
        import_dataset("bray", tmp_path / "bray", tmp_path / "out")


# -------------------------------------------------------------------------------------- CLI
def test_cli_data_import_and_alias(tmp_path, capsys):
    from chada.cli import main
    from chada.cli.import_ import register

    _bloodmnist(tmp_path / "bloodmnist.npz")
    assert (
        main(["data", "import", "bloodmnist", str(tmp_path), str(tmp_path / "o1"), "--limit", "2", "--quiet"])
        == 0
    )
    assert "6 images" in capsys.readouterr().out
    assert main(["data", "import", "cyclops", str(tmp_path / "nope"), str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import", "bloodmnist", str(tmp_path), str(tmp_path / "o3"), "--quiet"])
    assert args.func(args) == 0 and (tmp_path / "o3" / "manifest.csv").exists()


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="importers exist for"):
        import_dataset("imagenet", tmp_path, tmp_path / "out")
