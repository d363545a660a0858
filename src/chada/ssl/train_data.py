"""The data of DINO pretraining: datasets, samplers, collate, and the batches of one epoch.

Reproducibility of the data (what makes ``resume`` give the same batches as an uninterrupted run):

- the data order of epoch ``e`` is the permutation of :class:`torch.utils.data.DistributedSampler`
  seeded with ``seed + e`` (one replica when single-process); a resumed epoch skips the samples
  already consumed (:class:`ResumableDistributedSampler`);
- the augmentation of sample ``i`` in epoch ``e`` is drawn from torch's RNG re-seeded with
  ``(seed, e, i)`` inside a forked RNG (:class:`EpochSeededDataset`), so it depends neither on the
  number of DataLoader workers nor on where a run was interrupted.

Streaming shards (``data.shards``) have no index: each rank draws exactly ``steps_per_epoch`` batches
per epoch from its shards (cycling them), a resumed epoch re-reads and drops the consumed batches.
Their order and augmentations are seeded by ``(seed, epoch, pass, rank, worker, sample)``
(:class:`chada.data.shards.ShardDataset`), so a resumed shard run is exact too, with any number of
workers (the same number as before: the split of shards across workers is part of the order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from chada.ssl.channel_sampling import ChannelSampler, ChannelSamplingCollate
from chada.ssl.config import PretrainConfig

__all__ = [
    "EpochSeededDataset",
    "ResumableDistributedSampler",
    "TrainData",
    "build_train_data",
    "epoch_batches",
    "sum_counts_over_ranks",
]


class EpochSeededDataset(Dataset):
    """Wraps a map-style dataset so that item ``i`` of epoch ``e`` is drawn with torch's RNG seeded by
    ``(seed, e, i)``; the caller's RNG stream is left untouched (forked)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (augmentations draw from it): torch.manual_seed would also reseed
            # the accelerators' generators, which this fork does not restore, and costs 60x more
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


class ResumableDistributedSampler(DistributedSampler):
    """:class:`DistributedSampler` that can start an epoch part-way (``start_index`` samples skipped)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int = 0) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


@dataclass
class TrainData:
    """What the loop reads: the dataset (manifest or shards), its sampler (None for shards), the
    collate, the steps of one epoch, and the channel names known up front (``name -> images``)."""

    augment: Any
    dataset: Dataset
    sampler: ResumableDistributedSampler | None
    steps_per_epoch: int
    channel_counts: dict[str, int]
    learn_channels: bool  # streaming without names in the shard index: the loop learns them
    channel_vocab: list[str] | None
    collate: Any


def _manifest_channel_names(frame: Any) -> dict[str, int]:
    """``name -> number of images`` in first-appearance order."""
    from chada.data.manifest import row_channel_names

    seen: dict[str, int] = {}
    for row in frame.to_dict("records"):
        for name in row_channel_names(row):
            seen[name] = seen.get(name, 0) + 1
    return seen


def _cache_reads(dataset: Any, show: bool) -> None:
    """Decode + normalise every image once and serve later reads from RAM.

    Filled in the main process before the DataLoader forks its workers, so every worker inherits the
    cache (copy-on-write) instead of re-reading files each epoch. Augmentation still runs per view.
    """
    from tqdm.auto import tqdm

    read = dataset.read
    cache = [read(i) for i in tqdm(range(len(dataset)), desc="caching images", disable=not show, leave=False)]

    def cached_read(index: int) -> tuple[Any, list[str]]:
        img, names = cache[index]
        return img, list(names)

    dataset.read = cached_read  # ManifestDataset.__getitem__ reads through self.read


def _manifest_data(cfg: PretrainConfig, augment: Any, world: int, rank: int, show: bool) -> tuple:
    """``(dataset, sampler, steps_per_epoch, channel_counts)`` of a manifest."""
    from chada.data.dataset import ManifestDataset

    bs = cfg.optim.batch_size_per_gpu
    base = ManifestDataset(
        cfg.data.manifest, root=cfg.data.root, split=cfg.data.split, datasets=cfg.data.datasets,
        transform=augment, size=cfg.data.size, normalize=cfg.data.normalize, nan_policy=cfg.data.nan_policy,
    )  # fmt: skip
    if len(base) < bs * world:
        raise ValueError(
            f"{len(base)} images (split={cfg.data.split!r}) are fewer than one global batch "
            f"({bs} x {world} processes); lower optim.batch_size_per_gpu"
        )
    counts = _manifest_channel_names(base.frame)
    if cfg.data.cache:
        _cache_reads(base, show=show)
    dataset = EpochSeededDataset(base, cfg.run.seed)
    sampler = ResumableDistributedSampler(dataset, num_replicas=world, rank=rank, seed=cfg.run.seed)
    return dataset, sampler, len(sampler) // bs, counts


def _shard_data(cfg: PretrainConfig, augment: Any, world: int, rank: int) -> tuple:
    """``(dataset, None, steps_per_epoch, channel_counts)`` of streaming shards."""
    from chada.data.shards import ShardDataset

    dataset = ShardDataset(cfg.data.shards, transform=augment, shuffle=cfg.data.shard_shuffle,
                           split=cfg.data.split, seed=cfg.run.seed, rank=rank, world_size=world)  # fmt: skip
    if len(dataset.urls) < world:
        raise ValueError(
            f"{len(dataset.urls)} shard(s) for {world} processes: each process reads whole shards; "
            "write more, smaller shards (chada data shard --shard-size)"
        )
    index = dataset.index or {}
    # The index written by `chada data shard` knows the corpus' channel names up front, so init/
    # and every rank record them; older indexes get them while streaming (gathered at export).
    counts: dict[str, int] = {}
    if isinstance(index.get("channel_names"), dict):
        counts = {str(k): int(v) for k, v in index["channel_names"].items()}
    steps = int(cfg.data.shard_samples_per_epoch) // (cfg.optim.batch_size_per_gpu * world)
    if steps < 1:
        raise ValueError("data.shard_samples_per_epoch is smaller than one global batch")
    return dataset, None, steps, counts


def build_train_data(cfg: PretrainConfig, world: int, rank: int, show: bool) -> TrainData:
    """The data of rank ``rank`` of ``world``; ``show``: a progress bar while caching images."""
    from chada.data.augment import MultiCropAugment
    from chada.data.dataset import make_collate

    a = cfg.augment
    augment = MultiCropAugment(
        global_size=a.global_size, local_size=a.local_size, n_global=a.n_global, n_local=a.n_local,
        global_scale=a.global_scale, local_scale=a.local_scale, **a.extra,
    )  # fmt: skip
    if cfg.data.manifest is not None:
        dataset, sampler, steps, counts = _manifest_data(cfg, augment, world, rank, show)
        learn = False
    else:
        dataset, sampler, steps, counts = _shard_data(cfg, augment, world, rank)
        learn = not counts
    vocab = cfg.data.channel_vocab
    if vocab == "auto":
        if not counts:
            raise ValueError(
                "data.channel_vocab='auto' needs a manifest or a shards.json that lists channel names "
                "(written by `chada data shard`); otherwise list the names"
            )
        vocab = list(counts)
    channel_vocab = list(vocab) if vocab is not None else None
    collate: Any = make_collate(multicrop=True, channel_vocab=channel_vocab)
    cs = cfg.data.channel_sampling
    channel_sampler = ChannelSampler(cs.scheme, cs.per, cs.shuffle, cs.discard_p, seed=cfg.run.seed)
    if channel_sampler.active:  # subsets every view of an image alike, before the channel ids are looked up
        collate = ChannelSamplingCollate(collate, channel_sampler)
    return TrainData(augment, dataset, sampler, steps, counts, learn, channel_vocab, collate)


def epoch_batches(
    cfg: PretrainConfig, data: TrainData, epoch: int, start_step: int, pin: bool, rank: int
) -> Iterator[dict[str, Any]]:
    """The batches of ``epoch`` from step ``start_step`` on (the ones before are skipped, not drawn
    differently). ``pin``: pinned memory for the copy to the GPU."""
    bs = cfg.optim.batch_size_per_gpu
    gen = torch.Generator().manual_seed(cfg.run.seed + epoch)  # keeps the global RNG untouched
    if isinstance(data.collate, ChannelSamplingCollate):
        data.collate.set_epoch(epoch)
    if data.sampler is not None:
        assert isinstance(data.dataset, EpochSeededDataset)
        data.dataset.set_epoch(epoch)
        data.sampler.set_position(epoch, start_step * bs)
        loader = DataLoader(
            data.dataset, batch_size=bs, sampler=data.sampler, num_workers=cfg.data.num_workers,
            collate_fn=data.collate, drop_last=True, pin_memory=pin, generator=gen,
        )  # fmt: skip
        yield from loader
        return
    n_yielded, pass_index = 0, 0
    while n_yielded < data.steps_per_epoch:
        # Order and views are a function of (seed, epoch, pass, rank, worker): a resumed epoch
        # re-reads exactly the batches it drops.
        data.dataset.set_epoch(epoch, pass_index)  # type: ignore[attr-defined]
        pass_index += 1
        loader = DataLoader(
            data.dataset, batch_size=bs, num_workers=cfg.data.num_workers, collate_fn=data.collate,
            drop_last=True, pin_memory=pin, generator=gen,
        )  # fmt: skip
        empty = True
        for batch in loader:
            empty = False
            if n_yielded >= start_step:
                yield batch
            n_yielded += 1
            if n_yielded >= data.steps_per_epoch:
                return
        if empty:
            raise ValueError(f"the shards {cfg.data.shards} gave no full batch on rank {rank}")


def sum_counts_over_ranks(counts: dict[str, int], world_size: int) -> dict[str, int]:
    """Every rank's ``name -> images seen`` summed (first-appearance order over ranks); call on every rank."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, dict(counts))
    merged: dict[str, int] = {}
    for rank_counts in gathered:
        for name, n in rank_counts.items():
            merged[name] = merged.get(name, 0) + n
    return merged
