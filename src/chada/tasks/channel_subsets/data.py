"""The images of a channel-subset run, held in memory, and their features on every channel subset."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from chada.data.channels import ChannelPolicy
from chada.encode.encoders import HANDMADE, Encoder, FeatureKindEncoder, ModelEncoder
from chada.models.batch import ChannelBatch

__all__ = ["SubsetData", "embed_subsets", "enumerate_subsets", "load_subset_data"]


def enumerate_subsets(n_channels: int, max_subsets: int = 20, seed: int = 0) -> dict[int, list[tuple[int, ...]]]:
    """Channel subsets per size: ``{k: [sorted index tuples]}`` for k = 1..n_channels.

    All ``comb(C, k)`` subsets (lexicographic order) when there are at most ``max_subsets``; else
    ``max_subsets`` distinct ones drawn without replacement by ``default_rng([seed, k])``, sorted.
    """
    if n_channels < 1:
        raise ValueError(f"n_channels must be >= 1, got {n_channels}")
    if max_subsets < 1:
        raise ValueError(f"max_subsets must be >= 1, got {max_subsets}")
    out: dict[int, list[tuple[int, ...]]] = {}
    for k in range(1, n_channels + 1):
        total = math.comb(n_channels, k)
        if total <= max_subsets:
            out[k] = list(itertools.combinations(range(n_channels), k))
            continue
        rng = np.random.default_rng([seed, k])
        if total <= 200_000:
            every = list(itertools.combinations(range(n_channels), k))
            pick = rng.choice(total, size=max_subsets, replace=False)
            out[k] = sorted(every[i] for i in pick)
        else:  # too many to list: rejection-sample distinct sorted tuples
            chosen: set[tuple[int, ...]] = set()
            while len(chosen) < max_subsets:
                chosen.add(tuple(sorted(rng.choice(n_channels, size=k, replace=False).tolist())))
            out[k] = sorted(chosen)
    return out


class SubsetData:
    """Images of a labelled dataset held in memory, with per-image channel positions by name.

    Attributes:
        images: ``N`` tensors ``[C, H, W]`` (the file's channel order).
        names: per image, its channel names (file order).
        channels: the dataset's C channel names in the reference order (subsets index into it).
        positions: ``[N, C]`` int, position in image i of reference channel j.
        labels: ``[N]`` object array; ``splits``: ``[N]`` str array; ``image_ids``: ``[N]``.
    """

    def __init__(
        self,
        images: list[Tensor],
        names: list[list[str]],
        labels: np.ndarray,
        splits: np.ndarray,
        image_ids: list[str],
        reference: Sequence[str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        if not images:
            raise ValueError("no labelled image to evaluate")
        self.images, self.names, self.labels, self.splits, self.image_ids = images, names, labels, splits, image_ids
        keyer = ChannelPolicy(None, aliases=aliases)
        keys = [[keyer.canonical_name(n).lower() for n in nm] for nm in names]
        for i, k in enumerate(keys):
            if len(set(k)) != len(k):
                keyer.resolve(names[i], image_ids[i])  # raises the duplicate-name error
        first = set(keys[0])
        odd = [image_ids[i] for i, k in enumerate(keys) if set(k) != first]
        if odd:
            raise ValueError(
                f"channel-subset evaluation needs the same channels in every image: {image_ids[0]} has "
                f"{names[0]} but {len(odd)} image(s) differ (e.g. {odd[0]}: {names[image_ids.index(odd[0])]}); "
                "select one dataset (datasets=[...] / --dataset)"
            )
        ref_names = [keyer.canonical_name(n) for n in names[0]]
        if reference is not None:
            ordered = []
            by_key = {n.lower(): n for n in ref_names}
            for r in reference:
                key = keyer.canonical_name(r).lower()
                if key in by_key and by_key[key] not in ordered:
                    ordered.append(by_key[key])
            ordered += [n for n in ref_names if n not in ordered]  # channels the order does not list
            ref_names = ordered
        self.channels = ref_names
        ref_keys = [n.lower() for n in ref_names]
        self.positions = np.array([[k.index(r) for r in ref_keys] for k in keys], dtype=np.int64)
        self._groups: list[tuple[list[int], Tensor, Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def groups(self) -> list[tuple[list[int], Tensor, Tensor]]:
        """Images grouped by size: ``(rows, [n, C, H, W] stack, [n, C] positions)`` (cached)."""
        if self._groups is None:
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, img in enumerate(self.images):
                by_size.setdefault(tuple(img.shape[-2:]), []).append(i)
            self._groups = [
                (rows, torch.stack([self.images[i] for i in rows]), torch.as_tensor(self.positions[rows]))
                for rows in by_size.values()
            ]
        return self._groups

    @property
    def n_channels(self) -> int:
        return len(self.channels)


def load_subset_data(
    manifest: str | os.PathLike | pd.DataFrame,
    label_column: str = "label",
    datasets: Sequence[str] | None = None,
    image_size: int | None = None,
    normalize: str = "percentile",
    root: str | os.PathLike | None = None,
    reference: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
    split_column: str = "split",
    progress: bool = True,
    nan_policy: str = "error",
    nan_fill: float | None = None,
) -> SubsetData:
    """Read every labelled image of ``manifest`` (rows with a missing label are skipped; NaN/inf pixels
    by ``nan_policy`` / ``nan_fill``, :class:`chada.data.dataset.ManifestDataset`)."""
    from tqdm.auto import tqdm

    from chada.data.dataset import ManifestDataset

    ds = ManifestDataset(manifest, root=root, datasets=datasets, size=image_size, normalize=normalize,
                         label_column=label_column, nan_policy=nan_policy, nan_fill=nan_fill)  # fmt: skip
    if label_column not in ds.frame.columns:
        raise ValueError(f"label column {label_column!r} not in the manifest (columns: {list(ds.frame.columns)})")
    keep = np.flatnonzero(ds.frame[label_column].notna().to_numpy())
    if len(keep) == 0:
        raise ValueError(f"no row of the manifest has a {label_column!r} label")
    images, names, ids = [], [], []
    for i in tqdm(keep.tolist(), desc="read images", unit="img", disable=not progress):
        img, nm = ds.read(i)
        images.append(img)
        names.append(list(nm))
        ids.append(str(ds.frame["image_id"].iloc[i]))
    labels = ds.frame[label_column].to_numpy(dtype=object)[keep]
    if split_column in ds.frame.columns:
        splits = ds.frame[split_column].fillna("").astype(str).to_numpy()[keep]
    else:
        splits = np.array([""] * len(keep))
    return SubsetData(images, names, labels, splits, ids, reference=reference, aliases=aliases)


def embed_subsets(
    encoder: Encoder | nn.Module | None,
    data: SubsetData,
    subsets: Sequence[tuple[int, ...]],
    slots: np.ndarray,
    pool: str = "cls",
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: Any = None,
    dtype: torch.dtype = torch.float32,
) -> dict[tuple[int, ...], np.ndarray]:
    """Features ``{subset: [N, D]}`` of every image restricted to each subset's channels.

    Args:
        encoder: an :class:`~chada.encode.encoders.Encoder`, a model (run in ``dtype``), or None for the
            hand-made features.
        subsets: tuples of reference-channel indices.
        slots: ``[N, C]`` channel-embedding slot of reference channel j in image i.
        pool: pool already mapped by the caller to a fixed-size one.
        progress: a tqdm bar to advance by one per subset (or None).
        dtype: precision of the forward pass (``torch.bfloat16``: autocast); features are float32.
    """
    if not isinstance(encoder, Encoder):
        encoder = FeatureKindEncoder(HANDMADE) if encoder is None else ModelEncoder(encoder, dtype=dtype)
    slots_t = torch.as_tensor(slots, dtype=torch.long)
    out: dict[tuple[int, ...], np.ndarray] = {}
    for subset in subsets:
        cols = torch.tensor(list(subset), dtype=torch.long)
        k = len(subset)
        feats: np.ndarray | None = None
        for rows, stack, pos in data.groups():
            for start in range(0, len(rows), batch_size):
                idx = rows[start : start + batch_size]
                local = torch.arange(start, start + len(idx))
                # [n, k, H, W]: each image's own positions of the subset's channels (names, not slots)
                picked = stack[local[:, None], pos[local][:, cols]]
                n, _, h, w = picked.shape
                batch = ChannelBatch(
                    picked.reshape(n * k, h, w),
                    torch.full((n,), k, dtype=torch.long),
                    slots_t[torch.as_tensor(idx)][:, cols].reshape(-1),
                )
                try:
                    f = encoder.encode_batch(batch, [pool], device=device)[pool]
                except (ValueError, RuntimeError) as exc:
                    names = "+".join(data.channels[j] for j in subset)
                    raise ValueError(f"{encoder.name} failed on "
                                     f"channels {names}: {exc}") from exc  # fmt: skip
                if feats is None:
                    feats = np.zeros((len(data), f.shape[1]), dtype=np.float32)
                feats[idx] = f
        assert feats is not None
        out[tuple(subset)] = feats
        if progress is not None:
            progress.update(1)
    return out


def _slots_for(policy: ChannelPolicy, data: SubsetData) -> np.ndarray:
    """``[N, C]`` slot of reference channel j in image i under ``policy``."""
    slots = np.empty((len(data), data.n_channels), dtype=np.int64)
    for i in range(len(data)):
        s = np.asarray(policy.resolve(data.names[i], data.image_ids[i]))
        slots[i] = s[data.positions[i]]
    return slots
