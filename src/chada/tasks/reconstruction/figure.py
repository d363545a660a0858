"""Fig. 16-style picture of a reconstruction task: inputs, true target, each model's prediction."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from chada.io import safe_filename
from chada.viz.style import save_figure

__all__ = ["plot_reconstruction_examples"]


def plot_reconstruction_examples(examples: Any, out_dir: str | os.PathLike) -> Path | None:
    """Fig. 16 style: one row per test image (its id on the left); columns = input channels, true target,
    each model's prediction (first seed) framed in the model's colour of every figure
    (:func:`chada.viz.style.model_styles`), the column title giving its mean test R² over seeds.

    ``examples`` is a :class:`chada.tasks.reconstruction.ReconstructionExamples`; writes
    ``reconstruction_<task>.png`` and returns its path (None when there is nothing to draw).
    """

    from chada.viz.style import model_styles, use_agg

    use_agg()
    import matplotlib.pyplot as plt

    if examples.targets is None or not len(examples.inputs):
        return None
    k = len(examples.inputs)
    n_in = max(len(x) for x in examples.inputs)
    models = list(examples.predictions)
    styles = model_styles([(m, None) for m in models])
    ncols = n_in + 1 + len(models)
    fig, axes = plt.subplots(k, ncols, figsize=(1.6 * ncols + 1.2, 1.6 * k + 0.6), squeeze=False)
    for i in range(k):
        cells: list[tuple[np.ndarray | None, str, Any]] = []
        for c in range(n_in):
            has = c < len(examples.inputs[i])
            name = f"input: {examples.input_names[i][c]}" if has else ""
            cells.append((examples.inputs[i][c] if has else None, name, None))
        cells.append((examples.targets[i], f"true {examples.target_name}", None))
        for m in models:
            cells.append((examples.predictions[m][i], f"{m}\nR² {examples.r2.get(m, float('nan')):.2f}", m))
        for j, (img, title, model) in enumerate(cells):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if img is None:
                ax.axis("off")
                continue
            unit = j >= n_in  # targets and predictions share the [0, 1] scale
            ax.imshow(img, cmap="gray", vmin=0 if unit else None, vmax=1 if unit else None)
            colour = styles[model]["color"] if model is not None else "0.8"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if model is not None else 0.5)
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i][0].set_ylabel(examples.image_ids[i], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"Channel reconstruction: {examples.task} (test images; targets in [0, 1]; "
                 "frame colour = model, as in every figure)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    out = Path(out_dir) / f"reconstruction_{safe_filename(examples.task)}.png"
    return save_figure(fig, out, dpi=120, formats=("png",))[0]
