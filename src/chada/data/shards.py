"""WebDataset tar shards for streaming large heterogeneous corpora.

Each sample in a shard is two tar members sharing a key (``%09d`` running index):

- ``KEY.npy``: the normalised ``[C, H, W]`` image, float16 (default) or uint16 (``round(x * 65535)``,
  exact for 16-bit sources) — numpy ``.npy`` bytes;
- ``KEY.json``: ``{"image_id", "dataset", "split", "channel_names", "label", "meta", "dtype"}``.

``OUT/shards.json`` lists the shard files, sample counts and the writing options. Reading back with
:class:`ShardDataset` yields the same sample dict as :class:`chada.data.dataset.ManifestDataset`
(images as float32 in [0, 1]). Shards are split across nodes (``torch.distributed`` rank) and
DataLoader workers; a worker that gets no shard simply yields nothing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from chada.data.dataset import ManifestDataset, make_sample

__all__ = ["write_shards", "ShardDataset", "shard_urls"]

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
    dtype: str = "float16",
    normalize: str = "percentile",
    size: int | tuple[int, int] | None = None,
    split: str | Sequence[str] | None = None,
    prefix: str = "shard",
) -> Path:
    """Convert a manifest into WebDataset shards; return the path of ``shards.json``.

    Args:
        shard_size: samples per tar file.
        dtype: ``"float16"`` or ``"uint16"`` storage of the normalised image.
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
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for i in range(len(ds)):
            s = ds[i]
            img = s["image"].numpy()
            arr = img.astype(np.float16) if dtype == "float16" else np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)
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
            name = f"{prefix}-{i // shard_size:06d}.tar"
            counts[name] = counts.get(name, 0) + 1
    index = {
        "shards": sorted(counts),
        "counts": counts,
        "n_samples": sum(counts.values()),
        "dtype": dtype,
        "normalize": normalize,
        "size": size,
    }
    path = out / INDEX_NAME
    path.write_text(json.dumps(index, indent=2))
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


def _decode(sample: dict[str, Any], transform: Callable | None) -> dict[str, Any]:
    info = json.loads(sample["json"])
    arr = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
    img = arr.astype(np.float32)
    if info.get("dtype") == "uint16" or arr.dtype == np.uint16:
        img /= 65535.0
    return make_sample(
        torch.from_numpy(img),
        list(info["channel_names"]),
        image_id=str(info["image_id"]),
        dataset=str(info["dataset"]),
        split=str(info.get("split", "train")),
        label=info.get("label"),
        meta=dict(info.get("meta", {})),
        transform=transform,
    )


class ShardDataset(IterableDataset):
    """Stream samples from WebDataset shards (split by node and by DataLoader worker).

    Args:
        source: ``shards.json``, its folder, a list of tar files, or a webdataset URL pattern.
        transform: applied to the ``[C, H, W]`` float32 image, as in :class:`ManifestDataset`.
        shuffle: size of the in-memory sample shuffle buffer (0 = keep order); shards are shuffled too.
        split: keep only samples of this split.
        seed: shuffling seed.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        transform: Callable | None = None,
        shuffle: int = 0,
        split: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.urls = shard_urls(source)
        self.transform = transform
        self.shuffle = shuffle
        self.split = split
        self.seed = seed

    def _pipeline(self) -> Any:
        import webdataset as wds

        ds = wds.WebDataset(
            self.urls,
            shardshuffle=len(self.urls) if self.shuffle else False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,  # more workers than shards is fine: the extra workers yield nothing
            seed=self.seed,
        )
        if self.shuffle:
            ds = ds.shuffle(self.shuffle)
        return ds

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for raw in self._pipeline():
            sample = _decode(raw, self.transform)
            if self.split is not None and sample["split"] != self.split:
                continue
            yield sample
