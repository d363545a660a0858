"""WebDataset tar shards for streaming large heterogeneous corpora.

Each sample in a shard is two tar members sharing a key (``%09d`` running index):

- ``KEY.npy``: the normalised ``[C, H, W]`` image, uint16 (default: ``round(x * 65535)``, exact for
  16-bit sources and the cheapest to decode) or float16 — numpy ``.npy`` bytes;
- ``KEY.json``: ``{"image_id", "dataset", "split", "channel_names", "label", "meta", "dtype"}``.

``OUT/shards.json`` lists the shard files, sample counts, the channel names of the corpus (with the
number of images holding each) and the writing options. Reading back with :class:`ShardDataset`
yields the same sample dict as :class:`chada.data.dataset.ManifestDataset` (images as float32 in
[0, 1]).

Streaming order is a pure function of ``(seed, epoch, pass)``, the process rank and the DataLoader
worker, never of time or pid: the shard list is shuffled alike on every rank, then split by rank and
by worker; a shuffle buffer with its own seeded RNG mixes samples; and each sample's transform runs
under torch's RNG re-seeded from ``(seed, epoch, pass, rank, worker, k)`` (forked, so the caller's RNG
stream is untouched). A run that re-reads an epoch therefore gets the same samples and views, which
is what makes a resumed DINO run on shards exact. A worker that gets no shard yields nothing.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from chada.data.dataset import ManifestDataset, make_sample

__all__ = ["write_shards", "ShardDataset", "shard_urls", "shard_index"]

INDEX_NAME = "shards.json"


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and v != v:  # NaN
        return None
    return v


def write_shards(
    manifest: str | Path,
    out_dir: str | Path,
    shard_size: int = 1000,
    dtype: str = "uint16",
    normalize: str = "percentile",
    size: int | tuple[int, int] | None = None,
    split: str | Sequence[str] | None = None,
    prefix: str = "shard",
) -> Path:
    """Convert a manifest into WebDataset shards; return the path of ``shards.json``.

    Args:
        shard_size: samples per tar file.
        dtype: ``"uint16"`` (exact to 1/65535, fastest to decode) or ``"float16"`` storage of the
            normalised image.
        normalize, size, split: as in :class:`ManifestDataset` (normalisation happens here, once).
    """
    import webdataset as wds

    if dtype not in ("float16", "uint16"):
        raise ValueError(f"dtype must be 'float16' or 'uint16', got {dtype!r}")
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = ManifestDataset(manifest, split=split, size=size, normalize=normalize)
    pattern = str(out / f"{prefix}-%06d.tar")
    counts: dict[str, int] = {}
    channel_counts: dict[str, int] = {}  # name -> images, in first-seen order
    from chada.io import naming_path

    with (
        naming_path(out / f"{prefix}-*.tar"),
        wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink,
    ):
        for i in range(len(ds)):
            s = ds[i]
            img = s["image"].numpy()
            arr = (
                img.astype(np.float16)
                if dtype == "float16"
                else np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)
            )
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            meta = {
                "image_id": s["image_id"],
                "dataset": s["dataset"],
                "split": s["split"],
                "channel_names": s["channel_names"],
                "label": _jsonable(s["label"]),
                "meta": {k: _jsonable(v) for k, v in s["meta"].items()},
                "dtype": dtype,
            }
            sink.write({"__key__": f"{i:09d}", "npy": buf.getvalue(), "json": json.dumps(meta).encode()})
            for name in s["channel_names"]:
                channel_counts[name] = channel_counts.get(name, 0) + 1
            name = f"{prefix}-{i // shard_size:06d}.tar"
            counts[name] = counts.get(name, 0) + 1
    index = {
        "shards": sorted(counts),
        "counts": counts,
        "n_samples": sum(counts.values()),
        "channel_names": channel_counts,
        "dtype": dtype,
        "normalize": normalize,
        "size": size,
    }
    from chada.models.hub import atomic_write_bytes

    path = out / INDEX_NAME
    atomic_write_bytes(path, json.dumps(index, indent=2).encode())
    return path


def shard_urls(source: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard file list from a ``shards.json``, a folder holding one, a brace pattern, or a list of files."""
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    p = Path(source)
    if p.is_dir():
        p = p / INDEX_NAME
    if p.name == INDEX_NAME or p.suffix == ".json":
        index = json.loads(p.read_text())
        return [str(p.parent / s) for s in index["shards"]]
    return [str(source)]  # a single tar or a "{000000..000009}" pattern webdataset expands


def shard_index(source: str | Path | Sequence[str | Path]) -> dict[str, Any] | None:
    """The ``shards.json`` of a source given as that file or its folder (None for tar lists/patterns)."""
    if isinstance(source, (list, tuple)):
        return None
    p = Path(source)
    if p.is_dir():
        p = p / INDEX_NAME
    if p.suffix == ".json" and p.is_file():
        return json.loads(p.read_text())
    return None


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(x) for x in parts]).generate_state(1)[0])


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _decode(sample: dict[str, Any], transform: Callable | None) -> dict[str, Any]:
    info = json.loads(sample["json"])
    arr = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
    img = torch.from_numpy(arr).float()  # one float32 pass, no float64 intermediate
    if arr.dtype == np.uint16:
        img.mul_(1.0 / 65535.0)
    return make_sample(
        img,
        list(info["channel_names"]),
        image_id=str(info["image_id"]),
        dataset=str(info["dataset"]),
        split=str(info.get("split", "train")),
        label=info.get("label"),
        meta=dict(info.get("meta", {})),
        transform=transform,
    )


class ShardDataset(IterableDataset):
    """Stream samples from WebDataset shards (split by rank and by DataLoader worker).

    Args:
        source: ``shards.json``, its folder, a list of tar files, or a webdataset URL pattern.
        transform: applied to the ``[C, H, W]`` float32 image, as in :class:`ManifestDataset`.
        shuffle: size of the in-memory sample shuffle buffer (0 = keep order); with ``shuffle > 0`` the
            shard order is shuffled too (the same permutation on every rank).
        split: keep only samples of this split.
        seed: base seed of every shuffle and of the per-sample transform RNG.
        rank, world_size: this process's place in the job (default: torch.distributed, else the
            ``RANK``/``WORLD_SIZE`` variables, else 0 of 1).

    Call :meth:`set_epoch` before each pass: the order and the views depend on ``(seed, epoch, pass)``.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        transform: Callable | None = None,
        shuffle: int = 0,
        split: str | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.urls = shard_urls(source)
        self.index = shard_index(source)
        self.transform = transform
        self.shuffle = shuffle
        self.split = split
        self.seed = seed
        r, w = _rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        self.epoch = 0
        self.pass_index = 0

    def set_epoch(self, epoch: int, pass_index: int = 0) -> None:
        """Select the stream of ``epoch`` (``pass_index``: how many times the epoch already cycled the shards)."""
        self.epoch, self.pass_index = int(epoch), int(pass_index)

    def _raw(self, worker: int, n_workers: int) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        urls = list(self.urls)
        if self.shuffle:
            random.Random(_seed(self.seed, self.epoch, self.pass_index)).shuffle(urls)
        mine = urls[self.rank :: self.world_size][worker::n_workers]
        stream = wds.tarfile_samples(iter([{"url": u} for u in mine]))
        if self.shuffle:
            rng = random.Random(_seed(self.seed, self.epoch, self.pass_index, self.rank, worker))
            stream = wds.filters.shuffle(self.shuffle, initial=min(100, self.shuffle), rng=rng)(stream)
        return stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for k, raw in enumerate(self._raw(worker, n_workers)):
            if self.split is not None and json.loads(raw["json"]).get("split", "train") != self.split:
                continue
            if self.transform is None:
                yield _decode(raw, None)
                continue
            # The yield stays outside the fork: the consumer must not run on the forked RNG.
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also reseed (and cost) every accelerator's
                torch.default_generator.manual_seed(
                    _seed(self.seed, self.epoch, self.pass_index, self.rank, worker, k)
                )
                sample = _decode(raw, self.transform)
            yield sample
