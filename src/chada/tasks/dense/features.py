"""Frozen dense features of tiles: a ViT's ``forward_dense`` maps, or hand-made pixel features.

A ViT's maps stay at TOKEN resolution (``[N, F, h, w]``, h = side / patch); the heads upsample
their logits to pixels (:mod:`chada.tasks.dense.heads`). Hand-made pixel features are at pixel
resolution already (``[N, F, T, T]``).

``channels="each"`` concatenates the per-channel maps of ``forward_dense`` in the image's channel
order (``F = C * D``: the probe knows which channel a feature came from, which a relation mask
needs); ``"pooled"`` takes their mean over channels (``F = D``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from chada.encode.inputs import weights_sha1 as fingerprint  # where every digest of weights lives
from chada.models.precision import autocast

__all__ = ["fingerprint", "handmade_maps", "model_maps", "patch_size"]


def patch_size(module: nn.Module) -> int:
    """The model's patch side in pixels."""
    p = getattr(getattr(module, "config", None), "patch_size", None)
    if not isinstance(p, int):
        raise ValueError(f"{type(module).__name__} has no config.patch_size; a dense task needs a ViT")
    return p


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


@torch.inference_mode()
def model_maps(
    module: nn.Module,
    tiles: np.ndarray,
    channel_names: Sequence[str],
    *,
    image_size: int | None = None,
    channels: str = "each",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """``forward_dense`` maps of ``tiles [N, C, T, T]`` (normalised): ``[N, F, h, w]`` float32.

    Tiles are resized to ``image_size`` (default: their own size), which must be a multiple of the
    patch size. Channel slots come from the model's recorded channel names when it has them
    (:class:`chada.data.channels.ChannelPolicy`, as ``chada embed``), else from positions. ``dtype``:
    precision of the forward pass (``torch.bfloat16``: autocast); the maps are float32 either way.
    """
    from chada.data.channels import ChannelPolicy

    if not hasattr(module, "forward_dense"):
        raise ValueError(
            f"{type(module).__name__} has no forward_dense: use ChAda-ViT or the One-Channel ViT"
        )
    size = int(image_size or tiles.shape[-1])
    p = patch_size(module)
    if size % p:
        raise ValueError(f"image size {size} is not a multiple of the model's patch size {p}; set image_size")
    policy = ChannelPolicy.from_model(module)
    names = list(channel_names)
    module.eval()
    out: list[np.ndarray] = []
    for s in range(0, len(tiles), batch_size):
        x = _resize(torch.from_numpy(np.ascontiguousarray(tiles[s : s + batch_size])), size).to(device)
        batch = policy.batch(list(x), [names] * len(x))
        with autocast(dtype, device):
            maps = module.forward_dense(batch, channels=channels).maps.float()
        if channels == "each":
            maps = maps.flatten(1, 2)  # [B, C, D, h, w] -> [B, C*D, h, w], channel-major
        out.append(maps.cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def handmade_maps(
    tiles: np.ndarray, sigmas: Sequence[float] | None = None, tensor_sigmas: Sequence[float] | None = None
) -> np.ndarray:
    """:func:`chada.features.pixels.pixel_features` of every tile: ``[N, C * F, T, T]`` float32."""
    from chada.features.pixels import DEFAULT_SIGMAS, DEFAULT_TENSOR_SIGMAS, pixel_features

    kw: dict[str, Any] = {
        "sigmas": DEFAULT_SIGMAS if sigmas is None else tuple(sigmas),
        "tensor_sigmas": DEFAULT_TENSOR_SIGMAS if tensor_sigmas is None else tuple(tensor_sigmas),
    }
    return np.stack([pixel_features(t, **kw) for t in tiles]).astype(np.float32)
