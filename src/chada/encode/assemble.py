"""The finished chunks of a run -> the feature file, in the format of its suffix.

- ``.parquet``: streamed, one row group per chunk (memory: one chunk), through
  :class:`chada.encode.formats.ParquetSink`; returns an :class:`~chada.encode.store.EmbeddingSummary`.
- ``.npz`` / ``.h5ad``: the features assembled into preallocated arrays one chunk at a time (memory:
  the output once, plus one chunk), written by :func:`chada.encode.store.save_embeddings`; returns
  the :class:`~chada.encode.store.EmbeddingSet`.

The encoder's :meth:`~chada.encode.encoders.Encoder.finish` hook adds its columns chunk by chunk for
Parquet (it is row-wise), on the whole table for the other formats.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.encode.chunks import ChunkStore
from chada.encode.encoders import Encoder
from chada.encode.loop import chunk_meta, meta_frame
from chada.encode.store import EmbeddingSet, EmbeddingSummary, save_embeddings

__all__ = ["write_output"]


def _arrow_schema(frame: pd.DataFrame) -> Any:
    """Arrow types of the manifest's columns over all its rows (None when arrow cannot infer them)."""
    import pyarrow as pa

    plain = frame.copy()
    for col in plain.columns:
        if isinstance(plain[col].dtype, pd.StringDtype):
            plain[col] = plain[col].astype(object).where(plain[col].notna(), None)
    try:
        return pa.Schema.from_pandas(plain, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def write_output(
    target: Path, store: ChunkStore, chunks: dict[int, np.ndarray], ds: Any, policy: Any, pools: list[str],
    encoder: Encoder, info: dict[str, Any], t0: float, cells: bool,
) -> EmbeddingSet | EmbeddingSummary:  # fmt: skip
    """Write ``target`` from ``store``'s chunks ``{k: rows}`` (in order); ``info`` gets the feature
    sizes, the row count and the run's seconds."""
    if target.suffix.lower() == ".parquet":
        return _write_parquet(target, store, chunks, ds, policy, pools, encoder, info, t0, cells)
    features = store.assemble(chunks, pools)
    if cells:
        meta = pd.concat(
            [
                chunk_meta(ds.frame, rows, store.read_names(k), policy, store.read_objects(k))
                for k, rows in chunks.items()
            ],
            ignore_index=True,
        )
    else:
        rows = np.concatenate(list(chunks.values())) if chunks else np.zeros(0, np.int64)
        names = [nm for k in chunks for nm in store.read_names(k)]
        meta = meta_frame(ds.frame.iloc[rows].reset_index(drop=True), names, policy)
    info["feature_dims"] = {p: int(v.shape[1]) for p, v in features.items()}
    info["n_rows"] = len(meta)
    if len(meta):
        encoder.finish(ds, meta, info, features)
    info["seconds"] = round(time.time() - t0, 3)
    emb = EmbeddingSet(features, meta, info)
    save_embeddings(emb, target)
    return emb


def _write_parquet(
    target: Path, store: ChunkStore, chunks: dict[int, np.ndarray], ds: Any, policy: Any, pools: list[str],
    encoder: Encoder, info: dict[str, Any], t0: float, cells: bool,
) -> EmbeddingSummary:  # fmt: skip
    from chada.encode.formats import ParquetSink

    # the schema metadata is written with the first row group: the info must be complete before it
    info["n_rows"] = sum(store.count(k, rows) for k, rows in chunks.items())
    info["seconds"] = round(time.time() - t0, 3)
    sink = ParquetSink(target, schema=_arrow_schema(ds.frame), info=info)
    try:
        for k, rows in chunks.items():
            feats = store.read(k, pools)
            meta = chunk_meta(
                ds.frame, rows, store.read_names(k), policy, store.read_objects(k) if cells else None
            )
            if len(meta):
                encoder.finish(ds, meta, sink.info, feats)
            sink.write(meta, feats)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    dims = {p: len(c) for p, c in sink.columns.items()}
    return EmbeddingSummary(target, sink.rows, dims, dict(info, feature_dims=dims))
