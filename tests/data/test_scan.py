"""``chada data scan``: a manifest from a plate folder; every error class exits 2 naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from chada.cli import main
from chada.data.manifest import load_manifest, row_paths
from chada.data.plate_synth import PlateSpec, generate_plate
from chada.data.platemap import normalize_well
from chada.data.scan import Matcher, scan_folder

SPEC = PlateSpec(n_plates=2, n_wells=5, n_sites=2, n_channels=3, size=48, cells=(2, 4), n_moas=1,
                 compounds_per_moa=1, n_inactive=1, doses=(1.0,))  # fmt: skip
PATTERN = "{plate}/{well}_s{site}_w{channel}.tif"
OBJECTS = "{plate}/{well}_s{site}_cp_masks.tif"
NAMES = "w1=DAPI,w2=Tubulin,w3=Actin"


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plate")
    generate_plate(out, SPEC)
    return out


@pytest.fixture()
def copy(plate, tmp_path) -> Path:
    """A private copy of the plate, to damage."""
    return Path(shutil.copytree(plate, tmp_path / "plate"))


def _scan(root: Path, out: Path, *extra: str, pattern: str = PATTERN) -> int:
    return main(["data", "scan", str(root / "images"), "--pattern", pattern, "--channel-names", NAMES,
                 "--objects-pattern", OBJECTS, "--platemap", str(root / "platemap.csv"), "--out", str(out), *extra])  # fmt: skip


def test_round_trip_on_a_generated_plate(plate, tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert _scan(plate, out) == 0
    df = load_manifest(out)
    truth = json.loads((plate / "ground_truth.json").read_text())
    assert len(df) == SPEC.n_plates * SPEC.n_wells * SPEC.n_sites
    assert df["image_id"].is_unique
    assert set(df["channel_names"]) == {"DAPI;Tubulin;Actin"}
    for col in ("plate", "well", "site", "compound", "dose", "moa", "control_type", "objects_file"):
        assert col in df.columns, col
    pm = pd.read_csv(plate / "platemap.csv", dtype=str)
    merged = df.merge(pm, on=["plate", "well"], suffixes=("", "_pm"))
    assert len(merged) == len(df) and (merged["compound"] == merged["compound_pm"]).all()
    for row in df.to_dict("records"):
        _, files = row_paths(row, out.parent)
        stem = f"{row['plate']}/{row['well']}_s{row['site']}"
        assert [f.name for f in files] == [f"{row['well']}_s{row['site']}_w{c}.tif" for c in (1, 2, 3)]
        labels = tifffile.imread(out.parent / row["objects_file"])
        assert Path(row["objects_file"]).as_posix().endswith(f"{stem}_cp_masks.tif")
        assert labels.max() == truth["cells"][stem]
    assert main(["data", "check", str(out)]) == 0
    assert "OK (20 images)" in capsys.readouterr().out


def test_channel_keys_with_or_without_the_letters_and_the_stain_as_field(plate, tmp_path):
    masks = ("*_cp_masks.tif",)  # without --objects-pattern the label images would be unmatched files
    a = scan_folder(plate / "images", PATTERN, channel_names="1=DAPI,2=Tubulin,3=Actin", ignore=masks).table
    b = scan_folder(plate / "images", PATTERN, channel_names=NAMES, ignore=masks).table
    pd.testing.assert_frame_equal(a, b)
    # the channel order follows --channel-names, not the file names
    c = scan_folder(
        plate / "images", PATTERN, channel_names="w2=Tubulin,w3=Actin,w1=DAPI", ignore=masks
    ).table
    assert c["channel_names"].iloc[0] == "Tubulin;Actin;DAPI"
    assert [f[-6:] for f in c["channel_files"].iloc[0].split(";")] == ["w2.tif", "w3.tif", "w1.tif"]
    # without names the values are the channel names, in natural order
    d = scan_folder(plate / "images", "{plate}/{well}_s{site}_{channel}.tif", ignore=masks)
    assert d.channel_names == ["w1", "w2", "w3"]


def test_regex_mode_gives_the_same_manifest(plate):
    regex = r"(?P<plate>[^/]+)/(?P<well>[A-Z]\d+)_s(?P<site>\d+)_w(?P<channel>\d)\.tif"
    objects = r"(?P<plate>[^/]+)/(?P<well>[A-Z]\d+)_s(?P<site>\d+)_cp_masks\.tif"
    a = scan_folder(plate / "images", regex, regex=True, channel_names=NAMES, objects_pattern=objects,
                    platemap=plate / "platemap.csv", base=plate)  # fmt: skip
    b = scan_folder(plate / "images", PATTERN, channel_names=NAMES, objects_pattern=OBJECTS,
                    platemap=plate / "platemap.csv", base=plate)  # fmt: skip
    pd.testing.assert_frame_equal(a.table, b.table)


def test_metadata_prefix_and_parquet(plate, tmp_path):
    out = tmp_path / "m.parquet"
    assert _scan(plate, out, "--metadata-prefix", "Metadata_") == 0
    df = load_manifest(out)
    for col in (
        "Metadata_plate",
        "Metadata_well",
        "Metadata_site",
        "Metadata_compound",
        "Metadata_control_type",
    ):
        assert col in df.columns, col
    assert "plate" not in df.columns and "objects_file" in df.columns and "image_id" in df.columns
    assert main(["data", "check", str(out)]) == 0


def test_unmatched_image_files_are_listed_other_files_skipped(copy, tmp_path, capsys):
    tifffile.imwrite(copy / "images" / "P1" / "overview.tif", np.zeros((4, 4), np.uint16))
    (copy / "images" / "P1" / "notes.txt").write_text("not an image")
    out = tmp_path / "m.csv"
    assert _scan(copy, out) == 2
    err = capsys.readouterr().err
    assert "1 image file(s) match no pattern: P1/overview.tif" in err and "nothing written" in err
    assert not out.exists()
    assert _scan(copy, out, "--ignore", "overview.*") == 0
    assert "skipped 1 file(s): not an image file" in capsys.readouterr().out


def test_missing_channel_and_allow_incomplete(copy, tmp_path, capsys):
    (copy / "images" / "P2" / "A03_s2_w2.tif").unlink()
    out = tmp_path / "m.csv"
    assert _scan(copy, out) == 2
    err = capsys.readouterr().err
    assert "1 image(s) missing a channel: P2/A03/2 (no Tubulin)" in err
    assert not out.exists()
    assert _scan(copy, out, "--allow-incomplete") == 0
    assert "dropped 1 image(s) missing a channel" in capsys.readouterr().out
    df = load_manifest(out)
    assert len(df) == SPEC.n_plates * SPEC.n_wells * SPEC.n_sites - 1
    assert "P2_A03_2" not in set(df["image_id"]) and "P2_A03_1" in set(df["image_id"])


def test_wells_absent_from_the_platemap(copy, tmp_path, capsys):
    pm = pd.read_csv(copy / "platemap.csv", dtype=str)
    pm = pm[~((pm["plate"] == "P1") & (pm["well"] == "A04"))]
    pm["well"] = pm["well"].str.replace("A0", "a", regex=False)  # "a1": normalised to A01 before the join
    pm.to_csv(copy / "platemap.csv", index=False)
    out = tmp_path / "m.csv"
    assert _scan(copy, out) == 2
    err = capsys.readouterr().err
    assert "1 well(s) absent from the platemap" in err and "P1/A04" in err and "(2 image(s))" in err
    (copy / "images" / "P2" / "A05_s1_w3.tif").unlink()  # and one image of another well misses a channel
    assert _scan(copy, out, "--allow-incomplete") == 0
    printed = capsys.readouterr().out
    assert "dropped 2 image(s) with a well absent from the platemap" in printed
    assert "dropped 1 image(s) missing a channel" in printed
    assert len(load_manifest(out)) == SPEC.n_plates * SPEC.n_wells * SPEC.n_sites - 3


def test_duplicate_keys_unknown_channels_and_label_images(copy, tmp_path, capsys):
    out = tmp_path / "m.csv"
    # a pattern that ignores the plate folder: every image twice
    assert main(["data", "scan", str(copy / "images"), "--pattern", "{}/{well}_s{site}_w{channel}.tif", "--allow-incomplete",
                 "--objects-pattern", "{}/{well}_s{site}_cp_masks.tif", "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "duplicate key(s)" in err and "P1/A01_s1_w1.tif and P2/A01_s1_w1.tif" in err
    assert "--allow-incomplete keeps" not in err  # dropping images cannot fix a wrong pattern
    assert main(["data", "scan", str(copy / "images"), "--pattern", PATTERN, "--channel-names", "w1=DAPI,w2=Tubulin",
                 "--ignore", "*_cp_masks.tif", "--out", str(out)]) == 2  # fmt: skip
    assert "channel value(s) ['3'] not named (or named twice) in --channel-names" in capsys.readouterr().err
    (copy / "images" / "P1" / "A02_s1_cp_masks.tif").unlink()
    shutil.copy(
        copy / "images" / "P1" / "A01_s1_cp_masks.tif", copy / "images" / "P1" / "Z09_s1_cp_masks.tif"
    )
    assert _scan(copy, out) == 2
    err = capsys.readouterr().err
    assert "1 image(s) without a label image: P1/A02/1" in err
    assert "1 label image(s) without an image: P1/Z09/1" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pattern", "{plate}/{well}_s{site}.tif"], "has no {channel} field"),
        (
            ["--pattern", PATTERN, "--objects-pattern", "{plate}/{well}_cp_masks.tif"],
            "must be the image key's fields",
        ),
        (["--pattern", PATTERN, "--channel-names", "w1"], "VALUE=NAME pairs"),
        (["--regex", "(?P<channel>[0-9"], "not a valid regular expression"),
        (["--pattern", "{well}_s{site}_w{channel}.tif"], "no file matches --pattern"),
    ],
)
def test_bad_options_are_one_line_errors(plate, tmp_path, capsys, args, message):
    assert main(["data", "scan", str(plate / "images"), *args, "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_platemaps(plate, tmp_path, capsys):
    no_well = tmp_path / "no_well.csv"
    no_well.write_text("plate,position,compound\nP1,A01,DMSO\n")
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b'\xff\xfe\x00"unterminated\n\x00\x01')
    for path, message in (
        (no_well, "no well column"),
        (garbage, "not a readable CSV"),
        (tmp_path / "absent.csv", "not found"),
    ):
        rc = main(
            [
                "data",
                "scan",
                str(plate / "images"),
                "--pattern",
                PATTERN,
                "--platemap",
                str(path),
                "--out",
                str(tmp_path / "m.csv"),
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and message in err and str(path.name) in err, err


def test_patterns_do_not_span_folders_and_wells_normalise():
    m = Matcher("{well}_s{site}_w{channel}.tif")
    assert m.match("P1/B03_s1_w1.tif") is None
    assert m.match("B03_s1_w1.TIF") == {"well": "B03", "site": "1", "channel": "1"}
    assert [normalize_well(w) for w in ("B3", "b03", "B003", "r02c03", "AF48", "x")] == [
        "B03",
        "B03",
        "B03",
        "B03",
        "AF48",
        "x",
    ]


def test_walk_skips_hidden_entries_keeps_zarr_folders_and_sorts_naturally(tmp_path):
    from chada.data.scan_patterns import natural_key, walk_files

    for rel in ("s10.tif", "s2.tif", ".hidden.tif", ".cache/x.tif", "img.zarr/0/.zarray", "sub/s1.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert walk_files(tmp_path) == ["img.zarr", "s2.tif", "s10.tif", "sub/s1.tif"]
    assert sorted(["B10", "B2", "A11"], key=natural_key) == ["A11", "B2", "B10"]


def test_chada_embed_takes_the_scanned_manifest_unchanged(plate, tmp_path):
    out = tmp_path / "m.csv"
    assert _scan(plate, out) == 0
    emb = tmp_path / "emb.npz"
    assert (
        main(["embed", "--model", "chada_vit_test", "--manifest", str(out), "--out", str(emb), "--quiet"])
        == 0
    )
    from chada.encode.store import load_embeddings

    res = load_embeddings(emb)
    assert res.features["cls"].shape[0] == len(load_manifest(out))
    assert {"plate", "well", "compound", "objects_file"} <= set(res.meta.columns), res.meta.columns


def test_an_output_of_the_wrong_kind_is_refused(plate, tmp_path, capsys):
    (tmp_path / "m.csv").mkdir()
    assert _scan(plate, tmp_path / "m.csv") == 2
    assert "is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["data", "synth-plate", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
