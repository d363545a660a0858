"""Channel reconstruction (the paper's BBBC021 protocol, supplementary Section E).

The encoder is frozen and fed every channel of an image except ``target_channel``; a decoder of
2 fully-connected layers + 5 convolution layers + sigmoid predicts the target channel from the CLS
embedding alone. The paper scales the decoder so that every compared encoder gets the same decoder
size (~5.2 M parameters); :func:`size_decoder` does that for ANY embedding dim: the convolution stack
depends only on the image size, and the hidden width of the first fully-connected layer is solved so
that the total is ``target_params`` (rounding error < ``D + 1 + c0 * s0^2`` parameters, well under 1 %).

Decoder shape (image ``H x W``, ``s0 = ceil(max(H, W) / 32)``, widths ``c0, c0/2, ... ``)::

    cls [B, D] -> Linear(D, h) -> ReLU -> Linear(h, c0*s0*s0) -> ReLU -> [B, c0, s0, s0]
      -> 5 x (nearest upsample x2 -> Conv3x3) with ReLU between (channels c0 -> c0/2 -> ... -> 1)
      -> resize to [H, W] (only when H, W are not s0 * 32) -> sigmoid -> [B, 1, H, W]

Targets are mapped to [0, 1] with the training targets' global 0.1 / 99.9 % percentiles (then
clipped), because the sigmoid output lives there; MSE, MAE and R2 are computed on the flattened
target channel over the whole test set in that space, in one pass (R2 = 1 - SSE / SST around the
test set's global mean, i.e. scikit-learn's ``r2_score`` on the flattened arrays).
Because the encoder is frozen and there is no augmentation, embeddings are computed once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ChannelDecoder",
    "DecoderSpec",
    "build_decoder",
    "encode_without_channel",
    "reconstruction_metrics",
    "run_channel_reconstruction",
    "size_decoder",
]

PAPER_DECODER_PARAMS = 5_200_000
N_UPSAMPLE = 5


@dataclass(frozen=True)
class DecoderSpec:
    """Sizes of a :class:`ChannelDecoder`: ``embed_dim`` D, ``hidden`` h, ``base_channels`` c0,
    ``seed_size`` s0 and the output ``image_size`` (H, W)."""

    embed_dim: int
    hidden: int
    base_channels: int
    seed_size: int
    image_size: tuple[int, int]

    @property
    def conv_channels(self) -> list[int]:
        chans = [max(self.base_channels // 2**i, 4) for i in range(N_UPSAMPLE)]
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


def size_decoder(
    embed_dim: int,
    image_size: int | Sequence[int] = 224,
    target_params: int = PAPER_DECODER_PARAMS,
    base_channels: int = 256,
) -> DecoderSpec:
    """Decoder sizes giving ``target_params`` parameters for an encoder of width ``embed_dim``.

    Raises:
        ValueError: the convolution stack alone exceeds ``target_params`` (lower ``base_channels``
            or raise the target), or the solved hidden width would be < 8.
    """
    if embed_dim < 1:
        raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
    hw = _image_size(image_size)
    s0 = max(1, math.ceil(max(hw) / 2**N_UPSAMPLE))
    probe = DecoderSpec(embed_dim, 0, base_channels, s0, hw)
    fixed = probe.num_params()  # with h = 0: the conv stack + fc2's bias (c0 * s0^2)
    m = base_channels * s0 * s0
    hidden = round((target_params - fixed) / (embed_dim + 1 + m))
    if hidden < 8:
        raise ValueError(
            f"target_params={target_params} is too small for embed_dim={embed_dim}, image {hw}, "
            f"base_channels={base_channels} (conv stack + output layer need {fixed + 8 * (embed_dim + 1 + m)})"
        )
    return DecoderSpec(embed_dim, int(hidden), base_channels, s0, hw)


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

    def forward(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.spec.embed_dim:
            raise ValueError(f"expected [B, {self.spec.embed_dim}] embeddings, got {tuple(z.shape)}")
        s = self.spec
        x = self.fc(z).view(len(z), s.base_channels, s.seed_size, s.seed_size)
        for i, conv in enumerate(self.convs):
            x = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
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
) -> ChannelDecoder:
    """:class:`ChannelDecoder` sized by :func:`size_decoder`."""
    return ChannelDecoder(size_decoder(embed_dim, image_size, target_params, base_channels))


def _load_images(data: Any) -> list[Tensor]:
    """Images ``[C, H, W]`` from a ``[N, C, H, W]`` tensor/array, a list of tensors, or a dataset of dicts."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, Tensor):
        if data.ndim != 4:
            raise ValueError(f"expected images [N, C, H, W], got shape {tuple(data.shape)}")
        return list(data.float())
    out = []
    for i in range(len(data)):
        item = data[i]
        img = item["image"] if isinstance(item, dict) else item
        if isinstance(img, np.ndarray):
            img = torch.from_numpy(img)
        if not isinstance(img, Tensor) or img.ndim != 3:
            raise TypeError(
                f"item {i}: expected a [C, H, W] tensor or a dict with 'image', got {type(img).__name__}"
            )
        out.append(img.float())
    if not out:
        raise ValueError("no images")
    return out


@torch.no_grad()
def encode_without_channel(
    model: nn.Module | Callable[[list[Tensor]], Tensor],
    images: Sequence[Tensor],
    target_channel: int,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Frozen-encoder CLS embeddings of every image minus ``target_channel``, and the target channel.

    ``model`` is called on a list of ``[C_i - 1, H, W]`` tensors and must return ``[B, D]`` (every chada
    encoder does: ``model(images)`` is the CLS embedding).

    Returns ``(embeddings [N, D] float32 on CPU, targets [N, H, W] float32)``.
    """
    if isinstance(model, nn.Module):
        model.eval()
    embs, targets = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        inputs = []
        for j, img in enumerate(chunk):
            c = img.shape[0]
            t = target_channel if target_channel >= 0 else c + target_channel
            if c < 2 or not 0 <= t < c:
                raise ValueError(
                    f"image {start + j} has {c} channels: cannot hold out channel {target_channel} and keep one input"
                )
            keep = [k for k in range(c) if k != t]
            inputs.append(img[keep].to(device))
            targets.append(img[t])
        z = model(inputs)
        if z.ndim != 2 or len(z) != len(inputs):
            raise ValueError(f"encoder returned shape {tuple(z.shape)}; expected [{len(inputs)}, D]")
        embs.append(z.float().cpu())
    return torch.cat(embs), torch.stack(targets).float()


def reconstruction_metrics(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> dict[str, float]:
    """MSE, MAE and R2 on the flattened arrays (whole set at once)."""
    p = torch.as_tensor(pred, dtype=torch.float64).flatten()
    t = torch.as_tensor(target, dtype=torch.float64).flatten()
    if p.shape != t.shape:
        raise ValueError(f"pred and target sizes differ: {p.numel()} vs {t.numel()}")
    err = p - t
    sst = float(((t - t.mean()) ** 2).sum())
    sse = float((err**2).sum())
    return {
        "mse": float((err**2).mean()),
        "mae": float(err.abs().mean()),
        "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
    }


def run_channel_reconstruction(
    model: nn.Module | Callable[[list[Tensor]], Tensor],
    dataset_or_images: Any,
    target_channel: int,
    *,
    test: Any | None = None,
    test_fraction: float = 0.2,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    target_params: int = PAPER_DECODER_PARAMS,
    base_channels: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Train a decoder on the frozen encoder's CLS embedding to predict ``target_channel``.

    Args:
        model: frozen encoder, ``model(list of [C_i - 1, H, W]) -> [B, D]``.
        dataset_or_images: training images (``[N, C, H, W]``, a list of ``[C, H, W]``, or a dataset whose
            items are dicts with ``"image"`` such as :class:`chada.data.ManifestDataset`). All images
            must share H, W.
        target_channel: index of the channel to reconstruct (negative counts from the end).
        test: test images in the same forms; when ``None``, a seeded ``test_fraction`` of
            ``dataset_or_images`` is held out.
        epochs, batch_size, lr: Adam on the MSE loss.
        target_params: decoder size (5.2 M in the paper at 224 px); identical for every encoder width.
        num_threads: torch CPU threads during the run (restored afterwards); ``1`` avoids the
            oversubscription that made a tiny CPU run ~70x slower on a loaded 2-core machine.

    Returns ``{"mse", "mae", "r2", "decoder_params", "embed_dim", "n_train", "n_test", "target_range"}``.
    """
    if num_threads is None:
        return _reconstruct(**_locals_without_threads(locals()))
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _reconstruct(**_locals_without_threads(locals()))
    finally:
        torch.set_num_threads(previous)


def _locals_without_threads(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in ("num_threads", "previous")}


def _reconstruct(
    model: Any,
    dataset_or_images: Any,
    target_channel: int,
    *,
    test: Any,
    test_fraction: float,
    epochs: int,
    batch_size: int,
    lr: float,
    target_params: int,
    base_channels: int,
    seed: int,
    device: str | torch.device,
    progress: bool,
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    images = _load_images(dataset_or_images)
    if test is None:
        if len(images) < 2:
            raise ValueError("need at least 2 images to hold out a test set")
        perm = torch.randperm(len(images), generator=gen).tolist()
        n_test = min(len(images) - 1, max(1, round(test_fraction * len(images))))
        test_images = [images[i] for i in perm[:n_test]]
        images = [images[i] for i in perm[n_test:]]
    else:
        test_images = _load_images(test)
    sizes = {tuple(im.shape[-2:]) for im in images + test_images}
    if len(sizes) != 1:
        raise ValueError(f"all images must share H, W for reconstruction, got {sorted(sizes)}")
    hw = sizes.pop()

    z_tr, y_tr = encode_without_channel(model, images, target_channel, batch_size=batch_size, device=device)
    z_te, y_te = encode_without_channel(
        model, test_images, target_channel, batch_size=batch_size, device=device
    )
    lo, hi = (float(v) for v in torch.quantile(y_tr.flatten()[:10_000_000], torch.tensor([0.001, 0.999])))
    scale = hi - lo if hi > lo else 1.0
    y_tr = ((y_tr - lo) / scale).clamp(0, 1)
    y_te = ((y_te - lo) / scale).clamp(0, 1)

    torch.manual_seed(seed)
    decoder = build_decoder(z_tr.shape[1], hw, target_params, base_channels).to(device)
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    n = len(z_tr)
    steps = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="decoder", unit="epoch")
    decoder.train()
    for _ in steps:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            pred = decoder(z_tr[idx].to(device))
            loss = F.mse_loss(pred[:, 0], y_tr[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    decoder.eval()
    with torch.no_grad():
        pred = torch.cat(
            [
                decoder(z_te[s : s + batch_size].to(device)).cpu()[:, 0]
                for s in range(0, len(z_te), batch_size)
            ]
        )
    out: dict[str, Any] = reconstruction_metrics(pred, y_te)
    out.update(
        decoder_params=sum(p.numel() for p in decoder.parameters()),
        embed_dim=int(z_tr.shape[1]),
        n_train=len(z_tr),
        n_test=len(z_te),
        target_range=(lo, hi),
    )
    return out
