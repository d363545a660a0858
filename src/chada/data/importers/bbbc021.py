"""BBBC021 v1 (MCF-7, 3 channels DAPI / Tubulin / Actin) with its MoA annotations.

``BBBC021_v1_image.csv`` lists, per multiplexed image, one file per channel
(``Image_FileName_<Ch>`` under folder ``Image_PathName_<Ch>``, Ch in DAPI, Tubulin, Actin) and the
treatment (``Image_Metadata_Compound``, ``Image_Metadata_Concentration``); ``BBBC021_v1_moa.csv`` maps
``(compound, concentration)`` to ``moa``. Channel order written: DAPI, Actin, Tubulin (Actin second,
as in the paper's channel-reconstruction task, whose target is ``reconstruction_target`` = Actin).

``label`` is the MoA (empty for treatments outside the MoA subset; ``moa_only=True`` drops those).
Splits are by compound so no compound is in two splits: within each MoA one seeded compound goes to
``test`` when the MoA has at least two compounds (a not-same-compound split); other compounds follow a
seeded 70/15/15 compound split. ``compound`` is in the manifest for leave-one-compound-out protocols.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from chada.data.importers import (
    FileLocator,
    ImportLayoutError,
    finish_manifest,
    grouped_split,
    missing_files_error,
    require_columns,
    require_file,
)

__all__ = ["import_bbbc021", "LAYOUT", "CHANNELS"]

CHANNELS = ("DAPI", "Actin", "Tubulin")
IMAGE_CSV = "BBBC021_v1_image.csv"
MOA_CSV = "BBBC021_v1_moa.csv"
LAYOUT = f"""  SOURCE/{IMAGE_CSV}   columns Image_FileName_DAPI, Image_PathName_DAPI, Image_FileName_Tubulin,
      Image_PathName_Tubulin, Image_FileName_Actin, Image_PathName_Actin, Image_Metadata_Compound,
      Image_Metadata_Concentration (Image_Metadata_Plate_DAPI, Image_Metadata_Well_DAPI, Replicate optional)
  SOURCE/{MOA_CSV}     columns compound, concentration, moa
  SOURCE/<Image_PathName_X>/<Image_FileName_X>   e.g. SOURCE/Week1_22123/Week1_150607_B02_s1_w1....tif"""


def _moa_split(df: pd.DataFrame, seed: int) -> np.ndarray:
    split = grouped_split(df["compound"], seed)
    moa_rows = df["moa"].notna().to_numpy()
    if moa_rows.any():
        split[moa_rows] = "train"
        for moa, sub in df[moa_rows].groupby("moa", sort=True):
            comps = sorted(sub["compound"].astype(str).unique())
            if len(comps) < 2:
                continue
            rng = np.random.default_rng([seed, zlib.crc32(str(moa).encode())])
            held = comps[int(rng.integers(len(comps)))]
            split[(df["compound"].astype(str) == held).to_numpy() & moa_rows] = "test"
    return split


def import_bbbc021(
    source: Path, out: Path, seed: int = 0, limit: int | None = None, moa_only: bool = False, **_: object
) -> Path:
    """Reference the per-channel TIFFs in place; write ``OUT/manifest.csv``."""
    if not source.is_dir():
        raise ImportLayoutError(f"BBBC021: {source} must be a folder.\nExpected layout:\n{LAYOUT}")
    img_csv = require_file(source / IMAGE_CSV, "BBBC021", LAYOUT, "image table")
    moa_csv = require_file(source / MOA_CSV, "BBBC021", LAYOUT, "MoA table")
    images = pd.read_csv(img_csv)
    cols = [f"Image_{k}_{c}" for c in ("DAPI", "Tubulin", "Actin") for k in ("FileName", "PathName")]
    require_columns(
        images, cols + ["Image_Metadata_Compound", "Image_Metadata_Concentration"], img_csv, "BBBC021"
    )
    moa = pd.read_csv(moa_csv)
    require_columns(moa, ["compound", "concentration", "moa"], moa_csv, "BBBC021")
    moa = moa.drop_duplicates(["compound", "concentration"])
    images["compound"] = images["Image_Metadata_Compound"].astype(str)
    images["concentration"] = pd.to_numeric(images["Image_Metadata_Concentration"], errors="coerce")
    moa = moa.assign(
        compound=moa["compound"].astype(str),
        concentration=pd.to_numeric(moa["concentration"], errors="coerce"),
    )
    df = images.merge(moa[["compound", "concentration", "moa"]], on=["compound", "concentration"], how="left")
    if moa_only:
        df = df[df["moa"].notna()].reset_index(drop=True)
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    if df.empty:
        raise ImportLayoutError(f"BBBC021: no image left in {img_csv} (moa_only={moa_only})")
    df["split"] = _moa_split(df, seed)
    locate = FileLocator(source)
    rows, missing = [], []
    for i, r in enumerate(df.to_dict("records")):
        files = locate.find_channels(r, CHANNELS, "Image_FileName_{ch}", "Image_PathName_{ch}", missing)
        if files is None:
            continue
        plate = r.get("Image_Metadata_Plate_DAPI", "")
        well = r.get("Image_Metadata_Well_DAPI", "")
        rows.append(
            {
                "image_id": f"bbbc021_{r.get('TableNumber', 0)}_{r.get('ImageNumber', i)}_{Path(str(r['Image_FileName_DAPI'])).stem}",
                "dataset": "BBBC021",
                "channel_files": ";".join(str(f.resolve()) for f in files),
                "channel_names": ";".join(CHANNELS),
                "split": r["split"],
                "label": r["moa"] if isinstance(r["moa"], str) else None,
                "moa": r["moa"] if isinstance(r["moa"], str) else None,
                "compound": r["compound"],
                "concentration": r["concentration"],
                "plate": plate,
                "well": well,
                "replicate": r.get("Replicate", None),
                "reconstruction_target": "Actin",
            }
        )
    if missing:
        raise missing_files_error("BBBC021", missing, len(df) * len(CHANNELS), LAYOUT)
    return finish_manifest(rows, out, "BBBC021")
