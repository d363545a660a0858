"""The attention figure: per channel, each model's CLS attention per head and averaged, and its
inter-channel matrix (``chada attention``, the quickstart's attention grid)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from chada.viz.attention import ModelAttention, _check_image
from chada.viz.style import (
    ATTENTION_CMAP,
    IMAGE_CMAP,
    MATRIX_CMAP,
    add_colorbar,
    model_style,
    save_figure,
    use_agg,
)

__all__ = ["plot_attention_grid"]

_KIND_TEXT = {
    "joint": "one softmax over all channels' patches + CLS (colour = share of the CLS attention)",
    "per_channel": "each channel encoded alone: one CLS softmax per channel",
    "shared": "channels mixed before patchifying: one map shared by all channels",
}


def _wrap(text: str, width: int = 40) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=False))


def _title_colour(label: str) -> Any:
    """The model's colour of every figure (:func:`chada.viz.style.model_style`) for its column titles."""
    return model_style(label)["color"]


def _off(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def plot_attention_grid(
    image: Tensor,
    results: Sequence[ModelAttention],
    channel_names: Sequence[str] | None,
    out: str | os.PathLike,
    title: str | None = None,
    show_heads: bool = True,
    alpha: float = 0.55,
    dpi: int = 150,
) -> list[Path]:
    """One row per channel: the channel (grey), then per model the CLS attention per head and averaged.

    Args:
        image: ``[C, H, W]`` the (normalised) image the maps were computed on.
        results: one :class:`ModelAttention` per model, drawn left to right.
        channel_names: C row labels (default ``ch0..``).
        out: output path; ``<stem>.png`` and ``<stem>.svg`` are both written.
        show_heads: draw every head, not only the head average.
        alpha: opacity of the attention overlay on the grey channel.

    Each attention column has one colour scale shared by all channel rows (so channels can be compared)
    and its own colour bar. A last row holds each model's inter-channel matrix. Returns the two paths.
    """
    use_agg()
    import matplotlib.pyplot as plt

    image = _check_image(image).detach().float().cpu()
    C = image.shape[0]
    names = list(channel_names) if channel_names else [f"ch{i}" for i in range(C)]
    if len(names) != C:
        raise ValueError(f"{len(names)} channel names for an image with {C} channels")
    if not results:
        raise ValueError("plot_attention_grid needs at least one model's results")

    # Column plan: image column, then per model its heads (optional) + mean, or one note column.
    groups: list[tuple[ModelAttention, list[int | str]]] = []
    ncols = 1
    for res in results:
        if res.maps is None:
            cols: list[int | str] = ["note"]
        else:
            heads = res.maps["per_head"].shape[0]
            cols = ([*range(heads)] if show_heads and heads > 1 else []) + ["mean"]
        groups.append((res, cols))
        ncols += len(cols)
    cell = 2.0
    fig = plt.figure(figsize=(cell * ncols + 1.5, cell * C + 2.8 + 0.8), layout="constrained")
    gs = fig.add_gridspec(C + 1, ncols, height_ratios=[1.0] * C + [1.5])
    _draw_channels(fig, gs, image, names)
    col = 1
    for res, cols in groups:
        _draw_model(fig, gs, image, res, cols, col, alpha)
        col += len(cols)
    _draw_matrices(fig, gs, groups, names)
    kinds = [
        f"{r.label}: {_KIND_TEXT.get(r.maps['kind'], r.maps['kind'])}" for r in results if r.maps is not None
    ]
    head = title or "Last-layer CLS attention per channel"
    fig.suptitle(head + ("\n" + "\n".join(kinds) if kinds else ""), fontsize=10)
    return save_figure(fig, out, dpi=dpi)


def _draw_channels(fig: Any, gs: Any, image: Tensor, names: list[str]) -> None:
    """Column 0: each channel in grey, with one intensity colour bar."""
    img_axes = []
    for c in range(image.shape[0]):
        ax = fig.add_subplot(gs[c, 0])
        im = ax.imshow(image[c].numpy(), cmap=IMAGE_CMAP, vmin=0.0, vmax=max(float(image[c].max()), 1e-6))
        _off(ax)
        ax.set_ylabel(names[c], fontsize=10, fontweight="bold")
        if c == 0:
            ax.set_title("channel", fontsize=9)
        img_axes.append(ax)
    add_colorbar(fig, im, img_axes, "intensity (normalised)", location="bottom")


def _draw_model(
    fig: Any, gs: Any, image: Tensor, res: ModelAttention, cols: list[int | str], col: int, alpha: float
) -> None:
    """One model's columns from ``col`` on: its heads and mean over the channels, or its note."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    C = image.shape[0]
    if res.maps is None:
        ax = fig.add_subplot(gs[:C, col])
        _off(ax)
        ax.text(0.5, 0.5, _wrap(res.map_note or f"{res.label} provides no attention maps", 24), ha="center",
                va="center", fontsize=9, color="darkred", transform=ax.transAxes)  # fmt: skip
        ax.set_title(res.label, fontsize=9, color=_title_colour(res.label))
        return
    maps = res.maps
    mass = maps["channel_mass"]
    for j, which in enumerate(cols):
        data = maps["mean"] if which == "mean" else maps["per_head"][which]
        # One scale per column, shared by the channel rows so their attention can be compared;
        # min..max rather than 0..max, else a near-uniform map is a single flat colour.
        vmin, vmax = float(data.min()), float(data.max())
        norm = Normalize(vmin, vmax if vmax > vmin else vmin + 1e-12)
        col_axes = []
        for c in range(C):
            ax = fig.add_subplot(gs[c, col + j])
            ax.imshow(image[c].numpy(), cmap=IMAGE_CMAP, vmin=0.0, vmax=max(float(image[c].max()), 1e-6))
            ax.imshow(data[c].numpy(), cmap=ATTENTION_CMAP, norm=norm, alpha=alpha)
            _off(ax)
            if c == 0:
                head = "mean of heads" if which == "mean" else f"head {which + 1}"
                ax.set_title(f"{res.label}\n{head}", fontsize=9, color=_title_colour(res.label))
            if which == "mean":
                ax.text(0.03, 0.97, f"mass {float(mass[c]):.2f}", transform=ax.transAxes, fontsize=7, va="top",
                        ha="left", bbox={"facecolor": "white", "alpha": 0.8, "pad": 1.5, "lw": 0})  # fmt: skip
            col_axes.append(ax)
        add_colorbar(fig, ScalarMappable(norm=norm, cmap=ATTENTION_CMAP), col_axes, "CLS attention / patch",
                     location="bottom")  # fmt: skip


def _draw_matrices(
    fig: Any, gs: Any, groups: list[tuple[ModelAttention, list[int | str]]], names: list[str]
) -> None:
    """The last row: a legend cell, then each model's inter-channel matrix (or why it has none)."""
    C = len(names)
    ax = fig.add_subplot(gs[C, 0])
    ax.axis("off")
    ax.text(0.0, 0.5, _wrap("inter-channel attention: row = query channel, column = key channel; "
                            "rows sum to 1 (CLS key excluded)", 26),
            fontsize=8, va="center", transform=ax.transAxes)  # fmt: skip
    col = 1
    for res, cols in groups:
        ax = fig.add_subplot(gs[C, col : col + len(cols)])
        col += len(cols)
        if res.matrix is None:
            ax.axis("off")
            ax.text(0.5, 0.5, _wrap(res.matrix_note or f"{res.label}: no inter-channel matrix", 30), ha="center",
                    va="center", fontsize=8, color="darkred", transform=ax.transAxes)  # fmt: skip
            continue
        m = res.matrix.numpy()
        im = ax.imshow(m, cmap=MATRIX_CMAP, vmin=0.0, vmax=max(float(m.max()), 1e-12))
        ax.set_xticks(range(C), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(C), names, fontsize=8)
        ax.set_xlabel("key channel", fontsize=8)
        ax.set_ylabel("query channel", fontsize=8)
        ax.set_title(f"{res.label}: inter-channel attention", fontsize=9, color=_title_colour(res.label))
        if C <= 10:
            thresh = 0.6 * float(m.max())
            for i in range(C):
                for k in range(C):
                    ax.text(k, i, f"{m[i, k]:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if m[i, k] > thresh else "white")  # fmt: skip
        add_colorbar(fig, im, ax, "share of attention")
