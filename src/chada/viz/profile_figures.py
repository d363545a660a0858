"""The profiles' pictures: mAP vs -log10 p per model, and a 2-D map of the treatment profiles
coloured by MoA and by batch/plate."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from chada.viz.style import categorical_colors, legend_outside, save_figure, use_agg

__all__ = ["embed_2d", "plot_map_scatter", "plot_treatment_map"]


def plot_map_scatter(
    activity: Mapping[str, pd.DataFrame], out: str | os.PathLike, q: float = 0.05
) -> list[Path]:
    """One panel per model: each treatment's activity mAP against ``-log10`` of its p-value, the
    treatments retrieved (corrected p < ``q``) filled, the others hollow."""
    use_agg()
    import matplotlib.pyplot as plt

    n = len(activity)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.2), squeeze=False, sharey=True)
    for ax, (model, df) in zip(axes[0], activity.items()):
        p = -np.log10(np.clip(df["p_value"].to_numpy(float), 1e-12, 1))
        m = df["mean_average_precision"].to_numpy(float)
        hit = df["corrected_p_value"].to_numpy(float) < q
        ax.scatter(m[hit], p[hit], s=18, c="tab:blue", label=f"q < {q} ({hit.sum()})")
        ax.scatter(
            m[~hit],
            p[~hit],
            s=18,
            facecolors="none",
            edgecolors="tab:gray",
            label=f"q >= {q} ({(~hit).sum()})",
        )
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("activity mAP")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    axes[0][0].set_ylabel("-log10 p (permutation)")
    fig.tight_layout()
    return save_figure(fig, out)


def embed_2d(X: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """``[T, 2]`` coordinates of ``X [T, F]`` (standardised): UMAP (tiny: random init, one thread) or PCA."""
    Xs = (X - X.mean(axis=0)) / np.maximum(X.std(axis=0), 1e-12)
    if method == "umap" and len(Xs) >= 6:
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reducer = umap.UMAP(n_neighbors=min(10, len(Xs) - 1), random_state=seed, init="random", n_jobs=1)
            return reducer.fit_transform(Xs)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(Xs)


def plot_treatment_map(
    coords: Mapping[str, np.ndarray], labels: Mapping[str, pd.DataFrame], color_by: list[str],
    out: str | os.PathLike, method: str = "umap",
) -> list[Path]:  # fmt: skip
    """A grid: one row per model, one column per ``color_by`` column of ``labels[model]``."""
    use_agg()
    import matplotlib.pyplot as plt

    rows, cols = len(coords), len(color_by)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for r, (model, xy) in enumerate(coords.items()):
        for c, col in enumerate(color_by):
            ax, values = axes[r][c], labels[model][col].astype(str).to_numpy()
            levels = sorted(set(values))
            for level, colour in zip(levels, categorical_colors(len(levels))):
                sel = values == level
                ax.scatter(xy[sel, 0], xy[sel, 1], s=16, color=colour, label=level)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{model}: treatments by {col}", fontsize=9)
            ax.set_xlabel(f"{method} 1", fontsize=8)
            ax.set_ylabel(f"{method} 2", fontsize=8)
            legend_outside(ax, title=col, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)
