"""Fig. 16-style picture of a reconstruction task: inputs, true target, each model's prediction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from chada.io import atomic_write_bytes

__all__ = ["plot_reconstruction_examples"]


def plot_reconstruction_examples(examples: Any, out_dir: str | os.PathLike) -> Path | None:
    """Fig. 16 style: one row per test image; columns = input channels, true target, each model's
    prediction (first seed; the column title gives the model's mean test R2 over seeds).

    ``examples`` is a :class:`chada.tasks.reconstruction.ReconstructionExamples`; writes
    ``reconstruction_<task>.png`` and returns its path (None when there is nothing to draw).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if examples.targets is None or not len(examples.inputs):
        return None
    k = len(examples.inputs)
    n_in = max(len(x) for x in examples.inputs)
    models = list(examples.predictions)
    ncols = n_in + 1 + len(models)
    fig, axes = plt.subplots(k, ncols, figsize=(1.6 * ncols, 1.6 * k + 0.4), squeeze=False)
    for i in range(k):
        cells: list[tuple[np.ndarray | None, str, bool]] = []
        for c in range(n_in):
            has = c < len(examples.inputs[i])
            cells.append(
                (examples.inputs[i][c] if has else None, examples.input_names[i][c] if has else "", False)
            )
        cells.append((examples.targets[i], f"true {examples.target_name}", True))
        for m in models:
            cells.append(
                (examples.predictions[m][i], f"{m}\nR² {examples.r2.get(m, float('nan')):.2f}", True)
            )
        for j, (img, title, unit) in enumerate(cells):
            ax = axes[i][j]
            ax.axis("off")
            if img is None:
                continue
            ax.imshow(img, cmap="gray", vmin=0 if unit else None, vmax=1 if unit else None)
            if i == 0:
                ax.set_title(title if j > n_in or unit else f"input: {title}", fontsize=7)
        axes[i][0].text(
            -0.05, 0.5, examples.image_ids[i], transform=axes[i][0].transAxes, rotation=90,
            ha="right", va="center", fontsize=5,
        )  # fmt: skip
    fig.suptitle(f"Channel reconstruction: {examples.task} (test images; targets in [0, 1])", fontsize=9)
    fig.tight_layout()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in examples.task)
    path = Path(out_dir) / f"reconstruction_{safe}.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
