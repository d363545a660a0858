"""Batch API over the hand-made extractors, and a writer of embeddings files from a manifest.

``features_for_manifest(M, "shortcut", "emb/shortcut.npz")`` writes an
:class:`chada.eval.embeddings.EmbeddingSet` that the evaluation treats like any model's embeddings:
``features = {"cls": X, "all": X}`` (the same ``[N, F]`` matrix under both pool names),
``info = {"model": kind, "family": "handmade", "feature_names": [...], ...}``, ``meta`` = the manifest
rows (same order as the images) + ``channel_names`` (list) + ``n_channels``; for ``kind="shortcut"``
the shortcut columns (``cell_count``, ``mean_intensity``, ...) are meta columns too, so shortcut
probes can read them by name.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.features.cellprofiler import cellprofiler_features
from chada.features.handmade import handmade_features
from chada.features.nuclei import nuclear_index_from_names
from chada.features.shortcut import shortcut_features
from chada.features.tissue import tissue_features

__all__ = ["KINDS", "extract_features", "features_for_manifest"]

KINDS = ("shortcut", "handmade", "cellprofiler", "tissue")


def extract_features(
    images: Sequence[np.ndarray],
    kind: str,
    layout: str = "pooled",
    nuclear_channel: int | str | Sequence[int | str] = "auto",
    names: Sequence[str] | None = None,
    progress: bool = False,
    stains: str | Sequence[str] = "auto",
) -> tuple[np.ndarray, list[str]]:
    """Features of one kind for N images ``[C_i, H, W]``: ``([N, F] float64, column names)``.

    Args:
        kind: one of :data:`KINDS`.
        layout: ``"pooled"`` or ``"per_channel"`` (handmade and cellprofiler only; shortcut and
            tissue have one fixed layout and refuse ``"per_channel"``).
        nuclear_channel: per image or for all: nuclear channel index or ``"auto"``.
        names: image names for error messages.
        stains: tissue only, per image or for all: ``"auto"``, ``"hed"`` or ``"none"``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {KINDS}")
    if kind in ("shortcut", "tissue") and layout != "pooled":
        raise ValueError(f"kind={kind!r} has a single channel-independent layout; use layout='pooled'")
    common: dict[str, Any] = {"nuclear_channel": nuclear_channel, "names": names, "progress": progress}
    if kind == "shortcut":
        return shortcut_features(images, **common)
    if kind == "handmade":
        return handmade_features(images, layout=layout, return_names=True, **common)
    if kind == "cellprofiler":
        return cellprofiler_features(images, layout=layout, return_names=True, **common)
    return tissue_features(images, stains=stains, return_names=True, **common)


def _plain_meta(frame: pd.DataFrame) -> pd.DataFrame:
    meta = frame.copy()
    for col in meta.columns:  # nullable pandas dtypes -> plain objects, so JSON keeps None
        if isinstance(meta[col].dtype, pd.StringDtype):
            meta[col] = meta[col].astype(object).where(meta[col].notna(), None)
    return meta


def features_for_manifest(
    manifest_path: str | os.PathLike,
    kind: str,
    out_path: str | os.PathLike,
    image_size: int | None = None,
    *,
    layout: str = "pooled",
    normalize: str = "percentile",
    chunk_size: int = 64,
    progress: bool = True,
):
    """Compute ``kind`` features for every image of a manifest and write an embeddings ``.npz``.

    Images are read through :class:`chada.data.ManifestDataset` (per-channel normalisation
    ``normalize``, optional square resize to ``image_size``). The nuclear channel of each image is
    the first channel whose name marks a nuclear stain (DAPI, Hoechst, DNA, ...), else ``"auto"``;
    for ``kind="tissue"`` such an image is treated as fluorescence (no H&E separation).
    Images are processed in chunks of ``chunk_size`` so memory stays bounded on large manifests.

    Returns:
        the written :class:`chada.eval.embeddings.EmbeddingSet` (``features["cls"]`` ==
        ``features["all"]``, ``[N, F]`` float32).
    """
    from tqdm.auto import tqdm

    from chada.data.dataset import ManifestDataset
    from chada.eval.embeddings import EmbeddingSet, save_embeddings

    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {KINDS}")
    t0 = time.time()
    ds = ManifestDataset(manifest_path, size=image_size, normalize=normalize)
    n = len(ds)
    if n == 0:
        raise ValueError(f"manifest {manifest_path} has no images")
    blocks: list[np.ndarray] = []
    used_names: list[list[str]] = []
    columns: list[str] | None = None
    channel_counts: set[int] = set()
    bar = tqdm(total=n, desc=f"{kind} features", unit="img", disable=not progress)
    for start in range(0, n, chunk_size):
        images, ids, nuc, stains = [], [], [], []
        for i in range(start, min(start + chunk_size, n)):
            img, ch_names = ds.read(i)
            images.append(img.numpy())
            ids.append(f"image {ds.frame['image_id'].iloc[i]!s} (row {i + 1} of {manifest_path})")
            idx = nuclear_index_from_names(ch_names)
            nuc.append("auto" if idx is None else idx)
            # A named nuclear stain means fluorescence, not RGB histology: no H&E separation then.
            stains.append("auto" if idx is None else "none")
            used_names.append(list(ch_names))
            channel_counts.add(int(img.shape[0]))
        if layout == "per_channel" and len(channel_counts) > 1:
            raise ValueError(
                f"layout='per_channel' needs one fixed channel set, but {manifest_path} has images with "
                f"{sorted(channel_counts)} channels; use layout='pooled'"
            )
        x, cols = extract_features(images, kind, layout=layout, nuclear_channel=nuc, names=ids, stains=stains)
        columns = columns or cols
        blocks.append(x)
        bar.update(len(images))
    bar.close()
    assert columns is not None
    feats = np.concatenate(blocks).astype(np.float32)

    meta = _plain_meta(ds.frame)
    meta["channel_names"] = pd.Series(used_names, index=meta.index, dtype=object)
    meta["n_channels"] = [len(x) for x in used_names]
    if kind == "shortcut":
        clash = [c for c in columns if c in meta.columns and c != "n_channels"]
        if clash:
            warnings.warn(
                f"manifest columns {clash} are replaced by the shortcut features of the same name in the meta",
                stacklevel=2,
            )
        for j, col in enumerate(columns):
            meta[col] = feats[:, j].astype(np.float64)
    info = {
        "model": kind,
        "family": "handmade",
        "kind": kind,
        "layout": layout,
        "feature_names": list(columns),
        "feature_dims": {"cls": int(feats.shape[1]), "all": int(feats.shape[1])},
        "pools": ["cls", "all"],
        "note": "hand-made features: the same vector is stored under every pool name",
        "image_size": image_size,
        "normalize": normalize,
        "manifest": str(Path(manifest_path)),
        "n_images": n,
        "channel_counts": sorted(channel_counts),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - t0, 3),
    }
    emb = EmbeddingSet({"cls": feats, "all": feats.copy()}, meta, info)
    save_embeddings(emb, out_path)
    return emb
