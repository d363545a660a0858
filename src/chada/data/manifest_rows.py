"""One manifest row: its files, its channel names and its pixels (:mod:`chada.data.manifest` has the
schema and re-exports every public name here).

:func:`read_row_image` names the row's image id in every read error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.errors import InputError

__all__ = ["SEP", "READ_HINT", "split_list", "row_paths", "row_channel_names", "read_row_image"]

SEP = ";"
READ_HINT = "run `chada data check` on the manifest to list every bad row"


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


def _read_row_raw(row: pd.Series | dict, root: str | Path) -> tuple[np.ndarray, list[Path]]:
    """A row's pixels with NaN/inf kept, and its files (errors name the file, not the image)."""
    from chada.data.readers import read_channels, read_image

    kind, paths = row_paths(row, root)
    arr = (
        read_channels(paths, nan_policy="keep")
        if kind == "channel_files"
        else read_image(paths[0], nan_policy="keep")
    )
    return arr, paths


def read_row_image(
    row: pd.Series | dict, root: str | Path, nan_policy: str = "error", nan_fill: float | None = None
) -> np.ndarray:
    """Read a manifest row's pixels as ``[C, H, W]`` float32 (no normalisation).

    Every error names the row's ``image_id`` and the file. ``nan_policy`` / ``nan_fill``: the NaN/inf
    rule of :func:`chada.data.readers.check_finite_pixels` (default: an error naming the image, the
    channel index and name, and the file).

    Raises:
        FileNotFoundError: a file of the row does not exist.
        chada.data.readers.ImageReadError: unreadable file, empty image, or NaN/inf pixels.
        InputError: the row fills neither or both of ``channel_files`` / ``file``.
    """
    from chada.data.readers import ImageReadError, check_finite_pixels

    iid = row.get("image_id")
    who = f"image {None if _is_missing(iid) else str(iid)!r}"
    try:
        arr, paths = _read_row_raw(row, root)
    except ImageReadError as exc:
        raise ImageReadError(f"{who}: {exc}; {READ_HINT}") from exc
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{who}: {exc}; {READ_HINT}") from exc
    except ValueError as exc:  # row_paths: no file / both file columns
        raise InputError(f"{who}: {exc}; {READ_HINT}") from exc
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ImageReadError(
            f"{who}: the image is empty (shape {tuple(arr.shape)}) in {paths[0]}; {READ_HINT}"
        )
    return check_finite_pixels(
        arr,
        image_id=None if _is_missing(iid) else str(iid),
        channel_names=row_channel_names(row),
        files=paths,
        nan_policy=nan_policy,
        nan_fill=nan_fill,
    )
