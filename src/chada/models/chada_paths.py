"""ChAda-ViT's three attention paths, one function each, with one signature (see ``ChAdaViT``).

All three take the embedded channel tokens ``[sum C_i, N, D]`` (images in batch order, each image's
channels back to back), the CLS token plus its position ``[1, D]`` and the batch's
:class:`TokenLayout`, run the blocks and the final norm, and return :data:`PathResult`:
``cls [B, D]``, ``patch [B, C_max, N, D]`` (zeros on padding), the last layer's CLS attention
``[B, heads, 1 + C_max*N]`` or None, and the per-block hidden states in the padded layout
``[B, 1 + C_max*N, D]`` (empty unless asked). They give the same real-token values to float32
round-off (tests/models/test_packed.py, to 1e-5 at every layer).

- :func:`forward_padded`: the paper's layout, every image padded to ``1 + C_max * N`` tokens with a
  boolean key mask passed to ``scaled_dot_product_attention``. The reference path.
- :func:`forward_packed` (the default): images are grouped by channel count and each group runs
  through the whole transformer at its true length ``1 + C * N`` with no mask. Each group's sequence
  is gathered straight from the stacked channel tokens (no ``[B, C_max, N, D]`` padded buffer), the
  final norm runs per group (it acts per token, so this is exact), and only the normed outputs are
  written into the padded output layout; a batch with one channel count needs no gather or scatter.
  No FLOP is spent on padding. Why this and not a single packed sequence: measured on this project's
  CPU target (torch 2.13, 2 threads; ``benchmarks/throughput.py``, results in
  ``benchmarks/README.md``), grouping ran 3x faster than padded+mask, while nested/jagged tensors
  were ~9x *slower* than padded and FlexAttention has no CPU backward. Groups are exact (no
  cross-image attention to mask), need no special kernel, and run every block as one dense batched
  matmul, which is what both CPU and GPU do fastest. A batch has at most ``C_max`` groups, so the
  Python loop is short.
- :func:`forward_varlen`: every image's sequence (CLS + its real channel tokens) is packed back to
  back into ONE ``[T, D]`` token matrix, ``T = sum_i (1 + C_i * N)``; linear layers, norms and MLPs
  run once over all of it and attention runs per sequence. On CUDA in fp16/bf16 that is a single
  ``torch.nn.attention.varlen.varlen_attn`` call per block (FlashAttention varlen: one kernel for the
  whole batch, whatever its channel counts); elsewhere (CPU, CUDA fp32) the sequences are grouped by
  length and each group runs as one dense SDPA batch, the same kernels as ``packed``. This is the
  GPU-first mode: ``packed`` stays the default until a GPU measurement (``benchmarks/gpu_check.py``)
  says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from chada.models.batch import host_to_device
from chada.models.varlen import VarlenSegments

__all__ = ["TokenLayout", "PathResult", "forward_padded", "forward_packed", "forward_varlen", "PATHS"]

#: ``(cls [B, D], patch [B, C_max, N, D], CLS attention [B, heads, 1 + C_max*N] or None, hidden states)``
PathResult = tuple[Tensor, Tensor, "Tensor | None", list[Tensor]]


class Backbone(Protocol):
    """What a path needs of the model: its blocks (run through ``run_blocks``) and its final norm."""

    blocks: nn.ModuleList
    norm: nn.Module

    def run_blocks(
        self, x: Tensor, key_mask: Tensor | None, want_attn: bool, want_hidden: bool,
        segments: VarlenSegments | None = None,
    ) -> tuple[Tensor, Tensor | None, list[Tensor]]: ...  # fmt: skip


@dataclass(frozen=True)
class TokenLayout:
    """Where the stacked channel tokens of a batch sit in the padded ``[B, C_max, N, D]`` layout.

    Attributes:
        counts: ``[B]`` channels per image, on the tokens' device.
        host_counts: the same as Python ints (grouping and lengths are decided with no GPU read-back).
        image_of: ``[sum C_i]`` the image of every stacked channel.
        slot_of: ``[sum C_i]`` its position among its image's channels.
        channel_mask: ``[B, C_max]`` bool, True for real channels.
        max_channels: ``C_max``.
        num_heads: attention heads (the shape of the returned CLS attention).
    """

    counts: Tensor
    host_counts: list[int]
    image_of: Tensor
    slot_of: Tensor
    channel_mask: Tensor
    max_channels: int
    num_heads: int


def forward_padded(
    model: Backbone, tokens: Tensor, cls: Tensor, layout: TokenLayout, want_attn: bool, want_hidden: bool
) -> PathResult:
    """Every image padded to ``1 + C_max * N`` tokens; padding is masked out of every attention."""
    _, N, D = tokens.shape
    B, Cmax, channel_mask = len(layout.host_counts), layout.max_channels, layout.channel_mask
    grid_tokens = tokens.new_zeros(B, Cmax, N, D)
    grid_tokens[layout.image_of, layout.slot_of] = tokens
    x = torch.cat([cls.expand(B, 1, D), grid_tokens.reshape(B, Cmax * N, D)], dim=1)
    key_mask = torch.cat([channel_mask.new_ones(B, 1), channel_mask.repeat_interleave(N, dim=1)], dim=1)
    x, attn, hidden = model.run_blocks(x, key_mask, want_attn, want_hidden)
    cls_attn = None if attn is None else attn[:, :, 0, :]  # [B, heads, 1 + Cmax*N]
    if hidden:
        hidden = [hs.masked_fill(~key_mask[..., None], 0.0) for hs in hidden]
    x = model.norm(x)
    patch = x[:, 1:].reshape(B, Cmax, N, D) * channel_mask[:, :, None, None].to(x.dtype)
    return x[:, 0], patch, cls_attn, hidden


def forward_packed(
    model: Backbone, tokens: Tensor, cls: Tensor, layout: TokenLayout, want_attn: bool, want_hidden: bool
) -> PathResult:
    """Pad-free: every same-channel-count group runs unmasked at its true length (module docstring)."""
    _, N, D = tokens.shape
    counts_list = layout.host_counts
    B, Cmax, heads = len(counts_list), layout.max_channels, layout.num_heads
    dev, full_len = tokens.device, 1 + Cmax * N
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(counts_list):
        groups.setdefault(c, []).append(i)
    starts = [0]
    for c in counts_list[:-1]:
        starts.append(starts[-1] + c)
    cls_attn = tokens.new_zeros(B, heads, full_len) if want_attn else None
    hidden = [tokens.new_zeros(B, full_len, D) for _ in model.blocks] if want_hidden else []
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
        xg, attn_g, hid_g = model.run_blocks(xg, None, want_attn, want_hidden)
        if cls_attn is not None and attn_g is not None:
            cls_attn[idx, :, :L] = attn_g[:, :, 0, :].to(cls_attn.dtype)
        for full, part in zip(hidden, hid_g):
            full[idx, :L] = part.to(full.dtype)
        xg = model.norm(xg)
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


def forward_varlen(
    model: Backbone, tokens: Tensor, cls: Tensor, layout: TokenLayout, want_attn: bool, want_hidden: bool
) -> PathResult:
    """One packed ``[T, D]`` sequence for the whole batch (module docstring).

    Packed row layout: image 0's CLS, its ``C_0 * N`` channel tokens, image 1's CLS, ... The channel
    tokens keep the stacked order of ``tokens``, so building the sequence is one gather. Every index
    is computed on the device from ``layout`` (no host-to-device copy, no read-back).
    """
    n_ch, N, D = tokens.shape
    counts_list, image_of = layout.host_counts, layout.image_of
    B, Cmax, heads = len(counts_list), layout.max_channels, layout.num_heads
    dev, full_len = tokens.device, 1 + Cmax * N
    seg = VarlenSegments.from_lengths(
        [1 + c * N for c in counts_list], dev, seq_lengths=1 + layout.counts * N
    )
    T = seg.total
    cls_rows = seg.cls_rows()
    # stacked channel token t of image i sits after i + 1 CLS rows (image 0's .. image i's)
    tok_rows = torch.arange(n_ch * N, device=dev) + (image_of + 1).repeat_interleave(N, output_size=n_ch * N)
    source = torch.empty(T, dtype=torch.long, device=dev)
    source[tok_rows] = torch.arange(n_ch * N, device=dev)
    source[cls_rows] = n_ch * N
    x = torch.cat([tokens.reshape(n_ch * N, D), cls.to(tokens.dtype)], dim=0).index_select(0, source)

    x, attn, hid = model.run_blocks(x, None, want_attn, want_hidden, segments=seg)
    cls_attn = None
    if attn is not None:  # [B, heads, max_len]: each image's CLS row, zeros past its end
        cls_attn = attn.new_zeros(B, heads, full_len)
        cls_attn[:, :, : attn.shape[-1]] = attn
    hidden: list[Tensor] = []
    if hid:
        seq_of_row = torch.repeat_interleave(torch.arange(B, device=dev), seg.seq_lengths, output_size=T)
        dst = seq_of_row * full_len + torch.arange(T, device=dev) - seg.cu_seqlens.long()[seq_of_row]
        hidden = [h.new_zeros(B * full_len, D).index_copy(0, dst, h).view(B, full_len, D) for h in hid]
    x = model.norm(x)
    cls_out = x.index_select(0, cls_rows)
    patch = (
        x.new_zeros(B * Cmax, N, D)
        .index_copy(0, image_of * Cmax + layout.slot_of, x.index_select(0, tok_rows).view(n_ch, N, D))
        .view(B, Cmax, N, D)
    )
    return cls_out, patch, cls_attn, hidden


#: attention mode -> its path; ``ChAdaViT.forward_features`` looks the mode up here on every call
PATHS: dict[str, Callable[..., PathResult]] = {
    "padded": forward_padded,
    "packed": forward_packed,
    "varlen": forward_varlen,
}
