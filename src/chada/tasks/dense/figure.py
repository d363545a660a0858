"""The dense task's picture: test image, truth, and each model's predicted mask as an error map."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from chada.io import safe_filename
from chada.viz.style import save_figure

__all__ = ["composite", "error_map", "plot_dense_examples"]

# additive colours of channels 0, 1, 2, ... in the composite (a single channel is drawn in grey)
_PALETTE = np.array([[1, 0, 1], [0, 1, 0], [0, 1, 1], [1, 1, 0], [0, 0.4, 1], [1, 0.5, 0]], np.float32)


def composite(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> RGB ``[H, W, 3]``: grey for one channel, else additive colours."""
    x = np.clip(np.nan_to_num(image), 0, 1)
    if x.shape[0] == 1:
        return np.repeat(x[0][..., None], 3, -1)
    rgb = np.einsum("chw,ck->hwk", x, _PALETTE[np.arange(x.shape[0]) % len(_PALETTE)])
    return np.clip(rgb, 0, 1)


def error_map(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB ``[H, W, 3]``: true positive white, false positive red, false negative blue, ignored grey."""
    truth = labels == 1
    out = np.zeros((*labels.shape, 3), np.float32)
    out[pred & truth] = (1, 1, 1)
    out[pred & ~truth] = (0.95, 0.2, 0.2)
    out[~pred & truth] = (0.2, 0.45, 1.0)
    out[labels == 255] = (0.45, 0.45, 0.45)
    return out


def plot_dense_examples(
    outcome: Any, out_dir: str | os.PathLike, scores: dict[str, float] | None = None
) -> Path | None:
    """One row per example region: the image, the truth, then each model's mask (titles give the
    test IoU). Writes ``dense_<task>.png`` and returns its path (None when there is nothing to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = outcome.examples
    if not examples:
        return None
    models = list(examples[0].predictions)
    ncols = 2 + len(models)
    k = len(examples)
    fig, axes = plt.subplots(k, ncols, figsize=(1.9 * ncols, 1.9 * k + 0.6), squeeze=False)
    for i, ex in enumerate(examples):
        truth = np.where(ex.labels == 255, 0.45, ex.labels == 1).astype(np.float32)
        cells = [
            (composite(ex.image), "image: " + ", ".join(outcome.channel_names)),
            (truth, f"truth: {outcome.info.get('mask')}"),
        ]
        for m in models:
            iou = (scores or {}).get(m)
            cells.append(
                (error_map(ex.predictions[m], ex.labels), m + ("" if iou is None else f"\nIoU {iou:.2f}"))
            )
        for j, (img, title) in enumerate(cells):
            ax = axes[i][j]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
        axes[i][0].set_ylabel(ex.image_id, fontsize=6)
    fig.suptitle(
        f"Dense task {outcome.task}: test regions; white = hit, red = false positive, blue = missed, grey = ignored",
        fontsize=8,
    )
    fig.tight_layout()
    return save_figure(
        fig, Path(out_dir) / f"dense_{safe_filename(outcome.task)}.png", dpi=130, formats=("png",)
    )[0]
