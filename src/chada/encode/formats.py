"""The feature file's three formats, chosen by the suffix of the output path.

- ``.npz``: :mod:`chada.encode.store`'s layout (small data; the whole table is built in memory).
- ``.parquet``: one row per image (or cell): the metadata columns, then one float32 column per
  feature dimension, ``chada_<pool>_<jjjj>`` (``chada_cls_0000``, ...). Written one row group per
  chunk with :class:`pyarrow.parquet.ParquetWriter` (:class:`ParquetSink`), so memory holds one
  chunk. The run's info is JSON in the file's key-value metadata under ``chada``, with the lists
  ``feature_columns`` (every feature column, all pools), ``pool_columns`` (``{pool: [column, ...]}``),
  ``metadata_columns`` and ``list_columns``.
  pandas, polars and pycytominer read it as it is.
- ``.h5ad``: AnnData: ``X`` = the first pool's features (``var_names`` = its column names), every
  other pool in ``obsm[<pool>]``, ``obs`` = the metadata (list columns such as ``channel_names``
  joined with ``;``), ``uns["chada"]`` = the info as JSON. Built in memory at the end of a run.

Every reader goes through :func:`chada.encode.store.load_embeddings`, which dispatches here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.io import remove_stale_temps

__all__ = [
    "FORMATS",
    "ParquetSink",
    "feature_column",
    "output_format",
    "read_h5ad",
    "read_parquet",
    "write_h5ad",
]

FORMATS = (".npz", ".parquet", ".h5ad")
PREFIX = "chada"
KEY = "chada"
LIST_SEP = ";"


def output_format(path: str | os.PathLike) -> str:
    """``".npz"``, ``".parquet"`` or ``".h5ad"`` from the path's suffix, else a ValueError."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"output must end in {', '.join(FORMATS)}; got {path}")
    return suffix


def feature_column(pool: str, j: int) -> str:
    """Column name of feature ``j`` of ``pool``: ``chada_cls_0000``."""
    return f"{PREFIX}_{pool}_{j:04d}"


def _list_columns(meta: pd.DataFrame) -> list[str]:
    return [
        c
        for c in meta.columns
        if meta[c].dtype == object and meta[c].map(lambda v: isinstance(v, list)).any()
    ]


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class ParquetSink:
    """A Parquet file written one row group per :meth:`write`; appears under its name at :meth:`close`.

    Args:
        path: the final ``.parquet`` path (a temp file beside it is written meanwhile).
        schema: arrow types of the metadata columns the manifest holds (the full manifest's types,
            so that a column null in one chunk keeps its type); other columns are inferred.
        info: the run's info, stored in the schema metadata with the column lists (the writer opens at
            the first row group, so everything in it must be known by then).
    """

    def __init__(
        self, path: str | os.PathLike, schema: Any = None, info: dict[str, Any] | None = None
    ) -> None:
        self.info = dict(info or {})
        self.path = Path(path)
        self.tmp = _temp(self.path)
        remove_stale_temps(self.path.parent)
        self.base_schema = schema
        self.writer: Any = None
        self.schema: Any = None
        self.columns: dict[str, list[str]] = {}
        self.meta_columns: list[str] = []
        self.list_columns: list[str] = []
        self.rows = 0

    def _open(self, meta: pd.DataFrame, feats: dict[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        inferred = pa.Schema.from_pandas(meta, preserve_index=False)
        base = self.base_schema
        # a column with no value in the first chunk takes its type over the whole manifest
        fields = [
            base.field(f.name)
            if pa.types.is_null(f.type) and base is not None and f.name in base.names
            else f
            for f in inferred
        ]
        self.columns = {p: [feature_column(p, j) for j in range(v.shape[1])] for p, v in feats.items()}
        clash = [c for cols in self.columns.values() for c in cols if c in meta.columns]
        if clash:
            raise ValueError(f"metadata columns {clash[:3]} clash with the feature columns; rename them")
        fields += [pa.field(c, pa.float32()) for cols in self.columns.values() for c in cols]
        self.meta_columns = list(meta.columns)
        self.list_columns = _list_columns(meta)
        info = dict(self.info, feature_dims={p: len(c) for p, c in self.columns.items()},
                    feature_columns=[c for cols in self.columns.values() for c in cols],
                    pool_columns=self.columns, metadata_columns=self.meta_columns,
                    list_columns=self.list_columns)  # fmt: skip
        self.schema = pa.schema(fields, metadata={KEY: json.dumps(info, default=str)})
        self.writer = pq.ParquetWriter(self.tmp, self.schema)

    def write(self, meta: pd.DataFrame, feats: dict[str, np.ndarray]) -> None:
        """Append one row group: ``meta`` (n rows) and ``{pool: [n, D] float32}``."""
        import pyarrow as pa

        if len(meta) == 0:
            return
        if self.writer is None:
            self._open(meta, feats)
        arrays = [
            pa.Array.from_pandas(meta[f.name], type=f.type)
            for f in self.schema
            if f.name in self.meta_columns
        ]
        for p, cols in self.columns.items():
            block = np.ascontiguousarray(feats[p], dtype=np.float32)
            arrays += [pa.array(block[:, j]) for j in range(len(cols))]
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.rows += len(meta)

    def close(self) -> Path:
        """Finish the file and move it to its name."""
        if self.writer is None:
            raise ValueError(f"{self.path}: no row to write (no image or cell was kept)")
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


def _lists_back(meta: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for c in columns:
        if c in meta.columns:
            meta[c] = meta[c].map(
                lambda v: (
                    v.tolist()
                    if isinstance(v, np.ndarray)
                    else list(v)
                    if isinstance(v, (list, tuple))
                    else v
                )
            )
    return meta


def read_parquet(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, Any]]:
    """``(features, meta, info)`` of a chada Parquet file (ValueError if it has no ``chada`` metadata)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(KEY.encode())
    if raw is None:
        raise ValueError(f"{path} has no '{KEY}' metadata: not a chada embeddings file")
    info = json.loads(raw)
    info.pop("feature_columns")
    columns = info.pop("pool_columns")
    meta_cols = info.pop("metadata_columns")
    lists = info.pop("list_columns", [])
    feats = {p: np.column_stack([table.column(c).to_numpy() for c in cols]).astype(np.float32, copy=False)
             if cols else np.zeros((table.num_rows, 0), np.float32) for p, cols in columns.items()}  # fmt: skip
    meta = table.select(meta_cols).to_pandas()
    return feats, _lists_back(meta, lists), info


def write_h5ad(
    path: str | os.PathLike, features: dict[str, np.ndarray], meta: pd.DataFrame, info: dict[str, Any]
) -> Path:
    """An AnnData file: ``X`` = the first pool, ``obsm`` = the others, ``obs`` = ``meta``, ``uns`` = info."""
    import anndata as ad

    path = Path(path)
    pools = list(features)
    lists = _list_columns(meta)
    obs = meta.copy()
    for c in lists:
        obs[c] = obs[c].map(lambda v: LIST_SEP.join(map(str, v)) if isinstance(v, list) else v)
    for c in obs.columns:  # h5ad stores text as categoricals (missing values allowed); None stays missing
        if obs[c].dtype == object or isinstance(obs[c].dtype, pd.StringDtype):
            obs[c] = pd.Categorical([None if _missing(v) else str(v) for v in obs[c]])
    obs.index = pd.Index([str(i) for i in range(len(obs))])
    var = pd.DataFrame(index=[feature_column(pools[0], j) for j in range(features[pools[0]].shape[1])])
    info = dict(info, pools=pools, metadata_columns=list(meta.columns), list_columns=lists,
                obs_dtypes={c: str(meta[c].dtype) for c in meta.columns})  # fmt: skip
    adata = ad.AnnData(X=np.ascontiguousarray(features[pools[0]], np.float32), obs=obs, var=var,
                       obsm={p: np.ascontiguousarray(features[p], np.float32) for p in pools[1:]},
                       uns={KEY: json.dumps(info, default=str)})  # fmt: skip
    tmp = _temp(path)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_h5ad(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, Any]]:
    """``(features, meta, info)`` of a chada ``.h5ad`` file."""
    import anndata as ad

    adata = ad.read_h5ad(path)
    if KEY not in adata.uns:
        raise ValueError(f"{path} has no uns['{KEY}']: not a chada embeddings file")
    info = json.loads(str(adata.uns[KEY]))
    pools = info.pop("pools")
    lists = info.pop("list_columns", [])
    dtypes = info.pop("obs_dtypes", {})
    info.pop("metadata_columns", None)
    feats = {pools[0]: np.asarray(adata.X, dtype=np.float32)}
    feats.update({p: np.asarray(adata.obsm[p], dtype=np.float32) for p in pools[1:]})
    meta = adata.obs.reset_index(drop=True)
    for c in meta.columns:
        if isinstance(meta[c].dtype, (pd.StringDtype, pd.CategoricalDtype)) or dtypes.get(c) == "object":
            meta[c] = pd.Series([None if pd.isna(v) else v for v in meta[c].astype(object)], dtype=object)
    for c in lists:
        meta[c] = meta[c].map(lambda v: v.split(LIST_SEP) if isinstance(v, str) else v)
    if "channel_slots" in lists:
        meta["channel_slots"] = meta["channel_slots"].map(
            lambda v: [int(x) for x in v] if isinstance(v, list) else v
        )
    return feats, meta, info
