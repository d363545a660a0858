"""CHAMMI (Chen et al., NeurIPS 2023): WTC-11 (``Allen``, 3 ch), ``HPA`` (4 ch), ``CP`` (5 ch).

Each sub-dataset folder holds ``enriched_meta.csv`` (``file_path`` relative to the CHAMMI root,
``channel_width``, ``Label``, ``train_test_split``, boolean ``Task_one``..``Task_four``, ``cell_type``,
``Plate``) and images whose channels are laid side by side horizontally: an ``H x (W*C)`` grey image
with ``W = channel_width``. :func:`read_chammi_image` splits them into ``[C, H, W]`` the way the official
``morphem`` loader folds them (column block ``k`` is channel ``k``). The importer writes each image as a
``C``-page TIFF under ``OUT/<dataset>/`` (dtype kept) and one manifest for the three datasets, rows in
``enriched_meta.csv`` order (``chammi_row``). Channel names are ``<dataset>_ch<k>`` (position only; pass
``channel_names={"HPA": [...], ...}`` to name stains).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from chada.data.importers import ImportLayoutError, finish_manifest, require_columns

__all__ = [
    "import_chammi",
    "read_chammi_image",
    "load_meta",
    "chammi_image_path",
    "DATASETS",
    "N_CHANNELS",
    "META_COLUMNS",
    "LAYOUT",
]

DATASETS = ("Allen", "HPA", "CP")
N_CHANNELS = {"Allen": 3, "HPA": 4, "CP": 5}
META_COLUMNS = ("file_path", "channel_width", "Label", "train_test_split")
LAYOUT = """  ROOT/Allen/enriched_meta.csv, ROOT/HPA/enriched_meta.csv, ROOT/CP/enriched_meta.csv
      columns file_path, channel_width, Label, train_test_split, Task_one..Task_four (booleans),
      cell_type (HPA), Plate (CP)
  ROOT/<file_path>   PNG (or TIFF) with the channels side by side: H x (channel_width * C)"""


def load_meta(root: Path, dataset: str) -> pd.DataFrame:
    """Read ``ROOT/<dataset>/enriched_meta.csv`` and check its columns (task columns as booleans)."""
    path = root / dataset / "enriched_meta.csv"
    if not path.exists():
        raise ImportLayoutError(f"CHAMMI: expected file {path} (not found).\nExpected layout:\n{LAYOUT}")
    df = pd.read_csv(path)
    require_columns(df, META_COLUMNS, path, f"CHAMMI {dataset}")
    tasks = [t for t in df["train_test_split"].astype(str).unique() if t != "Train"]
    require_columns(df, tasks, path, f"CHAMMI {dataset} (one boolean column per train_test_split task)")
    for t in tasks:
        df[t] = _as_bool(df[t])
    return df


def _as_bool(col: pd.Series) -> pd.Series:
    if col.dtype == bool:
        return col
    return col.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


def chammi_image_path(root: Path, dataset: str, file_path: str) -> Path:
    """``file_path`` is relative to the CHAMMI root (``CP/...``); also accept it relative to the dataset."""
    p = root / file_path
    if p.exists():
        return p
    alt = root / dataset / file_path
    return alt if alt.exists() else p


def read_chammi_image(path: Path, channel_width: int, n_channels: int | None = None) -> np.ndarray:
    """Read a side-by-side CHAMMI image and return ``[C, H, channel_width]`` (source dtype kept).

    Raises:
        ImportLayoutError: the width is not a multiple of ``channel_width`` or ``C != n_channels``.
    """
    from PIL import Image

    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
    else:
        with Image.open(path) as im:
            arr = np.asarray(im)
    if (
        arr.ndim == 3
        and arr.shape[-1] in (3, 4)
        and all(np.array_equal(arr[..., 0], arr[..., k]) for k in (1, 2))
    ):
        arr = arr[..., 0]  # grey saved as RGB(A)
    if (
        arr.ndim == 3
        and n_channels is not None
        and arr.shape[0] == n_channels
        and arr.shape[-1] == channel_width
    ):
        return arr  # already [C, H, W]
    if arr.ndim != 2:
        raise ImportLayoutError(f"CHAMMI: {path} has shape {arr.shape}; expected a 2-D H x (W*C) image")
    h, wc = arr.shape
    cw = int(channel_width)
    if cw <= 0 or wc % cw:
        raise ImportLayoutError(f"CHAMMI: {path} is {wc} px wide, not a multiple of channel_width={cw}")
    c = wc // cw
    if n_channels is not None and c != n_channels:
        raise ImportLayoutError(f"CHAMMI: {path} holds {c} channels of width {cw}; expected {n_channels}")
    # column block k -> channel k (Fortran-order fold of the official loader)
    return np.ascontiguousarray(arr.reshape(h, c, cw).transpose(1, 0, 2))


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tifffile.imwrite(tmp, arr, metadata={"axes": "CYX"}, photometric="minisblack")
    os.replace(tmp, path)


def import_chammi(
    source: Path,
    out: Path,
    datasets: Sequence[str] = DATASETS,
    limit: int | None = None,
    channel_names: Mapping[str, Sequence[str]] | None = None,
    progress: bool = True,
    **_: object,
) -> Path:
    """Split every CHAMMI image into a ``C``-page TIFF and write ``OUT/manifest.csv``.

    Re-running skips images already written. ``datasets`` selects among Allen/HPA/CP (at least one
    ``ROOT/<dataset>/enriched_meta.csv`` must exist).
    """
    from tqdm.auto import tqdm

    if not source.is_dir():
        raise ImportLayoutError(
            f"CHAMMI: {source} must be the CHAMMI root folder.\nExpected layout:\n{LAYOUT}"
        )
    present = [d for d in datasets if (source / d / "enriched_meta.csv").exists()]
    if not present:
        raise ImportLayoutError(
            f"CHAMMI: none of {[str(source / d / 'enriched_meta.csv') for d in datasets]} exists.\nExpected layout:\n{LAYOUT}"
        )
    rows = []
    for ds in present:
        meta = load_meta(source, ds)
        tasks = [t for t in meta["train_test_split"].astype(str).unique() if t != "Train"]
        names = (
            list(channel_names[ds])
            if channel_names and ds in channel_names
            else [f"{ds}_ch{k}" for k in range(N_CHANNELS[ds])]
        )
        if len(names) != N_CHANNELS[ds]:
            raise ValueError(f"CHAMMI {ds}: {len(names)} channel names for {N_CHANNELS[ds]} channels")
        n = len(meta) if limit is None else min(limit, len(meta))
        for i in tqdm(range(n), desc=f"CHAMMI {ds}", disable=not progress, leave=False):
            r = meta.iloc[i]
            src = chammi_image_path(source, ds, str(r["file_path"]))
            if not src.exists():
                raise ImportLayoutError(
                    f"CHAMMI {ds}: row {i + 1} of enriched_meta.csv names {r['file_path']}, not found at {src}.\n"
                    f"Expected layout:\n{LAYOUT}"
                )
            rel = Path(ds) / Path(str(r["file_path"])).with_suffix(".tif")
            if rel.parts[1:2] == (ds,):  # file_path already starts with the dataset folder
                rel = Path(*rel.parts[1:])
            dst = out / rel
            if not dst.exists():
                _write_tiff(dst, read_chammi_image(src, int(r["channel_width"]), N_CHANNELS[ds]))
            row = {
                "image_id": f"{ds}/{r['file_path']}",
                "dataset": ds,
                "file": rel.as_posix(),
                "channel_names": ";".join(names),
                "split": "train" if str(r["train_test_split"]) == "Train" else "test",
                "label": r["Label"],
                "train_test_split": r["train_test_split"],
                "chammi_row": i,
            }
            for t in tasks:
                row[t] = bool(r[t])
            for c in ("cell_type", "Plate"):
                if c in meta.columns:
                    row[c] = r[c]
            rows.append(row)
    return finish_manifest(rows, out, "CHAMMI")
