"""BBBC048 (Jurkat cell cycle, ImageStream crops): class folders of per-channel images.

Layout as used by the authors' loader (``nicoboou/chadavit`` ``BBBC048``): ``<Stage>/<id>_Ch<k>.<ext>``
for the ImageStream channels ``Ch3``, ``Ch4``, ``Ch6`` (the three the authors' split files list), with
``Stage`` in Anaphase, G1, G2, Metaphase, Prophase, S, Telophase. Optional split lists ``train.csv`` /
``val.csv`` / ``test.csv`` without header: ``id,label_index,"['G2/4133_Ch3.ome.jpg', ...]"``. Without
them a seeded stratified 70/15/15 split is made. Channel names are the ImageStream channel numbers.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from pathlib import Path

from chada.data.importers import (
    ImportLayoutError,
    finish_manifest,
    iter_split_csv_rows,
    missing_files_error,
    seeded_split,
)

__all__ = ["import_bbbc048", "LAYOUT", "STAGES", "CHANNELS"]

STAGES = ("Anaphase", "G1", "G2", "Metaphase", "Prophase", "S", "Telophase")
CHANNELS = ("Ch3", "Ch4", "Ch6")
EXTS = (".ome.jpg", ".jpg", ".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png")
LAYOUT = """  SOURCE/<Stage>/<id>_Ch3.ome.jpg, <id>_Ch4.ome.jpg, <id>_Ch6.ome.jpg   (.jpg/.tif/.png also accepted)
    Stage in Anaphase, G1, G2, Metaphase, Prophase, S, Telophase
  SOURCE/train.csv, val.csv, test.csv   (optional; no header: id,label_index,"['G2/4133_Ch3.ome.jpg', ...]")"""
_NAME = re.compile(r"^(?P<id>.+)_(?P<ch>Ch\d+)(?P<ext>(\.ome)?\.(jpe?g|tiff?|png))$", re.IGNORECASE)


def _split_files(source: Path) -> list[tuple[str, list[str], str]]:
    items = []
    for split, f, lineno, row in iter_split_csv_rows(source):
        try:
            paths = ast.literal_eval(row[2])
        except (IndexError, ValueError, SyntaxError) as exc:
            raise ImportLayoutError(
                f"BBBC048: {f} line {lineno}: expected 'id,label,\"[list of channel files]\"', got {row}"
            ) from exc
        items.append((row[0].strip(), [str(p) for p in paths], split))
    return items


def _scan(source: Path, channels: Sequence[str]) -> list[tuple[str, list[str], str]]:
    found: dict[tuple[str, str], dict[str, str]] = {}
    for d in sorted(p for p in source.iterdir() if p.is_dir()):
        for f in d.iterdir():
            m = _NAME.match(f.name)
            if m:
                found.setdefault((d.name, m.group("id")), {})[m.group("ch")] = f"{d.name}/{f.name}"
    out, missing = [], []
    for (stage, iid), chs in sorted(found.items()):
        absent = [c for c in channels if c not in chs]
        if absent:
            missing += [f"{stage}/{iid}_{c}.*" for c in absent]
            continue
        out.append((iid, [chs[c] for c in channels], stage))
    if missing:
        raise missing_files_error("BBBC048", missing, len(found) * len(channels), LAYOUT)
    return out


def import_bbbc048(
    source: Path,
    out: Path,
    seed: int = 0,
    limit: int | None = None,
    channels: Sequence[str] = CHANNELS,
    **_: object,
) -> Path:
    """Reference the per-channel images in place; label = the stage folder."""
    if not source.is_dir():
        raise ImportLayoutError(f"BBBC048: {source} must be a folder.\nExpected layout:\n{LAYOUT}")
    channels = tuple(channels)
    listed = _split_files(source)
    if listed:
        items = [(iid, files, split) for iid, files, split in listed]
    else:
        scanned = _scan(source, channels)
        if not scanned:
            raise ImportLayoutError(
                f"BBBC048: no '<Stage>/<id>_Ch3.*' image under {source}.\nExpected layout:\n{LAYOUT}"
            )
        splits = seeded_split([stage for _, _, stage in scanned], seed)
        items = [(iid, files, split) for (iid, files, _), split in zip(scanned, splits)]
    if limit is not None:
        items = items[:limit]
    rows, missing = [], []
    for iid, files, split in items:
        paths = [source / f for f in files]
        absent = [str(p) for p in paths if not p.exists()]
        if absent:
            missing += absent
            continue
        stage = Path(files[0]).parent.name
        if stage not in STAGES:
            raise ImportLayoutError(f"BBBC048: {files[0]} is not inside a stage folder {STAGES}")
        names = [m.group("ch") if (m := _NAME.match(Path(f).name)) else f"ch{k}" for k, f in enumerate(files)]
        rows.append(
            {
                "image_id": f"bbbc048_{stage}_{iid}",
                "dataset": "BBBC048",
                "channel_files": ";".join(str(p.resolve()) for p in paths),
                "channel_names": ";".join(names),
                "split": split,
                "label": stage,
            }
        )
    if missing:
        raise missing_files_error("BBBC048", missing, sum(len(f) for _, f, _ in items), LAYOUT)
    return finish_manifest(rows, out, "BBBC048")
