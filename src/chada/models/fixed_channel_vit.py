"""Fixed-channel ViT: the standard "3 Ch. ViT" of supplementary Table 3.

A standard ViT with a ``Conv2d(C_fixed, D, p, p)`` patch embedding; every image must have exactly
``C_fixed`` channels, in the model's channel order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chada.models.batch import ChannelBatch, as_channel_batch
from chada.models.heads import ClsAllHead
from chada.models.layers import check_pixels
from chada.models.registry import register_arch, register_model
from chada.models.standard_vit import TEST_SIZE, StandardViT, StandardViTConfig

__all__ = ["FixedChannelViTConfig", "FixedChannelViT", "FixedChannelOutput"]


@dataclass
class FixedChannelViTConfig(StandardViTConfig):
    """A standard ViT for images with exactly ``in_channels`` channels (default 3)."""

    in_channels: int = 3


class _MultiChannelPatchEmbed(nn.Module):
    """``Conv2d(C, D, p, stride=p)``: ``[B, C, H, W] -> [B, (H/p)*(W/p), D]``."""

    def __init__(self, in_channels: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


@dataclass
class FixedChannelOutput:
    """``cls [B, D]`` and ``patch_tokens [B, N, D]`` after the final norm; ``grid (h, w)``."""

    cls: Tensor
    patch_tokens: Tensor
    grid: tuple[int, int]

    def mean_tokens(self) -> Tensor:
        """``[B, D]`` mean patch token (every position is real: no padding at a fixed channel count)."""
        return self.patch_tokens.mean(dim=1)


@register_arch("fixed_channel_vit")
class FixedChannelViT(ClsAllHead, StandardViT):
    """Standard ViT over images with exactly ``in_channels`` channels. ``model(images)`` -> ``[B, D]``."""

    config_class = FixedChannelViTConfig
    variable_size_pools: dict[str, str] = {}

    def __init__(self, config: FixedChannelViTConfig | None = None) -> None:
        super().__init__()
        self.config = config or FixedChannelViTConfig()
        if self.config.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.config.in_channels}")
        self._build_trunk()
        self.patch_embed = _MultiChannelPatchEmbed(
            self.config.in_channels, self.config.patch_size, self.config.embed_dim
        )
        self.init_weights()

    @property
    def max_channels(self) -> int:
        return self.config.in_channels

    def forward_features(self, images: ChannelBatch | Tensor | list[Tensor]) -> FixedChannelOutput:
        """``channel_ids`` are ignored: the channel order of the input IS the model's channel order."""
        batch = as_channel_batch(images)
        C = self.config.in_channels
        if bool((batch.counts != C).any()):
            bad = torch.nonzero(batch.counts != C).flatten().tolist()
            got = sorted(set(batch.counts.tolist()))
            raise ValueError(
                f"this fixed-channel ViT takes exactly {C} channels per image; images {bad} have "
                f"{got} channels. Select {C} channels (e.g. by name) or use a channel-adaptive model"
            )
        check_pixels(batch, C, self.config.patch_size, min_size=1)
        H, W = batch.image_size
        pixels = batch.pixels.to(self.pos_embed.dtype).reshape(batch.batch_size, C, H, W)
        cls, patch, grid = self._encode(pixels)
        return FixedChannelOutput(cls=cls, patch_tokens=patch, grid=grid)


register_model(
    "fixed_channel_vit_test",
    "fixed_channel_vit",
    "tiny 3-channel ViT for CPU tests",
    in_channels=3,
    **TEST_SIZE,
)
register_model(
    "fixed_channel_vit_tiny",
    "fixed_channel_vit",
    "standard 3-channel ViT-Tiny/16 (the '3 Ch. ViT' of supplementary Table 3)",
    in_channels=3,
)
