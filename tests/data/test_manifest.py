"""Manifest loading (CSV + Parquet), the validator (every bad row reported), and the data CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from chada.cli import main
from chada.data.manifest import check_manifest, load_manifest, write_manifest


def _broken_manifest(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    good = rng.random((2, 16, 16)).astype(np.float32)
    tifffile.imwrite(d / "good.tif", good)
    tifffile.imwrite(d / "c0.tif", good[0])
    tifffile.imwrite(d / "c1.tif", good[1])
    tifffile.imwrite(d / "c_small.tif", good[1, :8, :8])
    tifffile.imwrite(d / "eleven.tif", rng.random((11, 8, 8)).astype(np.float32))
    nan = good.copy()
    nan[1, 3, 3] = np.nan
    tifffile.imwrite(d / "nan.tif", nan)
    (d / "corrupt.png").write_bytes(b"\x89PNG garbage")
    Image.fromarray((good[0] * 255).astype(np.uint8)).save(d / "ok.png")
    rows = [
        # 1: good multi-channel file
        dict(
            image_id="a",
            dataset="s1",
            file="imgs/good.tif",
            channel_files=None,
            channel_names="DAPI;Actin",
            split="train",
            label="x",
        ),
        # 2: good per-channel files
        dict(
            image_id="b",
            dataset="s1",
            file=None,
            channel_files="imgs/c0.tif;imgs/c1.tif",
            channel_names="DAPI;Actin",
            split="val",
            label="y",
        ),
        # 3: missing file
        dict(
            image_id="c",
            dataset="s1",
            file="imgs/nope.tif",
            channel_files=None,
            channel_names="DAPI",
            split="train",
            label=None,
        ),
        # 4: unreadable image
        dict(
            image_id="d",
            dataset="s2",
            file="imgs/corrupt.png",
            channel_files=None,
            channel_names="DAPI",
            split="train",
            label=None,
        ),
        # 5: too many channels (11 > 10)
        dict(
            image_id="e",
            dataset="s2",
            file="imgs/eleven.tif",
            channel_files=None,
            channel_names=";".join(f"c{i}" for i in range(11)),
            split="train",
            label=None,
        ),
        # 6: channel_names count mismatch
        dict(
            image_id="f",
            dataset="s2",
            file="imgs/good.tif",
            channel_files=None,
            channel_names="DAPI",
            split="test",
            label=None,
        ),
        # 7: inconsistent H/W between channel files
        dict(
            image_id="g",
            dataset="s2",
            file=None,
            channel_files="imgs/c0.tif;imgs/c_small.tif",
            channel_names="A;B",
            split="train",
            label=None,
        ),
        # 8: duplicate id of row 1
        dict(
            image_id="a",
            dataset="s3",
            file="imgs/ok.png",
            channel_files=None,
            channel_names="DAPI",
            split="train",
            label=None,
        ),
        # 9: NaN pixels
        dict(
            image_id="h",
            dataset="s3",
            file="imgs/nan.tif",
            channel_files=None,
            channel_names="A;B",
            split="train",
            label=None,
        ),
        # 10: no file column filled, bad split
        dict(
            image_id="i",
            dataset="s3",
            file=None,
            channel_files=None,
            channel_names="A",
            split="training",
            label=None,
        ),
        # 11: good
        dict(
            image_id="j",
            dataset="s3",
            file="imgs/ok.png",
            channel_files=None,
            channel_names="DAPI",
            split="train",
            label=None,
        ),
    ]
    return write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")


def test_check_reports_every_bad_row(tmp_path):
    path = _broken_manifest(tmp_path)
    problems = check_manifest(path)
    by_row: dict[int, set[str]] = {}
    for p in problems:
        by_row.setdefault(p.row, set()).add(p.kind)
    assert by_row[3] == {"missing_file"}
    assert by_row[4] == {"unreadable"}
    assert by_row[5] == {"channel_count", "channel_name_count"} or "channel_count" in by_row[5]
    assert by_row[6] == {"channel_name_count"}
    assert by_row[7] == {"inconsistent_size"}
    assert "duplicate_id" in by_row[1] and "duplicate_id" in by_row[8]
    assert by_row[9] == {"nan_pixels"}
    assert by_row[10] == {"no_file", "bad_split"}
    assert 2 not in by_row and 11 not in by_row
    assert all(p.row is not None for p in problems)
    # A Parquet copy gives the same report.
    pq = write_manifest(load_manifest(path), tmp_path / "manifest.parquet")
    assert [(p.row, p.kind) for p in check_manifest(pq)] == [(p.row, p.kind) for p in problems]


def test_cli_check_nonzero_and_names_rows(tmp_path, capsys):
    path = _broken_manifest(tmp_path)
    rc = main(["data", "check", str(path)])
    err = capsys.readouterr().err
    assert rc == 2
    for r in (1, 3, 4, 5, 6, 7, 8, 9, 10):
        assert f"row {r} " in err, r
    assert "row 2 " not in err and "row 11 " not in err


def test_cli_check_ok_summary_and_plot(tmp_path, capsys):
    from chada.data.synth import generate

    m = generate(tmp_path / "syn", n_per_assay=6, size=32, seed=1)
    assert main(["data", "check", str(m)]) == 0
    plot = tmp_path / "summary.png"
    assert main(["data", "summary", str(m), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "coloc_5ch" in out and "32 x 32" in out
    assert plot.stat().st_size > 1000

    from chada.cli.data import summarize_manifest

    s = summarize_manifest(m)
    assert s["channel_counts"] == {1: 6, 2: 6, 3: 6, 5: 6}
    assert s["per_dataset"]["markers_2ch"] == 6


def test_load_manifest_keeps_string_ids(tmp_path):
    pd.DataFrame({"image_id": ["007"], "dataset": ["d"], "file": ["x.tif"], "channel_names": ["A"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    assert load_manifest(tmp_path / "m.csv")["image_id"].iloc[0] == "007"


def test_load_manifest_refuses_unusable_files_naming_them(tmp_path):
    import pytest

    from chada.data.manifest import ManifestError, validate_columns

    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ManifestError, match="dir.csv: is a directory"):
        load_manifest(tmp_path / "dir.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="empty.csv: not a readable CSV"):
        load_manifest(tmp_path / "empty.csv")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(ManifestError, match="must be .csv"):
        load_manifest(tmp_path / "m.xlsx")
    (tmp_path / "h.csv").write_text("image_id,dataset,file,channel_names\n")
    with pytest.raises(ManifestError, match="0 images"):
        validate_columns(load_manifest(tmp_path / "h.csv"), tmp_path / "h.csv")
    validate_columns(load_manifest(tmp_path / "h.csv"), allow_empty=True)
    with pytest.raises(ManifestError, match="channel_names"):
        validate_columns(pd.DataFrame({"image_id": ["a"], "dataset": ["d"], "file": ["f"]}))
    assert [p.kind for p in check_manifest(tmp_path / "h.csv")] == ["empty"]


def test_duplicate_channel_names_and_nan_policy_in_check(tmp_path):
    good = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    tifffile.imwrite(tmp_path / "g.tif", good)
    nan = good.copy()
    nan[0, 1, 1] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", nan)
    rows = [
        dict(image_id="a", dataset="s", file="g.tif", channel_names="DAPI;Dapi"),
        dict(image_id="b", dataset="s", file="n.tif", channel_names="DAPI;Actin"),
    ]
    path = write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")
    problems = check_manifest(path)
    assert [(p.row, p.kind, p.severity) for p in problems] == [
        (1, "channel_names", "error"),
        (2, "nan_pixels", "error"),
    ]
    assert "'Dapi' appears twice" in problems[0].message and "channel 0 'DAPI': 1 NaN" in problems[1].message
    relaxed = check_manifest(path, nan_policy="replace")
    assert [(p.row, p.severity) for p in relaxed] == [(1, "error"), (2, "warning")]
