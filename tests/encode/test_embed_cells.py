"""`chada embed --objects`: single-cell crops from label images (the bundled real nuclei and a tiny plate)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from chada.cli import main
from chada.data.bundled import asset_path
from chada.data.cells import CellDataset, cells_of
from chada.data.dataset import ManifestDataset
from chada.data.objects import ObjectOptions, crop_objects, object_table

IMG, MASK = asset_path("dsb2018_img2d.tif"), asset_path("dsb2018_mask2d.tif")


def nuclei_manifest(folder, n_fields=1, labels=None):
    """Fields that are the bundled DSB2018 image with its real StarDist mask (or ``labels``)."""
    if labels is not None:
        tifffile.imwrite(folder / "labels.tif", labels)
    rows = [
        {"image_id": f"field{i}", "dataset": "dsb", "file": str(IMG), "channel_names": "DAPI",
         "objects_file": str(folder / "labels.tif") if labels is not None else str(MASK), "well": f"B0{i}"}
        for i in range(n_fields)
    ]  # fmt: skip
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def expected_objects(mask, min_area, max_area, skip_border):
    """Object ids kept by the filters, computed one object at a time (the code uses bincounts)."""
    ids = np.unique(mask)
    ids = ids[ids != 0]
    areas = ndimage.sum_labels(np.ones_like(mask), mask, ids)
    keep = []
    for lab, area in zip(ids, areas):
        if area < min_area or area > max_area:
            continue
        ys, xs = np.nonzero(mask == lab)
        if skip_border and (
            ys.min() == 0 or xs.min() == 0 or ys.max() == mask.shape[0] - 1 or xs.max() == mask.shape[1] - 1
        ):
            continue
        keep.append(int(lab))
    return keep


def test_real_nuclei_count_and_metadata(tmp_path, capsys):
    mask = tifffile.imread(MASK)
    man = nuclei_manifest(tmp_path, n_fields=2)
    out = tmp_path / "cells.parquet"
    areas = np.sort(np.bincount(mask.ravel())[1:])
    lo, hi = int(areas[areas > 0][10]), int(areas[-10])  # areas that occur: the bounds are inclusive
    argv = ["embed", "--model", "chada_vit_test", "--manifest", str(man), "--out", str(out), "--objects",
            "--crop-size", "32", "--image-size", "16", "--min-area", str(lo), "--max-area", str(hi), "--skip-border",
            "--quiet", "--precision", "fp32", "--batch-size", "64"]  # fmt: skip
    assert main(argv) == 0
    kept = expected_objects(mask, lo, hi, True)
    assert 50 < len(kept) < len(np.unique(mask)) - 1  # the filters drop some, keep most
    df = pd.read_parquet(out)  # plain pandas, no chada reader
    assert len(df) == 2 * len(kept)
    assert df["object_id"].tolist() == kept + kept
    assert df["image_id"].tolist() == ["field0"] * len(kept) + ["field1"] * len(kept)
    assert df["well"].iloc[-1] == "B01"
    com = ndimage.center_of_mass(np.ones_like(mask), mask, kept)
    np.testing.assert_allclose(
        df[["centroid_y", "centroid_x"]].to_numpy()[: len(kept)], np.array(com), atol=1e-9
    )
    np.testing.assert_array_equal(
        df["area"].to_numpy()[: len(kept)], ndimage.sum_labels(np.ones_like(mask), mask, kept)
    )
    assert [c for c in df.columns if c.startswith("chada_cls_")] == [f"chada_cls_{j:04d}" for j in range(32)]
    assert f"wrote {out}: {2 * len(kept)} cells" in capsys.readouterr().out


def test_crop_is_centred_on_the_centroid_and_masks_neighbours():
    img = tifffile.imread(IMG).astype(np.float32)[None]
    mask = tifffile.imread(MASK).astype(np.int64)
    table = object_table(mask)
    size = 31
    plain = crop_objects(img, mask, table, size)
    masked = crop_objects(img, mask, table, size, mask_neighbours=True)
    padded = np.pad(img[0], size)
    padded_mask = np.pad(mask, size)
    n_masked = 0
    for i, lab in enumerate(table["object_id"]):
        cy, cx = ndimage.center_of_mass(mask == lab)
        y, x = int(np.floor(cy + 0.5)), int(np.floor(cx + 0.5))
        window = (slice(y - 15 + size, y + 16 + size), slice(x - 15 + size, x + 16 + size))
        np.testing.assert_array_equal(plain[i, 0], padded[window])  # centre pixel (15, 15) = the centroid
        labs = padded_mask[window]
        other = (labs != 0) & (labs != lab)
        assert (masked[i, 0][other] == 0).all()
        np.testing.assert_array_equal(masked[i, 0][~other], plain[i, 0][~other])
        n_masked += int(other.any() and (plain[i, 0][other] != 0).any())
    assert n_masked > 10  # the real image has touching nuclei: masking changed many crops


def test_dataset_cuts_crops_from_the_normalised_field(tmp_path):
    man = nuclei_manifest(tmp_path)
    fields = ManifestDataset(man)
    cells = CellDataset(fields, ObjectOptions(crop_size=24, skip_border=True), size=None)
    item = cells[0]
    field, _ = fields.read(0)
    first = cells_of(item)[0]
    y = int(np.floor(item["objects"]["centroid_y"][0] + 0.5))
    x = int(np.floor(item["objects"]["centroid_x"][0] + 0.5))
    np.testing.assert_array_equal(first["image"].numpy(), field[:, y - 12 : y + 12, x - 12 : x + 12].numpy())
    assert first["image_id"] == "field0" and first["meta"]["well"] == "B00"
    resized = cells_of(CellDataset(fields, ObjectOptions(crop_size=24, skip_border=True), size=16)[0])
    assert tuple(resized[0]["image"].shape) == (1, 16, 16)
    assert len(resized) == len(cells_of(item)) == len(expected_objects(tifffile.imread(MASK), 0, 1e9, True))


@pytest.mark.parametrize(
    "case, match",
    [
        ("size", "label image is 256 x 512 px but its field is 512 x 512"),
        ("float", "label image of type float32"),
        ("negative", "negative labels"),
        ("crop", "crop size 600 px does not fit the 512 x 512 px field"),
        ("missing", "no label image in column 'objects_file'"),
        ("no_column", "no 'objects_file' column"),
    ],
)
def test_bad_label_images_are_one_line_input_errors(tmp_path, capsys, case, match):
    mask = tifffile.imread(MASK)
    labels = {
        "size": mask[:256],
        "float": mask.astype(np.float32),
        "negative": mask.astype(np.int32) - 1,
    }.get(case)
    man = nuclei_manifest(tmp_path, labels=labels)
    if case in ("missing", "no_column"):
        df = pd.read_csv(man)
        if case == "missing":
            df["objects_file"] = ""
        else:
            df = df.drop(columns="objects_file")
        df.to_csv(man, index=False)
    crop = "600" if case == "crop" else "32"
    rc = main(["embed", "--model", "chada_vit_test", "--manifest", str(man), "--out", str(tmp_path / "o.parquet"),
               "--objects", "--crop-size", crop, "--image-size", "16", "--quiet", "--precision", "fp32"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2, err
    assert match in err
    assert ("manifest.csv" if case == "no_column" else "field0") in err
    if case in ("size", "float", "negative"):
        assert "labels.tif" in err  # names the file
    assert "Traceback" not in err
    assert not (tmp_path / "o.parquet").exists()


def test_crop_options_without_objects_are_refused(tmp_path, capsys):
    man = nuclei_manifest(tmp_path)
    rc = main(["embed", "--model", "chada_vit_test", "--manifest", str(man), "--out", str(tmp_path / "o.npz"),
               "--mask-neighbours"])  # fmt: skip
    assert rc == 2 and "--mask-neighbours only applies with --objects" in capsys.readouterr().err
