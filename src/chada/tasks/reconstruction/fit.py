"""Training and scoring one decoder on frozen embeddings (Python API; config runs use :mod:`.task`).

Targets are mapped to [0, 1] with the training targets' global 0.1 / 99.9 % percentiles (then
clipped), because the sigmoid output lives there; MSE, MAE and R2 are computed on the flattened
target channel over the whole test set in that space, in one pass (R2 = 1 - SSE / SST around the
test set's global mean, i.e. scikit-learn's ``r2_score`` on the flattened arrays). The "chance"
reference is the same metrics for a constant prediction of the training targets' mean (R2 ~ 0).
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

from chada.tasks.reconstruction.decoder import PAPER_DECODER_PARAMS, build_decoder

__all__ = [
    "DecoderFit",
    "encode_without_channel", "fit_decoder", "reconstruction_intervals", "reconstruction_metrics",
    "run_channel_reconstruction",
]  # fmt: skip


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


def reconstruction_intervals(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95 % percentile-bootstrap intervals of :func:`reconstruction_metrics` over the test images.

    ``pred``, ``target``: ``[N, H, W]``. Whole images are resampled (pixels of one image are not
    independent), and each metric is recomputed over the resample's pixels from per-image sums.
    """
    p = torch.as_tensor(pred, dtype=torch.float64).flatten(1).numpy()
    t = torch.as_tensor(target, dtype=torch.float64).flatten(1).numpy()
    n, m = t.shape
    if n < 3:
        nan = (float("nan"), float("nan"))
        return {"mse": nan, "mae": nan, "r2": nan}
    sse, sae = ((p - t) ** 2).sum(1), np.abs(p - t).sum(1)
    s1, s2 = t.sum(1), (t**2).sum(1)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    total = n * m
    sst = s2[idx].sum(1) - s1[idx].sum(1) ** 2 / total
    stats = {
        "mse": sse[idx].sum(1) / total,
        "mae": sae[idx].sum(1) / total,
        "r2": np.where(sst > 0, 1.0 - sse[idx].sum(1) / np.where(sst > 0, sst, 1.0), np.nan),
    }
    out = {}
    for k, v in stats.items():
        v = v[np.isfinite(v)]
        out[k] = tuple(float(q) for q in np.quantile(v, [0.025, 0.975])) if len(v) else (float("nan"),) * 2
    return out


def _target_range(y: Tensor) -> tuple[float, float]:
    """Global 0.1 / 99.9 % percentiles (torch.quantile takes <= 16 M values: a strided subsample)."""
    flat = y.flatten()
    limit = 10_000_000
    if flat.numel() > limit:
        flat = flat[:: math.ceil(flat.numel() / limit)]
    lo, hi = (float(v) for v in torch.quantile(flat.float(), torch.tensor([0.001, 0.999])))
    return lo, hi


@dataclass(frozen=True)
class DecoderFit:
    """How one decoder is trained: ``epochs``, ``batch_size``, ``lr`` (AdamW), its size
    (``target_params``, ``base_channels``: :func:`chada.tasks.reconstruction.decoder.build_decoder`),
    ``seed`` (initialisation, batch order without a generator, bootstrap), ``device``, ``progress``."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    target_params: int = PAPER_DECODER_PARAMS
    base_channels: int = 256
    seed: int = 0
    device: str | torch.device = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {self.epochs}, {self.batch_size}, {self.lr}")


def fit_decoder(
    z_train: Tensor,
    y_train: Tensor,
    z_test: Tensor,
    y_test: Tensor,
    fit: DecoderFit | None = None,
    *,
    generator: torch.Generator | None = None,
    keep: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train a decoder ``z -> y`` on precomputed embeddings and score it on the test set.

    Args:
        z_train, z_test: embeddings ``[N, D]``.
        y_train, y_test: target channels ``[N, H, W]`` (raw intensities; mapped to [0, 1] with the
            training percentiles, see the module docstring).
        fit: the training options (:class:`DecoderFit`; None: its defaults).
        generator: batch order (default: one seeded with ``fit.seed``).
        keep: test positions whose ``[H, W]`` target and prediction are returned under ``"examples"``.

    Returns ``{"mse", "mae", "r2", "intervals": {mse, mae, r2: 95 % bootstrap interval over the test
    images}, "chance": {mse, mae, r2 of the train-mean prediction}, "decoder_params", "embed_dim",
    "n_train", "n_test", "target_range"[, "examples"]}``.
    """
    fit = fit or DecoderFit()
    epochs, batch_size, lr, seed, device = fit.epochs, fit.batch_size, fit.lr, fit.seed, fit.device
    target_params, base_channels, progress = fit.target_params, fit.base_channels, fit.progress
    _check_fit_args(z_train, y_train, z_test, y_test)
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    hw = tuple(y_train.shape[-2:])
    lo, hi = _target_range(y_train)
    scale = hi - lo if hi > lo else 1.0
    y_tr = ((y_train.float() - lo) / scale).clamp(0, 1)
    y_te = ((y_test.float() - lo) / scale).clamp(0, 1)
    z_tr, z_te = z_train.float(), z_test.float()

    torch.manual_seed(seed)
    decoder = build_decoder(z_tr.shape[1], hw, target_params, base_channels).to(device)
    _train(decoder, z_tr, y_tr, epochs=epochs, batch_size=batch_size, lr=lr, gen=gen, device=device, progress=progress)
    decoder.eval()
    with torch.no_grad():
        pred = torch.cat(
            [
                decoder(z_te[s : s + batch_size].to(device)).cpu()[:, 0]
                for s in range(0, len(z_te), batch_size)
            ]
        )
    out: dict[str, Any] = reconstruction_metrics(pred, y_te)
    out["intervals"] = reconstruction_intervals(pred, y_te, seed=seed)
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


def _check_fit_args(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor) -> None:
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


def _train(
    decoder: nn.Module, z_tr: Tensor, y_tr: Tensor, *, epochs: int, batch_size: int, lr: float,
    gen: torch.Generator, device: str | torch.device, progress: bool,
) -> None:  # fmt: skip
    """Adam on the MSE loss, ``epochs`` passes over shuffled mini-batches."""
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
    fit = DecoderFit(epochs=epochs, batch_size=batch_size, lr=lr, target_params=target_params,
                     base_channels=base_channels, seed=seed, device=device, progress=progress)  # fmt: skip
    return fit_decoder(z_tr, y_tr, z_te, y_te, fit, generator=gen)
