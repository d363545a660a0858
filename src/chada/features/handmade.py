"""The hand-made baseline: intensity statistics + histograms + CellProfiler-like texture/shape.

``handmade_features(images)`` is what ``chada embed --model handmade`` and the evaluation's
hand-made baseline call. Per image it concatenates

- image-level block: the CellProfiler-like image-level features (cell count, density, coverage,
  nucleus shape medians/MADs, see :mod:`chada.features.cellprofiler`);
- per-channel block: intensity statistics (:data:`chada.features.intensity.STAT_NAMES`), a
  16-bin intensity histogram on [0, 1], and the CellProfiler-like per-channel features
  (compartment intensities, Haralick texture, background);

in the ``"pooled"`` layout (default: mean/std/max over channels, fixed length for any channel count,
independent of the channel order) or ``"per_channel"`` (one block per channel, fixed channel set).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chada.features.cellprofiler import cellprofiler_block_names, cellprofiler_blocks
from chada.features.intensity import (
    STAT_NAMES,
    assemble,
    assemble_names,
    channel_histograms,
    channel_stats,
    check_images,
    check_layout,
)
from chada.features.nuclei import resolve_nuclear_channels

__all__ = ["HIST_BINS", "handmade_features", "handmade_feature_names"]

HIST_BINS = 16


def handmade_feature_names(layout: str = "pooled", n_channels: int = 1, bins: int = HIST_BINS) -> list[str]:
    """Column names of :func:`handmade_features` (``n_channels`` matters for ``"per_channel"`` only)."""
    g_names, k_names = cellprofiler_block_names()
    channel = [*STAT_NAMES, *(f"hist{b:02d}" for b in range(bins)), *k_names]
    return assemble_names(g_names, channel, layout, n_channels)


def handmade_features(
    images: Sequence[np.ndarray],
    layout: str = "pooled",
    nuclear_channel: int | str | Sequence[int | str] = "auto",
    bins: int = HIST_BINS,
    names: Sequence[str] | None = None,
    return_names: bool = False,
    progress: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[str]]:
    """Hand-made features of N images.

    Args:
        images: N images ``[C_i, H, W]`` float, 1 <= C_i <= 10, values roughly in [0, 1].
        layout: ``"pooled"`` (``[N, F]`` with F independent of C_i and of channel order) or
            ``"per_channel"`` (all images must have the same channel count; F grows with it).
        nuclear_channel: per image or for all: index of the nuclear stain or ``"auto"``.
        bins: histogram bins on [0, 1].
        names: image names used in error messages.
        return_names: also return the column names.

    Returns:
        ``[N, F]`` float64 (F = 126 pooled with the defaults), or ``([N, F], names)``.

    Raises:
        ValueError: NaN/inf pixels (the message names the image), 0 or > 10 channels, unknown
            layout, or mixed channel counts with ``layout="per_channel"``.
    """
    checked = check_images(images, names)
    check_layout(layout, checked)
    choices = resolve_nuclear_channels(nuclear_channel, len(checked))
    it = range(len(checked))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="hand-made features", unit="img")
    rows = []
    for i in it:
        img = checked[i]
        label = names[i] if names is not None else f"image {i}"
        g, pc = cellprofiler_blocks(img, choices[i], name=label)
        channel_block = np.concatenate([channel_stats(img), channel_histograms(img, bins), pc], axis=1)
        rows.append(assemble(g, channel_block, layout))
    x = np.stack(rows)
    if return_names:
        return x, handmade_feature_names(layout, checked[0].shape[0], bins)
    return x
