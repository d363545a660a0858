"""`data.nan_policy` of `chada pretrain`: NaN pixels stop the run by default, naming the image, or are
replaced when the user says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chada.cli import main
from tests.helpers.dino import tiny_dino

# the run that reads the NaN manifest: every image (no split column), no exported weights
NAN_RUN = ("data.split=null", "run.export_init=false", "run.export_student=false")


@pytest.fixture()
def nan_manifest(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        arr = rng.random((2, 16, 16), dtype=np.float32)
        if i == 2:
            arr[1, 3, 5] = np.nan  # one pixel of one channel of one image
        np.save(tmp_path / f"img{i}.npy", arr)
        rows.append(
            {"image_id": f"img{i}", "dataset": "d", "file": f"img{i}.npy", "channel_names": "DAPI;Actin"}
        )
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_nan_pixel_stops_pretraining_by_default(nan_manifest: Path, tmp_path: Path, capsys) -> None:
    rc = main(["pretrain", *tiny_dino(nan_manifest, tmp_path / "run", *NAN_RUN)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "img2" in err and "img2.npy" in err and "'Actin'" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "teacher").exists()


def test_nan_policy_replace_trains(nan_manifest: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    rc = main(["pretrain", *tiny_dino(nan_manifest, run, *NAN_RUN, "data.nan_policy=replace")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "image 'img2'" in err and "replaced non-finite pixels (channel 1 'Actin': 1 NaN pixel(s))" in err
    assert (run / "teacher" / "model.safetensors").exists()


def test_unknown_nan_policy_is_a_config_error(nan_manifest: Path, tmp_path: Path, capsys) -> None:
    rc = main(["pretrain", *tiny_dino(nan_manifest, tmp_path / "run", *NAN_RUN, "data.nan_policy=keep")])
    assert rc == 2
    assert "data.nan_policy" in capsys.readouterr().err
