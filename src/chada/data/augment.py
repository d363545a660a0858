"""Channel-aware augmentation for DINO multi-crop training, in plain torch.

All transforms take a ``[C, H, W]`` float tensor (values ~[0, 1] after normalisation) with any C.

- Geometry (random resized crop, horizontal/vertical flip, 90-degree rotation) is drawn ONCE per view
  and applied to all channels together, so channels stay pixel-aligned.
- Intensity (brightness/contrast/gamma jitter, Gaussian blur, Gaussian noise, solarisation) is drawn
  independently PER CHANNEL: microscopy channels are separate stains with unrelated exposure.
- Channel dropout (drop at most ``k`` channels, never all) and channel-order shuffling return the
  permutation they applied (``channel_index``: the kept channels' ORIGINAL positions, in their new
  order). Whether channel ids follow the shuffle is the caller's choice: :class:`ManifestDataset`
  reorders ``channel_names`` with it, so a collate with a channel vocabulary gives ids that follow the
  content, and a collate without one gives slot = new position (the paper's rule).

:class:`MultiCropAugment` follows the authors' asymmetric recipe (see the project notes): global view 1
blur p=1.0, global view 2 blur p=0.1 + solarisation p=0.2, locals blur p=0.5, intensity jitter p=0.8
(brightness 0.4, contrast 0.4). Channel dropout/shuffle is applied once per image, before cropping, so
all views of one image hold the same channels (teacher and student then see the same channel set).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from chada.data.augment_channels import (
    ChannelDropout,
    ChannelGaussianBlur,
    ChannelGaussianNoise,
    ChannelIntensityJitter,
    ChannelShuffle,
    ChannelSolarize,
    _rand,
    _uniform,
)

__all__ = [
    "random_resized_crop_box",
    "resized_crop",
    "RandomResizedCrop",
    "RandomFlipRotate",
    "ChannelIntensityJitter",
    "ChannelGaussianBlur",
    "ChannelGaussianNoise",
    "ChannelSolarize",
    "ChannelDropout",
    "ChannelShuffle",
    "ViewAugment",
    "MultiCropAugment",
]


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Draw a crop box ``(top, left, h, w)`` covering ``scale`` of the area with aspect in ``ratio``.

    Same sampling as the usual RandomResizedCrop: 10 tries, then a central crop fallback.
    """
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(_uniform(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(_uniform(log_r[0], log_r[1], generator=generator)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: Tensor, box: tuple[int, int, int, int], size: int | tuple[int, int]) -> Tensor:
    """Crop ``[C, H, W]`` to ``box`` and resize to ``size`` (bilinear, antialiased) — all channels at once."""
    top, left, h, w = box
    hw = (size, size) if isinstance(size, int) else tuple(size)
    crop = image[:, top : top + h, left : left + w]
    if tuple(crop.shape[-2:]) == hw:
        return crop.clone()
    return F.interpolate(crop[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0]


class RandomResizedCrop:
    """One crop box per call, shared by every channel. ``[C, H, W] -> [C, size, size]``."""

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        generator: torch.Generator | None = None,
    ) -> None:
        self.size, self.scale, self.ratio, self.generator = size, scale, ratio, generator

    def __call__(self, image: Tensor) -> Tensor:
        box = random_resized_crop_box(
            image.shape[-2], image.shape[-1], self.scale, self.ratio, self.generator
        )
        return resized_crop(image, box, self.size)


class RandomFlipRotate:
    """Horizontal flip (p), vertical flip (p), and a rotation by k*90 degrees (k uniform, with prob p_rot).

    All channels move together. Microscopy has no preferred orientation, so all 8 dihedral poses are fair.
    """

    def __init__(
        self,
        p_hflip: float = 0.5,
        p_vflip: float = 0.5,
        p_rot90: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        self.p_hflip, self.p_vflip, self.p_rot90, self.generator = p_hflip, p_vflip, p_rot90, generator

    def __call__(self, image: Tensor) -> Tensor:
        g = self.generator
        if _rand(g) < self.p_hflip:
            image = image.flip(-1)
        if _rand(g) < self.p_vflip:
            image = image.flip(-2)
        if _rand(g) < self.p_rot90:
            k = int(torch.randint(1, 4, (), generator=g))
            image = torch.rot90(image, k, dims=(-2, -1))
        return image.contiguous()


class ViewAugment:
    """One view: shared crop + flip/rotate, then per-channel jitter, blur, noise, solarisation."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float = 0.0,
        jitter: ChannelIntensityJitter | None = None,
        noise: ChannelGaussianNoise | None = None,
        p_hflip: float = 0.5,
        p_vflip: float = 0.5,
        p_rot90: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        generator: torch.Generator | None = None,
    ) -> None:
        self.crop = RandomResizedCrop(size, scale, ratio, generator)
        self.geom = RandomFlipRotate(p_hflip, p_vflip, p_rot90, generator)
        self.jitter = jitter
        self.blur = ChannelGaussianBlur(blur_sigma, blur_p, generator)
        self.noise = noise
        self.solarize = ChannelSolarize(0.5, solarize_p, generator) if solarize_p > 0 else None

    def __call__(self, image: Tensor) -> Tensor:
        x = self.geom(self.crop(image))
        if self.jitter is not None:
            x = self.jitter(x)
        x = self.blur(x)
        if self.noise is not None:
            x = self.noise(x)
        if self.solarize is not None:
            x = self.solarize(x)
        return x


class MultiCropAugment:
    """DINO multi-crop for images with any channel count.

    ``__call__([C, H, W]) -> list of views``: ``n_global`` views ``[C', global_size, global_size]`` then
    ``n_local`` views ``[C', local_size, local_size]``. With ``return_channel_index=True`` it returns
    ``(views, channel_index)`` (the kept/shuffled original channel positions, see module docstring);
    :class:`chada.data.dataset.ManifestDataset` understands both forms.

    Args:
        global_blur_p / global_solarize_p: per global view (cycled if fewer entries than views);
            defaults are the authors' asymmetric pair (1.0, 0.1) / (0.0, 0.2).
        channel_drop_max / channel_drop_p: random channel dropout, once per image.
        channel_shuffle_p: channel-order shuffling probability, once per image.
        seed: optional seed for a private generator (otherwise torch's global RNG, which DataLoader
            seeds differently in every worker).
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_global: int = 2,
        n_local: int = 6,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p_hflip: float = 0.5,
        p_vflip: float = 0.5,
        p_rot90: float = 0.5,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        gamma: float = 0.0,
        global_blur_p: Sequence[float] = (1.0, 0.1),
        local_blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        global_solarize_p: Sequence[float] = (0.0, 0.2),
        noise_p: float = 0.0,
        noise_std: tuple[float, float] = (0.0, 0.05),
        channel_drop_max: int = 0,
        channel_drop_p: float = 0.0,
        channel_shuffle_p: float = 0.0,
        return_channel_index: bool = False,
        seed: int | None = None,
    ) -> None:
        if n_global < 1:
            raise ValueError("n_global must be >= 1")
        g = None
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
        self.generator = g
        jitter = ChannelIntensityJitter(brightness, contrast, gamma, jitter_p, g) if jitter_p > 0 else None
        noise = ChannelGaussianNoise(noise_std, noise_p, g) if noise_p > 0 else None
        common = dict(
            jitter=jitter, noise=noise, p_hflip=p_hflip, p_vflip=p_vflip, p_rot90=p_rot90,
            blur_sigma=blur_sigma, ratio=ratio, generator=g,
        )  # fmt: skip
        gb, gs = list(global_blur_p) or [0.0], list(global_solarize_p) or [0.0]
        self.global_views = [
            ViewAugment(global_size, global_scale, gb[i % len(gb)], gs[i % len(gs)], **common)
            for i in range(n_global)
        ]
        self.local_views = [
            ViewAugment(local_size, local_scale, local_blur_p, 0.0, **common) for _ in range(n_local)
        ]
        self.dropout = ChannelDropout(channel_drop_max, channel_drop_p, g) if channel_drop_max > 0 else None
        self.shuffle = ChannelShuffle(channel_shuffle_p, g) if channel_shuffle_p > 0 else None
        self.return_channel_index = return_channel_index

    @property
    def n_views(self) -> int:
        return len(self.global_views) + len(self.local_views)

    def __call__(self, image: Tensor) -> list[Tensor] | tuple[list[Tensor], Tensor]:
        if image.ndim != 3:
            raise ValueError(f"expected [C, H, W], got {tuple(image.shape)}")
        index = torch.arange(image.shape[0])
        if self.dropout is not None:
            image, keep = self.dropout(image)
            index = index[keep]
        if self.shuffle is not None:
            image, perm = self.shuffle(image)
            index = index[perm]
        views = [v(image) for v in self.global_views] + [v(image) for v in self.local_views]
        if self.return_channel_index:
            return views, index
        return views
