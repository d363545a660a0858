"""Transformer building blocks: shared patch projection, attention, MLP and the two block styles.

Shapes: ``B`` images, ``L`` tokens, ``D`` embedding width, ``h`` heads, ``T`` tokens of a packed
(varlen) batch, ``hd`` head width.

Attention kernels (:func:`attention`):

- default: ``F.scaled_dot_product_attention`` (on CPU its fused "flash" kernel for fp32 and for
  training);
- bf16 inference on CPU: an explicit ``q @ k^T -> softmax -> @ v`` in query chunks. Measured on an
  AMD EPYC (avx512_bf16, no AMX) with torch 2.13, the CPU flash kernel runs no faster in bf16 than in
  fp32 (consistent with its bf16 GEMM fast path needing AMX), while plain bf16 matmuls run ~4x fp32; the explicit path ran ~2.4x the fused kernel and took the bf16 model from 1.4x to
  2.4-2.8x fp32 (benchmarks/README.md, "bf16 on CPU"). Chunking the queries bounds the score buffer.
- varlen (:class:`VarlenSegments`): one packed ``[T, D]`` sequence holding every image back to back;
  ``torch.nn.attention.varlen.varlen_attn`` on CUDA in fp16/bf16, otherwise the segments are grouped
  by length and each group runs as one dense batch (the same kernels as above).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chada.models.batch import ChannelBatch
from chada.models.varlen import VarlenSegments, _varlen_kernel_available, varlen_kernel_supported  # noqa: F401

__all__ = [
    "PatchEmbed",
    "Attention",
    "Mlp",
    "Block",
    "OfficialBlock",
    "LayerScale",
    "VarlenSegments",
    "attention",
    "init_pos_embed",
    "varlen_kernel_supported",
    "ACTIVATIONS",
    "POS_INTERPOLATIONS",
    "check_choice",
    "check_pixels",
    "init_vit_weights",
    "interpolate_pos_embed",
    "make_blocks",
]

ACTIVATIONS = ("gelu", "relu")
# F.interpolate modes that take antialias=True (what interpolate_pos_embed passes)
POS_INTERPOLATIONS = ("bicubic", "bilinear")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Refuse a config enumeration value outside ``allowed`` (exact, case-sensitive match)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


#: Kernel for bf16 inference attention on CPU: "explicit" (chunked matmul + softmax, the default) or
#: "sdpa" (torch's fused CPU kernel). Kept switchable so benchmarks/profile_bf16.py can show both.
CPU_BF16_ATTENTION = "explicit"

# Score elements (batch x heads x query rows x keys) per chunk of the explicit bf16 CPU attention: 2^20
# bf16 values = 2 MB, about one core's L2 on the Zen 5 target, so the softmax and the following
# matmul read the scores from cache. Measured (benchmarks/README.md): 2^20-2^21 fastest, 2^18 ~10 %
# slower, whole score matrices ~3 % slower.
_CPU_BF16_CHUNK_ELEMENTS = 1 << 20


def _explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, chunk: int | None = None
) -> Tensor:
    """``softmax(q k^T / sqrt(hd)) v`` on ``[B, h, L, hd]``, ``chunk`` query rows at a time.

    ``k`` and ``v`` are made contiguous once (not once per chunk inside the matmul), and the result
    is written straight into a ``[B, L, h, hd]`` buffer, so the caller's ``transpose(1, 2).reshape``
    back to ``[B, L, D]`` is free.
    """
    B, H, L, hd = q.shape
    if chunk is None:
        chunk = max(64, _CPU_BF16_CHUNK_ELEMENTS // max(1, B * H * k.shape[-2]))
    scale = hd**-0.5
    kt = k.contiguous().transpose(-2, -1)
    v = v.contiguous()
    drop = None if attn_mask is None else ~attn_mask  # once, not per chunk
    buf = q.new_empty(B, L, H, v.shape[-1])
    out = buf.transpose(1, 2)
    for s in range(0, L, chunk):
        logits = (q[..., s : s + chunk, :] * scale) @ kt
        if drop is not None:
            logits.masked_fill_(drop, float("-inf"))
        out[..., s : s + chunk, :] = logits.softmax(dim=-1) @ v
    return out


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention on ``[B, h, L, hd]`` (``attn_mask``: bool ``[B, 1, 1, L]``, True = keep).

    bf16 inference on CPU takes the explicit chunked path (see the module docstring); everything
    else, including every computation that needs gradients, goes to ``F.scaled_dot_product_attention``.
    """
    if (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and CPU_BF16_ATTENTION == "explicit"
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    ):
        return _explicit_attention(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


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
        self,
        x: Tensor,
        key_mask: Tensor | None = None,
        return_attention: bool = False,
        segments: VarlenSegments | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """
        Args:
            x: ``[B, L, D]`` tokens, or ``[T, D]`` packed tokens when ``segments`` is given.
            key_mask: ``[B, L]`` bool, True where a key is real; None means all real.
            return_attention: also return the softmax weights ``[B, h, L, L]`` (explicit path:
                SDPA does not expose them); with ``segments``, only each sequence's CLS row,
                ``[S, h, max_len]``.
            segments: the packed (varlen) layout of ``x``.
        Returns:
            ``([B, L, D] or [T, D], attention or None)``.
        """
        if segments is not None:
            T, D = x.shape
            q, k, v = self.qkv(x).reshape(T, 3, self.num_heads, self.head_dim).unbind(1)
            out, cls_w = segments.attention(q, k, v, want_cls_row=return_attention, dense=attention)
            return self.proj(out.reshape(T, D)), cls_w
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
            out = attention(q, k, v, attn_mask)
        out = out.transpose(1, 2).reshape(B, L, D)
        return self.proj(out), weights


class Mlp(nn.Module):
    """``Linear -> act -> Linear`` feed-forward."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        check_choice("act", act, ACTIVATIONS)
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

    def _drop(self, x: Tensor, segments: VarlenSegments | None = None) -> Tensor:
        # Stochastic depth per sample; a no-op at inference so padded and packed paths agree.
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        if segments is not None:  # one draw per packed sequence, not per token
            # Lengths already on the device and a sized repeat: no host-to-device copy, no read-back,
            # and nothing per batch mix for a compiled block to guard on.
            mask = x.new_empty(segments.seq_lengths.shape[0]).bernoulli_(keep)
            return x * mask.repeat_interleave(segments.seq_lengths, output_size=x.shape[0])[:, None] / keep
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None = None,
        return_attention: bool = False,
        segments: VarlenSegments | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        a, w = self.attn(self.norm1(x), key_mask, return_attention, segments)
        x = x + self._drop(self.ls1(a), segments)
        x = x + self._drop(self.ls2(self.mlp(self.norm2(x))), segments)
        return x, w


class OfficialBlock(nn.Module):
    """The block of the authors' released weights (``nn.TransformerEncoderLayer``-shaped, post-norm).

    Reproduces their quirk exactly: attention reads ``norm1(x)``, then ``x = norm1(x + attn)`` (norm1
    used twice), then ``x = norm2(x + ffn(x))`` with a ReLU feed-forward.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_hidden: int, norm_eps: float = 1e-5, **_: object
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden, act="relu")

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None = None,
        return_attention: bool = False,
        segments: VarlenSegments | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        a, w = self.attn(self.norm1(x), key_mask, return_attention, segments)
        x = self.norm1(x + a)
        x = self.norm2(x + self.mlp(x))
        return x, w


# ------------------------------------------------------------------ helpers shared by every model
def make_blocks(
    dim: int,
    depth: int,
    num_heads: int,
    hidden: int,
    qkv_bias: bool,
    norm_eps: float,
    act: str,
    layer_scale: float | None,
    drop_path_rate: float,
    block_cls: type[nn.Module] = Block,
) -> nn.ModuleList:
    """``depth`` blocks whose stochastic-depth rate rises linearly from 0 to ``drop_path_rate``."""
    dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(
        block_cls(
            dim,
            num_heads,
            hidden,
            qkv_bias=qkv_bias,
            norm_eps=norm_eps,
            act=act,
            layer_scale=layer_scale,
            drop_path=dpr[i],
        )
        for i in range(depth)
    )


def init_vit_weights(model: nn.Module) -> None:
    """timm/DINO init of every submodule: trunc-normal linears, unit norms (LayerNorm and GroupNorm).

    Draws random numbers for the linears only, in ``model.modules()`` order, so callers keep their
    draw order by calling it at the same point of their ``init_weights``.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_pixels(batch: ChannelBatch, max_channels: int, patch_size: int | None, min_size: int = 0) -> None:
    """Refuse a batch a model cannot take, with a message naming the images and what to do.

    Reads host-side copies only (counts, id range) and checks the pixels once on the CPU
    (:meth:`ChannelBatch.check_finite`), so a forward on a GPU never waits for the GPU to answer.
    ``patch_size`` None skips the divisibility check (models that pool whole channels);
    ``min_size`` refuses smaller images (the baselines pass 1 to reject empty images by name).
    """
    H, W = batch.image_size
    if patch_size is not None and (H % patch_size or W % patch_size):
        raise ValueError(
            f"image size {H}x{W} is not divisible by the patch size {patch_size}; "
            f"crop or resize to a multiple of {patch_size}"
        )
    if min(H, W) < min_size:
        raise ValueError(f"image size {H}x{W} is smaller than the minimum {min_size}x{min_size}")
    if batch.max_channels > max_channels:
        too_many = [i for i, c in enumerate(batch.host_counts or ()) if c > max_channels]
        raise ValueError(
            f"images {too_many} have more than C_max={max_channels} channels "
            f"(largest: {batch.max_channels}); this model cannot take them"
        )
    if batch.channel_ids is not None:
        lo, hi = batch.host_id_range or (int(batch.channel_ids.min()), int(batch.channel_ids.max()))
        if lo < 0 or hi >= max_channels:
            raise ValueError(f"channel_ids must lie in 0..{max_channels - 1}")
    if not batch.pixels.is_floating_point():
        raise TypeError(f"pixels must be floating point, got {batch.pixels.dtype}")
    batch.check_finite()


def interpolate_pos_embed(pos: Tensor, grid: int, h: int, w: int, mode: str) -> Tensor:
    """``[1 + h*w, D]`` positional table for an ``h x w`` patch grid from a ``[1 + grid^2, D]`` one.

    ``mode`` is an ``F.interpolate`` mode (antialiased, ``size=(h, w)``, as timm) or
    ``"dino_bicubic"``, DINO's / the authors' released code exactly: ``scale_factor=((h + 0.1) / g,
    (w + 0.1) / g)``, no antialiasing. The kernel then samples with the slightly-off scale
    ``g / (h + 0.1)``, so it differs from ``size=(h, w)``; the released weights were evaluated that way.
    """
    if (h, w) == (grid, grid):
        return pos
    cls_pos, g = pos[:1], pos[1:]
    g = g.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    if mode == "dino_bicubic":
        g = F.interpolate(g.float(), scale_factor=((h + 0.1) / grid, (w + 0.1) / grid), mode="bicubic")
        if tuple(g.shape[-2:]) != (h, w):  # the +0.1 exists to make this floor land on (h, w)
            raise ValueError(f"dino_bicubic interpolation gave grid {tuple(g.shape[-2:])}, expected {(h, w)}")
        g = g.to(pos.dtype)
    else:
        g = F.interpolate(g.float(), size=(h, w), mode=mode, align_corners=False, antialias=True).to(
            pos.dtype
        )
    return torch.cat([cls_pos, g.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)
