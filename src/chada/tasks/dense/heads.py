"""The two probes of the dense task and their fit: a linear (1x1) probe and a 2-layer 1x1-conv head.

Both act on a feature map ``[B, F, h, w]`` (standardised with the training set's per-feature mean
and std, stored in the head) and give one logit per position; the logits are then resized
bilinearly to the tile's pixels, and the loss (binary cross-entropy, :data:`IGNORE` pixels left
out) is taken at pixel resolution.

Why probe at token resolution and upsample the logits, rather than upsample the features first:
for the linear probe the two are the same function (bilinear resizing and a 1x1 convolution are
both linear, and the resize weights sum to 1, so the bias passes through), and the token-resolution
form is ``(T / h)^2`` times cheaper (64 x for patch 8, 256 x for patch 16). For the 2-layer head it
is the usual choice for ViT segmentation probes (the non-linearity acts on tokens, the map is then
resized). Hand-made pixel features come at pixel resolution, so there the resize is the identity.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chada.tasks.dense.data import IGNORE

__all__ = ["HEADS", "DenseHead", "fit_head", "predict_probabilities"]

HEADS = ("linear", "mlp")


class DenseHead(nn.Module):
    """``[B, F, h, w]`` -> logits ``[B, 1, H, W]``: standardise, then a linear map (``"linear"``) or
    linear -> GELU -> linear (``"mlp"``, ``hidden`` units) at every position (a 1x1 convolution,
    computed channels-last, which runs 2-3x faster than ``Conv2d`` on CPU), then resize to ``(H, W)``."""

    def __init__(self, in_dim: int, kind: str = "linear", hidden: int = 64) -> None:
        super().__init__()
        if kind not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
        if in_dim < 1 or hidden < 1:
            raise ValueError(f"need in_dim >= 1 and hidden >= 1, got {in_dim}, {hidden}")
        self.kind, self.in_dim, self.hidden = kind, int(in_dim), int(hidden)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, 1)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def rows(self, x: Tensor) -> Tensor:
        """Logits ``[P]`` of feature rows ``[P, F]``."""
        return self.net((x - self.mean) / self.std)[..., 0]

    def forward(self, maps: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if maps.ndim != 4 or maps.shape[1] != self.in_dim:
            raise ValueError(f"head expects [B, {self.in_dim}, h, w] features, got {tuple(maps.shape)}")
        logits = self.rows(maps.permute(0, 2, 3, 1))[:, None]
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits

    def config(self) -> dict[str, Any]:
        return {"head": self.kind, "in_dim": self.in_dim, "hidden": self.hidden}


def _standardise(head: DenseHead, maps: np.ndarray) -> None:
    x = torch.from_numpy(maps).transpose(0, 1).reshape(maps.shape[1], -1).double()
    head.mean.copy_(x.mean(1).float())
    head.std.copy_(x.std(1).clamp_min(1e-6).float())


def fit_head(
    maps: np.ndarray,
    labels: np.ndarray,
    kind: str = "linear",
    *,
    hidden: int = 64,
    steps: int = 300,
    batch_size: int = 64,
    pixels_per_step: int = 8192,
    lr: float = 3e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    num_threads: int | None = 1,
) -> DenseHead:
    """Train a head on training features ``maps [N, F, h, w]`` against ``labels [N, T, T]``.

    Adam on the pixel-level BCE (ignored pixels left out) for ``steps`` steps; ``seed`` sets the
    initialisation and the draws. Token-resolution features (``h < T``): each step takes
    ``batch_size`` tiles (a seeded shuffle) and scores the resized logits on all their pixels.
    Pixel-resolution features (``h == T``): each step takes ``pixels_per_step`` labelled pixels drawn
    from the whole training set, since every pixel is its own sample there. The learning rate
    follows a cosine decay. ``num_threads``: torch threads during the fit (None: unchanged); these
    steps are tiny, and on a loaded 2-core machine 2 threads ran a 150-step fit in 6.9 s, 1 in 0.1 s.
    """
    if len(maps) != len(labels) or len(maps) == 0:
        raise ValueError(f"{len(maps)} feature maps for {len(labels)} label tiles")
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _fit(maps, labels, kind, hidden, steps, batch_size, pixels_per_step, lr, weight_decay, seed)
    finally:
        torch.set_num_threads(previous)


def _fit(
    maps: np.ndarray, labels: np.ndarray, kind: str, hidden: int, steps: int, batch_size: int,
    pixels_per_step: int, lr: float, weight_decay: float, seed: int,
) -> DenseHead:  # fmt: skip
    torch.manual_seed(seed)
    head = DenseHead(maps.shape[1], kind, hidden)
    _standardise(head, maps)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    batches = _pixel_batches if maps.shape[-2:] == labels.shape[-2:] else _tile_batches
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for logits, target, weight in batches(head, maps, labels, steps, batch_size, pixels_per_step, gen):
        if weight is None:
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            total = weight.sum()
            if total == 0:
                continue
            loss = F.binary_cross_entropy_with_logits(logits, target, weight, reduction="sum") / total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def _tile_batches(
    head: DenseHead, maps: np.ndarray, labels: np.ndarray, steps: int, batch_size: int, _pixels: int,
    gen: torch.Generator,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    x_all = torch.from_numpy(maps)
    target = torch.from_numpy((labels == 1).astype(np.float32))
    weight = torch.from_numpy((labels != IGNORE).astype(np.float32))
    size = tuple(labels.shape[-2:])
    n = len(maps)
    order, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos >= n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        # weights instead of boolean indexing: the same loss, 2-3x faster per step
        yield head(x_all[idx], size)[:, 0], target[idx], weight[idx]


def _pixel_batches(
    head: DenseHead, maps: np.ndarray, labels: np.ndarray, steps: int, _batch: int, pixels: int,
    gen: torch.Generator,
) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:  # fmt: skip
    valid = labels != IGNORE
    rows = torch.from_numpy(np.ascontiguousarray(maps.transpose(0, 2, 3, 1)[valid]))  # [P, F]
    target = torch.from_numpy((labels[valid] == 1).astype(np.float32))
    if not len(rows):
        return
    for _ in range(steps):
        idx = torch.randint(0, len(rows), (min(pixels, len(rows)),), generator=gen)
        yield head.rows(rows[idx]), target[idx], None


@torch.inference_mode()
def predict_probabilities(
    head: DenseHead, maps: np.ndarray, size: tuple[int, int], batch_size: int = 256
) -> np.ndarray:
    """Foreground probabilities ``[N, H, W]`` float32 of features ``maps [N, F, h, w]``."""
    head.eval()
    out = [
        torch.sigmoid(head(torch.from_numpy(maps[s : s + batch_size]), size)[:, 0]).numpy()
        for s in range(0, len(maps), batch_size)
    ]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *size), np.float32)
