"""Per-channel transforms of channel-aware augmentation (:mod:`chada.data.augment` composes them).

All take a ``[C, H, W]`` float tensor (values ~[0, 1] after normalisation) with any C. Intensity
(brightness/contrast/gamma jitter, Gaussian blur, Gaussian noise, solarisation) is drawn independently
PER CHANNEL: microscopy channels are separate stains with unrelated exposure. Channel dropout (drop at
most ``k`` channels, never all) and channel-order shuffling return the permutation they applied
(``channel_index``: the kept channels' ORIGINAL positions, in their new order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ChannelIntensityJitter",
    "ChannelGaussianBlur",
    "ChannelGaussianNoise",
    "ChannelSolarize",
    "ChannelDropout",
    "ChannelShuffle",
]


def _rand(generator: torch.Generator | None = None) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(lo: float, hi: float, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    shape = () if n is None else (n,)
    return lo + (hi - lo) * torch.rand(shape, generator=generator)


class ChannelIntensityJitter:
    """Per-channel brightness (multiplicative), contrast (around the channel mean) and gamma jitter.

    Each factor is drawn independently for every channel from ``[1 - x, 1 + x]``; applied with
    probability ``p`` per call (then to all channels, each with its own factors). Output clipped to [0, 1].
    """

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        gamma: float = 0.0,
        p: float = 0.8,
        generator: torch.Generator | None = None,
    ) -> None:
        self.brightness, self.contrast, self.gamma, self.p, self.generator = (
            brightness,
            contrast,
            gamma,
            p,
            generator,
        )

    def __call__(self, image: Tensor) -> Tensor:
        g = self.generator
        if _rand(g) >= self.p:
            return image
        c = image.shape[0]
        x = image
        if self.brightness > 0:
            b = _uniform(max(0.0, 1 - self.brightness), 1 + self.brightness, c, g)
            x = x * b[:, None, None]
        if self.contrast > 0:
            k = _uniform(max(0.0, 1 - self.contrast), 1 + self.contrast, c, g)
            mean = x.mean(dim=(-2, -1), keepdim=True)
            x = (x - mean) * k[:, None, None] + mean
        x = x.clamp(0.0, 1.0)
        if self.gamma > 0:
            gm = _uniform(max(0.05, 1 - self.gamma), 1 + self.gamma, c, g)
            x = x.pow(gm[:, None, None])
        return x


def _gaussian_kernels(sigmas: Tensor, radius: int) -> Tensor:
    """``[C, 2r+1]`` normalised 1-D Gaussian kernels, one per channel."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None, :] / sigmas[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


class ChannelGaussianBlur:
    """Gaussian blur with an independent sigma per channel (separable, grouped conv, reflect padding)."""

    def __init__(
        self,
        sigma: tuple[float, float] = (0.1, 2.0),
        p: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        self.sigma, self.p, self.generator = sigma, p, generator

    def __call__(self, image: Tensor) -> Tensor:
        g = self.generator
        if _rand(g) >= self.p:
            return image
        c, h, w = image.shape
        sig = _uniform(self.sigma[0], self.sigma[1], c, g).clamp_min(1e-3)
        radius = max(1, min(int(math.ceil(3 * float(sig.max()))), (min(h, w) - 1) // 2))
        k = _gaussian_kernels(sig, radius).to(image)
        x = image[None]
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=c)
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=c)
        return x[0]


class ChannelGaussianNoise:
    """Additive Gaussian noise with a per-channel standard deviation drawn from ``std``."""

    def __init__(
        self, std: tuple[float, float] = (0.0, 0.05), p: float = 0.2, generator: torch.Generator | None = None
    ) -> None:
        self.std, self.p, self.generator = std, p, generator

    def __call__(self, image: Tensor) -> Tensor:
        g = self.generator
        if _rand(g) >= self.p:
            return image
        s = _uniform(self.std[0], self.std[1], image.shape[0], g)
        noise = torch.randn(image.shape, generator=g) * s[:, None, None]
        return (image + noise.to(image)).clamp(0.0, 1.0)


class ChannelSolarize:
    """Invert values above ``threshold`` (per channel, each channel solarised with probability ``p``)."""

    def __init__(
        self, threshold: float = 0.5, p: float = 0.2, generator: torch.Generator | None = None
    ) -> None:
        self.threshold, self.p, self.generator = threshold, p, generator

    def __call__(self, image: Tensor) -> Tensor:
        which = torch.rand(image.shape[0], generator=self.generator) < self.p
        if not bool(which.any()):
            return image
        sol = torch.where(image >= self.threshold, 1.0 - image, image)
        return torch.where(which[:, None, None].to(image.device), sol, image)


class ChannelDropout:
    """With probability ``p``, drop between 1 and ``max_drop`` channels — never all of them.

    Returns ``(image [C', H, W], channel_index [C'])`` where ``channel_index`` lists the kept original
    channel positions in order. Images with one channel are returned unchanged.
    """

    def __init__(self, max_drop: int = 1, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if max_drop < 0:
            raise ValueError("max_drop must be >= 0")
        self.max_drop, self.p, self.generator = max_drop, p, generator

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        c = image.shape[0]
        keep = torch.arange(c)
        n_max = min(self.max_drop, c - 1)
        if n_max < 1 or _rand(self.generator) >= self.p:
            return image, keep
        n_drop = int(torch.randint(1, n_max + 1, (), generator=self.generator))
        perm = torch.randperm(c, generator=self.generator)
        keep = perm[n_drop:].sort().values
        return image[keep], keep


class ChannelShuffle:
    """With probability ``p`` permute the channel order. Returns ``(image, permutation)``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p, self.generator = p, generator

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        c = image.shape[0]
        if c < 2 or _rand(self.generator) >= self.p:
            return image, torch.arange(c)
        perm = torch.randperm(c, generator=self.generator)
        return image[perm], perm
