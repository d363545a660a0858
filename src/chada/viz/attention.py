"""Last-layer attention of a channel-adaptive model, per channel, and the inter-channel attention matrix.

Two views of one multiplexed image ``[C, H, W]``:

- :func:`attention_maps`: the CLS query's last-layer attention over every patch, split by channel,
  per head and averaged over heads, upsampled to image size (what Fig. 3 / Fig. 15 of the paper show),
  plus the attention *mass* each channel receives. For ChAda-ViT one softmax runs over all channels'
  patches and the CLS token, so ``sum(maps over channels, patches) + cls_self == 1`` per head. Any
  model whose ``forward_features(images, return_attention=True)`` returns an ``attention`` of shape
  ``[B, heads, C, h, w]`` (or ``[B, heads, h, w]``: one map shared by all channels) is accepted; a
  model that encodes each channel alone (One-Channel ViT) gives one softmax per channel instead.
- :func:`inter_channel_matrix`: ``[C, C]`` share of attention that the patch tokens of channel ``i``
  send to the patch tokens of channel ``j`` in the last layer (averaged over heads and over the query
  tokens of channel ``i``). Computed here by running the model's blocks on one image (no padding).

:func:`chada.viz.attention_figure.plot_attention_grid` draws both, for one or several models side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chada.models.batch import ChannelBatch

__all__ = [
    "AttentionUnavailable",
    "ModelAttention",
    "attention_maps",
    "last_layer_attention",
    "inter_channel_matrix",
    "compute_model_attention",
    "fit_image_size",
    "channel_mass_table",
    "matrix_table",
]


class AttentionUnavailable(TypeError):
    """The model does not expose the attention weights this view needs."""


def _check_image(image: Tensor) -> Tensor:
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor [C, H, W], got {type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"image must be [C, H, W] (one multiplexed image), got shape {tuple(image.shape)}")
    return image if image.is_floating_point() else image.float()


def _patch_size(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "patch_size", None)


def fit_image_size(image: Tensor, patch_size: int, size: int | None = None) -> Tensor:
    """Resize ``[C, H, W]`` so both sides are multiples of ``patch_size``.

    ``size`` given: resize to ``size x size`` (must be a multiple of the patch). Otherwise keep the
    image when it already fits, else shrink each side to the nearest lower multiple (bilinear,
    antialiased), which changes the picture least.
    """
    image = _check_image(image)
    H, W = image.shape[-2:]
    if size is not None:
        if size <= 0 or size % patch_size:
            raise ValueError(
                f"--image-size {size} must be a positive multiple of the patch size {patch_size}"
            )
        hw = (size, size)
    else:
        hw = (max(patch_size, H // patch_size * patch_size), max(patch_size, W // patch_size * patch_size))
    if hw == (H, W):
        return image
    return F.interpolate(image[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0]


def _model_input(image: Tensor, channel_ids: Sequence[int] | None) -> ChannelBatch | list[Tensor]:
    if channel_ids is None:
        return [image]
    return ChannelBatch.from_images([image], channel_ids=[list(channel_ids)])


def _get(out: Any, key: str) -> Any:
    if isinstance(out, dict):
        return out.get(key)
    return getattr(out, key, None)


@torch.no_grad()
def attention_maps(
    model: nn.Module,
    image: Tensor,
    channel_ids: Sequence[int] | None = None,
    upsample: str = "nearest",
) -> dict[str, Any]:
    """CLS last-layer attention of ``model`` on one image, per channel, per head and head-averaged.

    Args:
        model: a model with ``forward_features(images, return_attention=True)`` returning an
            ``attention`` field (``[B, heads, C, h, w]`` or ``[B, heads, h, w]``).
        image: ``[C, H, W]`` float tensor, H and W multiples of the patch size.
        channel_ids: optional channel-embedding slots of the C channels (default ``0..C-1``).
        upsample: ``"nearest"`` (default: one flat block per patch, what the model saw) or ``"bilinear"``.

    Returns:
        dict with
            ``patch_attention`` ``[heads, C, h, w]``, ``patch_attention_mean`` ``[C, h, w]``: raw weights;
            ``per_head`` ``[heads, C, H, W]``, ``mean`` ``[C, H, W]``: the same upsampled to image size
            (each pixel carries its patch's weight, so values are per-patch weights, not densities);
            ``channel_mass_per_head`` ``[heads, C]``, ``channel_mass`` ``[C]``: attention summed over a
            channel's patches; ``cls_self`` ``[heads]`` (``[heads, C]`` for per-channel CLS tokens) or None; ``grid`` ``(h, w)``;
            ``kind``: ``"joint"`` (one softmax over all channels + CLS: masses + cls_self sum to 1),
            ``"per_channel"`` (each channel has its own softmax) or ``"shared"`` (one map for all channels).

    Raises:
        AttentionUnavailable: the model gives no attention.
    """
    image = _check_image(image)
    if upsample not in ("nearest", "bilinear"):
        raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
    C, H, W = image.shape
    if not hasattr(model, "forward_features"):
        raise AttentionUnavailable(f"{type(model).__name__} has no forward_features(); no attention to show")
    was_training = model.training
    model.eval()
    try:
        try:
            out = model.forward_features(_model_input(image, channel_ids), return_attention=True)
        except TypeError as exc:
            if "return_attention" not in str(exc):
                raise
            raise AttentionUnavailable("its forward_features has no return_attention") from None
    finally:
        model.train(was_training)
    att = _get(out, "attention")
    if att is None:
        raise AttentionUnavailable("its forward_features returns no attention")
    att = att.detach().float().cpu()
    if att.ndim == 5:  # [B, heads, C_max, h, w]: keep this image's real channels
        if att.shape[2] < C:
            raise ValueError(f"attention has {att.shape[2]} channel positions for an image with {C} channels")
        patch = att[0, :, :C]
        kind = None
    elif att.ndim == 4:  # [B, heads, h, w]: a model that mixes channels before patchifying
        patch = att[0, :, None].expand(-1, C, -1, -1)
        kind = "shared"
    else:
        raise ValueError(f"attention must be [B, heads, C, h, w] or [B, heads, h, w], got {tuple(att.shape)}")
    cls_self = _get(out, "cls_self_attention")
    if cls_self is not None:
        # [B, heads] for one joint softmax; [B, heads, C] when every channel has its own CLS.
        cls_self = cls_self.detach().float().cpu()[0]
        if cls_self.ndim == 2:
            cls_self = cls_self[:, :C]
    mass_per_head = patch.sum(dim=(-2, -1))  # [heads, C]
    if kind is None:
        kind = getattr(model, "attention_kind", None)
    if kind is None:
        if cls_self is not None and cls_self.ndim == 2:
            kind = "per_channel"
        else:
            total = mass_per_head.sum(-1) + (cls_self if cls_self is not None else 0.0)
            # One softmax over everything sums to 1; per-channel softmaxes sum to about C.
            joint = bool(torch.allclose(total, torch.ones_like(total), atol=1e-3))
            kind = "joint" if joint or C == 1 else "per_channel"
    h, w = patch.shape[-2:]
    mode = {"mode": "nearest"} if upsample == "nearest" else {"mode": "bilinear", "align_corners": False}
    per_head = F.interpolate(patch.contiguous(), size=(H, W), **mode)  # [heads, C, H, W]
    return {
        "kind": kind,
        "grid": (int(h), int(w)),
        "patch_attention": patch.contiguous(),
        "patch_attention_mean": patch.mean(0),
        "per_head": per_head,
        "mean": per_head.mean(0),
        "channel_mass_per_head": mass_per_head,
        "channel_mass": mass_per_head.mean(0),
        "cls_self": cls_self,
    }


@torch.no_grad()
def last_layer_attention(
    model: nn.Module, image: Tensor, channel_ids: Sequence[int] | None = None
) -> tuple[Tensor, int, tuple[int, int]]:
    """Full last-layer softmax of a ChAda-ViT-like model on one image (no padding: one image).

    Runs ``model.embed`` then ``model.blocks`` itself, so every query's attention is available, not
    only the CLS row that ``forward_features`` returns.

    Returns:
        ``(weights [heads, L, L], C, (h, w))`` with ``L = 1 + C*h*w``, token 0 the CLS, then channel 0's
        ``h*w`` patches, channel 1's, ...; every row sums to 1.

    Raises:
        AttentionUnavailable: the model lacks ``embed``/``blocks`` (e.g. it encodes channels alone).
    """
    image = _check_image(image)
    if not (hasattr(model, "embed") and hasattr(model, "blocks")):
        raise AttentionUnavailable(
            f"{type(model).__name__} has no joint token sequence over channels (embed/blocks)"
        )
    batch = ChannelBatch.from_images(
        [image], channel_ids=None if channel_ids is None else [list(channel_ids)]
    )
    check = getattr(model, "_check", None)
    if callable(check):
        check(batch)  # same clear errors (patch size, C_max, NaN) as the forward pass
    was_training = model.training
    model.eval()
    try:
        tokens, cls, (h, w) = model.embed(batch)  # [C, N, D], [1, D]
        C, N, D = tokens.shape
        x = torch.cat([cls[None], tokens.reshape(1, C * N, D)], dim=1)  # [1, 1 + C*N, D]
        for blk in model.blocks[:-1]:
            x, _ = blk(x, None)
        _, weights = model.blocks[-1](x, None, return_attention=True)
    finally:
        model.train(was_training)
    if weights is None:
        raise AttentionUnavailable(f"the last block of {type(model).__name__} returned no attention weights")
    return weights[0].float().cpu(), C, (int(h), int(w))


def inter_channel_matrix(
    model: nn.Module, image: Tensor, channel_ids: Sequence[int] | None = None, normalize: bool = True
) -> Tensor:
    """``[C, C]`` last-layer attention from the patch tokens of channel ``i`` (row) to those of ``j`` (column).

    For every query patch token of channel ``i`` and head, the weight it puts on the ``N`` patch tokens
    of channel ``j`` is summed; the result is averaged over heads and over channel ``i``'s query tokens.

    Normalisation (documented contract):
        ``normalize=True`` (default): the CLS key is left out and each query's weights over patch keys are
        rescaled to sum to 1 before averaging, so every ROW SUMS TO 1: "where does channel i look, among
        channels". ``normalize=False``: raw softmax mass; row ``i`` sums to ``1 -`` the mean weight
        channel ``i``'s queries put on the CLS key.
        The diagonal is intra-channel attention, off-diagonal entries inter-channel attention.
    """
    weights, C, (h, w) = last_layer_attention(model, image, channel_ids)
    N = h * w
    heads = weights.shape[0]
    patch = weights[:, 1:, 1:].reshape(heads, C, N, C, N).sum(-1)  # [heads, C_q, N_q, C_k]
    if normalize:
        patch = patch / patch.sum(-1, keepdim=True).clamp_min(1e-12)
    return patch.mean(dim=(0, 2))


@dataclass
class ModelAttention:
    """What one column group of :func:`plot_attention_grid` shows for one model.

    ``maps`` is :func:`attention_maps`' dict or None; ``matrix`` the ``[C, C]`` inter-channel matrix or
    None; ``notes`` say why something is missing (shown in the figure).
    """

    label: str
    maps: dict[str, Any] | None = None
    matrix: Tensor | None = None
    map_note: str | None = None
    matrix_note: str | None = None


def compute_model_attention(
    model: nn.Module,
    image: Tensor,
    label: str,
    channel_ids: Sequence[int] | None = None,
    upsample: str = "nearest",
) -> ModelAttention:
    """Both views for one model; a view the model cannot give becomes a note instead of an error."""
    res = ModelAttention(label=label)
    try:
        res.maps = attention_maps(model, image, channel_ids, upsample=upsample)
    except AttentionUnavailable as exc:
        res.map_note = f"{label} provides no attention maps: {exc}"
    try:
        res.matrix = inter_channel_matrix(model, image, channel_ids)
    except AttentionUnavailable as exc:
        if res.maps and res.maps.get("kind") == "per_channel":
            res.matrix_note = f"{label}: channels are encoded alone, so there is no inter-channel attention"
        else:
            res.matrix_note = f"{label}: no inter-channel matrix: {exc}"
    return res


def channel_mass_table(results: Sequence[ModelAttention], channel_names: Sequence[str]) -> str:
    """Plain-text table of per-channel attention mass (head average) per model, for the CLI."""
    lines = []
    width = max([len(n) for n in channel_names] + [len("CLS self")])
    header = " " * width + "".join(f"  {r.label[:18]:>18}" for r in results if r.maps is not None)
    lines.append(header)
    for c, name in enumerate(channel_names):
        row = f"{name:>{width}}"
        for r in results:
            if r.maps is not None:
                row += f"  {float(r.maps['channel_mass'][c]):>18.4f}"
        lines.append(row)
    selfs = [r for r in results if r.maps is not None and r.maps["cls_self"] is not None]
    if selfs:
        row = f"{'CLS self':>{width}}"
        for r in results:
            if r.maps is not None:
                cs = r.maps["cls_self"]
                row += f"  {float(cs.mean()):>18.4f}" if cs is not None else f"  {'-':>18}"
        lines.append(row)
    return "\n".join(lines)


def matrix_table(matrix: Tensor, channel_names: Sequence[str]) -> str:
    """Plain-text ``[C, C]`` matrix with channel names (rows: query, columns: key)."""
    m = np.asarray(matrix)
    width = max(max(len(n) for n in channel_names), 6)
    lines = [" " * width + "".join(f" {n[:8]:>8}" for n in channel_names)]
    for i, name in enumerate(channel_names):
        lines.append(f"{name:>{width}}" + "".join(f" {v:>8.4f}" for v in m[i]))
    return "\n".join(lines)
