"""A synthetic screen taken through the plate workflow by the CLI: synth-plate -> data scan -> embed
--objects (hand-made features on raw intensities) -> profile. Shared by the image-plate profile tests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chada.cli import main

#: normalise against the DMSO wells of the whole screen (one "plate"): scales the features, keeps the
#: plate effects in; the default (no extra flags) is per-plate normalisation against each plate's DMSO
GLOBAL = ["--plate-col", "dataset", "--well-col", "image_id"]


def plate_cells(folder: Path, plate_args: list[str], effects: bool) -> Path:
    """Draw the screen into ``folder``, scan it, cut and measure every cell; returns ``cells.parquet``.

    Hand-made features on the raw intensities (``--normalize none``): per-crop percentile scaling would
    erase both the plate gain and the intensity phenotypes.
    """
    assert (
        main(["data", "synth-plate", str(folder), *plate_args, *([] if effects else ["--no-plate-effects"])])
        == 0
    )
    scan = json.loads((folder / "ground_truth.json").read_text())["scan"]
    assert main(["data", "scan", str(folder / "images"), "--pattern", scan["pattern"],
                 "--channel-names", scan["channel_names"], "--objects-pattern", scan["objects_pattern"],
                 "--platemap", str(folder / "platemap.csv"), "--dataset", "synth_plate",
                 "--out", str(folder / "manifest.csv")]) == 0  # fmt: skip
    cells = folder / "cells.parquet"
    assert main(["embed", "--model", "handmade", "--manifest", str(folder / "manifest.csv"), "--objects",
                 "--crop-size", "32", "--mask-neighbours", "--skip-border", "--normalize", "none", "--quiet",
                 "--out", str(cells)]) == 0  # fmt: skip
    return cells


def profile_readouts(table: Path, out: Path, extra: list[str]) -> tuple[dict[str, float], pd.DataFrame]:
    """``chada profile`` of the hand-made table, NSCB by plate: ``(readouts, per-treatment table)``."""
    argv = ["profile", str(table), "--names", "hm", "--out", str(out), "--batch-col", "plate",
            "--projection", "none", "--null-size", "1000", "--n-boot", "100", *extra]  # fmt: skip
    assert main(argv) == 0
    readouts = pd.read_csv(out / "readouts.csv").set_index("readout")["value"].to_dict()
    return readouts, pd.read_csv(out / "hm" / "per_treatment.csv")
