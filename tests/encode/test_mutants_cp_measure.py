"""``chada features --kind cp_measure`` (chada.encode.cp_measure), the parts the first mutation run left
untested: 32-bit TIFF labels read as stored, pickled ``.npy`` labels refused, the feature groups handed
on, the returned table's index, the empty-image count, the timing line and where the warning points
(the measurement replaced by a recorder; issue 26 item 10)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tifffile

from chada.encode import cp_measure as cpm
from chada.errors import InputError


def _cp_manifest(tmp_path, n):
    """``n`` one-channel 4x4 images; image k's label image is filled with k (image 0: no object)."""
    for k in range(n):
        tifffile.imwrite(tmp_path / f"i{k}.tif", np.full((4, 4), k, np.uint16))
        np.save(tmp_path / f"m{k}.npy", np.full((4, 4), k, np.int32))
    pd.DataFrame({"image_id": [f"img{k}" for k in range(n)], "dataset": "d", "channel_names": "DNA",
                  "file": [f"i{k}.tif" for k in range(n)],
                  "objects_file": [f"m{k}.npy" for k in range(n)]}).to_csv(tmp_path / "m.csv", index=False)  # fmt: skip
    return tmp_path / "m.csv"


@pytest.mark.parametrize("name", ["l.tif", "l.TIFF"])
def test_32_bit_tiff_labels_keep_their_type(tmp_path, name):
    """Label images past 65535 objects are uint32: tifffile keeps the type (Pillow would give int32)."""
    lab = np.array([[0, 1], [2, 70000]], np.uint32)
    tifffile.imwrite(tmp_path / name, lab)
    got = cpm.read_labels(tmp_path / name)
    assert got.dtype == np.uint32 and got.tolist() == [[0, 1], [2, 70000]]


def test_pickled_npy_labels_are_refused(tmp_path):
    lab = np.empty(2, dtype=object)
    lab[:] = [1, 2]
    np.save(tmp_path / "l.npy", lab, allow_pickle=True)
    with pytest.raises(InputError, match=r"l\.npy: unreadable label image \(.*allow_pickle"):
        cpm.read_labels(tmp_path / "l.npy")


def test_groups_index_empty_count_timing_and_warning(tmp_path, monkeypatch, capsys):
    import chada.features.cp_measure_kind as kind

    seen = []

    def measure(image, labels, names, object_name, intensity_max, name, **groups):
        seen.append(groups)
        ids = np.unique(labels[labels > 0])[:2]
        return ids, np.column_stack([ids * 1.0]), ["Cells_Area"]

    monkeypatch.setattr(kind, "cp_measure_objects", measure)
    clock = iter([10.0, 12.34])
    monkeypatch.setattr(cpm, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    m = _cp_manifest(tmp_path, n=4)
    np.save(tmp_path / "m1.npy", np.zeros((4, 4), np.int32))  # images 0 and 1 without objects
    lab = np.zeros((4, 4), np.int32)
    lab[0, :2], lab[1, :2] = 3, 5
    np.save(tmp_path / "m3.npy", lab)  # image 3: objects 3 and 5
    out = tmp_path / "o.parquet"
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        table, _ = cpm.cp_measure_for_manifest(m, out, groups={"texture": False})
    assert [str(x.message) for x in w] == ["2 image(s) with no object in their label image: no rows"]
    # it points at the caller (here); under mutmut a trampoline frame sits between the two
    assert w[0].filename == __file__ or w[0].filename.endswith("mutmut/mutation/trampoline.py")
    assert seen == [{"texture": False}] * 4
    assert table.index.tolist() == [0, 1, 2] and table.object_id.tolist() == [2, 3, 5]
    assert capsys.readouterr().out.endswith(" objects (2.3 s)\n")
    assert pq.read_table(out).column_names == [
        "image_id",
        "dataset",
        "channel_names",
        "file",
        "objects_file",
        "object_id",
        "Cells_Area",
    ]
