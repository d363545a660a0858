"""``chada features --kind cp_measure``: CellProfiler per-object measurements of every field of a
manifest with an ``objects_file`` column (a label image per row) -> one table row per object.

Output by suffix: ``.parquet`` (metadata columns, ``object_id``, then one column per feature; the
schema metadata key ``chada`` lists ``feature_columns`` and ``metadata_columns``, the same contract
as ``chada embed --out x.parquet``) or ``.npz`` (the feature file of :mod:`chada.encode.store`, one
row per object, ``feature_names`` in its info).
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from chada.errors import InputError

__all__ = ["cp_measure_for_manifest", "read_labels"]


def read_labels(path: Path) -> np.ndarray:
    """An integer label image ``[H, W]`` as stored (TIFF, PNG, ``.npy``); no float conversion."""
    if not path.is_file():
        raise InputError(f"objects_file {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    except (OSError, ValueError) as exc:
        raise InputError(f"objects_file {path}: unreadable label image ({exc})") from None


def _write(df: pd.DataFrame, meta_cols: list[str], feat_cols: list[str], out: Path) -> None:
    from chada.io import atomic_write_bytes

    if out.suffix.lower() == ".npz":
        from chada.encode.store import EmbeddingSet

        X = df[feat_cols].to_numpy(np.float32)
        EmbeddingSet({"cls": X}, df[meta_cols].reset_index(drop=True), {"kind": "cp_measure",
                     "feature_names": feat_cols}).save(out)  # fmt: skip
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    spec = json.dumps({"feature_columns": feat_cols, "metadata_columns": meta_cols, "kind": "cp_measure"})
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"chada": spec.encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(out, buf.getvalue())


def cp_measure_for_manifest(
    manifest: str | os.PathLike, out: str | os.PathLike, object_name: str = "Cells",
    intensity_max: float = 65535.0, progress: bool = True, groups: dict[str, bool] | None = None,
) -> tuple[pd.DataFrame, list[str]]:  # fmt: skip
    """Measure every row's field on its ``objects_file``; returns ``(table [objects rows], feature names)``.

    Args:
        intensity_max: the pixel value that maps to 1 for every image (default: the 16-bit range).
        groups: cp_measure feature groups switched on or off, e.g. ``{"texture": False}`` (default: all).
    """
    from chada.data.manifest import load_manifest, read_row_image, row_channel_names
    from chada.features.cp_measure_kind import cp_measure_objects

    manifest, out = Path(manifest), Path(out)
    if out.suffix.lower() not in (".parquet", ".npz"):
        raise InputError(f"--out {out}: cp_measure writes .parquet or .npz")
    df = load_manifest(manifest)
    if "objects_file" not in df.columns:
        raise InputError(f"{manifest}: no 'objects_file' column; cp_measure needs a label image per row "
                         "(chada data scan --objects-pattern writes it)")  # fmt: skip
    parts, names, empty, t0 = [], None, 0, time.perf_counter()
    for i, row in df.iterrows():
        who = f"image {row.get('image_id', i)!r}"
        image = read_row_image(row, manifest.parent)
        labels = read_labels((manifest.parent / str(row["objects_file"])).expanduser())
        ids, X, cols = cp_measure_objects(image, labels, row_channel_names(row) or None, object_name,
                                          intensity_max, name=who, **(groups or {}))  # fmt: skip
        if not len(ids):
            empty += 1
            continue
        if names is not None and cols != names:
            raise InputError(f"{who}: its channels give other feature columns than the first image's; "
                             "run one manifest per channel set")  # fmt: skip
        names = cols
        meta = pd.DataFrame([row.to_dict()] * len(ids)).assign(object_id=ids)
        parts.append(pd.concat([meta.reset_index(drop=True), pd.DataFrame(X, columns=cols)], axis=1))
        if progress:
            print(f"\r{i + 1}/{len(df)} images, {sum(len(p) for p in parts)} objects", end="", flush=True)
    if progress:
        print(f" ({time.perf_counter() - t0:.1f} s)")
    if names is None:
        raise InputError(f"{manifest}: no object in any label image")
    table = pd.concat(parts, ignore_index=True)
    meta_cols = [c for c in table.columns if c not in set(names)]
    _write(table, meta_cols, names, out)
    if empty:
        import warnings

        warnings.warn(f"{empty} image(s) with no object in their label image: no rows", stacklevel=2)
    return table, names
