"""Map-style dataset over a manifest, and the collate functions that build :class:`ChannelBatch` es.

Sample dict returned by :class:`ManifestDataset` (and by :class:`chada.data.shards.ShardDataset`):

- ``image``: ``[C_i, H, W]`` float32 tensor; or, when the transform is multi-crop, a list of
  ``[C_i', h_v, w_v]`` views.
- ``channel_names``: ``list[str]`` (length ``C_i``; reordered / reduced if the transform dropped or
  shuffled channels, so names always describe the pixels they sit next to).
- ``channel_index``: ``[C_i'] long`` tensor of the kept channels' ORIGINAL positions (identity when the
  transform does not drop/shuffle channels).
- ``image_id`` (str), ``dataset`` (str), ``split`` (str), ``label`` (value or ``None``).
- ``meta``: dict of every other manifest column (NaN -> ``None``).

Collated dict (:func:`collate_channels`): ``batch`` (ChannelBatch), ``image_ids``, ``datasets``,
``channel_names`` (list of lists), ``labels`` (list, ``None`` for unlabelled), ``meta`` (list of dicts).
:func:`collate_multicrop` returns the same keys but ``batches``: one ChannelBatch per crop index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from chada.data.channel_names import validate_channel_names
from chada.data.manifest import (
    STANDARD_COLUMNS,
    load_manifest,
    read_row_image,
    row_channel_names,
    validate_columns,
)
from chada.data.normalize import Normalizer, get_normalizer
from chada.errors import InputError
from chada.models.batch import ChannelBatch

__all__ = [
    "ManifestDataset",
    "resize_image",
    "collate_channels",
    "collate_multicrop",
    "channel_ids_from_names",
    "make_collate",
]


def _clean(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        if value is pd.NA or value is pd.NaT:
            return None
    except TypeError:
        pass
    if isinstance(value, np.generic):
        return value.item()
    return value


def resize_image(image: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize ``[C, H, W]`` to ``[C, *size]`` (bilinear, antialiased when shrinking)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == hw:
        return image
    out = F.interpolate(image[None], size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out[0]


class ManifestDataset(Dataset):
    """Images listed in a manifest, read lazily, normalised per channel.

    Args:
        manifest: manifest path (CSV/Parquet) or an already loaded DataFrame.
        root: folder relative file paths are resolved against (default: manifest's folder, or cwd for
            a DataFrame).
        split: keep only rows of this split (``"train"``/``"val"``/``"test"``) or of these splits.
        datasets: keep only rows of these source datasets.
        transform: callable on the ``[C, H, W]`` tensor; may return a tensor, a list of views, or a
            ``(views_or_tensor, channel_index)`` tuple when it drops/shuffles channels.
        size: optional fixed output size (int or (H, W)) applied before ``transform``.
        normalize: ``"percentile"`` (default), ``"minmax"``, ``"none"``/``None`` or a :class:`Normalizer`.
        label_column: column used as ``label`` (e.g. ``"target"`` for regression).
        nan_policy: NaN/inf pixels: ``"error"`` (default; names the image, channel and file) or
            ``"replace"`` (with ``nan_fill``, else the channel's finite median; one warning per
            touched image). See :func:`chada.data.readers.check_finite_pixels`.
        nan_fill: the replacement value for ``nan_policy="replace"`` (None = the channel's median).

    Raises:
        FileNotFoundError / chada.data.manifest.ManifestError: the manifest is missing, unreadable,
            lacks a required column, or (a file) has no rows.
    """

    def __init__(
        self,
        manifest: str | Path | pd.DataFrame,
        root: str | Path | None = None,
        split: str | Sequence[str] | None = None,
        datasets: Sequence[str] | None = None,
        transform: Callable | None = None,
        size: int | tuple[int, int] | None = None,
        normalize: str | Normalizer | None = "percentile",
        label_column: str = "label",
        nan_policy: str = "error",
        nan_fill: float | None = None,
    ) -> None:
        from chada.data.readers import NAN_POLICIES

        if nan_policy not in NAN_POLICIES[:2]:
            raise ValueError(f"nan_policy must be 'error' or 'replace', got {nan_policy!r}")
        if isinstance(manifest, pd.DataFrame):
            df = manifest.reset_index(drop=True)
            validate_columns(df, "manifest DataFrame", allow_empty=True)
            self.root = Path(root) if root is not None else Path.cwd()
        else:
            df = load_manifest(manifest)
            validate_columns(df, manifest)
            self.root = Path(root) if root is not None else Path(manifest).parent
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            col = df["split"] if "split" in df.columns else pd.Series(["train"] * len(df))
            df = df[col.fillna("train").isin(splits).to_numpy()]
        if datasets is not None:
            df = df[df["dataset"].isin(list(datasets)).to_numpy()]
        self.frame = df.reset_index(drop=True)
        self._rows: list[dict[str, Any]] = self.frame.to_dict("records")
        self.transform = transform
        self.size = size
        self.normalizer = get_normalizer(normalize)
        self.label_column = label_column
        self.nan_policy = nan_policy
        self.nan_fill = nan_fill
        skip = set(STANDARD_COLUMNS) | {label_column}
        self.meta_columns = [c for c in self.frame.columns if c not in skip]

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def classes(self) -> list:
        """Sorted distinct non-missing labels (for mapping class names to indices)."""
        if self.label_column not in self.frame.columns:
            return []
        vals = {_clean(v) for v in self.frame[self.label_column].tolist()}
        vals.discard(None)
        return sorted(vals, key=lambda v: (str(type(v)), v))

    def read(self, index: int) -> tuple[Tensor, list[str]]:
        """Raw-read + normalise + resize one image: ``([C, H, W] float32, channel names)``."""
        row = self._rows[index]
        # errors name the image id and the file, also when raised in a DataLoader worker
        arr = read_row_image(row, self.root, nan_policy=self.nan_policy, nan_fill=self.nan_fill)
        names = row_channel_names(row)
        # the rule `chada embed` and `chada data check` apply: every command refuses the same rows
        validate_channel_names(names, None if row.get("image_id") is None else str(row.get("image_id")))
        if len(names) != arr.shape[0]:
            raise InputError(
                f"image {row.get('image_id')!r}: {len(names)} channel_names for {arr.shape[0]} channels "
                "(run `chada data check` on the manifest)"
            )
        img = torch.from_numpy(self.normalizer(arr))
        if self.size is not None:
            img = resize_image(img, self.size)
        return img, names

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self._rows[index]
        img, names = self.read(index)
        return make_sample(
            img,
            names,
            image_id=str(row["image_id"]),
            dataset=str(_clean(row.get("dataset")) or ""),
            split=str(_clean(row.get("split")) or "train"),
            label=_clean(row.get(self.label_column)),
            meta={c: _clean(row.get(c)) for c in self.meta_columns},
            transform=self.transform,
        )


def make_sample(
    img: Tensor,
    names: list[str],
    image_id: str,
    dataset: str,
    split: str,
    label: Any,
    meta: dict[str, Any],
    transform: Callable | None,
) -> dict[str, Any]:
    """Apply ``transform`` and assemble the sample dict (shared with the shard loader)."""
    channel_index = torch.arange(img.shape[0])
    out: Any = img
    if transform is not None:
        out = transform(img)
        if isinstance(out, tuple):
            out, channel_index = out
            channel_index = torch.as_tensor(channel_index, dtype=torch.long)
            names = [names[i] for i in channel_index.tolist()]
    return {
        "image": out,
        "channel_names": names,
        "channel_index": channel_index,
        "image_id": image_id,
        "dataset": dataset,
        "split": split,
        "label": label,
        "meta": meta,
    }


def channel_ids_from_names(names: Sequence[str], vocab: Sequence[str] | dict[str, int]) -> list[int]:
    """Map channel names to channel-embedding slots through a canonical vocabulary (case-insensitive)."""
    table = (
        {k.lower(): v for k, v in vocab.items()}
        if isinstance(vocab, dict)
        else {k.lower(): i for i, k in enumerate(vocab)}
    )
    ids = []
    for n in names:
        if n.lower() not in table:
            raise KeyError(f"channel {n!r} is not in the channel vocabulary {sorted(table)}")
        ids.append(int(table[n.lower()]))
    return ids


def _common(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image_ids": [s["image_id"] for s in samples],
        "datasets": [s["dataset"] for s in samples],
        "channel_names": [list(s["channel_names"]) for s in samples],
        "labels": [s["label"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }


def collate_channels(
    samples: Sequence[dict[str, Any]], channel_vocab: Sequence[str] | dict[str, int] | None = None
) -> dict[str, Any]:
    """Collate single-view samples with any mix of channel counts into one :class:`ChannelBatch`.

    Args:
        samples: sample dicts whose ``image`` is ``[C_i, H, W]`` (same H, W across the batch).
        channel_vocab: if given, ``batch.channel_ids`` come from the channel names through this
            vocabulary; otherwise they are ``None`` (slot = position in the image).

    Returns:
        dict with ``batch`` (pixels ``[sum C_i, H, W]``), ``image_ids``, ``datasets``, ``channel_names``,
        ``labels``, ``meta``.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    images = [s["image"] for s in samples]
    if not all(isinstance(x, Tensor) for x in images):
        raise TypeError("collate_channels needs one tensor per sample; use collate_multicrop for views")
    ids = None
    if channel_vocab is not None:
        ids = [channel_ids_from_names(s["channel_names"], channel_vocab) for s in samples]
    out = {"batch": ChannelBatch.from_images(images, channel_ids=ids)}
    out.update(_common(samples))
    return out


def collate_multicrop(
    samples: Sequence[dict[str, Any]], channel_vocab: Sequence[str] | dict[str, int] | None = None
) -> dict[str, Any]:
    """Collate multi-crop samples (``image`` = list of V views) into V ChannelBatches.

    ``batches[v]`` stacks view ``v`` of every image: views of one index share their size (globals 224,
    locals 96 by default), while channel counts may differ across images.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    n_views = {len(s["image"]) for s in samples}
    if len(n_views) != 1:
        raise ValueError(f"samples have different numbers of views: {sorted(n_views)}")
    ids = None
    if channel_vocab is not None:
        ids = [channel_ids_from_names(s["channel_names"], channel_vocab) for s in samples]
    batches = [
        ChannelBatch.from_images([s["image"][v] for s in samples], channel_ids=ids)
        for v in range(n_views.pop())
    ]
    out: dict[str, Any] = {"batches": batches}
    out.update(_common(samples))
    return out


def make_collate(
    multicrop: bool = False, channel_vocab: Sequence[str] | dict[str, int] | None = None
) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
    """A picklable collate function for ``DataLoader(collate_fn=...)`` with a channel vocabulary bound."""
    fn = collate_multicrop if multicrop else collate_channels
    return partial(fn, channel_vocab=channel_vocab)
