"""Transformer building blocks: shared patch projection, attention, MLP and the two block styles.

Shapes: ``B`` images, ``L`` tokens, ``D`` embedding width, ``h`` heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchEmbed", "Attention", "Mlp", "Block", "OfficialBlock", "LayerScale", "init_pos_embed"]


def init_pos_embed(pos_embed: Tensor, patch_std: float = 0.02, cls_std: float = 0.02) -> None:
    """Truncated-normal init of a ``[1, 1 + N, D]`` positional embedding whose slot 0 is the CLS token's.

    Patch slots take ``patch_std``; the CLS slot keeps ``cls_std`` (DINO's 0.02) whatever ``patch_std``
    is: a large CLS slot is a constant that swamps what the CLS token gathers by attention, so every
    image embeds alike and DINO collapses to a uniform teacher. Two calls draw the same random stream
    as one call on the whole tensor, so the default init is unchanged by the split.
    """
    with torch.no_grad():
        nn.init.trunc_normal_(pos_embed[:, :1], std=cls_std)
        nn.init.trunc_normal_(pos_embed[:, 1:], std=patch_std)


class PatchEmbed(nn.Module):
    """ONE ``Conv2d(1, D, p, stride=p)`` applied to every channel of every image.

    ``[N_channels, H, W] -> [N_channels, (H/p)*(W/p), D]``: sharing the projection across channels is
    what lets the model take any stain in any slot.
    """

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.proj(pixels.unsqueeze(1))  # [N, D, h, w]
        return x.flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention on ``[B, L, D]`` with an optional key-padding mask.

    ``qkv`` stores q, k, v stacked along the output dim, the same layout as
    ``nn.MultiheadAttention.in_proj_weight``, so checkpoints of either kind map onto it directly.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, key_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """
        Args:
            x: ``[B, L, D]`` tokens.
            key_mask: ``[B, L]`` bool, True where a key is real; None means all real.
            return_attention: also return the softmax weights ``[B, h, L, L]`` (explicit path:
                SDPA does not expose them).
        Returns:
            ``([B, L, D], attention or None)``.
        """
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        weights = None
        if return_attention:
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            weights = logits.softmax(dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(B, L, D)
        return self.proj(out), weights


class Mlp(nn.Module):
    """``Linear -> act -> Linear`` feed-forward."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm ViT block (timm/DINO style): ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        act: str = "gelu",
        layer_scale: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden, act=act)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale else nn.Identity()
        self.drop_path = drop_path

    def _drop(self, x: Tensor) -> Tensor:
        # Stochastic depth per sample; a no-op at inference so padded and packed paths agree.
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(
        self, x: Tensor, key_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        a, w = self.attn(self.norm1(x), key_mask, return_attention)
        x = x + self._drop(self.ls1(a))
        x = x + self._drop(self.ls2(self.mlp(self.norm2(x))))
        return x, w


class OfficialBlock(nn.Module):
    """The block of the authors' released weights (``nn.TransformerEncoderLayer``-shaped, post-norm).

    Reproduces their quirk exactly: attention reads ``norm1(x)``, then ``x = norm1(x + attn)`` (norm1
    used twice), then ``x = norm2(x + ffn(x))`` with a ReLU feed-forward.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, norm_eps: float = 1e-5, **_: object) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden, act="relu")

    def forward(
        self, x: Tensor, key_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        a, w = self.attn(self.norm1(x), key_mask, return_attention)
        x = self.norm1(x + a)
        x = self.norm2(x + self.mlp(x))
        return x, w
