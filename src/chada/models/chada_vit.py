"""ChAda-ViT: the Channel-Adaptive Vision Transformer (Bourriez et al., CVPR 2024).

Token layout for one image with C channels, N = (H/p)*(W/p) patches per channel::

    [CLS] [ch0: N patches] [ch1: N patches] ... [ch(C-1): N patches] [padding: (C_max-C)*N]
     |        |
     |        +-- shared Conv2d(1, D, p, p)(channel) + pos[1 + n] + chan[slot of ch0]
     +-- cls_token + pos[0]

The positional embedding of patch position n is the same in every channel; the channel embedding of
a slot is the same for all N patches of that channel. Padding is removed from attention by a
key-padding mask, so it cannot influence any real token.

Three attention paths, one set of weights (``attention=`` / :meth:`ChAdaViT.set_attention`), one
function each in :mod:`chada.models.chada_paths`: ``"padded"`` (the paper's layout with a key-padding
mask, the reference), ``"packed"`` (the default: images grouped by channel count, each group at its
true length, no FLOP on padding) and ``"varlen"`` (the whole batch as one packed sequence; one
FlashAttention varlen kernel per block on CUDA in fp16/bf16, GPU-first).

All paths give the same real-token values to float32 round-off (tested to 1e-5 at every layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from chada.models import chada_paths
from chada.models.batch import ChannelBatch, as_channel_batch
from chada.models.chada_paths import TokenLayout
from chada.models.dense import DenseOutput, dense_from_tokens
from chada.models.heads import ClsAllHead
from chada.models.hub import PretrainedMixin
from chada.models.layers import (
    ACTIVATIONS,
    POS_INTERPOLATIONS,
    Block,
    OfficialBlock,
    PatchEmbed,
    VarlenSegments,
    check_choice,
    check_pixels,
    init_pos_embed,
    init_vit_weights,
    interpolate_pos_embed,
    make_blocks,
)
from chada.models.registry import register_arch, register_model

__all__ = ["ChAdaViTConfig", "ChAdaViT", "ChAdaOutput", "ATTENTION_MODES"]

ATTENTION_MODES = ("padded", "packed", "varlen")
BLOCK_STYLES = ("prenorm", "official")


@dataclass
class ChAdaViTConfig:
    """Architecture of a ChAda-ViT (defaults: the paper's Moyen size)."""

    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None  # overrides mlp_ratio (the released weights use 2048)
    patch_size: int = 16
    img_size: int = 224  # training size: sets the stored positional grid (img_size / patch_size)^2
    max_channels: int = 10  # C_max
    qkv_bias: bool = True
    block: str = "prenorm"  # "prenorm" (timm/DINO) or "official" (the authors' released post-norm block)
    block_norm_eps: float = 1e-6
    norm_eps: float = 1e-6
    act: str = "gelu"
    layer_scale: float | None = None
    drop_path_rate: float = 0.0
    attention: str = "packed"  # "packed", "padded" or "varlen"
    pos_interpolation: str = "bicubic"  # an F.interpolate mode, or "dino_bicubic" (DINO's +0.1 scale factor)
    # Init std of the learned positional embedding's patch slots (timm/DINO: 0.02; the CLS slot keeps 0.02).
    # Tokens of different channels at one position find each other only through it, so small models learn
    # inter-channel relations faster from a larger value (the quickstart uses 0.2; see README Appendix A).
    pos_embed_std: float = 0.02
    channel_names: list[str] | None = field(default=None)  # canonical slot names, recorded at pretraining

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def hidden_dim(self) -> int:
        return self.mlp_hidden or int(self.embed_dim * self.mlp_ratio)

    def tokens(self, channels: int) -> int:
        """Sequence length at the training size for ``channels`` real channels (CLS included)."""
        return 1 + channels * self.num_patches

    def expected_num_params(self) -> int:
        """Closed-form parameter count, checked against the built model in the tests."""
        D, Hd, p = self.embed_dim, self.hidden_dim, self.patch_size
        embed = D * p * p + D + D + (self.num_patches + 1) * D + self.max_channels * D
        attn = D * 3 * D + (3 * D if self.qkv_bias else 0) + D * D + D
        mlp = D * Hd + Hd + Hd * D + D
        norms = 4 * D
        ls = 2 * D if (self.layer_scale and self.block == "prenorm") else 0
        return embed + self.depth * (attn + mlp + norms + ls) + 2 * D


@dataclass
class ChAdaOutput:
    """What :meth:`ChAdaViT.forward_features` returns.

    Attributes:
        cls: ``[B, D]`` CLS embedding after the final norm.
        patch_tokens: ``[B, C_max, N, D]`` patch tokens after the final norm; channel position j of
            image b holds its j-th real channel; padded positions are zeros.
        channel_mask: ``[B, C_max]`` bool, True for real channels.
        channel_ids: ``[B, C_max]`` long, the embedding slot of each position (-1 on padding).
        grid: ``(h, w)`` patch grid.
        attention: ``[B, heads, C_max, h, w]`` last-layer attention of the CLS query over every patch
            (sums to 1 over real patches + CLS itself; zeros on padding), when requested.
        cls_self_attention: ``[B, heads]`` the CLS query's weight on itself, when requested.
        hidden_states: per block, ``[B, 1 + C_max * N, D]`` tokens in the padded layout (zeros on
            padding), when requested.
    """

    cls: Tensor
    patch_tokens: Tensor
    channel_mask: Tensor
    channel_ids: Tensor
    grid: tuple[int, int]
    attention: Tensor | None = None
    cls_self_attention: Tensor | None = None
    hidden_states: list[Tensor] | None = None

    def mean_tokens(self) -> Tensor:
        """``[B, D]`` mean over real patch tokens only."""
        m = self.channel_mask[:, :, None, None].to(self.patch_tokens.dtype)
        n_tokens = m.sum(dim=(1, 2, 3)) * self.patch_tokens.shape[2]
        return (self.patch_tokens * m).sum(dim=(1, 2)) / n_tokens[:, None]


@register_arch("chada_vit")
class ChAdaViT(ClsAllHead, PretrainedMixin, nn.Module):
    """Channel-Adaptive ViT. See the module docstring for the token layout.

    ``model(images)`` takes a list of ``[C_i, H, W]`` tensors, a ``[B, C, H, W]`` tensor or a
    :class:`ChannelBatch`, and returns the CLS embeddings ``[B, D]``.
    """

    config_class = ChAdaViTConfig

    def __init__(self, config: ChAdaViTConfig | None = None) -> None:
        super().__init__()
        config = config or ChAdaViTConfig()
        if config.img_size % config.patch_size:
            raise ValueError(f"img_size {config.img_size} is not a multiple of patch_size {config.patch_size}")
        check_choice("block", config.block, BLOCK_STYLES)
        check_choice("attention", config.attention, ATTENTION_MODES)
        check_choice("act", config.act, ACTIVATIONS)
        check_choice("pos_interpolation", config.pos_interpolation, POS_INTERPOLATIONS + ("dino_bicubic",))
        if config.channel_names is not None and len(config.channel_names) > config.max_channels:
            raise ValueError("more channel_names than max_channels")
        self.config = config
        D = config.embed_dim
        self.embed_dim = self.num_features = D
        self.patch_embed = PatchEmbed(config.patch_size, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, D))
        self.channel_embed = nn.Parameter(torch.zeros(config.max_channels, D))
        self.blocks = make_blocks(
            D, config.depth, config.num_heads, config.hidden_dim, config.qkv_bias, config.block_norm_eps, config.act,
            config.layer_scale, config.drop_path_rate, block_cls=Block if config.block == "prenorm" else OfficialBlock,
        )
        self.norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.attention_mode = config.attention
        self.init_weights()

    # ----------------------------------------------------------------- setup
    def init_weights(self) -> None:
        init_pos_embed(self.pos_embed, self.config.pos_embed_std)
        nn.init.trunc_normal_(self.channel_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        init_vit_weights(self)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)  # as a linear layer, like MAE/DINOv2

    def set_attention(self, mode: str) -> ChAdaViT:
        """Switch between ``"padded"`` (paper reference), ``"packed"`` (no padding FLOPs, the default) and
        ``"varlen"`` (one packed sequence, GPU-first); see the module docstring."""
        check_choice("attention", mode, ATTENTION_MODES)
        self.attention_mode = mode
        self.config.attention = mode
        return self

    @property
    def max_channels(self) -> int:
        return self.config.max_channels

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "channel_embed"}

    # ----------------------------------------------------------------- inputs
    def interpolate_pos_embed(self, h: int, w: int) -> Tensor:
        """``[1 + h*w, D]`` positional embedding for an ``h x w`` patch grid (bicubic, as timm; or
        ``pos_interpolation="dino_bicubic"``, the authors' exact resampling: see
        :func:`~chada.models.layers.interpolate_pos_embed`)."""
        return interpolate_pos_embed(self.pos_embed[0], self.config.grid_size, h, w, self.config.pos_interpolation)

    def embed(self, batch: ChannelBatch) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Patch + positional + channel embedding of every channel.

        Returns:
            ``tokens [sum C_i, N, D]``, ``cls [1, D]`` (CLS token + its position), ``grid (h, w)``.
        """
        p = self.config.patch_size
        H, W = batch.image_size
        h, w = H // p, W // p
        pixels = batch.pixels.to(self.pos_embed.dtype)
        tokens = self.patch_embed(pixels)
        pos = self.interpolate_pos_embed(h, w)
        chan = self.channel_embed[batch.resolved_channel_ids()]
        tokens = tokens + pos[1:].unsqueeze(0) + chan.unsqueeze(1)
        cls = self.cls_token[0] + pos[:1]
        return tokens, cls, (h, w)

    # ------------------------------------------------------------- transformer
    def run_blocks(
        self,
        x: Tensor,
        key_mask: Tensor | None,
        want_attn: bool,
        want_hidden: bool,
        segments: VarlenSegments | None = None,
    ) -> tuple[Tensor, Tensor | None, list[Tensor]]:
        """Every block over ``x`` (``[B, L, D]``, or ``[T, D]`` with ``segments``); the last block's
        attention when ``want_attn``; every block's output when ``want_hidden``. The attention
        paths of :mod:`chada.models.chada_paths` call it."""
        hidden: list[Tensor] = []
        attn = None
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x, a = blk(x, key_mask, return_attention=want_attn and i == last, segments=segments)
            if a is not None:
                attn = a
            if want_hidden:
                hidden.append(x)
        return x, attn, hidden

    def forward_features(
        self,
        images: ChannelBatch | Tensor | list[Tensor],
        return_attention: bool = False,
        return_hidden_states: bool = False,
    ) -> ChAdaOutput:
        """Run the backbone.

        Args:
            images: list of ``[C_i, H, W]``, ``[B, C, H, W]`` or a :class:`ChannelBatch`.
            return_attention: add the last layer's CLS attention ``[B, heads, C_max, h, w]``.
            return_hidden_states: add every block's output in the padded layout (for tests/analysis).
        """
        batch = as_channel_batch(images)
        check_pixels(batch, self.config.max_channels, self.config.patch_size)
        tokens, cls, (h, w) = self.embed(batch)
        B, Cmax = batch.batch_size, self.config.max_channels
        dev = tokens.device
        counts = batch.counts.to(dev)
        image_of = torch.repeat_interleave(torch.arange(B, device=dev), counts, output_size=tokens.shape[0])
        slot_of = torch.arange(tokens.shape[0], device=dev) - (torch.cumsum(counts, 0) - counts)[image_of]
        channel_mask = torch.arange(Cmax, device=dev)[None, :] < counts[:, None]
        channel_ids = torch.full((B, Cmax), -1, dtype=torch.long, device=dev)
        channel_ids[image_of, slot_of] = batch.resolved_channel_ids().to(dev)

        heads = self.config.num_heads
        layout = TokenLayout(counts, list(batch.host_counts or ()), image_of, slot_of, channel_mask, Cmax, heads)
        path = chada_paths.PATHS[self.attention_mode]
        cls_out, patch, cls_attn, hidden = path(self, tokens, cls, layout, return_attention, return_hidden_states)

        attention = cls_self = None
        if cls_attn is not None:
            cls_self = cls_attn[:, :, 0]
            attention = cls_attn[:, :, 1:].reshape(B, heads, Cmax, h, w)
            attention = attention * channel_mask[:, None, :, None, None].to(attention.dtype)
        return ChAdaOutput(
            cls=cls_out,
            patch_tokens=patch,
            channel_mask=channel_mask,
            channel_ids=channel_ids,
            grid=(h, w),
            attention=attention,
            cls_self_attention=cls_self,
            hidden_states=hidden or None,
        )

    def forward_dense(
        self,
        images: ChannelBatch | Tensor | list[Tensor],
        channels: str = "each",
        upsample: bool | tuple[int, int] = False,
    ) -> DenseOutput:
        """Per-channel (or channel-pooled) feature maps from the final patch tokens.

        Args:
            images: list of ``[C_i, H, W]``, ``[B, C, H, W]`` or a :class:`ChannelBatch`.
            channels: ``"each"`` -> ``maps [B, C, D, h, w]`` with ``C`` the batch's largest channel
                count (zeros on padding, see ``channel_mask``); ``"pooled"`` -> ``[B, D, h, w]``, the
                mean over each image's real channels.
            upsample: False keeps the ``h x w`` patch grid; True resizes bilinearly to the input's
                ``H x W``; an ``(H, W)`` pair resizes to that size.
        Returns:
            :class:`~chada.models.dense.DenseOutput`. The same values in every attention mode.
        """
        batch = as_channel_batch(images)
        out = self.forward_features(batch)
        return dense_from_tokens(out.patch_tokens, out.channel_mask, out.grid, batch.image_size, channels, upsample)


register_model(
    "chada_vit_test",
    "chada_vit",
    "tiny size for CPU tests and smoke runs",
    embed_dim=32,
    depth=2,
    num_heads=2,
    patch_size=8,
    img_size=32,
)
register_model(
    "chada_vit_petit",
    "chada_vit",
    "smaller than the paper's model (our choice: the paper gives no numbers)",
    embed_dim=128,
    depth=6,
    num_heads=4,
)
register_model("chada_vit_moyen", "chada_vit", "the paper's model: ViT-Tiny width over up to 10x196 tokens")
register_model(
    "chada_vit_grand",
    "chada_vit",
    "larger than the paper's model (ViT-Small width; our choice: the paper gives no numbers)",
    embed_dim=384,
    num_heads=6,
)
register_model(
    "chada_vit_moyen_official",
    "chada_vit",
    "the authors' released architecture (post-norm TransformerEncoderLayer blocks, 12 heads, ReLU MLP 2048)",
    num_heads=12,  # the authors' factory at training time (docs/official-weights.md); --num-heads 2 for the later one
    mlp_hidden=2048,
    block="official",
    block_norm_eps=1e-5,
    norm_eps=1e-6,
    pos_interpolation="dino_bicubic",
)
