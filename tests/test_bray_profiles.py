"""configs/eval/bray.yaml's ``profiles:`` section on the Bray importer's own manifest columns.

A small BBBC022-style image table (the real column names of ``BBBC022_v1_image.csv``: PlateID,
CPD_WELL_POSITION, SOURCE_COMPOUND_NAME, BROAD_ID, CPD_MMOL_CONC, ASSAY_WELL_ROLE with ``mock`` for
the DMSO wells) is imported by ``chada data import bray``'s importer; a feature table with the
manifest's metadata is profiled by ``chada evaluate`` with the config's section as written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from chada.cli import main
from chada.data.importers import import_dataset
from chada.encode.store import EmbeddingSet

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "eval" / "bray.yaml"
CHANNELS = ("Hoechst", "ER", "Syto", "Ph_golgi", "Mito")
ACTIVE, INACTIVE = ("cpd-a", "cpd-b", "cpd-c"), ("cpd-x", "cpd-y")


def _image_table(root: Path) -> None:
    """2 plates x 16 wells, one site: 6 mock wells and 5 compounds x 2 wells per plate (tiny TIFFs)."""
    rng = np.random.default_rng(0)
    rows = []
    for plate in (20585, 20586):
        plan = [("", "DMSO", "mock")] * 6 + [(c, f"BRD-{c}", "compound") for c in ACTIVE + INACTIVE for _ in range(2)]
        for i, (name, broad, role) in enumerate(plan):
            well = f"A{i + 1:02d}"
            r = {"Image_Metadata_PlateID": plate, "Image_Metadata_CPD_WELL_POSITION": well,
                 "Image_Metadata_SOURCE_COMPOUND_NAME": name or None, "Image_Metadata_BROAD_ID": broad,
                 "Image_Metadata_CPD_MMOL_CONC": 0.0 if role == "mock" else 5.0,
                 "Image_Metadata_ASSAY_WELL_ROLE": role}  # fmt: skip
            for w, ch in enumerate(CHANNELS, start=1):
                fname = f"{plate}_{well}_s1_w{w}.tif"
                r[f"Image_FileName_Orig{ch}"], r[f"Image_PathName_Orig{ch}"] = fname, f"/nfs/{plate}-{ch}"
                (root / f"{plate}-{ch}").mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(root / f"{plate}-{ch}" / fname, rng.integers(0, 4000, (8, 8), dtype=np.uint16))
            rows.append(r)
    pd.DataFrame(rows).to_csv(root / "BBBC022_v1_image.csv", index=False)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The imported manifest's rows with 16 features ``[32, 16]``: active compounds shift 4 of them by 3 SD."""
    root = tmp_path_factory.mktemp("bray")
    _image_table(root / "src")
    manifest = pd.read_csv(import_dataset("bray", root / "src", root / "data"))
    rng = np.random.default_rng(1)
    X = rng.normal(size=(len(manifest), 16))
    X[manifest["label"].isin(ACTIVE).to_numpy(), :4] += 3.0
    # a `chada embed` feature file, as the config's models are: features 'cls', the manifest as metadata
    EmbeddingSet({"cls": X.astype(np.float32)}, manifest).save(root / "handmade.npz")
    return root / "handmade.npz"


def test_bray_config_profiles_section_parses() -> None:
    from chada.tasks.evaluation import normalize_config

    settings, models, _ = normalize_config(CONFIG)
    task = settings["profiles"]
    cfg = task.config
    assert set(task.tables) == set(models)  # default: the models' embedding files
    assert (cfg.plate_col, cfg.well_col, cfg.compound_col, cfg.dose_col) == ("plateid", "cpd_well_position", "label", "cpd_mmol_conc")
    assert cfg.moa_col is None and cfg.batch_cols == ["plateid"]


def test_evaluate_profiles_step_on_the_importers_columns(features: Path, tmp_path: Path) -> None:
    section = yaml.safe_load(CONFIG.read_text())["profiles"]
    section.update(tables={"handmade": str(features)}, projection="none", null_size=500, n_boot=100)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"out_dir": str(tmp_path / "ev"), "profiles": section}))
    assert main(["evaluate", "--config", str(tmp_path / "c.yaml")]) == 0
    got = json.loads((tmp_path / "ev" / "profiles" / "readouts.json").read_text())["readouts"]["handmade"]
    assert got["activity_map"]["n"] == 5 and got["nsc"]["n"] == 0 and got["consistency_ap"]["n"] == 0
    per = pd.read_csv(tmp_path / "ev" / "profiles" / "handmade" / "per_treatment.csv").set_index("label")
    # 4 replicate wells (2 per plate) against 12 mock wells: the shifted compounds are retrieved, the others not
    assert (per.loc[list(ACTIVE), "activity_q"] < 0.05).all(), per
    assert (per.loc[list(INACTIVE), "activity_q"] >= 0.05).all(), per
