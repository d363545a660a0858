"""The ``chada features`` route: hand-made feature kinds over a manifest, into a feature file.

``features_for_manifest(M, "shortcut", "emb/shortcut.npz")`` writes an
:class:`chada.encode.store.EmbeddingSet` that the evaluation treats like any model's embeddings:
``features = {"cls": X, "all": X}`` (the same ``[N, F]`` matrix under both pool names),
``info = {"model": kind, "family": "handmade", "feature_names": [...], ...}``, ``meta`` = the manifest
rows (same order as the images) + ``channel_names`` (list) + ``n_channels``; for ``kind="shortcut"``
the shortcut columns (``cell_count``, ``mean_intensity``, ...) are meta columns too, so shortcut
probes can read them by name.

:class:`FeatureKindEncoder` is the :class:`~chada.encode.encoders.Encoder` of one kind. Unlike
``chada embed --model handmade`` (:class:`~chada.encode.encoders.HandmadeEncoder`, nuclear channel
found from the pixels), it reads each image's channel names: the first nuclear stain (DAPI, Hoechst,
...) is the nuclear channel, and such an image is never treated as RGB histology.
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
import torch

from chada.encode.encoders import Encoder
from chada.features.extract import KINDS, extract_features
from chada.features.nuclei import nuclear_index_from_names
from chada.models.batch import ChannelBatch

__all__ = ["FeatureKindEncoder", "features_for_manifest"]


class FeatureKindEncoder(Encoder):
    """One hand-made feature kind (:data:`chada.features.extract.KINDS`) as an encoder."""

    def __init__(self, kind: str, layout: str = "pooled") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; choose one of {KINDS}")
        self.kind, self.layout = kind, layout
        self.info = {"model": kind, "family": "handmade", "kind": kind, "layout": layout}

    def features(self, samples: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
        """``([N, F] float64, column names)`` of samples with ``image`` ``[C, H, W]`` and ``channel_names``
        (``where``, if present, names the image in error messages)."""
        images, where, nuc, stains = [], [], [], []
        for s in samples:
            img = s["image"]
            images.append(img.numpy() if isinstance(img, torch.Tensor) else np.asarray(img))
            where.append(str(s.get("where") or f"image {s.get('image_id')}"))
            idx = nuclear_index_from_names(s["channel_names"])
            nuc.append("auto" if idx is None else idx)
            # A named nuclear stain means fluorescence, not RGB histology: no H&E separation then.
            stains.append("auto" if idx is None else "none")
        return extract_features(images, self.kind, layout=self.layout, nuclear_channel=nuc, names=where, stains=stains)

    def encode_samples(
        self,
        samples: list[dict[str, Any]],
        pool_map: dict[str, str],
        device: str | torch.device | None = None,
        policy: Any = None,
    ) -> dict[str, np.ndarray]:
        x = self.features(samples)[0].astype(np.float32)
        return {p: x for p in pool_map}

    def encode_batch(
        self, batch: ChannelBatch, pools: Sequence[str], device: str | torch.device | None = None
    ) -> dict[str, np.ndarray]:
        # A batch carries slots, not names: the nuclear channel is then found from the pixels.
        arrays = [x.detach().cpu().float().numpy() for x in batch.split()]
        x = extract_features(arrays, self.kind, layout=self.layout)[0].astype(np.float32)
        return {p: x for p in pools}


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
        the written :class:`chada.encode.store.EmbeddingSet` (``features["cls"]`` ==
        ``features["all"]``, ``[N, F]`` float32).
    """
    from tqdm.auto import tqdm

    from chada.data.dataset import ManifestDataset
    from chada.encode.store import EmbeddingSet, save_embeddings

    encoder = FeatureKindEncoder(kind, layout)
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
        samples = []
        for i in range(start, min(start + chunk_size, n)):
            img, ch_names = ds.read(i)
            where = f"image {ds.frame['image_id'].iloc[i]!s} (row {i + 1} of {manifest_path})"
            samples.append({"image": img, "channel_names": list(ch_names), "where": where})
            used_names.append(list(ch_names))
            channel_counts.add(int(img.shape[0]))
        if layout == "per_channel" and len(channel_counts) > 1:
            raise ValueError(
                f"layout='per_channel' needs one fixed channel set, but {manifest_path} has images with "
                f"{sorted(channel_counts)} channels; use layout='pooled'"
            )
        x, cols = encoder.features(samples)
        columns = columns or cols
        blocks.append(x)
        bar.update(len(samples))
    bar.close()
    assert columns is not None
    feats = np.concatenate(blocks).astype(np.float32)
    meta = _meta(ds.frame, used_names, kind, columns, feats)
    info = encoder.info | {
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


def _meta(
    frame: pd.DataFrame, used_names: list[list[str]], kind: str, columns: list[str], feats: np.ndarray
) -> pd.DataFrame:
    """Manifest rows + channel names/count; the shortcut kind's columns too (read by name later)."""
    meta = _plain_meta(frame)
    meta["channel_names"] = pd.Series(used_names, index=meta.index, dtype=object)
    meta["n_channels"] = [len(x) for x in used_names]
    if kind == "shortcut":
        clash = [c for c in columns if c in meta.columns and c != "n_channels"]
        if clash:
            warnings.warn(
                f"manifest columns {clash} are replaced by the shortcut features of the same name in the meta",
                stacklevel=3,
            )
        for j, col in enumerate(columns):
            meta[col] = feats[:, j].astype(np.float64)
    return meta
