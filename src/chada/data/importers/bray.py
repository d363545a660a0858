"""Bray et al. 2017 Cell Painting (5 channels) from a CellProfiler image table.

The image table (``BBBC022_v1_image.csv`` for the 20-plate BBBC022 subset, or any table with the same
column convention passed as ``image_csv``) lists one file per channel: ``Image_FileName_Orig<Ch>`` under
``Image_PathName_Orig<Ch>`` for Ch in Hoechst, ER, Syto, Ph_golgi, Mito (DNA, ER, RNA, actin/Golgi/
plasma membrane, mitochondria). Files are looked up under SOURCE by their recorded folder, its last
component, or their name anywhere under SOURCE. ``label`` comes from ``label_column`` (default: the
first present of Image_Metadata_SOURCE_COMPOUND_NAME, Image_Metadata_BROAD_ID, Image_Metadata_Compound);
every other ``Image_Metadata_*`` column is kept (prefix removed, lower case). Split: seeded 70/15/15 by
label (treatment) so no treatment is in two splits.
"""

from __future__ import annotations

from pathlib import Path

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

__all__ = ["import_bray", "LAYOUT", "CHANNELS"]

CHANNELS = ("Hoechst", "ER", "Syto", "Ph_golgi", "Mito")
DEFAULT_TABLE = "BBBC022_v1_image.csv"
LABEL_CANDIDATES = (
    "Image_Metadata_SOURCE_COMPOUND_NAME",
    "Image_Metadata_BROAD_ID",
    "Image_Metadata_Compound",
)
LAYOUT = f"""  SOURCE/{DEFAULT_TABLE}   (or --image-csv NAME) with columns
      Image_FileName_OrigHoechst, Image_PathName_OrigHoechst, Image_FileName_OrigER, Image_PathName_OrigER,
      Image_FileName_OrigSyto, Image_PathName_OrigSyto, Image_FileName_OrigPh_golgi, Image_PathName_OrigPh_golgi,
      Image_FileName_OrigMito, Image_PathName_OrigMito, and a treatment column (e.g. Image_Metadata_BROAD_ID)
  SOURCE/<plate or channel folder>/<file>.tif"""


def import_bray(
    source: Path,
    out: Path,
    seed: int = 0,
    limit: int | None = None,
    image_csv: str | None = None,
    label_column: str | None = None,
    **_: object,
) -> Path:
    """Reference the per-channel TIFFs in place; write ``OUT/manifest.csv``."""
    if not source.is_dir():
        raise ImportLayoutError(f"Bray: {source} must be a folder.\nExpected layout:\n{LAYOUT}")
    table = require_file(source / (image_csv or DEFAULT_TABLE), "Bray", LAYOUT, "image table")
    df = pd.read_csv(table)
    cols = [f"Image_{k}_Orig{c}" for c in CHANNELS for k in ("FileName", "PathName")]
    require_columns(df, cols, table, "Bray")
    if label_column is None:
        label_column = next((c for c in LABEL_CANDIDATES if c in df.columns), None)
        if label_column is None:
            raise ImportLayoutError(
                f"Bray: {table} has none of the treatment columns {list(LABEL_CANDIDATES)}; pass label_column"
            )
    require_columns(df, [label_column], table, "Bray")
    if limit is not None:
        df = df.iloc[:limit]
    labels = df[label_column].fillna("").astype(str)
    splits = grouped_split(labels, seed)
    meta_cols = [c for c in df.columns if c.startswith("Image_Metadata_")]
    locate = FileLocator(source)
    rows, missing = [], []
    for i, r in enumerate(df.to_dict("records")):
        files = locate.find_channels(
            r, CHANNELS, "Image_FileName_Orig{ch}", "Image_PathName_Orig{ch}", missing
        )
        if files is None:
            continue
        row = {
            "image_id": f"bray_{i:07d}_{Path(str(r['Image_FileName_OrigHoechst'])).stem}",
            "dataset": "Bray2017",
            "channel_files": ";".join(str(f.resolve()) for f in files),
            "channel_names": ";".join(CHANNELS),
            "split": splits[i],
            "label": labels.iloc[i] or None,
        }
        for c in meta_cols:
            row[c.removeprefix("Image_Metadata_").lower()] = r[c]
        rows.append(row)
    if missing:
        raise missing_files_error("Bray", missing, len(df) * len(CHANNELS), LAYOUT)
    return finish_manifest(rows, out, "Bray")
