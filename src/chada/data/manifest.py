"""Dataset manifest: one table row per multiplexed image, CSV or Parquet.

Schema (column: meaning):

- ``image_id`` (required, unique): identifier of the image.
- ``dataset`` (required): source study / assay name (e.g. ``"BBBC021"``).
- ``channel_files`` OR ``file`` (one of them per row, required): ``channel_files`` is a ``;``-separated
  list of one file per channel (in channel order); ``file`` is one multi-channel file (TIFF, OME-TIFF,
  PNG/JPEG, OME-Zarr folder, .npy). Both columns may exist in one manifest; a row fills exactly one.
  Relative paths are resolved against the manifest's folder (or an explicit ``root``).
- ``channel_names`` (required): ``;``-separated channel names in channel order, e.g. ``"DAPI;Actin"``;
  their count must equal the image's channel count.
- ``split`` (optional, default ``train``): ``train`` / ``val`` / ``test``.
- ``label`` (optional): the main label (class name or number); empty = unlabelled.
- any other column (e.g. ``target`` for regression, ``interchannel_label``, ``plate``, ``well``) is
  metadata, returned in the sample's ``meta`` dict.

Row numbers reported by :func:`check_manifest` count data rows from 1 (row 1 = first row after the
CSV header), so in a CSV file row ``r`` is on line ``r + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "REQUIRED_COLUMNS",
    "STANDARD_COLUMNS",
    "SPLITS",
    "Problem",
    "load_manifest",
    "write_manifest",
    "split_list",
    "row_paths",
    "row_channel_names",
    "read_row_image",
    "check_manifest",
    "format_problems",
]

REQUIRED_COLUMNS = ("image_id", "dataset", "channel_names")
STANDARD_COLUMNS = ("image_id", "dataset", "channel_files", "file", "channel_names", "split", "label")
SPLITS = ("train", "val", "test")
SEP = ";"


@dataclass(frozen=True)
class Problem:
    """One defect found in a manifest.

    Attributes:
        row: 1-based data row (``None`` for a manifest-wide problem such as a missing column).
        image_id: the row's ``image_id`` (``None`` when missing or manifest-wide).
        kind: short machine-readable category, e.g. ``"missing_file"``.
        message: human-readable explanation.
    """

    row: int | None
    image_id: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = "manifest" if self.row is None else f"row {self.row}"
        ident = f" ({self.image_id})" if self.image_id else ""
        return f"{where}{ident}: [{self.kind}] {self.message}"


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        if pd.isna(value):
            return True
    except (TypeError, ValueError):
        pass
    return isinstance(value, str) and value.strip() == ""


def split_list(value: Any) -> list[str]:
    """``"a; b;c"`` -> ``["a", "b", "c"]``; missing -> ``[]``."""
    if _is_missing(value):
        return []
    return [s.strip() for s in str(value).split(SEP) if s.strip() != ""]


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest (``.csv``, ``.tsv``, ``.parquet``/``.pq``) as a DataFrame of its raw columns.

    ``image_id``/``dataset``/path/name columns are read as strings so ids such as ``"007"`` survive.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"manifest not found: {p}")
    suf = p.suffix.lower()
    str_cols = {c: "string" for c in ("image_id", "dataset", "channel_files", "file", "channel_names", "split")}
    if suf in (".parquet", ".pq"):
        df = pd.read_parquet(p)
        for c in str_cols:
            if c in df.columns:
                df[c] = df[c].astype("string")
    elif suf in (".csv", ".tsv", ".txt"):
        df = pd.read_csv(p, sep="\t" if suf == ".tsv" else ",", dtype=str_cols, keep_default_na=True)
    else:
        raise ValueError(f"{p}: manifest must be .csv, .tsv or .parquet, got {suf!r}")
    return df.reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest as CSV or Parquet (chosen by suffix)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(p, index=False)
    else:
        df.to_csv(p, index=False, sep="\t" if p.suffix.lower() == ".tsv" else ",")
    return p


def _resolve(p: str, root: Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else root / path


def row_paths(row: pd.Series | dict, root: str | Path) -> tuple[str, list[Path]]:
    """Return ``("channel_files" | "file", [paths])`` of a manifest row, resolved against ``root``.

    Raises:
        ValueError: neither or both of ``channel_files`` / ``file`` are filled.
    """
    root = Path(root)
    files = split_list(row.get("channel_files"))
    single = row.get("file")
    has_single = not _is_missing(single)
    if files and has_single:
        raise ValueError("row fills both 'channel_files' and 'file'; fill exactly one")
    if files:
        return "channel_files", [_resolve(f, root) for f in files]
    if has_single:
        return "file", [_resolve(str(single).strip(), root)]
    raise ValueError("row has neither 'channel_files' nor 'file'")


def row_channel_names(row: pd.Series | dict) -> list[str]:
    return split_list(row.get("channel_names"))


def read_row_image(row: pd.Series | dict, root: str | Path) -> np.ndarray:
    """Read a manifest row's pixels as ``[C, H, W]`` float32 (no normalisation)."""
    from chada.data.readers import read_channels, read_image

    kind, paths = row_paths(row, root)
    return read_channels(paths) if kind == "channel_files" else read_image(paths[0])


def check_manifest(
    path: str | Path, c_max: int = 10, root: str | Path | None = None, read_pixels: bool = True
) -> list[Problem]:
    """Validate a manifest and return EVERY problem found (empty list = valid).

    Checks per row: required fields present, exactly one of ``channel_files``/``file``, files exist,
    image readable, channel count in ``1..c_max``, ``channel_names`` count equals channel count, all
    channels share H/W, no NaN (or inf) pixels, ``split`` value valid; and across rows: duplicate
    ``image_id`` (every duplicate row is named).

    Args:
        path: manifest file.
        c_max: largest channel count the model accepts.
        root: folder relative paths are resolved against (default: the manifest's folder).
        read_pixels: read every image (needed for NaN / H/W / count checks); ``False`` only checks
            that the files exist, for a quick pass over a very large manifest.
    """
    from chada.data.readers import ImageReadError

    mpath = Path(path)
    try:
        df = load_manifest(mpath)
    except (ValueError, OSError) as exc:
        return [Problem(None, None, "unreadable_manifest", str(exc))]
    base = Path(root) if root is not None else mpath.parent
    problems: list[Problem] = []
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if "channel_files" not in df.columns and "file" not in df.columns:
        missing_cols.append("channel_files|file")
    if missing_cols:
        problems.append(Problem(None, None, "missing_column", f"required column(s) absent: {missing_cols}"))
        if "image_id" not in df.columns:
            return problems

    ids = df["image_id"]
    dup_mask = ids.notna() & ids.duplicated(keep=False)
    for i in np.flatnonzero(dup_mask.to_numpy()):
        first = int(np.flatnonzero((ids == ids.iloc[i]).to_numpy())[0]) + 1
        problems.append(
            Problem(int(i) + 1, str(ids.iloc[i]), "duplicate_id", f"image_id {ids.iloc[i]!r} also on row {first}")
        )

    for i, row in enumerate(df.to_dict("records")):
        rnum = i + 1
        iid = None if _is_missing(row.get("image_id")) else str(row["image_id"])

        def add(kind: str, msg: str, _r: int = rnum, _id: str | None = iid) -> None:
            problems.append(Problem(_r, _id, kind, msg))

        if iid is None:
            add("missing_value", "image_id is empty")
        if "dataset" in df.columns and _is_missing(row.get("dataset")):
            add("missing_value", "dataset is empty")
        if "split" in df.columns and not _is_missing(row.get("split")) and str(row["split"]).strip() not in SPLITS:
            add("bad_split", f"split {row['split']!r} is not one of {SPLITS}")
        names = row_channel_names(row)
        if not names:
            add("missing_value", "channel_names is empty")
        try:
            kind, paths = row_paths(row, base)
        except ValueError as exc:
            add("no_file", str(exc))
            continue
        absent = [p for p in paths if not p.exists()]
        if absent:
            add("missing_file", "file(s) not found: " + ", ".join(str(p) for p in absent))
            continue
        if not read_pixels:
            if kind == "channel_files" and names and len(names) != len(paths):
                add("channel_name_count", f"{len(names)} channel_names for {len(paths)} channel files")
            continue
        try:
            img = read_row_image(row, base)
        except ImageReadError as exc:
            msg = str(exc)
            add("inconsistent_size" if "differ in H/W" in msg else "unreadable", msg)
            continue
        except Exception as exc:  # noqa: BLE001 - a validator must report, not crash, on any bad file
            add("unreadable", f"{type(exc).__name__}: {exc}")
            continue
        c = int(img.shape[0])
        if c == 0 or img.shape[1] == 0 or img.shape[2] == 0:
            add("channel_count", f"image is empty (shape {tuple(img.shape)})")
        elif c > c_max:
            add("channel_count", f"{c} channels > C_max={c_max}")
        if names and len(names) != c:
            add("channel_name_count", f"{len(names)} channel_names {names} for {c} channels")
        if img.size and not np.isfinite(img).all():
            bad = [k for k in range(c) if not np.isfinite(img[k]).all()]
            add("nan_pixels", f"non-finite (NaN/inf) pixels in channel(s) {bad}")
    problems.sort(key=lambda p: (p.row or 0, p.kind))
    return problems


def format_problems(problems: Sequence[Problem]) -> str:
    return "\n".join(str(p) for p in problems)
