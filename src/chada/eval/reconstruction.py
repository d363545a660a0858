"""Channel reconstruction (the paper's BBBC021 protocol, supplementary Section E).

The encoder is frozen and fed every channel of an image except ``target_channel``; a decoder of
2 fully-connected layers + 5 convolution layers + sigmoid predicts the target channel from the CLS
embedding alone. The paper scales the decoder so that every compared encoder gets the same decoder
size (~5.2 M parameters); :func:`size_decoder` does that for ANY embedding dim: the convolution stack
depends only on the image size, and the hidden width of the first fully-connected layer is solved so
that the total is ``target_params`` (rounding error <= ``(D + 1 + c0 * s0^2) / 2`` parameters: at 224 px
under 0.2 % for D <= 1920; with the 32-px auto budget of 106 k under 1 % for D up to ~1600;
:func:`run_reconstruction_task` warns when the encoders of a task differ by more than 1 %).

Decoder shape (image ``H x W``; ``u`` upsamplings, 5 unless the image is small; ``s0 = ceil(max(H, W) / 2^u)``;
widths ``c0, c0/2, ...``)::

    cls [B, D] -> Linear(D, h) -> ReLU -> Linear(h, c0*s0*s0) -> ReLU -> [B, c0, s0, s0]
      -> 5 x Conv3x3 (the first u preceded by a nearest upsample x2) with ReLU between
         (channels c0 -> c0/2 -> ... -> 1, hidden widths at least 8; He-initialised)
      -> resize to [H, W] (only when H, W are not s0 * 2^u) -> sigmoid -> [B, 1, H, W]

At 224 px this is the paper's layout (u = 5, a 7 x 7 seed). For small images ``u`` drops until the
seed grid is at least ``min_seed`` (4) wide, because a 1 x 1 seed (32 px with u = 5) carries no
spatial layout: nearest upsampling copies it and only the zero padding could break the symmetry.
32 px: u = 3, s0 = 4; 64 px: u = 4, s0 = 4; >= 97 px: u = 5.

Small images (``target_params`` / ``base_channels`` ``"auto"`` in the config, :func:`decoder_budget`):
the paper's budget per output pixel is kept, ``target_params = 5.2e6 * H * W / 224^2`` (32 px: 106 k),
and ``base_channels = 256 * max(H, W) / 224`` rounded to a power of two in [16, 256] (32 px: 32),
so that the conv stack stays a small part of the budget as at 224 px.

Targets are mapped to [0, 1] with the training targets' global 0.1 / 99.9 % percentiles (then
clipped), because the sigmoid output lives there; MSE, MAE and R2 are computed on the flattened
target channel over the whole test set in that space, in one pass (R2 = 1 - SSE / SST around the
test set's global mean, i.e. scikit-learn's ``r2_score`` on the flattened arrays). The "chance"
reference is the same metrics for a constant prediction of the training targets' mean (R2 ~ 0).
Because the encoder is frozen and there is no augmentation, embeddings are computed once.

Config-driven runs (``chada evaluate --config``, section ``reconstruction:``) are parsed by
:func:`parse_reconstruction_tasks` and run by :func:`run_reconstruction_task`: the manifest is read
once, every model encodes it once, then one decoder is trained per model and seed.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ChannelDecoder",
    "DecoderSpec",
    "ReconstructionExamples",
    "ReconstructionModelSpec",
    "ReconstructionOutcome",
    "ReconstructionTask",
    "build_decoder",
    "decoder_budget",
    "encode_without_channel",
    "fit_decoder",
    "parse_reconstruction_tasks",
    "reconstruction_metrics",
    "run_channel_reconstruction",
    "run_reconstruction_task",
    "size_decoder",
]

log = logging.getLogger(__name__)

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


def _target_range(y: Tensor) -> tuple[float, float]:
    """Global 0.1 / 99.9 % percentiles (torch.quantile takes <= 16 M values: a strided subsample)."""
    flat = y.flatten()
    limit = 10_000_000
    if flat.numel() > limit:
        flat = flat[:: math.ceil(flat.numel() / limit)]
    lo, hi = (float(v) for v in torch.quantile(flat.float(), torch.tensor([0.001, 0.999])))
    return lo, hi


def fit_decoder(
    z_train: Tensor,
    y_train: Tensor,
    z_test: Tensor,
    y_test: Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    target_params: int = PAPER_DECODER_PARAMS,
    base_channels: int = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    generator: torch.Generator | None = None,
    keep: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train a decoder ``z -> y`` on precomputed embeddings and score it on the test set.

    Args:
        z_train, z_test: embeddings ``[N, D]``.
        y_train, y_test: target channels ``[N, H, W]`` (raw intensities; mapped to [0, 1] with the
            training percentiles, see the module docstring).
        seed: decoder initialisation (``torch.manual_seed``) and, without ``generator``, batch order.
        keep: test positions whose ``[H, W]`` target and prediction are returned under ``"examples"``.

    Returns ``{"mse", "mae", "r2", "chance": {mse, mae, r2 of the train-mean prediction},
    "decoder_params", "embed_dim", "n_train", "n_test", "target_range"[, "examples"]}``.
    """
    if z_train.ndim != 2 or z_test.ndim != 2 or z_train.shape[1] != z_test.shape[1]:
        raise ValueError(
            f"embeddings must be [N, D] with one D, got {tuple(z_train.shape)}, {tuple(z_test.shape)}"
        )
    if y_train.ndim != 3 or y_test.ndim != 3 or y_train.shape[1:] != y_test.shape[1:]:
        raise ValueError(
            f"targets must be [N, H, W] of one size, got {tuple(y_train.shape)}, {tuple(y_test.shape)}"
        )
    if len(z_train) != len(y_train) or len(z_test) != len(y_test) or len(z_train) == 0 or len(z_test) == 0:
        raise ValueError("embeddings and targets must be non-empty and have the same number of rows")
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    hw = tuple(y_train.shape[-2:])
    lo, hi = _target_range(y_train)
    scale = hi - lo if hi > lo else 1.0
    y_tr = ((y_train.float() - lo) / scale).clamp(0, 1)
    y_te = ((y_test.float() - lo) / scale).clamp(0, 1)
    z_tr, z_te = z_train.float(), z_test.float()

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
    out["chance"] = reconstruction_metrics(torch.full_like(y_te, float(y_tr.mean())), y_te)
    out.update(
        decoder_params=sum(p.numel() for p in decoder.parameters()),
        embed_dim=int(z_tr.shape[1]),
        n_train=len(z_tr),
        n_test=len(z_te),
        target_range=(lo, hi),
    )
    if keep is not None:
        sel = torch.as_tensor(list(keep), dtype=torch.long)
        out["examples"] = {"target": y_te[sel].numpy(), "prediction": pred[sel].numpy()}
    return out


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

    Returns ``{"mse", "mae", "r2", "chance", "decoder_params", "embed_dim", "n_train", "n_test",
    "target_range"}``.
    """
    with _torch_threads(num_threads):
        return _reconstruct(**_locals_without_threads(locals()))


class _torch_threads:
    """Context manager: ``torch.set_num_threads(n)`` inside, the previous value restored (None: no-op)."""

    def __init__(self, n: int | None) -> None:
        self.n, self.previous = n, None

    def __enter__(self) -> None:
        if self.n is not None:
            if self.n < 1:
                raise ValueError(f"num_threads must be >= 1, got {self.n}")
            self.previous = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            torch.set_num_threads(self.previous)


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

    z_tr, y_tr = encode_without_channel(model, images, target_channel, batch_size=batch_size, device=device)
    z_te, y_te = encode_without_channel(
        model, test_images, target_channel, batch_size=batch_size, device=device
    )
    return fit_decoder(
        z_tr, y_tr, z_te, y_te, epochs=epochs, batch_size=batch_size, lr=lr, target_params=target_params,
        base_channels=base_channels, seed=seed, device=device, progress=progress, generator=gen,
    )  # fmt: skip


# ----------------------------------------------------------------------------- config-driven tasks
@dataclass
class ReconstructionModelSpec:
    """One encoder of a reconstruction task: ``model`` is a saved-model folder, a registered name
    (random weights from ``seed``: the untrained baseline) or an in-memory ``nn.Module`` (Python API)
    that either has ``forward_features``/``forward_head`` or maps a list of ``[C_i, H, W]`` to ``[B, D]``."""

    name: str
    model: Any
    family: str | None = None
    arch: str | None = None
    seed: int = 0


@dataclass
class ReconstructionTask:
    """One ``reconstruction:`` entry of an evaluation config (see :func:`parse_reconstruction_tasks`)."""

    name: str
    manifest: Any  # path or DataFrame
    models: dict[str, ReconstructionModelSpec]
    target_channel: str | int | None = None
    image_size: int | tuple[int, int] | None = None
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    target_params: int | None = None  # None: decoder_budget(image size)
    base_channels: int | None = None  # None: decoder_budget(image size)
    train_split: str | None = "train"
    test_split: str | None = "test"
    test_fraction: float | None = None
    default_test_fraction: float = 0.2
    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    pool: str = "cls"
    normalize: str = "percentile"
    datasets: list[str] | None = None
    max_images: int | None = None
    n_examples: int = 4
    num_threads: int | None = 1
    num_workers: int = 0
    device: str = "cpu"
    root: Path | None = None


@dataclass(eq=False)
class ReconstructionExamples:
    """A few test images of one task for the Fig. 16-style figure: ``inputs[k]`` ``[C-1, H, W]`` with
    ``input_names[k]``, ``targets`` ``[K, H, W]`` and ``predictions[model]`` ``[K, H, W]`` in [0, 1]
    (first seed), ``r2[model]`` the mean test R2 over seeds."""

    task: str
    target_name: str
    image_ids: list[str]
    inputs: list[np.ndarray]
    input_names: list[list[str]]
    targets: np.ndarray | None = None
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    r2: dict[str, float] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict) -> ReconstructionExamples:
        # kept in DataFrame.attrs, which pandas deep-copies on every operation: share, do not copy
        return self


@dataclass(eq=False)
class ReconstructionOutcome:
    """Result rows (the protocol's long format), example images and per-model decoder facts."""

    rows: list[dict[str, Any]]
    examples: ReconstructionExamples
    info: list[dict[str, Any]]

    def __deepcopy__(self, memo: dict) -> ReconstructionOutcome:
        return self


_TASK_KEYS = {
    "name", "manifest", "target_channel", "models", "image_size", "epochs", "batch_size", "lr",
    "target_params", "base_channels", "train_split", "test_split", "test_fraction", "seeds", "pool",
    "normalize", "datasets", "max_images", "n_examples", "num_threads", "torch_threads", "num_workers",
    "device", "root",
}  # fmt: skip
_MODEL_KEYS = {"model", "path", "name", "family", "arch", "seed"}


def _number(value: Any, what: str, cast: type = float) -> Any:
    # PyYAML reads 5.2e6 / 1e-3 (no dot or no exponent sign) as strings
    try:
        return cast(float(value)) if cast is int else cast(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None


def _resolve_model_ref(ref: Any, base: Path) -> Any:
    """A folder relative to ``base`` (the config's folder) becomes absolute; a registered model name
    stays a name unless such a folder exists; modules pass through."""
    if isinstance(ref, nn.Module):
        return ref
    if not isinstance(ref, (str, os.PathLike)):
        raise ValueError(
            f"model must be a saved-model folder, a registered model name or an nn.Module, got {ref!r}"
        )
    from chada.models.registry import list_models

    if str(ref) == "handmade":
        raise ValueError("hand-made features are not an encoder a decoder can be put on; use a model")
    p = Path(os.path.expanduser(str(ref)))
    full = p if p.is_absolute() else base / p
    if full.exists() or str(ref) not in list_models():
        return str(full)  # a missing folder fails later in resolve_model with its full path
    return str(ref)


def parse_reconstruction_tasks(
    raw: Any,
    base: str | os.PathLike = ".",
    *,
    seeds: list[int] | None = None,
    test_fraction: float = 0.2,
    num_threads: int | None = 1,
) -> list[ReconstructionTask]:
    """Validate the ``reconstruction:`` section of an evaluation config.

    Each entry::

        name: actin
        manifest: data/bbbc021/manifest.csv   # relative to the config's folder
        target_channel: Actin        # name (rows without it are skipped), index, or omitted: the
                                     # manifest's reconstruction_target column
        models:                      # name -> folder / registered name, or a mapping
          chada: {model: runs/chada/final, family: learned, arch: chada_vit}
          chada_untrained: {model: chada_vit_moyen, seed: 0}   # random weights from seed 0
        image_size: 224              # resize (all images must share H, W)
        epochs: 20
        batch_size: 32
        lr: 1.0e-3
        target_params: auto          # auto: 5.2e6 * H * W / 224^2 (5.2 M at 224 px, 106 k at 32 px)
        base_channels: auto          # auto: 256 * side / 224 as a power of two in [16, 256]
        train_split: train           # values of the manifest's split column
        test_split: test             # (a seeded test_fraction split when the column is missing)
        seeds: 5                     # default: the config's seeds
        pool: cls                    # the encoder's embedding fed to the decoder
        max_images: null             # seeded subsample of the manifest rows
        n_examples: 4                # test images in reconstruction_<name>.png
        num_threads: 1               # torch CPU threads (default: the config's torch_threads)

    ``seeds`` drive the decoder initialisation and batch order (and the split without a split column);
    an untrained encoder is built once from its own ``seed``.
    """
    base = Path(base)
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValueError(f"reconstruction must be a list of tasks, got {type(raw).__name__}")
    default_seeds = list(seeds) if seeds is not None else list(range(5))
    tasks: list[ReconstructionTask] = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise ValueError(f"reconstruction task {i}: expected a mapping, got {t!r}")
        label = t.get("name", f"reconstruction_{i}")
        unknown = sorted(set(t) - _TASK_KEYS)
        if unknown:
            raise ValueError(
                f"reconstruction task {label!r}: unknown keys {unknown}; allowed: {sorted(_TASK_KEYS)}"
            )
        if t.get("manifest") is None:
            raise ValueError(f"reconstruction task {label!r}: manifest is required")
        manifest = t["manifest"]
        if not hasattr(manifest, "columns"):  # a path, not a DataFrame
            manifest = Path(os.path.expanduser(str(manifest)))
            manifest = manifest if manifest.is_absolute() else base / manifest
        raw_models = t.get("models")
        if not raw_models:
            raise ValueError(
                f"reconstruction task {label!r}: models is required (name -> folder or registered name)"
            )
        if isinstance(raw_models, list):
            raw_models = {m["name"]: m for m in raw_models}
        models: dict[str, ReconstructionModelSpec] = {}
        for name, m in raw_models.items():
            if not isinstance(m, dict):
                m = {"model": m}
            bad = sorted(set(m) - _MODEL_KEYS)
            if bad:
                raise ValueError(f"reconstruction task {label!r}, model {name!r}: unknown keys {bad}")
            ref = m.get("model", m.get("path"))
            if ref is None:
                raise ValueError(f"reconstruction task {label!r}, model {name!r}: 'model' is required")
            fam = m.get("family")
            if fam is not None and fam not in ("learned", "untrained", "handmade"):
                raise ValueError(
                    f"model {name!r}: family must be learned, untrained or handmade, got {fam!r}"
                )
            models[str(name)] = ReconstructionModelSpec(
                str(name), _resolve_model_ref(ref, base), fam, m.get("arch"), int(m.get("seed", 0))
            )
        tc = t.get("target_channel")
        if tc is not None and not isinstance(tc, (int, str)):
            raise ValueError(
                f"reconstruction task {label!r}: target_channel must be a name or an index, got {tc!r}"
            )
        size = t.get("image_size")
        if size is not None:
            size = _image_size(size if isinstance(size, int) else list(size))
            size = size[0] if size[0] == size[1] else size
        tp, bc = t.get("target_params", "auto"), t.get("base_channels", "auto")
        s = t.get("seeds", default_seeds)
        s = list(range(int(s))) if isinstance(s, (int, str)) else [int(v) for v in s]
        if not s:
            raise ValueError(f"reconstruction task {label!r}: no seeds")
        tf = t.get("test_fraction")
        threads = t.get("num_threads", t.get("torch_threads", num_threads))
        task = ReconstructionTask(
            name=str(label),
            manifest=manifest,
            models=models,
            target_channel=tc,
            image_size=size,
            epochs=_number(t.get("epochs", 20), "epochs", int),
            batch_size=_number(t.get("batch_size", 32), "batch_size", int),
            lr=_number(t.get("lr", 1e-3), "lr"),
            target_params=None if tp in (None, "auto") else _number(tp, "target_params", int),
            base_channels=None if bc in (None, "auto") else _number(bc, "base_channels", int),
            train_split=t.get("train_split", "train"),
            test_split=t.get("test_split", "test"),
            test_fraction=None if tf is None else _number(tf, "test_fraction"),
            default_test_fraction=float(test_fraction),
            seeds=s,
            pool=str(t.get("pool", "cls")),
            normalize=t.get("normalize", "percentile"),
            datasets=list(t["datasets"]) if t.get("datasets") else None,
            max_images=None if t.get("max_images") is None else _number(t["max_images"], "max_images", int),
            n_examples=_number(t.get("n_examples", 4), "n_examples", int),
            num_threads=None if threads is None else _number(threads, "num_threads", int),
            num_workers=_number(t.get("num_workers", 0), "num_workers", int),
            device=str(t.get("device", "cpu")),
            root=None if t.get("root") is None else base / Path(str(t["root"])),
        )
        if task.epochs < 0 or task.batch_size < 1 or task.lr <= 0 or task.n_examples < 0:
            raise ValueError(
                f"reconstruction task {label!r}: need epochs >= 0, batch_size >= 1, lr > 0, n_examples >= 0"
            )
        if task.test_fraction is not None and not 0 < task.test_fraction < 1:
            raise ValueError(f"reconstruction task {label!r}: test_fraction must be in (0, 1)")
        tasks.append(task)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"reconstruction task names must be unique, got {names}")
    return tasks


def _target_index(spec: str | int | None, names: list[str], row: dict[str, Any]) -> int | None:
    """Index of the target channel in ``names`` (None: the row has no such channel, or < 2 channels)."""
    if len(names) < 2:
        return None
    if spec is None:
        spec = row.get("reconstruction_target")
        if spec is None or (isinstance(spec, float) and math.isnan(spec)) or spec == "":
            return None
        spec = str(spec)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.lstrip("-").isdigit()):
        i = int(spec)
        i = i if i >= 0 else len(names) + i
        return i if 0 <= i < len(names) else None
    low = [n.lower() for n in names]
    return low.index(spec.lower()) if spec.lower() in low else None


def _splits(
    task: ReconstructionTask, split_col: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` positions among the kept rows: the split column, else a seeded random split."""
    n = len(split_col) if split_col is not None else 0
    if task.test_fraction is None and split_col is not None:
        tr = np.flatnonzero(split_col == str(task.train_split))
        te = np.flatnonzero(split_col == str(task.test_split))
        if len(tr) and len(te):
            return tr, te
    if n < 2:
        raise ValueError(f"reconstruction task {task.name!r}: need at least 2 images")
    tf = task.test_fraction if task.test_fraction is not None else task.default_test_fraction
    perm = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(tf * n)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@torch.inference_mode()
def _embed(module: nn.Module, inputs: list[Tensor], pool: str, device: torch.device) -> Tensor:
    if hasattr(module, "forward_features") and hasattr(module, "forward_head"):
        from chada.eval.embed import embed_images

        return torch.from_numpy(embed_images(module, inputs, [pool], device=device)[pool])
    z = module([x.to(device) for x in inputs])
    return z.float().cpu()


def run_reconstruction_task(task: ReconstructionTask, *, progress: bool = True) -> ReconstructionOutcome:
    """Run one reconstruction task: every model x seed, rows in the protocol's long format.

    The manifest is read once (images resized to ``image_size``, per-channel normalised as for
    ``chada embed``); every frozen encoder embeds each image without its target channel; targets are
    held in memory (``N x H x W`` float32: 13 k BBBC021 images at 224 px take 2.6 GB; use
    ``max_images`` to cap). Then one decoder per model and seed is trained on the train rows and
    scored on all test rows.
    """
    from rich.progress import Progress
    from torch.utils.data import DataLoader, Subset

    from chada.data.dataset import ManifestDataset
    from chada.data.manifest import row_channel_names
    from chada.eval.embed import resolve_model
    from chada.eval.protocol import infer_family

    with _torch_threads(task.num_threads):
        ds = ManifestDataset(
            task.manifest,
            root=task.root,
            datasets=task.datasets,
            size=task.image_size,
            normalize=task.normalize,
        )
        target_idx: list[int | None] = [
            _target_index(task.target_channel, row_channel_names(r), r) for r in ds._rows
        ]
        rows = np.array([i for i, t in enumerate(target_idx) if t is not None], dtype=np.int64)
        skipped = len(ds) - len(rows)
        if not len(rows):
            raise ValueError(
                f"reconstruction task {task.name!r}: no manifest row has the target channel "
                f"{task.target_channel if task.target_channel is not None else '(column reconstruction_target)'} "
                "and at least one other channel"
            )
        if skipped:
            log.warning(
                "reconstruction task %r: %d rows without the target channel skipped", task.name, skipped
            )
        if task.max_images is not None and len(rows) > task.max_images:
            rows = np.sort(np.random.default_rng(0).choice(rows, task.max_images, replace=False))
        split_col = ds.frame["split"].astype(str).to_numpy()[rows] if "split" in ds.frame.columns else None
        splits = {seed: _splits(task, split_col, seed) for seed in task.seeds}
        example_pos = splits[task.seeds[0]][1][: task.n_examples]

        modules: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
        dev = torch.device(task.device)
        for name, spec in task.models.items():
            module, info = resolve_model(spec.model, seed=spec.seed)
            if module is None:
                raise ValueError(
                    f"reconstruction task {task.name!r}, model {name!r}: hand-made features are not an encoder "
                    "the decoder can be put on; use a saved model folder or a registered name"
                )
            modules[name] = (module.to(dev).eval(), info)

        n = len(rows)
        feats: dict[str, Tensor] = {}
        targets: Tensor | None = None
        first_row = str(ds._rows[rows[0]].get("image_id"))
        target_name = ""
        examples = ReconstructionExamples(task.name, "", [], [], [])
        where = {int(p): k for k, p in enumerate(example_pos)}
        slots: list[tuple[str, np.ndarray, list[str]] | None] = [None] * len(example_pos)
        loader = DataLoader(
            Subset(ds, rows.tolist()), batch_size=task.batch_size, shuffle=False,
            num_workers=task.num_workers, collate_fn=list,
        )  # fmt: skip
        n_units = len(task.models) * len(task.seeds)
        with Progress(disable=not progress, transient=True) as bar:
            read = bar.add_task(f"{task.name}: encoding", total=n)
            pos = 0
            for samples in loader:
                inputs, ys = [], []
                for s in samples:
                    img, names = s["image"], list(s["channel_names"])
                    t = target_idx[rows[pos + len(inputs)]]
                    keep = [c for c in range(img.shape[0]) if c != t]
                    inputs.append(img[keep])
                    ys.append(img[t])
                    k = where.get(pos + len(inputs) - 1)
                    if k is not None:
                        slots[k] = (s["image_id"], img[keep].numpy().copy(), [names[c] for c in keep])
                    target_name = target_name or names[t]
                if targets is None:
                    hw = tuple(ys[0].shape)
                    targets = torch.empty((n, *hw), dtype=torch.float32)
                sizes = {tuple(y.shape) for y in ys}
                if sizes != {tuple(targets.shape[1:])}:
                    raise ValueError(
                        f"reconstruction task {task.name!r}: images of sizes {sorted(sizes)} and "
                        f"{tuple(targets.shape[1:])} (first: {first_row}); set image_size"
                    )
                targets[pos : pos + len(ys)] = torch.stack(ys)
                for name, (module, _info) in modules.items():
                    z = _embed(module, inputs, task.pool, dev)
                    if z.ndim != 2 or len(z) != len(inputs):
                        raise ValueError(
                            f"model {name!r} returned shape {tuple(z.shape)}; expected [{len(inputs)}, D]"
                        )
                    if name not in feats:
                        feats[name] = torch.empty((n, z.shape[1]), dtype=torch.float32)
                    elif feats[name].shape[1] != z.shape[1]:
                        raise ValueError(
                            f"model {name!r}: embedding size {z.shape[1]} differs from {feats[name].shape[1]} "
                            "(images with different channel counts and a concatenating pool?)"
                        )
                    feats[name][pos : pos + len(z)] = z
                pos += len(ys)
                bar.advance(read, len(ys))
            assert targets is not None
            examples.target_name = target_name
            for slot in slots:
                if slot is not None:
                    examples.image_ids.append(str(slot[0]))
                    examples.inputs.append(slot[1])
                    examples.input_names.append(slot[2])

            params, budget_channels = decoder_budget(tuple(targets.shape[1:]))
            target_params = task.target_params if task.target_params is not None else params
            base_channels = task.base_channels if task.base_channels is not None else budget_channels
            fit = bar.add_task(f"{task.name}: decoders", total=n_units)
            out_rows: list[dict[str, Any]] = []
            info_rows: list[dict[str, Any]] = []
            for name, (_module, minfo) in modules.items():
                spec = task.models[name]
                family = infer_family(name, minfo, spec.family)
                arch = spec.arch or str(minfo.get("arch") or name)
                r2s = []
                res: dict[str, Any] = {}
                for seed in task.seeds:
                    bar.update(fit, description=f"{task.name}: decoder {name} seed {seed}")
                    tr, te = splits[seed]
                    keep = (
                        list(range(len(example_pos))) if seed == task.seeds[0] and len(example_pos) else None
                    )
                    res = fit_decoder(
                        feats[name][tr], targets[tr], feats[name][te], targets[te], epochs=task.epochs,
                        batch_size=task.batch_size, lr=task.lr, target_params=target_params,
                        base_channels=base_channels, seed=seed, device=dev, keep=keep,
                    )  # fmt: skip
                    if keep is not None:
                        examples.predictions[name] = res["examples"]["prediction"]
                        if examples.targets is None:
                            examples.targets = res["examples"]["target"]
                    r2s.append(res["r2"])
                    for metric in METRICS:
                        key = metric.removeprefix("recon_")
                        out_rows.append(
                            dict(
                                task=task.name,
                                kind="reconstruction",
                                model=name,
                                family=family,
                                arch=arch,
                                feature=task.pool,
                                fraction=1.0,
                                seed=seed,
                                metric=metric,
                                value=float(res[key]),
                                chance=float(res["chance"][key]),
                                n_train=int(res["n_train"]),
                                n_test=int(res["n_test"]),
                            )  # fmt: skip
                        )
                    bar.advance(fit)
                examples.r2[name] = float(np.mean(r2s))
                info_rows.append(
                    dict(
                        task=task.name,
                        model=name,
                        family=family,
                        arch=arch,
                        target=target_name,
                        image_size=list(targets.shape[1:]),
                        embed_dim=int(feats[name].shape[1]),
                        decoder_params=int(res["decoder_params"]),
                        target_params=int(target_params),
                        base_channels=int(base_channels),
                        epochs=task.epochs,
                        n_images=n,
                        n_skipped=int(skipped),
                        model_seed=minfo.get("seed"),
                        source=minfo.get("source"),
                    )  # fmt: skip
                )
    sizes = [r["decoder_params"] for r in info_rows]
    if max(sizes) > 1.01 * min(sizes):
        log.warning(
            "reconstruction task %r: decoder sizes differ by more than 1 %% (%s): embedding sizes %s are "
            "large for target_params=%d; raise target_params",
            task.name, sizes, [r["embed_dim"] for r in info_rows], target_params,
        )  # fmt: skip
    return ReconstructionOutcome(out_rows, examples, info_rows)
