"""NF-kB nuclear translocation (HCC1143 cells, per-cell crops with a ``ratio`` regression target).

Layout of the authors' loader (``nicoboou/chadavit`` ``Transloc``): split tables
``analyse_256x256/single_ratio_images_{train,val,test}.csv`` with columns ``cat`` (the sub-folder),
``image_name`` and ``ratio``; images ``256x256/<cat>/<image_name>`` (PNG). The PNG planes are kept in
file order and named ``red;green;blue`` (what the file stores; pass ``channel_names`` to name stains).
``target`` = ``ratio`` (also kept as ``ratio``); ``cat`` is metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from chada.data.importers import (
    FileLocator,
    ImportLayoutError,
    finish_manifest,
    missing_files_error,
    require_columns,
)

__all__ = ["import_nfkb", "LAYOUT"]

LAYOUT = """  SOURCE/analyse_256x256/single_ratio_images_train.csv   columns cat, image_name, ratio
  SOURCE/analyse_256x256/single_ratio_images_val.csv     (and _test.csv, optional)
  SOURCE/256x256/<cat>/<image_name>                      e.g. 256x256/0/170721_L02_3_1206_882.png"""
SPLITS = {"train": "train", "val": "val", "test": "test"}


def _tables(source: Path) -> list[tuple[Path, str]]:
    found = []
    for folder in (source / "analyse_256x256", source):
        for key, split in SPLITS.items():
            f = folder / f"single_ratio_images_{key}.csv"
            if f.exists():
                found.append((f, split))
        if found:
            return found
    return found


def _n_planes(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return len(im.getbands())


def import_nfkb(
    source: Path, out: Path, limit: int | None = None, channel_names: Sequence[str] | None = None, **_: object
) -> Path:
    """Reference the per-cell PNGs in place; write ``OUT/manifest.csv`` with ``target`` = ratio."""
    if not source.is_dir():
        raise ImportLayoutError(f"NF-kB: {source} must be a folder.\nExpected layout:\n{LAYOUT}")
    tables = _tables(source)
    if not tables:
        raise ImportLayoutError(
            f"NF-kB: expected file {source / 'analyse_256x256' / 'single_ratio_images_train.csv'} (not found).\n"
            f"Expected layout:\n{LAYOUT}"
        )
    locate = FileLocator(source / "256x256" if (source / "256x256").is_dir() else source)
    rows, missing, total = [], [], 0
    names: list[str] | None = list(channel_names) if channel_names else None
    for table, split in tables:
        df = pd.read_csv(table)
        require_columns(df, ["cat", "image_name", "ratio"], table, "NF-kB")
        if limit is not None:
            df = df.iloc[:limit]
        for r in df.to_dict("records"):
            total += 1
            p = locate.find(str(r["image_name"]), str(r["cat"]))
            if p is None:
                missing.append(f"256x256/{r['cat']}/{r['image_name']}")
                continue
            if names is None:
                k = _n_planes(p)
                names = ["red", "green", "blue", "alpha"][:k] if k > 1 else ["grey"]
            rows.append(
                {
                    "image_id": f"nfkb_{r['cat']}_{Path(str(r['image_name'])).stem}",
                    "dataset": "NFkB_translocation",
                    "file": str(p.resolve()),
                    "channel_names": ";".join(names),
                    "split": split,
                    "target": float(r["ratio"]),
                    "ratio": float(r["ratio"]),
                    "cat": r["cat"],
                }
            )
    if missing:
        raise missing_files_error("NF-kB", missing, total, LAYOUT)
    return finish_manifest(rows, out, "NF-kB")
