"""Channel sampling during DINO pretraining: which of an image's channels the views of one step carry.

Schemes (``data.channel_sampling.scheme``):

- ``"none"`` (DINO default): every image keeps all its channels.
- ``"discard_one"``: the authors' random discarder: with probability ``discard_p`` one random channel
  of a multi-channel image is dropped (kept count ``C`` or ``C - 1``, never 0).
- ``"hierarchical"``: hierarchical channel sampling (HCS, ChannelViT): ``k`` uniform in ``1..C``,
  then ``k`` distinct channels uniformly.

``per`` (``data.channel_sampling.per``):

- ``"sample"``: every image draws its own ``k`` (ChAda-ViT takes mixed channel counts in one batch).
- ``"batch"``: one draw for the whole batch, as ChannelViT-style models need: ``hierarchical`` draws
  one ``k`` in ``1..max C_i`` and image ``i`` keeps ``min(k, C_i)`` of its own channels;
  ``discard_one`` flips one coin and then every multi-channel image drops one of its channels.

``shuffle`` (``data.channel_sampling.shuffle``): the kept channels are put in a random order (every
image, every step). Channel names travel with the pixels, so **with a channel vocabulary**
(``data.channel_vocab``) the channel ids follow the *names*: the stain keeps its embedding and the
shuffle only reorders tokens, which ChAda-ViT's channel-permutation-equivariant encoder (masked
attention over channel tokens, CLS pooling) ignores up to float rounding. **Without a vocabulary**
(slot = position, the paper's rule) the ids follow *positions*: a stain lands in a random slot and the
model cannot rely on slot identity. Without shuffling, the kept channels stay in their original
order (and without a vocabulary they are packed into slots ``0..k-1``).

All views of one image keep the same channels (the subset is applied to every view), so teacher and
student see one channel set. Draws are deterministic: image ``i`` uses a generator seeded with
``(seed, epoch, sha1(image_id))`` and the per-batch draw one seeded with ``(seed, epoch,
sha1(all image ids of the batch))``, so a resumed run replays them exactly and the number of
DataLoader workers does not matter.

Usage::

    sampler = ChannelSampler("hierarchical", per="sample", seed=0)
    collate = ChannelSamplingCollate(make_collate(multicrop=True), sampler)
    collate.set_epoch(epoch)   # before building the epoch's DataLoader
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SCHEMES", "PER", "ChannelSampler", "ChannelSamplingCollate", "kept_counts"]

SCHEMES = ("none", "discard_one", "hierarchical")
PER = ("sample", "batch")


def _key(text: str) -> int:
    """Stable 63-bit integer of a string (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little") >> 1


def _generator(*entropy: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


class ChannelSampler:
    """Draws the kept channels of each image of a batch (see the module docstring).

    Args:
        scheme: ``"none"``, ``"discard_one"`` or ``"hierarchical"``.
        per: ``"sample"`` or ``"batch"``.
        shuffle: put the kept channels in a random order.
        discard_p: probability of dropping one channel for ``discard_one``.
        seed: base seed (the run seed).
    """

    def __init__(
        self,
        scheme: str = "none",
        per: str = "sample",
        shuffle: bool = False,
        discard_p: float = 0.5,
        seed: int = 0,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"channel sampling scheme must be one of {SCHEMES}, got {scheme!r}")
        if per not in PER:
            raise ValueError(f"channel sampling 'per' must be one of {PER}, got {per!r}")
        if not 0.0 <= discard_p <= 1.0:
            raise ValueError(f"discard_p must be in [0, 1], got {discard_p}")
        self.scheme, self.per, self.shuffle, self.discard_p, self.seed = (
            scheme,
            per,
            bool(shuffle),
            discard_p,
            seed,
        )

    @property
    def active(self) -> bool:
        """False when the sampler leaves every batch unchanged."""
        return self.scheme != "none" or self.shuffle

    def __repr__(self) -> str:
        return (f"ChannelSampler(scheme={self.scheme!r}, per={self.per!r}, shuffle={self.shuffle}, "
                f"discard_p={self.discard_p}, seed={self.seed})")  # fmt: skip

    def draw(self, counts: Sequence[int], keys: Sequence[str], epoch: int = 0) -> list[Tensor]:
        """Kept channels of every image.

        Args:
            counts: ``[B]`` channel count ``C_i`` of each image (each >= 1).
            keys: ``[B]`` stable identifier of each image (its image id).
            epoch: epoch number (part of the seed).

        Returns:
            ``B`` long tensors ``[k_i]``: kept ORIGINAL channel positions, in their new order
            (ascending unless ``shuffle``); ``1 <= k_i <= C_i``.
        """
        if len(counts) != len(keys):
            raise ValueError(f"{len(counts)} channel counts for {len(keys)} keys")
        if any(int(c) < 1 for c in counts):
            raise ValueError(f"every image needs at least one channel, got counts {list(counts)}")
        counts = [int(c) for c in counts]
        gens = [_generator(self.seed, epoch, _key(str(k))) for k in keys]
        n_keep = self._n_keep(counts, keys, epoch, gens)
        out = []
        for c, k, g in zip(counts, n_keep, gens):
            if k < c:
                keep = torch.randperm(c, generator=g)[:k].sort().values
            else:
                keep = torch.arange(c)
            if self.shuffle and k > 1:
                keep = keep[torch.randperm(k, generator=g)]
            out.append(keep)
        return out

    def _n_keep(
        self, counts: list[int], keys: Sequence[str], epoch: int, gens: list[torch.Generator]
    ) -> list[int]:
        if self.scheme == "none":
            return list(counts)
        if self.per == "batch":
            g = _generator(self.seed, epoch, _key("\x1f".join(str(k) for k in keys)), 1)
            if self.scheme == "discard_one":
                drop = float(torch.rand((), generator=g)) < self.discard_p
                return [c - 1 if drop and c > 1 else c for c in counts]
            k = int(torch.randint(1, max(counts) + 1, (), generator=g))
            return [min(k, c) for c in counts]
        if self.scheme == "discard_one":
            return [c - 1 if c > 1 and float(torch.rand((), generator=g)) < self.discard_p else c
                    for c, g in zip(counts, gens)]  # fmt: skip
        return [int(torch.randint(1, c + 1, (), generator=g)) for c, g in zip(counts, gens)]

    def apply(self, samples: Sequence[dict[str, Any]], epoch: int = 0) -> list[dict[str, Any]]:
        """Subset (and reorder) the channels of every view of every sample dict.

        A sample holds ``image`` (a ``[C, H, W]`` tensor or a list of views ``[C, h_v, w_v]``),
        ``channel_names`` (length C), optionally ``channel_index`` (original positions, length C) and
        ``image_id``. Returns new dicts (the inputs are not modified) whose images, names and
        ``channel_index`` describe the kept channels in their new order.
        """
        if not self.active:
            return list(samples)
        counts = []
        for s in samples:
            views = s["image"] if isinstance(s["image"], (list, tuple)) else [s["image"]]
            sizes = {int(v.shape[0]) for v in views}
            if len(sizes) != 1:
                raise ValueError(
                    f"image {s.get('image_id')}: its views have different channel counts {sorted(sizes)}"
                )
            counts.append(sizes.pop())
        keys = [str(s.get("image_id", i)) for i, s in enumerate(samples)]
        out = []
        for s, keep in zip(samples, self.draw(counts, keys, epoch)):
            new = dict(s)
            img = s["image"]
            new["image"] = [v[keep] for v in img] if isinstance(img, (list, tuple)) else img[keep]
            names = list(s.get("channel_names") or [])
            if names:
                new["channel_names"] = [names[i] for i in keep.tolist()]
            index = s.get("channel_index")
            new["channel_index"] = keep if index is None else torch.as_tensor(index, dtype=torch.long)[keep]
            out.append(new)
        return out


def kept_counts(indices: Sequence[Tensor]) -> list[int]:
    """Number of kept channels per image (``len`` of each :meth:`ChannelSampler.draw` entry)."""
    return [int(len(i)) for i in indices]


class ChannelSamplingCollate:
    """A collate function that applies a :class:`ChannelSampler` to the samples, then ``collate``.

    Picklable (for DataLoader workers) when ``collate`` is. Call :meth:`set_epoch` before building each
    epoch's DataLoader: workers receive a copy of this object when the loader starts iterating.
    """

    def __init__(
        self, collate: Callable[[Sequence[dict[str, Any]]], dict[str, Any]], sampler: ChannelSampler
    ) -> None:
        self.collate, self.sampler, self.epoch = collate, sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return self.collate(self.sampler.apply(samples, self.epoch))
