"""The plain ViT trunk of the patch-based baselines (``one_channel_vit``, ``fixed_channel_vit``).

CLS token, learned positional embedding, pre-norm blocks and a final norm, with the same
initialisation and positional resampling as ChAda-ViT (:mod:`chada.models.layers`). The baselines
differ only in their patch embedding (``[n, (c,) H, W] -> [n, N, D]``) and in how they pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from chada.models.hub import PretrainedMixin
from chada.models.layers import (
    ACTIVATIONS,
    POS_INTERPOLATIONS,
    check_choice,
    init_pos_embed,
    init_vit_weights,
    interpolate_pos_embed,
    make_blocks,
)

__all__ = ["StandardViTConfig", "StandardViT", "TEST_SIZE"]

#: the ``*_test`` named sizes of the patch-based baselines: tiny, for CPU tests and smoke runs
TEST_SIZE = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8)


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


class StandardViT(PretrainedMixin, nn.Module):
    """A plain ViT trunk (CLS + positional embedding + pre-norm blocks + final norm).

    Subclasses set ``self.patch_embed`` (``[n, c, H, W] -> [n, N, D]``) and call :meth:`_encode`.
    """

    config: StandardViTConfig

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
        self.blocks = make_blocks(
            D,
            c.depth,
            c.num_heads,
            c.mlp_hidden or int(D * c.mlp_ratio),
            c.qkv_bias,
            c.norm_eps,
            c.act,
            c.layer_scale,
            c.drop_path_rate,
        )
        self.norm = nn.LayerNorm(D, eps=c.norm_eps)

    def init_weights(self) -> None:
        init_pos_embed(self.pos_embed, self.config.pos_embed_std)
        nn.init.normal_(self.cls_token, std=1e-6)
        init_vit_weights(self)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def interpolate_pos_embed(self, h: int, w: int) -> Tensor:
        c = self.config
        return interpolate_pos_embed(self.pos_embed[0], c.img_size // c.patch_size, h, w, c.pos_interpolation)

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
