"""ChAda-ViT: the Channel-Adaptive Vision Transformer (Bourriez et al., CVPR 2024).

Token layout for one image with C channels, N = (H/p)*(W/p) patches per channel::

    [CLS] [ch0: N patches] [ch1: N patches] ... [ch(C-1): N patches] [padding: (C_max-C)*N]
     |        |
     |        +-- shared Conv2d(1, D, p, p)(channel) + pos[1 + n] + chan[slot of ch0]
     +-- cls_token + pos[0]

The positional embedding of patch position n is the same in every channel; the channel embedding of
a slot is the same for all N patches of that channel. Padding is removed from attention by a
key-padding mask, so it cannot influence any real token.

Two attention implementations, one set of weights (``attention=`` / :meth:`ChAdaViT.set_attention`):

- ``"padded"``: the paper's layout above, every image padded to ``C_max * N + 1`` tokens with a
  boolean key mask passed to ``scaled_dot_product_attention``. The reference path.
- ``"packed"`` (default): images are grouped by channel count and each group runs through the whole
  transformer at its true length ``C * N + 1`` with no mask. Each group's sequence is gathered
  straight from the stacked ``[sum C_i, N, D]`` channel tokens (no ``[B, C_max, N, D]`` padded
  buffer), the final norm runs per group, and only the normed outputs are written into the padded
  output layout; a batch with one channel count needs no gather or scatter. No FLOP is spent on
  padding. Why this and not a single packed sequence: measured on this project's CPU target
  (torch 2.13, 2 threads; ``benchmarks/throughput.py``, results in ``benchmarks/README.md``),
  grouping ran 3x faster than padded+mask, while nested/jagged tensors were ~9x *slower* than padded
  and FlexAttention has no CPU backward. Groups are exact (no cross-image attention to mask), need no
  special kernel, and run every block as one dense batched matmul, which is what both CPU and GPU
  do fastest. A batch has at most ``C_max`` groups, so the Python loop is short.

- ``"varlen"``: every image's sequence (CLS + its real channel tokens) is packed back to back into
  ONE ``[T, D]`` token matrix, ``T = sum_i (1 + C_i * N)``; linear layers, norms and MLPs run once
  over all of it and attention runs per sequence. On CUDA in fp16/bf16 that is a single
  ``torch.nn.attention.varlen.varlen_attn`` call per block (FlashAttention varlen: one kernel for
  the whole batch, whatever its channel counts); elsewhere (CPU, CUDA fp32) the sequences are grouped
  by length and each group runs as one dense SDPA batch, the same kernels as ``packed``. This is the
  GPU-first mode: ``packed`` stays the default until a GPU measurement (``benchmarks/gpu_check.py``)
  says otherwise.

All paths give the same real-token values to float32 round-off (tested to 1e-5 at every layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chada.models.batch import ChannelBatch, as_channel_batch, host_to_device
from chada.models.dense import DenseOutput, dense_from_tokens
from chada.models.hub import PretrainedMixin
from chada.models.layers import (
    ACTIVATIONS,
    POS_INTERPOLATIONS,
    Block,
    OfficialBlock,
    PatchEmbed,
    VarlenSegments,
    check_choice,
    init_pos_embed,
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

    def mean_patch_tokens(self) -> Tensor:
        """``[B, D]`` mean over real patch tokens only."""
        m = self.channel_mask[:, :, None, None].to(self.patch_tokens.dtype)
        n_tokens = m.sum(dim=(1, 2, 3)) * self.patch_tokens.shape[2]
        return (self.patch_tokens * m).sum(dim=(1, 2)) / n_tokens[:, None]


@register_arch("chada_vit")
class ChAdaViT(PretrainedMixin, nn.Module):
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
        block_cls = Block if config.block == "prenorm" else OfficialBlock
        dpr = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            block_cls(
                D,
                config.num_heads,
                config.hidden_dim,
                qkv_bias=config.qkv_bias,
                norm_eps=config.block_norm_eps,
                act=config.act,
                layer_scale=config.layer_scale,
                drop_path=dpr[i],
            )
            for i in range(config.depth)
        )
        self.norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.attention_mode = config.attention
        self.init_weights()

    # ----------------------------------------------------------------- setup
    def init_weights(self) -> None:
        init_pos_embed(self.pos_embed, self.config.pos_embed_std)
        nn.init.trunc_normal_(self.channel_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
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
    def _check(self, batch: ChannelBatch) -> None:
        p = self.config.patch_size
        H, W = batch.image_size
        if H % p or W % p:
            raise ValueError(
                f"image size {H}x{W} is not divisible by the patch size {p}; crop or resize to a multiple of {p}"
            )
        # Everything below reads host-side copies (counts, id range) or checks the pixels once on the
        # CPU (ChannelBatch.to), so a forward on a GPU never waits for the GPU to answer a question.
        Cmax = self.config.max_channels
        if batch.max_channels > Cmax:
            too_many = [i for i, c in enumerate(batch.host_counts or ()) if c > Cmax]
            raise ValueError(
                f"images {too_many} have more than C_max={Cmax} channels "
                f"(largest: {batch.max_channels}); this model cannot take them"
            )
        if batch.channel_ids is not None:
            lo, hi = batch.host_id_range or (int(batch.channel_ids.min()), int(batch.channel_ids.max()))
            if lo < 0 or hi >= Cmax:
                raise ValueError(f"channel_ids must lie in 0..{Cmax - 1}")
        if not batch.pixels.is_floating_point():
            raise TypeError(f"pixels must be floating point, got {batch.pixels.dtype}")
        batch.check_finite()

    def interpolate_pos_embed(self, h: int, w: int) -> Tensor:
        """``[1 + h*w, D]`` positional embedding for an ``h x w`` patch grid (bicubic, as timm).

        ``pos_interpolation="dino_bicubic"`` reproduces DINO's / the authors' released code exactly:
        ``scale_factor=((h + 0.1) / g, (w + 0.1) / g)``, no antialiasing. The kernel then samples with
        the slightly-off scale ``g / (h + 0.1)``, so it differs from ``size=(h, w)``; the released
        weights were evaluated that way.
        """
        pos = self.pos_embed[0]
        g = self.config.grid_size
        if (h, w) == (g, g):
            return pos
        cls_pos, grid = pos[:1], pos[1:]
        grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        if self.config.pos_interpolation == "dino_bicubic":
            grid = F.interpolate(grid.float(), scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic")
            if tuple(grid.shape[-2:]) != (h, w):  # the +0.1 exists to make this floor land on (h, w)
                raise ValueError(f"dino_bicubic interpolation gave grid {tuple(grid.shape[-2:])}, expected {(h, w)}")
            grid = grid.to(pos.dtype)
        else:
            grid = F.interpolate(
                grid.float(), size=(h, w), mode=self.config.pos_interpolation, align_corners=False, antialias=True
            ).to(pos.dtype)
        return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)

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
    def _run_blocks(
        self,
        x: Tensor,
        key_mask: Tensor | None,
        want_attn: bool,
        want_hidden: bool,
        segments: VarlenSegments | None = None,
    ) -> tuple[Tensor, Tensor | None, list[Tensor]]:
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
        self._check(batch)
        tokens, cls, (h, w) = self.embed(batch)
        B, Cmax, N, D = batch.batch_size, self.config.max_channels, h * w, self.embed_dim
        dev = tokens.device
        counts = batch.counts.to(dev)
        host_counts = list(batch.host_counts or ())
        image_of = torch.repeat_interleave(torch.arange(B, device=dev), counts, output_size=tokens.shape[0])
        slot_of = torch.arange(tokens.shape[0], device=dev) - (torch.cumsum(counts, 0) - counts)[image_of]
        channel_mask = torch.arange(Cmax, device=dev)[None, :] < counts[:, None]
        channel_ids = torch.full((B, Cmax), -1, dtype=torch.long, device=dev)
        channel_ids[image_of, slot_of] = batch.resolved_channel_ids().to(dev)

        heads = self.config.num_heads
        if self.attention_mode == "packed":
            cls_out, patch, cls_attn, hidden = self._forward_packed(
                tokens, cls, host_counts, return_attention, return_hidden_states
            )
        elif self.attention_mode == "varlen":
            cls_out, patch, cls_attn, hidden = self._forward_varlen(
                tokens, cls, (counts, host_counts), image_of, slot_of, return_attention, return_hidden_states
            )
        else:
            grid_tokens = tokens.new_zeros(B, Cmax, N, D)
            grid_tokens[image_of, slot_of] = tokens
            x = torch.cat([cls.expand(B, 1, D), grid_tokens.reshape(B, Cmax * N, D)], dim=1)
            key_mask = torch.cat([channel_mask.new_ones(B, 1), channel_mask.repeat_interleave(N, dim=1)], dim=1)
            x, attn, hidden = self._run_blocks(x, key_mask, return_attention, return_hidden_states)
            cls_attn = None if attn is None else attn[:, :, 0, :]  # [B, heads, 1 + Cmax*N]
            if hidden:
                hidden = [hs.masked_fill(~key_mask[..., None], 0.0) for hs in hidden]
            x = self.norm(x)
            cls_out = x[:, 0]
            patch = x[:, 1:].reshape(B, Cmax, N, D) * channel_mask[:, :, None, None].to(x.dtype)

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

    def _forward_packed(
        self, tokens: Tensor, cls: Tensor, counts_list: list[int], want_attn: bool, want_hidden: bool
    ) -> tuple[Tensor, Tensor, Tensor | None, list[Tensor]]:
        """Pad-free transformer: every same-channel-count group runs unmasked at its true length.

        Each group's sequence is gathered straight from the stacked channel tokens (no
        ``[B, C_max, N, D]`` padded buffer is built), the final norm runs per group (it acts per
        token, so this is exact), and only the normed outputs are written into the padded output
        layout. A batch with a single channel count skips the gather and the scatter altogether.

        Args:
            tokens: ``[sum C_i, N, D]`` embedded channel tokens, images in batch order.
            cls: ``[1, D]`` CLS token plus its position.
            counts_list: channels per image (host ints: the grouping is Python, read from no GPU).
        Returns:
            ``cls [B, D]``, ``patch [B, C_max, N, D]`` (zeros on padding), the last layer's CLS
            attention ``[B, heads, 1 + C_max*N]`` or None, and the per-block hidden states in the
            padded layout (empty unless ``want_hidden``).
        """
        _, N, D = tokens.shape
        B, Cmax, heads = len(counts_list), self.config.max_channels, self.config.num_heads
        dev, full_len = tokens.device, 1 + self.config.max_channels * N
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(counts_list):
            groups.setdefault(c, []).append(i)
        starts = [0]
        for c in counts_list[:-1]:
            starts.append(starts[-1] + c)
        cls_attn = tokens.new_zeros(B, heads, full_len) if want_attn else None
        hidden = [tokens.new_zeros(B, full_len, D) for _ in self.blocks] if want_hidden else []
        single = len(groups) == 1
        cls_out = patch = None
        for c, members in sorted(groups.items()):
            G, L = len(members), 1 + c * N
            if single:  # the stacked tokens already are [B, c*N, D] in batch order
                seq, idx = tokens.reshape(B, c * N, D), slice(None)
            else:
                rows = host_to_device([starts[i] + j for i in members for j in range(c)], dev)
                seq, idx = tokens.index_select(0, rows).reshape(G, c * N, D), host_to_device(members, dev)
            xg = torch.cat([cls.expand(G, 1, D), seq], dim=1)
            xg, attn_g, hid_g = self._run_blocks(xg, None, want_attn, want_hidden)
            if cls_attn is not None and attn_g is not None:
                cls_attn[idx, :, :L] = attn_g[:, :, 0, :].to(cls_attn.dtype)
            for full, part in zip(hidden, hid_g):
                full[idx, :L] = part.to(full.dtype)
            xg = self.norm(xg)
            if single:
                cls_out = xg[:, 0]
                patch = xg[:, 1:].reshape(B, c, N, D)
                if c < Cmax:
                    patch = torch.cat([patch, patch.new_zeros(B, Cmax - c, N, D)], dim=1)
                break
            if patch is None:
                cls_out = xg.new_empty(B, D)
                patch = xg.new_zeros(B, Cmax, N, D)
            cls_out[idx] = xg[:, 0]
            patch[idx, :c] = xg[:, 1:].reshape(G, c, N, D)
        assert cls_out is not None and patch is not None
        return cls_out, patch, cls_attn, hidden

    def _forward_varlen(
        self,
        tokens: Tensor,
        cls: Tensor,
        counts: tuple[Tensor, list[int]],
        image_of: Tensor,
        slot_of: Tensor,
        want_attn: bool,
        want_hidden: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None, list[Tensor]]:
        """One packed sequence for the whole batch (see the module docstring, ``"varlen"``).

        Packed row layout: image 0's CLS, its ``C_0 * N`` channel tokens, image 1's CLS, ... The
        channel tokens keep the stacked order of ``tokens``, so building the sequence is one gather.
        ``counts`` is ``([B]`` on the tokens' device, the same as host ints``)``; every index is computed
        on the device (no host-to-device copy, no read-back). Same returns as :meth:`_forward_packed`
        (``image_of``/``slot_of``: the image and channel position of every stacked channel).
        """
        n_ch, N, D = tokens.shape
        counts_dev, counts_list = counts
        B, Cmax, heads = len(counts_list), self.config.max_channels, self.config.num_heads
        dev, full_len = tokens.device, 1 + Cmax * N
        seg = VarlenSegments.from_lengths([1 + c * N for c in counts_list], dev, seq_lengths=1 + counts_dev * N)
        T = seg.total
        cls_rows = seg.cls_rows()
        # stacked channel token t of image i sits after i + 1 CLS rows (image 0's .. image i's)
        tok_rows = torch.arange(n_ch * N, device=dev) + (image_of + 1).repeat_interleave(N, output_size=n_ch * N)
        source = torch.empty(T, dtype=torch.long, device=dev)
        source[tok_rows] = torch.arange(n_ch * N, device=dev)
        source[cls_rows] = n_ch * N
        x = torch.cat([tokens.reshape(n_ch * N, D), cls.to(tokens.dtype)], dim=0).index_select(0, source)

        x, attn, hid = self._run_blocks(x, None, want_attn, want_hidden, segments=seg)
        cls_attn = None
        if attn is not None:  # [B, heads, max_len]: each image's CLS row, zeros past its end
            cls_attn = attn.new_zeros(B, heads, full_len)
            cls_attn[:, :, : attn.shape[-1]] = attn
        hidden: list[Tensor] = []
        if hid:
            seq_of_row = torch.repeat_interleave(torch.arange(B, device=dev), seg.seq_lengths, output_size=T)
            dst = seq_of_row * full_len + torch.arange(T, device=dev) - seg.cu_seqlens.long()[seq_of_row]
            hidden = [h.new_zeros(B * full_len, D).index_copy(0, dst, h).view(B, full_len, D) for h in hid]
        x = self.norm(x)
        cls_out = x.index_select(0, cls_rows)
        patch = (
            x.new_zeros(B * Cmax, N, D)
            .index_copy(0, image_of * Cmax + slot_of, x.index_select(0, tok_rows).view(n_ch, N, D))
            .view(B, Cmax, N, D)
        )
        return cls_out, patch, cls_attn, hidden

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

    def forward_head(self, features: ChAdaOutput, pool: str = "cls") -> Tensor:
        """Image embedding from features: ``"cls"`` -> ``[B, D]``; ``"all"`` -> CLS and the mean of
        the real patch tokens concatenated, ``[B, 2D]`` (the paper's all-token evaluation)."""
        if pool == "cls":
            return features.cls
        if pool == "all":
            return torch.cat([features.cls, features.mean_patch_tokens()], dim=-1)
        raise ValueError(f"pool must be 'cls' or 'all', got {pool!r}")

    def forward(self, images: ChannelBatch | Tensor | list[Tensor], pool: str = "cls") -> Tensor:
        """``[B, D]`` CLS embeddings (``[B, 2D]`` with ``pool="all"``)."""
        return self.forward_head(self.forward_features(images), pool=pool)

    def embedding_dim(self, pool: str = "cls", channels: int | None = None) -> int:
        return self.embed_dim * (2 if pool == "all" else 1)


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
