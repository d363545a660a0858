"""Heterogeneous microscopy data: manifest, readers, normalisation, datasets, augmentation, shards.

Typical use::

    from chada.data import ManifestDataset, MultiCropAugment, collate_multicrop, synth
    manifest = synth.generate("synthetic", n_per_assay=64)        # or bundled.prepare("real")
    ds = ManifestDataset(manifest, split="train", transform=MultiCropAugment(64, 32, n_local=4))
    loader = DataLoader(ds, batch_size=16, collate_fn=collate_multicrop, num_workers=2)

See :mod:`chada.data.manifest` for the manifest schema.
"""

# Names are imported on first use (PEP 562): ``import chada.data.importers.cli`` (``chada --help``)
# then does not load torch through the dataset and augmentation modules.
import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "ChannelDropout": "augment",
    "ChannelGaussianBlur": "augment",
    "ChannelGaussianNoise": "augment",
    "ChannelIntensityJitter": "augment",
    "ChannelShuffle": "augment",
    "ChannelSolarize": "augment",
    "MultiCropAugment": "augment",
    "RandomFlipRotate": "augment",
    "RandomResizedCrop": "augment",
    "ManifestDataset": "dataset",
    "channel_ids_from_names": "dataset",
    "collate_channels": "dataset",
    "collate_multicrop": "dataset",
    "make_collate": "dataset",
    "resize_image": "dataset",
    "Problem": "manifest",
    "check_manifest": "manifest",
    "load_manifest": "manifest",
    "write_manifest": "manifest",
    "Normalizer": "normalize",
    "normalize_channels": "normalize",
    "ImageReadError": "readers",
    "read_channels": "readers",
    "read_image": "readers",
    "ShardDataset": "shards",
    "write_shards": "shards",
    "bundled": "bundled",
    "synth": "synth",
}

if TYPE_CHECKING:
    from chada.data import bundled, synth
    from chada.data.augment import (
        ChannelDropout,
        ChannelGaussianBlur,
        ChannelGaussianNoise,
        ChannelIntensityJitter,
        ChannelShuffle,
        ChannelSolarize,
        MultiCropAugment,
        RandomFlipRotate,
        RandomResizedCrop,
    )
    from chada.data.dataset import (
        ManifestDataset,
        channel_ids_from_names,
        collate_channels,
        collate_multicrop,
        make_collate,
        resize_image,
    )
    from chada.data.manifest import Problem, check_manifest, load_manifest, write_manifest
    from chada.data.normalize import Normalizer, normalize_channels
    from chada.data.readers import ImageReadError, read_channels, read_image
    from chada.data.shards import ShardDataset, write_shards


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chada.data' has no attribute {name!r}")
    mod = importlib.import_module(f"chada.data.{module}")
    value = mod if name == module else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ChannelDropout",
    "ChannelGaussianBlur",
    "ChannelGaussianNoise",
    "ChannelIntensityJitter",
    "ChannelShuffle",
    "ChannelSolarize",
    "ImageReadError",
    "ManifestDataset",
    "MultiCropAugment",
    "Normalizer",
    "Problem",
    "RandomFlipRotate",
    "RandomResizedCrop",
    "ShardDataset",
    "bundled",
    "channel_ids_from_names",
    "check_manifest",
    "collate_channels",
    "collate_multicrop",
    "load_manifest",
    "make_collate",
    "normalize_channels",
    "read_channels",
    "read_image",
    "resize_image",
    "synth",
    "write_manifest",
    "write_shards",
]
