"""The reconstruction decoder, sized so that every encoder gets the same number of parameters.

Decoder shape (image ``H x W``; ``u`` upsamplings, 5 unless the image is small; ``s0 = ceil(max(H, W) / 2^u)``;
widths ``c0, c0/2, ...``)::

    cls [B, D] -> Linear(D, h) -> ReLU -> Linear(h, c0*s0*s0) -> ReLU -> [B, c0, s0, s0]
      -> 5 x Conv3x3 (the first u preceded by a nearest upsample x2) with ReLU between
         (channels c0 -> c0/2 -> ... -> 1, hidden widths at least 8; He-initialised)
      -> resize to [H, W] (only when H, W are not s0 * 2^u) -> sigmoid -> [B, 1, H, W]

The paper scales the decoder so that every compared encoder gets the same decoder size (~5.2 M
parameters); :func:`size_decoder` does that for ANY embedding dim: the convolution stack depends only
on the image size, and the hidden width of the first fully-connected layer is solved so that the
total is ``target_params`` (rounding error <= ``(D + 1 + c0 * s0^2) / 2`` parameters: at 224 px under
0.2 % for D <= 1920; with the 32-px auto budget of 106 k under 1 % for D up to ~1600).

At 224 px this is the paper's layout (u = 5, a 7 x 7 seed). For small images ``u`` drops until the
seed grid is at least ``min_seed`` (4) wide, because a 1 x 1 seed (32 px with u = 5) carries no
spatial layout: nearest upsampling copies it and only the zero padding could break the symmetry.
32 px: u = 3, s0 = 4; 64 px: u = 4, s0 = 4; >= 97 px: u = 5.

Small images (``target_params`` / ``base_channels`` ``"auto"`` in the config, :func:`decoder_budget`):
the paper's budget per output pixel is kept, ``target_params = 5.2e6 * H * W / 224^2`` (32 px: 106 k),
and ``base_channels = 256 * max(H, W) / 224`` rounded to a power of two in [16, 256] (32 px: 32),
so that the conv stack stays a small part of the budget as at 224 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ChannelDecoder", "DecoderSpec", "build_decoder", "decoder_budget", "size_decoder"]

PAPER_DECODER_PARAMS = 5_200_000
PAPER_IMAGE_SIZE = 224
PAPER_BASE_CHANNELS = 256
N_UPSAMPLE = 5  # also the number of convolution layers
MIN_SEED = 4
# Narrow hidden conv layers die: with 4 channels (and PyTorch's default init) a ReLU layer was entirely
# inactive at init for one seed in two on 32-px images (constant output, no gradient, R2 stuck at 0).
# 8 learned as well as 16 at half the cost; at 224 px (widths 256 -> 16) the floor changes nothing.
MIN_CONV_CHANNELS = 8
METRICS = ("recon_mse", "recon_mae", "recon_r2")


@dataclass(frozen=True)
class DecoderSpec:
    """Sizes of a :class:`ChannelDecoder`: ``embed_dim`` D, ``hidden`` h, ``base_channels`` c0,
    ``seed_size`` s0, the output ``image_size`` (H, W) and how many of the 5 convolutions are
    preceded by a x2 upsampling (``n_upsample``)."""

    embed_dim: int
    hidden: int
    base_channels: int
    seed_size: int
    image_size: tuple[int, int]
    n_upsample: int = N_UPSAMPLE

    @property
    def conv_channels(self) -> list[int]:
        chans = [max(self.base_channels // 2**i, MIN_CONV_CHANNELS) for i in range(N_UPSAMPLE)]
        return [*chans, 1]

    def num_params(self) -> int:
        d, h, m = self.embed_dim, self.hidden, self.base_channels * self.seed_size**2
        fc = (d + 1) * h + (h + 1) * m
        ch = self.conv_channels
        conv = sum(ch[i] * ch[i + 1] * 9 + ch[i + 1] for i in range(N_UPSAMPLE))
        return fc + conv


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    hw = tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    return hw  # type: ignore[return-value]


def _seed_grid(hw: tuple[int, int], min_seed: int) -> tuple[int, int]:
    """``(n_upsample, s0)``: as many x2 upsamplings (<= 5) as keep the seed grid >= ``min_seed``."""
    side = max(hw)
    for n_up in range(N_UPSAMPLE, -1, -1):
        s0 = max(1, math.ceil(side / 2**n_up))
        if s0 >= min_seed or n_up == 0:
            return n_up, s0
    raise AssertionError("unreachable")


def decoder_budget(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(target_params, base_channels)`` scaled from the paper's 5.2 M / 256 at 224 px.

    ``target_params = 5.2e6 * H * W / 224^2`` (the paper's parameters per output pixel) and
    ``base_channels = 256 * max(H, W) / 224`` rounded to a power of two in [16, 256].
    32 px -> (106122, 32); 224 px -> (5200000, 256).
    """
    h, w = _image_size(image_size)
    params = round(PAPER_DECODER_PARAMS * h * w / PAPER_IMAGE_SIZE**2)
    width = PAPER_BASE_CHANNELS * max(h, w) / PAPER_IMAGE_SIZE
    base = int(min(PAPER_BASE_CHANNELS, max(16, 2 ** round(math.log2(width)))))
    return int(params), base


def size_decoder(
    embed_dim: int,
    image_size: int | Sequence[int] = 224,
    target_params: int = PAPER_DECODER_PARAMS,
    base_channels: int = 256,
    min_seed: int = MIN_SEED,
) -> DecoderSpec:
    """Decoder sizes giving ``target_params`` parameters for an encoder of width ``embed_dim``.

    Raises:
        ValueError: the convolution stack alone exceeds ``target_params`` (lower ``base_channels``
            or raise the target), or the solved hidden width would be < 8.
    """
    if embed_dim < 1:
        raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
    if min_seed < 1:
        raise ValueError(f"min_seed must be >= 1, got {min_seed}")
    hw = _image_size(image_size)
    n_up, s0 = _seed_grid(hw, min_seed)
    probe = DecoderSpec(embed_dim, 0, base_channels, s0, hw, n_up)
    fixed = probe.num_params()  # with h = 0: the conv stack + fc2's bias (c0 * s0^2)
    m = base_channels * s0 * s0
    hidden = round((target_params - fixed) / (embed_dim + 1 + m))
    if hidden < 8:
        raise ValueError(
            f"target_params={target_params} is too small for embed_dim={embed_dim}, image {hw}, "
            f"base_channels={base_channels} (conv stack + output layer need {fixed + 8 * (embed_dim + 1 + m)})"
        )
    return DecoderSpec(embed_dim, int(hidden), base_channels, s0, hw, n_up)


class ChannelDecoder(nn.Module):
    """CLS embedding ``[B, D]`` -> predicted channel ``[B, 1, H, W]`` in (0, 1)."""

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.spec = spec
        m = spec.base_channels * spec.seed_size**2
        self.fc = nn.Sequential(
            nn.Linear(spec.embed_dim, spec.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(spec.hidden, m),
            nn.ReLU(inplace=True),
        )
        ch = spec.conv_channels
        self.convs = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 3, padding=1) for i in range(N_UPSAMPLE))
        # He init for the ReLU layers: PyTorch's default shrinks activations ~1.5x per layer here, which
        # (with narrow layers) left whole layers inactive at init.
        for layer in [*self.fc, *self.convs[:-1]]:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.spec.embed_dim:
            raise ValueError(f"expected [B, {self.spec.embed_dim}] embeddings, got {tuple(z.shape)}")
        s = self.spec
        x = self.fc(z).view(len(z), s.base_channels, s.seed_size, s.seed_size)
        for i, conv in enumerate(self.convs):
            if i < s.n_upsample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = conv(x)
            if i < N_UPSAMPLE - 1:
                x = F.relu(x)
        if tuple(x.shape[-2:]) != s.image_size:
            x = F.interpolate(x, size=s.image_size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def build_decoder(
    embed_dim: int,
    image_size: int | Sequence[int] = 224,
    target_params: int = PAPER_DECODER_PARAMS,
    base_channels: int = 256,
    min_seed: int = MIN_SEED,
) -> ChannelDecoder:
    """:class:`ChannelDecoder` sized by :func:`size_decoder`."""
    return ChannelDecoder(size_decoder(embed_dim, image_size, target_params, base_channels, min_seed))
