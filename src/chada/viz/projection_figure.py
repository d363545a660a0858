"""The joint-projection figure: UMAP / PCA panels coloured by dataset and by a label (``chada project``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.viz.projection import METHODS, _is_missing, _shared_labels
from chada.viz.style import MARKERS, add_colorbar, categorical_colors, legend_outside, save_figure, use_agg

__all__ = ["plot_projection"]


def _scatter_categorical(
    ax: Any,
    xy: np.ndarray,
    colour_vals: Sequence[str],
    marker_vals: Sequence[str] | None,
    size: float,
    colour_title: str,
    marker_title: str | None,
) -> None:
    from matplotlib.lines import Line2D

    colour_vals = np.asarray(colour_vals, dtype=object)
    cats = [c for c in pd.unique(colour_vals) if c != "(missing)"]
    cats = cats + (["(missing)"] if "(missing)" in set(colour_vals) else [])
    colours = dict(zip(cats, categorical_colors(len(cats))))
    if "(missing)" in colours:
        colours["(missing)"] = (0.75, 0.75, 0.75, 1.0)
    if marker_vals is None:
        marker_vals = np.asarray(["-"] * len(colour_vals), dtype=object)
    marker_vals = np.asarray(marker_vals, dtype=object)
    mcats = list(pd.unique(marker_vals))
    markers = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(mcats)}
    if "(not shared)" in markers:
        markers["(not shared)"] = "."
    for m in mcats:
        for c in cats:
            sel = (marker_vals == m) & (colour_vals == c)
            if sel.any():
                ax.scatter(
                    xy[sel, 0],
                    xy[sel, 1],
                    s=size * (2.5 if markers[m] == "." else 1.0),
                    c=[colours[c]],
                    marker=markers[m],
                    linewidths=0,
                    alpha=0.85,
                )
    same = len(marker_vals) == len(colour_vals) and all(a == b for a, b in zip(marker_vals, colour_vals))
    if same:  # colour and marker both show the category: one legend entry with both
        handles = [Line2D([], [], ls="", marker=markers[c], color=colours[c], label=str(c)) for c in cats]
        legend_outside(ax, title=colour_title, max_entries=30, handles=handles)
        return
    handles = [Line2D([], [], ls="", marker="o", color=colours[c], label=str(c)) for c in cats]
    if marker_title is not None and len(mcats) > 1:
        handles.append(Line2D([], [], ls="", label=""))
        handles.append(Line2D([], [], ls="", label=f"marker: {marker_title}"))
        handles += [Line2D([], [], ls="", marker=markers[m], color="0.3", label=str(m)) for m in mcats]
    legend_outside(ax, title=colour_title, max_entries=30, handles=handles)


def plot_projection(
    coords: pd.DataFrame,
    stats: dict[str, Any],
    out: str | os.PathLike,
    color_by: str | None = None,
    marker_by: str | None = None,
    dpi: int = 150,
) -> list[Path]:
    """Panels: one row per method (UMAP, PCA); columns "by dataset" and "by ``color_by``".

    In the dataset view the marker shows the dataset (colour and marker together), or, with
    ``marker_by``, that column's labels shared by at least two datasets (others are small dots); in the
    label view the marker shows the dataset. Legends sit outside the axes. Writes ``<stem>.png`` and
    ``<stem>.svg``.
    """
    use_agg()
    import matplotlib.pyplot as plt

    color_by = color_by if color_by is not None else stats.get("color_by")
    marker_by = marker_by or stats.get("marker_by")
    if color_by is not None and color_by not in coords.columns:
        raise ValueError(f"column {color_by!r} not in the coordinates")
    if marker_by is not None and marker_by not in coords.columns:
        raise ValueError(f"--marker-by column {marker_by!r} not in the embeddings' metadata")
    methods = [
        m
        for m in ("umap", "pca")
        if m in stats.get("methods", METHODS) and f"{'pc' if m == 'pca' else 'umap'}1" in coords
    ]
    if not methods:
        raise ValueError("no projection to plot")
    N = len(coords)
    # Big enough that the marker shapes stay distinguishable at a few hundred points.
    size = float(np.clip(8000.0 / max(N, 1), 12.0, 40.0))
    ncols = 2 if color_by else 1
    fig, axes = plt.subplots(
        len(methods),
        ncols,
        figsize=(6.2 * ncols + 2.5, 5.0 * len(methods)),
        squeeze=False,
        layout="constrained",
    )
    dataset = coords["dataset"].astype(str).to_numpy(dtype=object)
    shared_marker = None
    if marker_by is not None:
        shared = set(_shared_labels(coords, marker_by)) if coords["dataset"].nunique() > 1 else set()
        vals = ["(missing)" if _is_missing(v) else str(v) for v in coords[marker_by]]
        shared_marker = np.asarray([v if v in shared else "(not shared)" for v in vals], dtype=object)
        if not shared:
            shared_marker = None
    evr = stats.get("explained_variance_ratio", [])
    for r, method in enumerate(methods):
        xy, xl, yl, name = _axes_of(coords, method, evr)
        ax = axes[r, 0]
        if shared_marker is None:  # marker and colour both show the dataset (readable in grey too)
            _scatter_categorical(ax, xy, dataset, dataset, size, "dataset", "dataset")
        else:
            _scatter_categorical(ax, xy, dataset, shared_marker, size, "dataset", f"shared {marker_by}")
        ax.set_title(f"{name}, coloured by dataset{_sep_note(method, stats.get('dataset_pc1'), 'dataset', 'PC1')}",
                     fontsize=10)  # fmt: skip
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        if color_by:
            _label_panel(fig, axes[r, 1], coords, xy, color_by, dataset, size)
            note = _sep_note(method, stats.get("label_pc2"), color_by, "PC2")
            axes[r, 1].set_title(f"{name}, coloured by {color_by}{note}", fontsize=10)
            axes[r, 1].set_xlabel(xl)
            axes[r, 1].set_ylabel(yl)
    fig.suptitle(
        f"{stats.get('feature', '')} embeddings: {N} images from {coords['dataset'].nunique()} dataset(s), one space",
        fontsize=11,
    )
    return save_figure(fig, out, dpi=dpi)


def _axes_of(coords: pd.DataFrame, method: str, evr: Sequence[float]) -> tuple[np.ndarray, str, str, str]:
    """``(xy [N, 2], x label, y label, method name)`` of one projection."""
    if method == "pca":
        xl = f"PC1 ({100 * evr[0]:.1f} %)" if evr else "PC1"
        yl = f"PC2 ({100 * evr[1]:.1f} %)" if len(evr) > 1 else "PC2"
        return coords[["pc1", "pc2"]].to_numpy(), xl, yl, "PCA"
    return coords[["umap1", "umap2"]].to_numpy(), "UMAP 1", "UMAP 2", "UMAP"


def _sep_note(method: str, sep: dict[str, Any] | None, what: str, pc: str) -> str:
    """Title suffix with the separability of ``what`` along ``pc`` (PCA panels only)."""
    if method == "pca" and sep is not None and sep["cv_accuracy"] is not None:
        return f"\n{what} along {pc}: CV acc {sep['cv_accuracy']:.2f} (chance {sep['chance']:.2f})"
    return ""


def _label_panel(
    fig: Any, ax: Any, coords: pd.DataFrame, xy: np.ndarray, color_by: str, dataset: np.ndarray, size: float
) -> None:
    """Points coloured by ``color_by``: a colour bar for a many-valued number, else categories."""
    col = coords[color_by]
    numeric = pd.api.types.is_numeric_dtype(col) and col.nunique(dropna=True) > 20
    if numeric:
        im = ax.scatter(xy[:, 0], xy[:, 1], c=col.to_numpy(dtype=float), s=size, cmap="viridis", linewidths=0)
        add_colorbar(fig, im, ax, color_by)
    else:
        vals = np.asarray(["(missing)" if _is_missing(v) else str(v) for v in col], dtype=object)
        _scatter_categorical(ax, xy, vals, dataset, size, color_by, "dataset")
