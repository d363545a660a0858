"""Read a feature table (one row per cell, image or well) into ``(meta, X [N, F], feature names)``.

Formats, by suffix:

- ``.parquet``: when the schema metadata holds a ``chada`` key (JSON with ``feature_columns`` and
  ``metadata_columns``, as ``chada embed --out x.parquet`` writes it), those lists are used as is.
  Otherwise the rule of :func:`split_columns` decides.
- ``.h5ad``: ``X`` is the features, ``obs`` the metadata, ``var_names`` the feature names.
- ``.npz``: a ``chada embed`` / ``chada features`` file (:func:`chada.encode.store.load_embeddings`);
  ``pool`` picks the feature array (default ``cls``), features are named ``<pool>_0000`` ...
- ``.csv``: as a Parquet file without schema metadata.

The rule without schema metadata: a column is a feature when it is numeric (not bool) and not
metadata-like. Metadata-like means a name that starts with ``Metadata_`` (pycytominer's
convention) or is one of :data:`METADATA_NAMES` (case-insensitive; the platemap's and the
single-cell crop's columns: plate, well, site, compound, dose, object_id, centroid, area, bbox ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from chada.errors import InputError

__all__ = ["METADATA_NAMES", "read_feature_table", "split_columns"]

METADATA_NAMES = frozenset((
    "plate", "well", "site", "field", "row", "column", "col", "channel", "image", "image_id", "id", "label",
    "split", "dataset", "path", "compound", "dose", "concentration", "moa", "control", "is_control", "batch",
    "day", "replicate", "object_id", "object_number", "centroid_y", "centroid_x", "centroid_row",
    "centroid_col", "area", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "n_cells", "count", "object_count",
))  # fmt: skip


def _metadata_like(name: str) -> bool:
    low = str(name).lower()
    return low.startswith("metadata_") or low in METADATA_NAMES or low.startswith("bbox_")


def split_columns(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(metadata columns, feature columns)`` of a table without schema metadata (the rule above)."""
    feats = [
        c for c in df.columns
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) and not _metadata_like(c)
    ]  # fmt: skip
    return [c for c in df.columns if c not in feats], feats


def _from_frame(df: pd.DataFrame, meta_cols: list[str], feat_cols: list[str], path: Path) -> tuple:
    missing = [c for c in meta_cols + feat_cols if c not in df.columns]
    if missing:
        raise InputError(f"{path}: columns named in its 'chada' schema metadata are missing: {missing[:5]}")
    if not feat_cols:
        raise InputError(f"{path}: no feature column (numeric and not metadata-like); columns: {list(df.columns)[:8]}")
    X = df[feat_cols].to_numpy(dtype=np.float64)
    return df[meta_cols].reset_index(drop=True), X, [str(c) for c in feat_cols]


def _read_parquet(path: Path) -> tuple:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    schema_meta = table.schema.metadata or {}
    df = table.to_pandas()
    if b"chada" in schema_meta:
        spec = json.loads(schema_meta[b"chada"])
        return _from_frame(df, list(spec.get("metadata_columns", [])), list(spec["feature_columns"]), path)
    meta_cols, feat_cols = split_columns(df)
    return _from_frame(df, meta_cols, feat_cols, path)


def _read_h5ad(path: Path) -> tuple:
    import anndata

    ad = anndata.read_h5ad(path)
    X = ad.X.toarray() if hasattr(ad.X, "toarray") else np.asarray(ad.X)
    return ad.obs.reset_index(drop=True), X.astype(np.float64), [str(v) for v in ad.var_names]


def _read_npz(path: Path, pool: str) -> tuple:
    from chada.encode.store import load_embeddings

    emb = load_embeddings(path)
    try:
        X = emb.get(pool)
    except KeyError as exc:
        raise InputError(f"{path}: {exc.args[0]}") from None
    return emb.meta.reset_index(drop=True), X.astype(np.float64), [f"{pool}_{i:04d}" for i in range(X.shape[1])]


def read_feature_table(path: str | os.PathLike, pool: str = "cls") -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """``(meta [N rows], X float64 [N, F], F feature names)`` of a ``.parquet``/``.h5ad``/``.npz``/``.csv``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such feature table")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".h5ad":
        return _read_h5ad(path)
    if suffix == ".npz":
        return _read_npz(path, pool)
    if suffix == ".csv":
        df = pd.read_csv(path)
        return _from_frame(df, *split_columns(df), path)
    raise InputError(f"{path}: unknown feature table format {suffix!r}; use .parquet, .h5ad, .npz or .csv")
