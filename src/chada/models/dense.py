"""Dense (per-pixel) outputs: patch tokens as feature maps, per channel or pooled over channels.

Shared by :meth:`ChAdaViT.forward_dense <chada.models.chada_vit.ChAdaViT.forward_dense>` and
:meth:`OneChannelViT.forward_dense <chada.models.one_channel_vit.OneChannelViT.forward_dense>`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

__all__ = ["DenseOutput", "DENSE_CHANNEL_MODES", "dense_from_tokens"]

DENSE_CHANNEL_MODES = ("each", "pooled")


@dataclass
class DenseOutput:
    """What ``forward_dense`` returns.

    Attributes:
        maps: ``channels="each"``: ``[B, C, D, h, w]``, position ``c`` of image ``b`` holds its
            ``c``-th real channel, zeros where ``c >= C_b``. ``C`` is the largest channel count IN THE
            BATCH (not the model's C_max: upsampled per-channel maps are ``B*C*D*H*W`` values, so
            unused slots are not materialised). ``channels="pooled"``: ``[B, D, h, w]``, the mean
            over each image's real channels. ``(h, w)`` is the patch grid, or the requested pixel
            size when upsampled.
        channel_mask: ``[B, C]`` bool, True for real channels (the channels that were pooled).
        grid: ``(h, w)`` patch grid the maps come from.
    """

    maps: Tensor
    channel_mask: Tensor
    grid: tuple[int, int]


def _target_size(
    upsample: bool | tuple[int, int] | list[int], image_size: tuple[int, int]
) -> tuple[int, int] | None:
    if upsample is False or upsample is None:
        return None
    if upsample is True:
        return image_size
    if (
        isinstance(upsample, (tuple, list))
        and len(upsample) == 2
        and all(isinstance(v, int) and v > 0 for v in upsample)
    ):
        return int(upsample[0]), int(upsample[1])
    raise ValueError(f"upsample must be False, True or a (H, W) pair of positive ints, got {upsample!r}")


def dense_from_tokens(
    patch_tokens: Tensor,
    channel_mask: Tensor,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    channels: str = "each",
    upsample: bool | tuple[int, int] = False,
) -> DenseOutput:
    """Turn patch tokens ``[B, C', N, D]`` (zeros on padding, ``channel_mask [B, C']``) into maps.

    Only the first ``max(C_b)`` channel positions are kept. Upsampling is bilinear
    (``align_corners=False``); for ``"pooled"`` the mean is taken first (both are linear, so the
    order does not change the result, and pooling first is C times cheaper).
    """
    if channels not in DENSE_CHANNEL_MODES:
        raise ValueError(f"channels must be one of {DENSE_CHANNEL_MODES}, got {channels!r}")
    size = _target_size(upsample, image_size)
    B, _, N, D = patch_tokens.shape
    h, w = grid
    c_used = int(channel_mask.sum(1).max())
    mask = channel_mask[:, :c_used]
    maps = patch_tokens[:, :c_used].permute(0, 1, 3, 2).reshape(B, c_used, D, h, w)
    if channels == "pooled":
        m = mask.to(maps.dtype)[:, :, None, None, None]
        maps = (maps * m).sum(1) / m.sum(1)
        if size is not None:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    elif size is not None:
        # padding positions hold zero tokens, and interpolating zeros gives zeros
        maps = F.interpolate(
            maps.reshape(B * c_used, D, h, w), size=size, mode="bilinear", align_corners=False
        )
        maps = maps.reshape(B, c_used, D, *size)
    return DenseOutput(maps=maps.contiguous(), channel_mask=mask, grid=grid)
