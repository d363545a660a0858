"""CYCLoPs (yeast protein localisation, 2 channels GFP/RFP) in the layout of the authors' loader.

Layout (``nicoboou/chadavit`` ``src/data/custom_datasets.py`` ``CyclOPS``): one folder per class, one
TIFF per channel named ``<CLASS>_<id>_gfp.tif`` / ``<CLASS>_<id>_rfp.tif``; optional split lists
``train.csv`` / ``val.csv`` / ``test.csv`` without header, rows ``CLASS,id,"{'rfp', 'gfp'}"``.
Without split lists, a seeded stratified 70/15/15 split is made. Channel order: GFP (the tagged
protein), RFP (the cytosolic marker).
"""

from __future__ import annotations

import re
from pathlib import Path

from chada.data.importers import (
    ImportLayoutError,
    finish_manifest,
    iter_split_csv_rows,
    missing_files_error,
    seeded_split,
)

__all__ = ["import_cyclops", "LAYOUT", "CHANNELS"]

CHANNELS = ("gfp", "rfp")
LAYOUT = """  SOURCE/<CLASS>/<CLASS>_<id>_gfp.tif
  SOURCE/<CLASS>/<CLASS>_<id>_rfp.tif        (CLASS e.g. ACTIN, BUDNECK, ..., VACUOLE)
  SOURCE/train.csv, val.csv, test.csv        (optional; no header: CLASS,id,"{'rfp', 'gfp'}")"""
_NAME = re.compile(r"^(?P<cls>.+)_(?P<id>[^_]+)_(?P<ch>gfp|rfp)\.tiff?$", re.IGNORECASE)


def _from_split_files(source: Path) -> list[tuple[str, str, str]]:
    items = []
    for split, f, lineno, row in iter_split_csv_rows(source):
        if len(row) < 2:
            raise ImportLayoutError(f"CYCLoPs: {f} line {lineno}: expected 'CLASS,id,channels', got {row}")
        items.append((row[0].strip(), row[1].strip(), split))
    return items


def _scan(source: Path) -> list[tuple[str, str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for d in sorted(p for p in source.iterdir() if p.is_dir()):
        for f in d.iterdir():
            m = _NAME.match(f.name)
            if m and m.group("cls") == d.name:
                found.setdefault((d.name, m.group("id")), set()).add(m.group("ch").lower())
    incomplete = [
        f"{c}/{c}_{i}_{sorted(set(CHANNELS) - chs)[0]}.tif"
        for (c, i), chs in found.items()
        if chs != set(CHANNELS)
    ]
    if incomplete:
        raise missing_files_error("CYCLoPs", incomplete, len(found) * 2, LAYOUT)
    return sorted(found)


def _channel_file(folder: Path, cls: str, iid: str, ch: str) -> Path:
    for ext in (".tif", ".tiff"):
        p = folder / f"{cls}_{iid}_{ch}{ext}"
        if p.exists():
            return p
    return folder / f"{cls}_{iid}_{ch}.tif"


def import_cyclops(source: Path, out: Path, seed: int = 0, limit: int | None = None, **_: object) -> Path:
    """Reference the per-channel TIFFs in place; write ``OUT/manifest.csv`` (label = class folder)."""
    if not source.is_dir():
        raise ImportLayoutError(f"CYCLoPs: {source} must be a folder.\nExpected layout:\n{LAYOUT}")
    items = _from_split_files(source)
    if items:
        triples = items
    else:
        pairs = _scan(source)
        if not pairs:
            raise ImportLayoutError(
                f"CYCLoPs: no '<CLASS>/<CLASS>_<id>_gfp.tif' file under {source}.\nExpected layout:\n{LAYOUT}"
            )
        splits = seeded_split([c for c, _ in pairs], seed)
        triples = [(c, i, s) for (c, i), s in zip(pairs, splits)]
    if limit is not None:
        triples = triples[:limit]
    rows, missing = [], []
    for cls, iid, split in triples:
        files = [_channel_file(source / cls, cls, iid, ch) for ch in CHANNELS]
        absent = [str(f) for f in files if not f.exists()]
        if absent:
            missing += absent
            continue
        rows.append(
            {
                "image_id": f"cyclops_{cls}_{iid}",
                "dataset": "CYCLoPs",
                "channel_files": ";".join(str(f.resolve()) for f in files),
                "channel_names": "GFP;RFP",
                "split": split,
                "label": cls,
            }
        )
    if missing:
        raise missing_files_error("CYCLoPs", missing, 2 * len(triples), LAYOUT)
    return finish_manifest(rows, out, "CYCLoPs")
