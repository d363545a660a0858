"""One Channel ViT: Microsnoop-style One Channel Encoding with a standard ViT (paper Eq. 3-6).

A standard ViT with a ``Conv2d(1, D, p, p)`` patch embedding, CLS token and positional embedding, NO
channel embedding, encodes every channel alone (Eq. 4-5). Image embedding (Eq. 6): the per-channel
CLS tokens concatenated in the image's channel order, ``[B, C*D]``; so it needs one channel count per
batch. All channels of a batch run through the ViT as ONE batch of ``sum C_i`` single-channel images.
Pools: see :mod:`chada.models.baselines`; ``"mean"``/``"mean_all"`` are our addition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from chada.models.batch import ChannelBatch, as_channel_batch
from chada.models.dense import DenseOutput, dense_from_tokens
from chada.models.layers import PatchEmbed, check_pixels
from chada.models.registry import register_arch, register_model
from chada.models.standard_vit import TEST_SIZE, StandardViT, StandardViTConfig

__all__ = ["OneChannelViTConfig", "OneChannelViT", "OneChannelOutput"]


@dataclass
class OneChannelViTConfig(StandardViTConfig):
    """Single-channel ViT applied to every channel alone."""

    max_channels: int = 10  # largest channel count accepted (sets the largest concat size C_max * D)

    def tokens(self, channels: int) -> int:
        """Length of each sequence at the training size: ``1 + N`` (C such sequences per image)."""
        return 1 + (self.img_size // self.patch_size) ** 2


@dataclass
class OneChannelOutput:
    """What :meth:`OneChannelViT.forward_features` returns (channels stacked like the input).

    Attributes:
        cls: ``[sum C_i, D]`` CLS token of every channel, image 0's channels first.
        patch_tokens: ``[sum C_i, N, D]`` patch tokens of every channel.
        counts: ``[B]`` channels per image.
        grid: ``(h, w)`` patch grid.
        attention: ``[B, heads, C_max, h, w]`` last-layer attention of each channel's CLS query over that
            channel's patches, image ``b``'s channel ``c`` at ``[b, :, c]`` (zeros on padding positions
            ``c >= C_b``), when requested. ``C_max`` is ``config.max_channels``, as for ChAda-ViT.
        cls_self_attention: ``[B, heads, C_max]`` each channel's CLS query weight on itself (zeros on
            padding), when requested. Every channel has its OWN CLS and softmax, so for each real
            channel ``attention[b, k, c].sum() + cls_self_attention[b, k, c] == 1``: the attention sums to
            ``C_b`` per image and head. This differs from ChAda-ViT, where ONE CLS spreads a total of 1
            over all channels' patches plus itself (``cls_self_attention`` ``[B, heads]``).
    """

    cls: Tensor
    patch_tokens: Tensor
    counts: Tensor
    grid: tuple[int, int]
    attention: Tensor | None = None
    cls_self_attention: Tensor | None = None

    def per_channel(self, pool: str) -> Tensor:
        """``[sum C_i, D]`` (``"cls"``) or ``[sum C_i, 2D]`` (``"all"``: CLS, mean patch) per channel."""
        if pool == "cls":
            return self.cls
        return torch.cat([self.cls, self.patch_tokens.mean(dim=1)], dim=-1)


@register_arch("one_channel_vit")
class OneChannelViT(StandardViT):
    """Microsnoop-style One Channel Encoding with a standard ViT (paper Eq. 3-6).

    ``model(images)`` -> ``[B, C*D]``, the per-channel CLS tokens concatenated in channel order
    (``pool="mean"`` -> ``[B, D]`` for batches with mixed channel counts).
    """

    config_class = OneChannelViTConfig
    pools = ("cls", "all", "mean", "mean_all")
    #: read by :func:`chada.viz.attention.attention_maps`: one CLS softmax per channel
    attention_kind = "per_channel"
    #: pools whose size depends on the channel count, and their fixed-size replacement
    variable_size_pools = {"cls": "mean", "all": "mean_all"}

    def __init__(self, config: OneChannelViTConfig | None = None) -> None:
        super().__init__()
        self.config = config or OneChannelViTConfig()
        self._build_trunk()
        self.patch_embed = PatchEmbed(self.config.patch_size, self.config.embed_dim)
        self.init_weights()

    @property
    def max_channels(self) -> int:
        return self.config.max_channels

    def forward_features(
        self, images: ChannelBatch | Tensor | list[Tensor], return_attention: bool = False
    ) -> OneChannelOutput:
        """Encode every channel of every image independently, in one ViT batch of ``sum C_i`` images.

        ``channel_ids`` of a ChannelBatch are ignored: this model has no channel embedding, a
        channel's identity is only its position in the concatenation.

        Args:
            images: list of ``[C_i, H, W]``, ``[B, C, H, W]`` or a :class:`ChannelBatch`.
            return_attention: add the last layer's per-channel CLS attention ``attention``
                ``[B, heads, C_max, h, w]`` and ``cls_self_attention`` ``[B, heads, C_max]`` (see
                :class:`OneChannelOutput`: one softmax per channel, unlike ChAda-ViT's single one).
        """
        batch = as_channel_batch(images)
        check_pixels(batch, self.config.max_channels, self.config.patch_size, min_size=1)
        # [sum C_i, H, W]: every channel is one single-channel image (PatchEmbed adds the channel axis)
        cls, patch, grid, cls_attn = self._encode_with_attention(
            batch.pixels.to(self.pos_embed.dtype), return_attention=return_attention
        )
        counts = batch.counts.to(cls.device)
        out = OneChannelOutput(cls=cls, patch_tokens=patch, counts=counts, grid=grid)
        if cls_attn is not None:
            out.attention, out.cls_self_attention = self._scatter_attention(cls_attn, counts, grid)
        return out

    def forward_dense(
        self,
        images: ChannelBatch | Tensor | list[Tensor],
        channels: str = "each",
        upsample: bool | tuple[int, int] = False,
    ) -> DenseOutput:
        """Per-channel (or channel-pooled) feature maps; same contract as ``ChAdaViT.forward_dense``.

        Every channel is encoded alone, so ``maps[b, c]`` depends on channel ``c`` of image ``b`` only.
        """
        batch = as_channel_batch(images)
        out = self.forward_features(batch)
        counts = out.counts
        B, n, (h, w) = counts.numel(), out.patch_tokens.shape[0], out.grid
        c_used = int(counts.max())
        image_of = torch.repeat_interleave(torch.arange(B, device=counts.device), counts)
        slot_of = torch.arange(n, device=counts.device) - (torch.cumsum(counts, 0) - counts)[image_of]
        N, D = out.patch_tokens.shape[1:]
        patch = out.patch_tokens.new_zeros(B * c_used, N, D).index_copy(
            0, image_of * c_used + slot_of, out.patch_tokens
        )
        mask = torch.arange(c_used, device=counts.device)[None, :] < counts[:, None]
        return dense_from_tokens(
            patch.view(B, c_used, N, D), mask, (h, w), batch.image_size, channels, upsample
        )

    def _scatter_attention(
        self, cls_attn: Tensor, counts: Tensor, grid: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """``[sum C_i, heads, 1 + N]`` CLS rows -> (``[B, heads, C_max, h, w]``, ``[B, heads, C_max]``),
        image ``b``'s channel ``c`` at position ``c``; padding positions stay zero."""
        n, heads, _ = cls_attn.shape
        h, w = grid
        B, Cmax = counts.numel(), self.config.max_channels
        image_of = torch.repeat_interleave(torch.arange(B, device=counts.device), counts)
        slot_of = torch.arange(n, device=counts.device) - (torch.cumsum(counts, 0) - counts)[image_of]
        attention = cls_attn.new_zeros(B, heads, Cmax, h, w)
        # advanced indices split by a slice index as [n, heads, ...]: one row per channel
        attention[image_of, :, slot_of] = cls_attn[:, :, 1:].reshape(n, heads, h, w)
        cls_self = cls_attn.new_zeros(B, heads, Cmax)
        cls_self[image_of, :, slot_of] = cls_attn[:, :, 0]
        return attention, cls_self

    def forward_head(self, features: OneChannelOutput, pool: str = "cls") -> Tensor:
        """Image embeddings: see the module docstring's pool table."""
        if pool not in self.pools:
            raise ValueError(f"pool must be one of {self.pools}, got {pool!r}")
        counts = features.counts
        per = features.per_channel("cls" if pool in ("cls", "mean") else "all")  # [sum C_i, D']
        B = counts.numel()
        if pool in ("mean", "mean_all"):
            image_of = torch.repeat_interleave(torch.arange(B, device=per.device), counts)
            out = per.new_zeros(B, per.shape[1]).index_add_(0, image_of, per)
            return out / counts[:, None].to(per.dtype)
        distinct = sorted(set(counts.tolist()))
        if len(distinct) > 1:
            raise ValueError(
                f"pool={pool!r} concatenates per-channel embeddings, so all images of a batch must have the "
                f"same channel count; got counts {distinct}. Batch images by channel count, or use "
                f"pool={self.variable_size_pools[pool]!r} for a fixed-size embedding"
            )
        # channels of image b are rows b*C .. b*C+C-1, in the image's channel order
        return per.reshape(B, distinct[0] * per.shape[1])

    def forward(self, images: ChannelBatch | Tensor | list[Tensor], pool: str = "cls") -> Tensor:
        return self.forward_head(self.forward_features(images), pool=pool)

    def embedding_dim(self, pool: str = "cls", channels: int | None = None) -> int:
        """Feature size of ``pool``; ``channels`` is required for the concatenating pools."""
        D = self.embed_dim
        if pool == "mean":
            return D
        if pool == "mean_all":
            return 2 * D
        if pool not in ("cls", "all"):
            raise ValueError(f"pool must be one of {self.pools}, got {pool!r}")
        if channels is None:
            raise ValueError(f"the size of pool={pool!r} depends on the channel count: pass channels=")
        if not 1 <= channels <= self.config.max_channels:
            raise ValueError(f"channels must be in 1..{self.config.max_channels}, got {channels}")
        return channels * D * (2 if pool == "all" else 1)


register_model(
    "one_channel_vit_test", "one_channel_vit", "tiny size for CPU tests and smoke runs", **TEST_SIZE
)
register_model(
    "one_channel_vit_tiny",
    "one_channel_vit",
    "the paper's One Channel ViT/16 Tiny baseline (D=192, depth 12, 3 heads, patch 16, 224 px)",
)
