"""The feature file: features of every image plus the manifest's metadata, in one ``.npz``.

This is the contract between :mod:`chada.encode` (which writes it, for models and hand-made features
alike) and :mod:`chada.eval` / :mod:`chada.viz` (which read only this file, never a model).

Layout of ``EMB.npz``::

    feat_<name>   float32 [N, D_name]   one array per feature kind, e.g. feat_cls, feat_all
    meta_json     str                   pandas DataFrame (orient="split"), one row per image, same order:
                                        image_id, dataset, label, split, channel_names, ... (manifest columns)
    info_json     str                   dict: model name/path, pool kinds, created time, anything else

Row i of every ``feat_*`` array is row i of ``meta``. Written atomically (temp file + rename).

The same content can also live in a ``.parquet`` or ``.h5ad`` file (:mod:`chada.encode.formats`,
for large runs and for pandas / scanpy): :func:`save_embeddings` and :func:`load_embeddings` pick the
format from the suffix, so every reader accepts all three.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.io import atomic_write_npz

__all__ = ["EmbeddingSet", "EmbeddingSummary", "save_embeddings", "load_embeddings"]


@dataclass
class EmbeddingSet:
    """Features ``{kind: [N, D]}`` with per-row metadata ``meta`` (N rows) and free-form ``info``."""

    features: dict[str, np.ndarray]
    meta: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.meta)
        for k, v in self.features.items():
            if v.ndim != 2 or v.shape[0] != n:
                raise ValueError(
                    f"feature {k!r} has shape {v.shape}; expected [{n}, D] to match the metadata rows"
                )

    def __len__(self) -> int:
        return len(self.meta)

    def get(self, kind: str = "cls") -> np.ndarray:
        try:
            return self.features[kind]
        except KeyError:
            raise KeyError(f"no feature {kind!r} in this file; available: {sorted(self.features)}") from None

    def subset(self, rows: np.ndarray) -> EmbeddingSet:
        rows = np.asarray(rows)
        return EmbeddingSet(
            {k: v[rows] for k, v in self.features.items()},
            self.meta.iloc[rows].reset_index(drop=True),
            dict(self.info),
        )

    def save(self, path: str | os.PathLike) -> Path:
        return save_embeddings(self, path)


@dataclass
class EmbeddingSummary:
    """What a streamed run (``.parquet``) returns instead of the table: its path, rows, feature sizes, info."""

    path: Path
    n_rows: int
    feature_dims: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n_rows


def save_embeddings(emb: EmbeddingSet, path: str | os.PathLike) -> Path:
    """Write ``emb`` as ``.npz``, ``.parquet`` or ``.h5ad`` (by suffix; anything else is an ``.npz``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".h5ad"):
        from chada.encode.formats import ParquetSink, write_h5ad

        if suffix == ".h5ad":
            return write_h5ad(path, emb.features, emb.meta, emb.info)
        sink = ParquetSink(path, info=emb.info)
        sink.write(emb.meta, emb.features)
        return sink.close()
    meta = emb.meta.copy()
    for col in meta.columns:  # lists (channel names) survive JSON as lists
        if meta[col].dtype == object:
            meta[col] = meta[col].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
        elif meta[col].dtype.kind == "f" and np.isinf(meta[col].to_numpy()).any():
            # JSON writes inf as null, which reads back as "missing": keep it as "inf" (read back as inf),
            # so that the evaluation refuses an infinite target by name instead of dropping its row
            meta[col] = [
                ("inf" if v > 0 else "-inf") if np.isinf(v) else (None if np.isnan(v) else v)
                for v in meta[col]
            ]
    arrays = {f"feat_{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in emb.features.items()}
    atomic_write_npz(
        path,
        meta_json=np.array(meta.to_json(orient="split", index=False)),
        info_json=np.array(json.dumps(emb.info, default=str)),
        **arrays,
    )
    return path


def load_embeddings(path: str | os.PathLike) -> EmbeddingSet:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"embeddings file {path} not found")
    if path.suffix.lower() in (".parquet", ".h5ad"):
        from chada.encode.formats import read_h5ad, read_parquet

        try:
            feats, meta, info = (read_parquet if path.suffix.lower() == ".parquet" else read_h5ad)(path)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path} is not a chada embeddings file: {exc}") from None
        return EmbeddingSet(feats, meta, info)
    try:
        with np.load(path, allow_pickle=False) as z:
            feats = {k[len("feat_") :]: z[k] for k in z.files if k.startswith("feat_")}
            meta = pd.read_json(io.StringIO(str(z["meta_json"])), orient="split")
            info = json.loads(str(z["info_json"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a chada embeddings file: {exc}") from None
    return EmbeddingSet(feats, meta, info)
