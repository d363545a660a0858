"""The cp_measure feature kind on the bundled real nuclei image and its real mask."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from chada.cli import main
from chada.errors import InputError
from chada.features.cp_measure_kind import cp_measure_objects
from chada.profiles.io import read_feature_table
from tests.helpers import REPO

ASSETS = REPO / "src" / "chada" / "assets"


@pytest.fixture(scope="module")
def nuclei():
    return tifffile.imread(ASSETS / "dsb2018_img2d.tif"), tifffile.imread(ASSETS / "dsb2018_mask2d.tif")


@pytest.fixture(scope="module")
def measured(nuclei):
    img, mask = nuclei
    return cp_measure_objects(img, mask, ["DNA"], "Nuclei")


def test_one_row_per_object_and_area_is_the_pixel_count(nuclei, measured):
    img, mask = nuclei
    ids, X, names = measured
    labels, counts = np.unique(mask[mask > 0], return_counts=True)
    assert ids.tolist() == labels.tolist() and X.shape == (len(labels), len(names))
    np.testing.assert_array_equal(X[:, names.index("Nuclei_Area")], counts)
    # intensity is measured on the field scaled by the dtype's range (uint16 -> / 65535)
    mean = X[:, names.index("Nuclei_Intensity_MeanIntensity__DNA")]
    k = 7
    np.testing.assert_allclose(mean[k], img[mask == ids[k]].mean() / 65535, rtol=1e-6)
    # texture (Haralick contrast), granularity, intensity distribution, shape: CellProfiler's modules
    for group in ("Contrast_", "Granularity", "RadialDistribution", "Zernike"):
        assert any(n.startswith(f"Nuclei_{group}") for n in names), group


def test_bad_label_images_are_named(nuclei):
    img, mask = nuclei
    with pytest.raises(InputError, match="field B03: label image is 256x512 but its field is 512x512"):
        cp_measure_objects(img, mask[:256], name="field B03")
    with pytest.raises(InputError, match="dtype float"):
        cp_measure_objects(img, mask.astype(np.float32))
    with pytest.raises(InputError, match="negative labels"):
        cp_measure_objects(img, mask.astype(np.int32) - 1)
    with pytest.raises(InputError, match="intensities outside"):
        cp_measure_objects(img.astype(np.float32), mask)  # float image in counts, no --intensity-max


def test_features_cli_on_a_manifest_with_objects_file(nuclei, measured, tmp_path, capsys):
    img, mask = nuclei
    shutil.copy(ASSETS / "dsb2018_img2d.tif", tmp_path / "f1.tif")
    shutil.copy(ASSETS / "dsb2018_mask2d.tif", tmp_path / "f1_mask.tif")
    tifffile.imwrite(tmp_path / "f2.tif", img[:, ::-1])
    tifffile.imwrite(tmp_path / "f2_mask.tif", mask[:, ::-1])
    pd.DataFrame({"image_id": ["f1", "f2"], "dataset": "dsb", "file": ["f1.tif", "f2.tif"], "channel_names": "DNA",
                  "objects_file": ["f1_mask.tif", "f2_mask.tif"], "plate": "P1", "well": ["A01", "A02"]}
                 ).to_csv(tmp_path / "m.csv", index=False)  # fmt: skip
    out = tmp_path / "cells.parquet"
    rc = main(["features", "--manifest", str(tmp_path / "m.csv"), "--kind", "cp_measure", "--out", str(out),
               "--object-name", "Nuclei", "--quiet"])  # fmt: skip
    assert rc == 0 and "250 objects" in capsys.readouterr().out
    meta, X, names = read_feature_table(out)  # the schema metadata names the columns
    ids, X1, names1 = measured
    assert names == names1 and len(meta) == 2 * len(ids) and meta.well.tolist()[:1] == ["A01"]
    assert meta.object_id.tolist()[: len(ids)] == ids.tolist()  # each row's id beside its own features
    np.testing.assert_allclose(
        X[: len(ids)], X1, rtol=1e-6, equal_nan=True
    )  # float32 field read, same numbers
    a = names.index("Nuclei_Area")
    np.testing.assert_array_equal(np.sort(X[len(ids) :, a]), np.sort(X1[:, a]))  # mirrored field, same areas
    pd.DataFrame({"image_id": ["f1"], "dataset": "d", "file": ["f1.tif"], "channel_names": "DNA"}).to_csv(
        tmp_path / "n.csv", index=False
    )
    rc = main(["features", "--manifest", str(tmp_path / "n.csv"), "--kind", "cp_measure", "--out", str(out)])
    assert rc == 2 and "no 'objects_file' column" in capsys.readouterr().err
