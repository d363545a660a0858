"""Baseline encoders compared with ChAda-ViT (paper Section 4.4, Table 2; supplementary C and Table 3).

All three take the same inputs as :class:`~chada.models.chada_vit.ChAdaViT` (a list of ``[C_i, H, W]``
tensors, a ``[B, C, H, W]`` tensor or a :class:`ChannelBatch`) and expose the same methods
(``forward_features``, ``forward_head``, ``forward(images, pool)``, ``embedding_dim(pool, channels)``,
``save_pretrained``), so every command (embed, evaluate, pretrain) runs them unchanged.

- ``one_channel_vit`` (Microsnoop-style One Channel Encoding, paper Eq. 3-6): a standard ViT with a
  ``Conv2d(1, D, p, p)`` patch embedding, CLS token and positional embedding, NO channel embedding,
  encodes every channel alone (Eq. 4-5). Image embedding (Eq. 6): the per-channel CLS tokens
  concatenated in the image's channel order, ``[B, C*D]``; so it needs one channel count per batch.
  All channels of a batch run through the ViT as ONE batch of ``sum C_i`` single-channel images.
- ``inter_channel_vit`` (Inter-Channel only ablation, supplementary Section C): a convolutional
  TokenLearner (strided conv stack + global average pooling + linear, shared by all channels) turns
  each whole channel into ONE token; a learned channel embedding per slot, a CLS token and a
  transformer that attends across channels only. Output ``[B, D]``.
- ``fixed_channel_vit`` (the standard "3 Ch. ViT" of supplementary Table 3): a standard ViT with a
  ``Conv2d(C_fixed, D, p, p)`` patch embedding; every image must have exactly ``C_fixed`` channels.

Pools (``forward(images, pool=...)``):

=================  ======================================================  =====================
model              pool                                                    size
=================  ======================================================  =====================
one_channel_vit    ``"cls"``: per-channel CLS concatenated (paper Eq. 6)   ``C * D``
                   ``"all"``: per channel ``[CLS_c, mean patch_c]``,       ``C * 2D``
                   concatenated channel after channel
                   ``"mean"``: mean over channels of the CLS tokens        ``D``
                   ``"mean_all"``: mean over channels of ``[CLS, patch]``  ``2D``
inter_channel_vit  ``"cls"``; ``"all"`` = CLS + mean of real channel tokens ``D``; ``2D``
fixed_channel_vit  ``"cls"``; ``"all"`` = CLS + mean patch token            ``D``; ``2D``
=================  ======================================================  =====================

``"mean"``/``"mean_all"`` are OUR addition (not in the paper): a fixed-size embedding for batches that
mix channel counts, used for DINO pretraining of the one-channel model on heterogeneous data and as
the embedding fallback on manifests whose images do not all have the same channel count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chada.models.batch import ChannelBatch, as_channel_batch
from chada.models.dense import DenseOutput, dense_from_tokens
from chada.models.hub import PretrainedMixin
from chada.models.layers import (
    ACTIVATIONS,
    POS_INTERPOLATIONS,
    Block,
    PatchEmbed,
    check_choice,
    init_pos_embed,
)
from chada.models.registry import register_arch, register_model

__all__ = [
    "OneChannelViTConfig",
    "OneChannelViT",
    "OneChannelOutput",
    "InterChannelViTConfig",
    "InterChannelViT",
    "InterChannelOutput",
    "FixedChannelViTConfig",
    "FixedChannelViT",
    "FixedChannelOutput",
    "ConvTokenLearner",
]


# ---------------------------------------------------------------------------------------- helpers
def _init_vit_weights(model: nn.Module) -> None:
    """Same initialisation as ChAda-ViT (timm/DINO): trunc-normal linears, unit LayerNorms."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _make_blocks(
    dim: int,
    depth: int,
    num_heads: int,
    hidden: int,
    qkv_bias: bool,
    norm_eps: float,
    act: str,
    layer_scale: float | None,
    drop_path_rate: float,
) -> nn.ModuleList:
    dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        Block(dim, num_heads, hidden, qkv_bias=qkv_bias, norm_eps=norm_eps, act=act, layer_scale=layer_scale, drop_path=dpr[i])
        for i in range(depth)
    )


def _check_pixels(batch: ChannelBatch, max_channels: int, patch_size: int | None, min_size: int = 1) -> None:
    """Validation shared by the baselines (mirrors ``ChAdaViT._check``)."""
    H, W = batch.image_size
    if patch_size is not None and (H % patch_size or W % patch_size):
        raise ValueError(
            f"image size {H}x{W} is not divisible by the patch size {patch_size}; "
            f"crop or resize to a multiple of {patch_size}"
        )
    if min(H, W) < min_size:
        raise ValueError(f"image size {H}x{W} is smaller than the minimum {min_size}x{min_size}")
    if batch.max_channels > max_channels:
        too_many = torch.nonzero(batch.counts > max_channels).flatten().tolist()
        raise ValueError(
            f"images {too_many} have more than C_max={max_channels} channels "
            f"(largest: {batch.max_channels}); this model cannot take them"
        )
    if batch.channel_ids is not None:
        ids = batch.channel_ids
        if bool(((ids < 0) | (ids >= max_channels)).any()):
            raise ValueError(f"channel_ids must lie in 0..{max_channels - 1}")
    if not batch.pixels.is_floating_point():
        raise TypeError(f"pixels must be floating point, got {batch.pixels.dtype}")
    if not bool(torch.isfinite(batch.pixels).all()):
        bad = torch.nonzero(~torch.isfinite(batch.pixels).flatten(1).all(1)).flatten()
        image_of = torch.repeat_interleave(torch.arange(batch.batch_size, device=bad.device), batch.counts.to(bad.device))
        raise ValueError(f"NaN or inf pixels in images {sorted(set(image_of[bad].tolist()))}")


def _interpolate_pos(pos: Tensor, grid: int, h: int, w: int, mode: str) -> Tensor:
    """``[1 + h*w, D]`` positional table for an ``h x w`` grid from a ``[1 + grid^2, D]`` one."""
    if (h, w) == (grid, grid):
        return pos
    cls_pos, g = pos[:1], pos[1:]
    g = g.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g.float(), size=(h, w), mode=mode, align_corners=False, antialias=True).to(pos.dtype)
    return torch.cat([cls_pos, g.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)


class _StandardViT(PretrainedMixin, nn.Module):
    """A plain ViT trunk (CLS + positional embedding + pre-norm blocks + final norm).

    Subclasses set ``self.patch_embed`` (``[n, c, H, W] -> [n, N, D]``) and call :meth:`_encode`.
    """

    config: OneChannelViTConfig | FixedChannelViTConfig

    def _build_trunk(self) -> None:
        c = self.config
        check_choice("act", c.act, ACTIVATIONS)
        check_choice("pos_interpolation", c.pos_interpolation, POS_INTERPOLATIONS)
        if c.img_size % c.patch_size:
            raise ValueError(f"img_size {c.img_size} is not a multiple of patch_size {c.patch_size}")
        D = c.embed_dim
        self.embed_dim = self.num_features = D
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, (c.img_size // c.patch_size) ** 2 + 1, D))
        self.blocks = _make_blocks(
            D, c.depth, c.num_heads, c.mlp_hidden or int(D * c.mlp_ratio), c.qkv_bias, c.norm_eps, c.act,
            c.layer_scale, c.drop_path_rate,
        )
        self.norm = nn.LayerNorm(D, eps=c.norm_eps)

    def init_weights(self) -> None:
        init_pos_embed(self.pos_embed, self.config.pos_embed_std)
        nn.init.normal_(self.cls_token, std=1e-6)
        _init_vit_weights(self)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def interpolate_pos_embed(self, h: int, w: int) -> Tensor:
        c = self.config
        return _interpolate_pos(self.pos_embed[0], c.img_size // c.patch_size, h, w, c.pos_interpolation)

    def _encode(self, pixels: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """``pixels [n, (c,) H, W]`` (whatever ``patch_embed`` takes) -> ``(cls [n, D], patch tokens
        [n, N, D], (h, w))`` after the final norm."""
        cls, patch, grid, _ = self._encode_with_attention(pixels, return_attention=False)
        return cls, patch, grid

    def _encode_with_attention(
        self, pixels: Tensor, return_attention: bool = True
    ) -> tuple[Tensor, Tensor, tuple[int, int], Tensor | None]:
        """:meth:`_encode` plus, when ``return_attention``, the last block's CLS query row
        ``[n, heads, 1 + N]`` (softmax over the CLS key then the ``N`` patch keys; rows sum to 1).

        Only the last block takes the explicit-softmax path; the others keep the fused SDPA kernel.
        """
        p = self.config.patch_size
        h, w = pixels.shape[-2] // p, pixels.shape[-1] // p
        tokens = self.patch_embed(pixels)  # [n, N, D]
        pos = self.interpolate_pos_embed(h, w)
        n, D = tokens.shape[0], self.embed_dim
        x = torch.cat([(self.cls_token[0] + pos[:1]).expand(n, 1, D), tokens + pos[1:].unsqueeze(0)], dim=1)
        last = len(self.blocks) - 1
        cls_attn = None
        for i, blk in enumerate(self.blocks):
            x, a = blk(x, return_attention=return_attention and i == last)
            if a is not None:
                cls_attn = a[:, :, 0, :]  # [n, heads, 1 + N]: the CLS query's row
        x = self.norm(x)
        return x[:, 0], x[:, 1:], (h, w), cls_attn


# ------------------------------------------------------------------------------ one-channel ViT
@dataclass
class StandardViTConfig:
    """Fields shared by the patch-based baselines (defaults: ViT-Tiny/16 at 224, as the paper)."""

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None
    patch_size: int = 16
    img_size: int = 224
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    act: str = "gelu"
    layer_scale: float | None = None
    drop_path_rate: float = 0.0
    pos_interpolation: str = "bicubic"
    pos_embed_std: float = 0.02  # patch slots only, as ChAda-ViT's (the CLS slot keeps 0.02)
    channel_names: list[str] | None = field(default=None)


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
class OneChannelViT(_StandardViT):
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
        _check_pixels(batch, self.config.max_channels, self.config.patch_size)
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
        patch = out.patch_tokens.new_zeros(B * c_used, N, D).index_copy(0, image_of * c_used + slot_of, out.patch_tokens)
        mask = torch.arange(c_used, device=counts.device)[None, :] < counts[:, None]
        return dense_from_tokens(patch.view(B, c_used, N, D), mask, (h, w), batch.image_size, channels, upsample)

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


# ---------------------------------------------------------------------------- inter-channel ViT
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

    def mean_channel_tokens(self) -> Tensor:
        """``[B, D]`` mean over real channel tokens only."""
        m = self.channel_mask[..., None].to(self.channel_tokens.dtype)
        return (self.channel_tokens * m).sum(1) / m.sum(1)


@register_arch("inter_channel_vit")
class InterChannelViT(PretrainedMixin, nn.Module):
    """Transformer over channel tokens only (no intra-channel attention). ``model(images)`` -> ``[B, D]``.

    Token layout per image: ``[CLS] [tok(ch0) + chan[slot0]] ... [tok(ch C-1) + chan[slot C-1]]``.
    ``attention="packed"`` runs each channel-count group at its true length; ``"padded"`` pads to
    ``1 + C_max`` with a key-padding mask. Both give the same values (tested).
    """

    config_class = InterChannelViTConfig
    pools = ("cls", "all")
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
        self.blocks = _make_blocks(
            D, config.depth, config.num_heads, config.mlp_hidden or int(D * config.mlp_ratio), config.qkv_bias,
            config.norm_eps, config.act, config.layer_scale, config.drop_path_rate,
        )
        self.norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.attention_mode = config.attention
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.channel_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        _init_vit_weights(self)
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
        _check_pixels(batch, self.config.max_channels, None)
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

    def forward_head(self, features: InterChannelOutput, pool: str = "cls") -> Tensor:
        """``"cls"`` -> ``[B, D]``; ``"all"`` -> CLS and the mean of the real channel tokens, ``[B, 2D]``."""
        if pool == "cls":
            return features.cls
        if pool == "all":
            return torch.cat([features.cls, features.mean_channel_tokens()], dim=-1)
        raise ValueError(f"pool must be one of {self.pools}, got {pool!r}")

    def forward(self, images: ChannelBatch | Tensor | list[Tensor], pool: str = "cls") -> Tensor:
        return self.forward_head(self.forward_features(images), pool=pool)

    def embedding_dim(self, pool: str = "cls", channels: int | None = None) -> int:
        if pool not in self.pools:
            raise ValueError(f"pool must be one of {self.pools}, got {pool!r}")
        return self.embed_dim * (2 if pool == "all" else 1)


# ---------------------------------------------------------------------------- fixed-channel ViT
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


@register_arch("fixed_channel_vit")
class FixedChannelViT(_StandardViT):
    """Standard ViT over images with exactly ``in_channels`` channels. ``model(images)`` -> ``[B, D]``."""

    config_class = FixedChannelViTConfig
    pools = ("cls", "all")
    variable_size_pools: dict[str, str] = {}

    def __init__(self, config: FixedChannelViTConfig | None = None) -> None:
        super().__init__()
        self.config = config or FixedChannelViTConfig()
        if self.config.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.config.in_channels}")
        self._build_trunk()
        self.patch_embed = _MultiChannelPatchEmbed(self.config.in_channels, self.config.patch_size, self.config.embed_dim)
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
        _check_pixels(batch, C, self.config.patch_size)
        H, W = batch.image_size
        pixels = batch.pixels.to(self.pos_embed.dtype).reshape(batch.batch_size, C, H, W)
        cls, patch, grid = self._encode(pixels)
        return FixedChannelOutput(cls=cls, patch_tokens=patch, grid=grid)

    def forward_head(self, features: FixedChannelOutput, pool: str = "cls") -> Tensor:
        """``"cls"`` -> ``[B, D]``; ``"all"`` -> CLS and the mean patch token, ``[B, 2D]``."""
        if pool == "cls":
            return features.cls
        if pool == "all":
            return torch.cat([features.cls, features.patch_tokens.mean(dim=1)], dim=-1)
        raise ValueError(f"pool must be one of {self.pools}, got {pool!r}")

    def forward(self, images: ChannelBatch | Tensor | list[Tensor], pool: str = "cls") -> Tensor:
        return self.forward_head(self.forward_features(images), pool=pool)

    def embedding_dim(self, pool: str = "cls", channels: int | None = None) -> int:
        if pool not in self.pools:
            raise ValueError(f"pool must be one of {self.pools}, got {pool!r}")
        return self.embed_dim * (2 if pool == "all" else 1)


# ------------------------------------------------------------------------------------ named sizes
_TEST = dict(embed_dim=32, depth=2, num_heads=2, img_size=32)
register_model(
    "one_channel_vit_test", "one_channel_vit", "tiny size for CPU tests and smoke runs", patch_size=8, **_TEST
)
register_model(
    "one_channel_vit_tiny",
    "one_channel_vit",
    "the paper's One Channel ViT/16 Tiny baseline (D=192, depth 12, 3 heads, patch 16, 224 px)",
)
register_model(
    "inter_channel_vit_test",
    "inter_channel_vit",
    "tiny size for CPU tests and smoke runs",
    tokenizer_widths=[8, 16],
    **_TEST,
)
register_model(
    "inter_channel_vit_tiny",
    "inter_channel_vit",
    "Inter-Channel only ViT at ViT-Tiny width (D=192, depth 12, 3 heads); conv TokenLearner 32-64-128-192",
)
register_model(
    "fixed_channel_vit_test", "fixed_channel_vit", "tiny 3-channel ViT for CPU tests", patch_size=8, in_channels=3, **_TEST
)
register_model(
    "fixed_channel_vit_tiny",
    "fixed_channel_vit",
    "standard 3-channel ViT-Tiny/16 (the '3 Ch. ViT' of supplementary Table 3)",
    in_channels=3,
)
