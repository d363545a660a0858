"""Heterogeneous microscopy data: manifest, readers, normalisation, datasets, augmentation, shards.

Typical use::

    from chada.data import ManifestDataset, MultiCropAugment, collate_multicrop, synth
    manifest = synth.generate("synthetic", n_per_assay=64)        # or bundled.prepare("real")
    ds = ManifestDataset(manifest, split="train", transform=MultiCropAugment(64, 32, n_local=4))
    loader = DataLoader(ds, batch_size=16, collate_fn=collate_multicrop, num_workers=2)

See :mod:`chada.data.manifest` for the manifest schema.
"""

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
