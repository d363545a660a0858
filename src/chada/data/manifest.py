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

Bad manifests: a missing path raises ``FileNotFoundError``; a directory, an unknown suffix, a file
that does not parse as CSV/TSV/Parquet (binary garbage, bad quoting, empty file, corrupt Parquet)
raise :class:`ManifestError` naming the file; :func:`validate_columns` refuses missing required
columns and a manifest without rows. :func:`read_row_image` names the row's image id in every read
error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chada.data.manifest_header import check_header
from chada.data.manifest_rows import (  # one row's paths, names and pixels (re-exported here)
    READ_HINT,
    SEP,
    _is_missing,
    _read_row_raw,
    read_row_image,
    row_channel_names,
    row_paths,
    split_list,
)
from chada.data.row_checks import patch_problems, read_error_kind
from chada.errors import InputError, short_message, type_name

__all__ = [
    "REQUIRED_COLUMNS",
    "ManifestError",
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
    "validate_columns",
    "SEP",
    "READ_HINT",
]

REQUIRED_COLUMNS = ("image_id", "dataset", "channel_names")
STANDARD_COLUMNS = ("image_id", "dataset", "channel_files", "file", "channel_names", "split", "label")
SPLITS = ("train", "val", "test")


class ManifestError(InputError):
    """A manifest that cannot be used as a whole: unreadable, missing columns, no rows."""


@dataclass(frozen=True)
class Problem:
    """One defect found in a manifest.

    Attributes:
        row: 1-based data row (``None`` for a manifest-wide problem such as a missing column).
        image_id: the row's ``image_id`` (``None`` when missing or manifest-wide).
        kind: short machine-readable category, e.g. ``"missing_file"``.
        message: human-readable explanation.
        severity: ``"error"`` (the row cannot be used) or ``"warning"`` (it can, with a change the
            message names, e.g. NaN pixels replaced under ``nan_policy="replace"``).
    """

    row: int | None
    image_id: str | None
    kind: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = "manifest" if self.row is None else f"row {self.row}"
        ident = f" ({self.image_id})" if self.image_id else ""
        tag = self.kind if self.severity == "error" else f"{self.kind}, {self.severity}"
        return f"{where}{ident}: [{tag}] {self.message}"


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest (``.csv``, ``.tsv``, ``.parquet``/``.pq``) as a DataFrame of its raw columns.

    ``image_id``/``dataset``/path/name columns are read as strings so ids such as ``"007"`` survive.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: a directory, an unknown suffix, or a file that does not parse.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"manifest not found: {p}")
    if p.is_dir():
        raise ManifestError(f"{p}: is a directory; a manifest is a .csv, .tsv or .parquet file")
    suf = p.suffix.lower()
    str_cols = {
        c: "string" for c in ("image_id", "dataset", "channel_files", "file", "channel_names", "split")
    }
    if suf not in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        raise ManifestError(f"{p}: manifest must be .csv, .tsv or .parquet, got {suf!r}")
    check_header(p, suf, ManifestError)  # not a FIFO; no column twice (pandas would rename it silently)
    try:
        if suf in (".parquet", ".pq"):
            df = pd.read_parquet(p)
            for c in str_cols:
                if c in df.columns:
                    df[c] = df[c].astype("string")
        else:
            df = pd.read_csv(p, sep="\t" if suf == ".tsv" else ",", dtype=str_cols, keep_default_na=True)
    except PermissionError:
        raise
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise ParserError, EmptyDataError,
        # UnicodeDecodeError, ArrowInvalid, OSError...: all mean "this file is not a readable table"
        kind = "Parquet" if suf in (".parquet", ".pq") else "CSV/TSV"
        why = short_message(f"{type_name(exc)}: {exc}", limit=200, one_line=True)
        raise ManifestError(f"{p}: not a readable {kind} manifest ({why})") from exc
    return df.reset_index(drop=True)


def validate_columns(df: pd.DataFrame, path: str | Path | None = None, allow_empty: bool = False) -> None:
    """Refuse a manifest without its required columns or (unless ``allow_empty``) without rows.

    Raises:
        ManifestError: naming the manifest and the missing columns, or saying it has 0 images.
    """
    name = str(path) if path is not None else "manifest"
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if "channel_files" not in df.columns and "file" not in df.columns:
        missing.append("channel_files or file")
    if missing:
        raise ManifestError(
            f"{name}: required column(s) missing: {', '.join(missing)} (columns found: {list(df.columns)})"
        )
    if len(df) == 0 and not allow_empty:
        raise ManifestError(f"{name}: 0 images (the manifest has a header but no rows)")


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest as CSV or Parquet (chosen by suffix), atomically (a full disk names ``path``)."""
    from chada.io import atomic_write_text, atomic_writer

    p = Path(path)
    if p.suffix.lower() in (".parquet", ".pq"):
        with atomic_writer(p) as fh:
            df.to_parquet(fh, index=False)
    else:
        atomic_write_text(p, df.to_csv(index=False, sep="\t" if p.suffix.lower() == ".tsv" else ","))
    return p


def check_manifest(
    path: str | Path,
    c_max: int = 10,
    root: str | Path | None = None,
    read_pixels: bool = True,
    nan_policy: str = "error",
    patch_size: int | None = None,
) -> list[Problem]:
    """Validate a manifest and return EVERY problem found (empty list = valid).

    Checks: the file parses, required columns exist, at least one row; per row: required fields
    present, exactly one of ``channel_files``/``file``, files exist, image readable and not empty,
    channel count in ``1..c_max``, ``channel_names`` count equals channel count, channel names valid
    (the same rule :mod:`chada.data.channels` applies in ``embed``: none empty, none twice, case
    folded), all channels share H/W, no NaN (or inf) pixels, ``split`` value valid; and across rows:
    duplicate ``image_id`` (the first row names the later ones, each later one names the first).

    Args:
        path: manifest file.
        c_max: largest channel count the model accepts.
        root: folder relative paths are resolved against (default: the manifest's folder).
        read_pixels: read every image (needed for NaN / H/W / count checks); ``False`` only checks
            that the files exist, for a quick pass over a very large manifest.
        nan_policy: ``"error"`` (default): NaN/inf pixels are a problem; ``"replace"``: they are
            reported with ``severity="warning"`` (the reader would replace them), not as errors.
        patch_size: flag images too small for, or not a multiple of, this patch (:mod:`chada.data.row_checks`).

    Returns:
        the problems, by row; ``severity == "error"`` ones make the manifest unusable.
    """
    from chada.data.readers import NAN_POLICIES

    if nan_policy not in ("error", "replace"):
        raise ValueError(f"check_manifest: nan_policy must be 'error' or 'replace' (of {NAN_POLICIES})")
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
    if len(df) == 0:
        problems.append(Problem(None, None, "empty", "0 images: the manifest has a header but no rows"))
        return problems

    ids = df["image_id"]
    dup_mask = (ids.notna() & ids.duplicated(keep=False)).to_numpy()
    for i in np.flatnonzero(dup_mask):
        rows = [int(j) + 1 for j in np.flatnonzero((ids == ids.iloc[i]).fillna(False).to_numpy())]
        if rows[0] == i + 1:
            msg = f"image_id {ids.iloc[i]!r} is used again on row(s) {', '.join(map(str, rows[1:]))}"
        else:
            msg = f"image_id {ids.iloc[i]!r} is already used on row {rows[0]}"
        problems.append(Problem(int(i) + 1, str(ids.iloc[i]), "duplicate_id", msg))

    for i, row in enumerate(df.to_dict("records")):
        problems += _row_problems(
            row, i + 1, list(df.columns), base, c_max, read_pixels, nan_policy, patch_size
        )
    problems.sort(key=lambda p: (p.row or 0, p.kind))
    return problems


def _row_problems(row: dict, rnum: int, columns: Sequence[str], base: Path, c_max: int, read_pixels: bool,
                  nan_policy: str, patch_size: int | None = None) -> list[Problem]:  # fmt: skip
    """Every problem of one manifest row (``rnum`` is 1-based), in the order they are checked."""
    from chada.data.channel_names import ChannelNameError, validate_channel_names
    from chada.data.readers import ImageReadError, nonfinite_summary

    problems: list[Problem] = []
    iid = None if _is_missing(row.get("image_id")) else str(row["image_id"])

    def add(kind: str, msg: str, severity: str = "error") -> None:
        problems.append(Problem(rnum, iid, kind, msg, severity))

    if iid is None:
        add("missing_value", "image_id is empty")
    if "dataset" in columns and _is_missing(row.get("dataset")):
        add("missing_value", "dataset is empty")
    if "split" in columns and not _is_missing(row.get("split")) and str(row["split"]).strip() not in SPLITS:
        add("bad_split", f"split {row['split']!r} is not one of {SPLITS}")
    names = row_channel_names(row)
    if not names:
        if "channel_names" in columns:  # a missing column is reported once, above
            add("missing_value", "channel_names is empty")
    else:
        try:
            validate_channel_names(names, iid)
        except ChannelNameError as exc:
            msg = str(exc)
            prefix = f"image {iid!r}: "
            add("channel_names", msg[len(prefix) :] if msg.startswith(prefix) else msg)
    try:
        kind, paths = row_paths(row, base)
    except ValueError as exc:
        add("no_file", str(exc))
        return problems
    absent = [p for p in paths if not p.exists()]
    if absent:
        add("missing_file", "file(s) not found: " + ", ".join(str(p) for p in absent))
        return problems
    if not read_pixels:
        if kind == "channel_files" and names and len(names) != len(paths):
            add("channel_name_count", f"{len(names)} channel_names for {len(paths)} channel files")
        return problems
    try:
        img, _ = _read_row_raw(row, base)
    except ImageReadError as exc:
        msg = str(exc)
        add(read_error_kind(msg), msg)
        return problems
    except Exception as exc:  # noqa: BLE001 - a validator must report, not crash, on any bad file
        add("unreadable", f"{type(exc).__name__}: {exc}")
        return problems
    c = int(img.shape[0])
    if c == 0 or img.shape[1] == 0 or img.shape[2] == 0:
        add("channel_count", f"image is empty (shape {tuple(img.shape)})")
    elif c > c_max:
        add("channel_count", f"{c} channels > C_max={c_max}")
    if names and len(names) != c:
        add("channel_name_count", f"{len(names)} channel_names {names} for {c} channels")
    for kind, msg, severity in patch_problems(int(img.shape[1]), int(img.shape[2]), patch_size):
        add(kind, f"{msg} ({paths[0]})", severity)
    detail = nonfinite_summary(img, names if len(names) == c else None, paths) if img.size else ""
    if detail:
        src = f" in {paths[0]}" if len(paths) == 1 else ""
        if nan_policy == "error":
            add(
                "nan_pixels",
                f"non-finite pixels{src}: {detail} (fix the file, or read with nan_policy='replace')",
            )
        else:
            add("nan_pixels", f"non-finite pixels{src}, replaced when read: {detail}", severity="warning")
    return problems


def format_problems(problems: Sequence[Problem]) -> str:
    return "\n".join(str(p) for p in problems)
