"""Read a feature table (one row per cell, image or well) into ``(meta, X [N, F], feature names)``.

Formats, by suffix:

- a ``chada embed`` file (``.npz``; ``.parquet`` whose ``chada`` schema metadata has ``pool_columns``;
  ``.h5ad`` with ``uns['chada']``) is read by :func:`chada.encode.store.load_embeddings`, the one
  reader of feature files; ``pool`` picks the feature array (default ``cls``). Parquet features keep
  their column names (``chada_cls_0000`` ...), the others are named ``<pool>_0000`` ...
- other ``.parquet``: when the schema metadata holds a ``chada`` key with ``feature_columns`` and
  ``metadata_columns`` (``chada features --kind cp_measure``), those lists are used as is;
  otherwise the rule of :func:`split_columns` decides.
- other ``.h5ad``: ``X`` is the features, ``obs`` the metadata, ``var_names`` the feature names.
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
        raise InputError(
            f"{path}: no feature column (numeric and not metadata-like); columns: {list(df.columns)[:8]}"
        )
    X = df[feat_cols].to_numpy(dtype=np.float64)
    return df[meta_cols].reset_index(drop=True), X, [str(c) for c in feat_cols]


def _chada_spec(path: Path) -> dict | None:
    """The ``chada`` schema metadata of a Parquet file (None without it)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"chada")
    return None if raw is None else json.loads(raw)


def _read_parquet(path: Path, pool: str) -> tuple:
    spec = _chada_spec(path)
    if (
        spec is not None and "pool_columns" in spec
    ):  # a chada embed file: one pool, as load_embeddings reads it
        return _read_embeddings(path, pool, spec["pool_columns"].get(pool))
    df = pd.read_parquet(path)
    if spec is not None:
        return _from_frame(df, list(spec.get("metadata_columns", [])), list(spec["feature_columns"]), path)
    return _from_frame(df, *split_columns(df), path)


def _read_h5ad(path: Path, pool: str) -> tuple:
    import anndata

    ad = anndata.read_h5ad(path, backed="r")
    if "chada" in ad.uns:
        ad.file.close()
        return _read_embeddings(path, pool, None)
    ad = anndata.read_h5ad(path)
    X = ad.X.toarray() if hasattr(ad.X, "toarray") else np.asarray(ad.X)
    return ad.obs.reset_index(drop=True), X.astype(np.float64), [str(v) for v in ad.var_names]


def _read_embeddings(path: Path, pool: str, names: list[str] | None) -> tuple:
    """``(meta, X [N, D], names)`` of one pool of a chada feature file (``.npz``/``.parquet``/``.h5ad``)."""
    from chada.encode.store import load_embeddings

    try:
        emb = load_embeddings(path)
        X = emb.get(pool)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    except KeyError as exc:
        raise InputError(f"{path}: {exc.args[0]}") from None
    names = list(names) if names else [f"{pool}_{i:04d}" for i in range(X.shape[1])]
    return emb.meta.reset_index(drop=True), X.astype(np.float64), names


def read_feature_table(
    path: str | os.PathLike, pool: str = "cls"
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """``(meta [N rows], X float64 [N, F], F feature names)`` of a ``.parquet``/``.h5ad``/``.npz``/``.csv``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such feature table")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, pool)
    if suffix == ".h5ad":
        return _read_h5ad(path, pool)
    if suffix == ".npz":
        return _read_embeddings(path, pool, None)
    if suffix == ".csv":
        df = pd.read_csv(path)
        return _from_frame(df, *split_columns(df), path)
    raise InputError(f"{path}: unknown feature table format {suffix!r}; use .parquet, .h5ad, .npz or .csv")
