"""Inter-Channel only ViT (the ablation of supplementary Section C): attention across channels only.

A convolutional TokenLearner (strided conv stack + global average pooling + linear, shared by all
channels) turns each whole channel into ONE token; a learned channel embedding per slot, a CLS token
and a transformer that attends across channels only. Output ``[B, D]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from chada.models.batch import ChannelBatch, as_channel_batch
from chada.models.heads import ClsAllHead
from chada.models.hub import PretrainedMixin
from chada.models.layers import ACTIVATIONS, check_choice, check_pixels, init_vit_weights, make_blocks
from chada.models.registry import register_arch, register_model

__all__ = ["ConvTokenLearner", "InterChannelViTConfig", "InterChannelViT", "InterChannelOutput"]


class ConvTokenLearner(nn.Module):
    """Whole channel -> ONE token: ``[n, H, W] -> [n, D]`` (supplementary Section C's TokenLearner).

    A conv stack shared by all channels: a 7x7 stride-4 stem, then 3x3 stride-2 convs, each followed
    by GroupNorm(1) (per-sample, so a channel's token never depends on the rest of the batch) and the
    activation; global average pooling and a linear projection to D. Global pooling makes it work
    at any image size.
    """

    def __init__(self, widths: tuple[int, ...] | list[int], embed_dim: int, act: str = "gelu") -> None:
        super().__init__()
        if not widths:
            raise ValueError("tokenizer_widths needs at least one conv width")
        check_choice("act", act, ACTIVATIONS)
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(widths):
            k, s = (7, 4) if i == 0 else (3, 2)
            layers += [
                nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2, bias=False),
                nn.GroupNorm(1, c_out),
                nn.GELU() if act == "gelu" else nn.ReLU(),
            ]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, embed_dim)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.convs(pixels.unsqueeze(1))  # [n, c, h, w]
        return self.proj(x.mean(dim=(2, 3)))


@dataclass
class InterChannelViTConfig:
    """Inter-Channel only ViT: one token per channel (defaults: ViT-Tiny width)."""

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None
    img_size: int = 224  # nominal training size (the TokenLearner itself takes any size)
    max_channels: int = 10
    tokenizer_widths: list[int] = field(default_factory=lambda: [32, 64, 128, 192])
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    act: str = "gelu"
    layer_scale: float | None = None
    drop_path_rate: float = 0.0
    attention: str = "packed"  # "packed" (group by channel count) or "padded" (key-padding mask)
    channel_names: list[str] | None = field(default=None)

    def tokens(self, channels: int) -> int:
        """Sequence length: CLS + one token per channel."""
        return 1 + channels


@dataclass
class InterChannelOutput:
    """What :meth:`InterChannelViT.forward_features` returns.

    Attributes:
        cls: ``[B, D]`` CLS embedding after the final norm.
        channel_tokens: ``[B, C_max, D]`` one token per channel after the final norm (zeros on padding).
        channel_mask: ``[B, C_max]`` bool, True for real channels.
    """

    cls: Tensor
    channel_tokens: Tensor
    channel_mask: Tensor

    def mean_tokens(self) -> Tensor:
        """``[B, D]`` mean over real channel tokens only."""
        m = self.channel_mask[..., None].to(self.channel_tokens.dtype)
        return (self.channel_tokens * m).sum(1) / m.sum(1)


@register_arch("inter_channel_vit")
class InterChannelViT(ClsAllHead, PretrainedMixin, nn.Module):
    """Transformer over channel tokens only (no intra-channel attention). ``model(images)`` -> ``[B, D]``.

    Token layout per image: ``[CLS] [tok(ch0) + chan[slot0]] ... [tok(ch C-1) + chan[slot C-1]]``.
    ``attention="packed"`` runs each channel-count group at its true length; ``"padded"`` pads to
    ``1 + C_max`` with a key-padding mask. Both give the same values (tested).
    """

    config_class = InterChannelViTConfig
    variable_size_pools: dict[str, str] = {}

    def __init__(self, config: InterChannelViTConfig | None = None) -> None:
        super().__init__()
        config = config or InterChannelViTConfig()
        check_choice("attention", config.attention, ("packed", "padded"))
        check_choice("act", config.act, ACTIVATIONS)
        self.config = config
        D = config.embed_dim
        self.embed_dim = self.num_features = D
        self.token_learner = ConvTokenLearner(tuple(config.tokenizer_widths), D, act=config.act)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.channel_embed = nn.Parameter(torch.zeros(config.max_channels, D))
        self.blocks = make_blocks(
            D,
            config.depth,
            config.num_heads,
            config.mlp_hidden or int(D * config.mlp_ratio),
            config.qkv_bias,
            config.norm_eps,
            config.act,
            config.layer_scale,
            config.drop_path_rate,
        )
        self.norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.attention_mode = config.attention
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.channel_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        init_vit_weights(self)
        for m in self.token_learner.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def set_attention(self, mode: str) -> InterChannelViT:
        check_choice("attention", mode, ("packed", "padded"))
        self.attention_mode = self.config.attention = mode
        return self

    @property
    def max_channels(self) -> int:
        return self.config.max_channels

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "channel_embed"}

    def forward_features(self, images: ChannelBatch | Tensor | list[Tensor]) -> InterChannelOutput:
        batch = as_channel_batch(images)
        check_pixels(batch, self.config.max_channels, None, min_size=1)
        tokens = self.token_learner(batch.pixels.to(self.cls_token.dtype))  # [sum C_i, D]
        dev = tokens.device
        B, Cmax, D = batch.batch_size, self.config.max_channels, self.embed_dim
        counts = batch.counts.to(dev)
        tokens = tokens + self.channel_embed[batch.resolved_channel_ids().to(dev)]
        image_of = torch.repeat_interleave(torch.arange(B, device=dev), counts)
        slot_of = torch.arange(tokens.shape[0], device=dev) - (torch.cumsum(counts, 0) - counts)[image_of]
        channel_mask = torch.arange(Cmax, device=dev)[None, :] < counts[:, None]
        grid = tokens.new_zeros(B, Cmax, D)
        grid[image_of, slot_of] = tokens
        cls = self.cls_token.expand(B, 1, D)
        if self.attention_mode == "padded":
            x = torch.cat([cls, grid], dim=1)
            key_mask = torch.cat([channel_mask.new_ones(B, 1), channel_mask], dim=1)
            for blk in self.blocks:
                x, _ = blk(x, key_mask)
        else:
            x = tokens.new_zeros(B, 1 + Cmax, D)
            for c in torch.unique(counts).tolist():
                idx = torch.nonzero(counts == c).flatten()
                xg = torch.cat([cls[idx], grid[idx, :c]], dim=1)
                for blk in self.blocks:
                    xg, _ = blk(xg)
                x[idx, : 1 + c] = xg
        x = self.norm(x)
        chan = x[:, 1:] * channel_mask[..., None].to(x.dtype)
        return InterChannelOutput(cls=x[:, 0], channel_tokens=chan, channel_mask=channel_mask)


register_model(
    "inter_channel_vit_test",
    "inter_channel_vit",
    "tiny size for CPU tests and smoke runs",
    tokenizer_widths=[8, 16],
    embed_dim=32,
    depth=2,
    num_heads=2,
    img_size=32,
)
register_model(
    "inter_channel_vit_tiny",
    "inter_channel_vit",
    "Inter-Channel only ViT at ViT-Tiny width (D=192, depth 12, 3 heads); conv TokenLearner 32-64-128-192",
)
