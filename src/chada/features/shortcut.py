"""Shortcut-control features: what an image's brightness and cell count alone tell about it.

The study "Deep Learning for BioImaging: What Are We Learning?" (Svatko et al.) finds that
microscopy encoders pick up cell density and pixel intensity as shortcuts. These features measure
exactly those quantities, per image and fast (budget: a 224 x 224 3-channel image in at most 20 ms on
one core; ``benchmarks/features.py`` measures it), so every learned embedding can be compared to them.

Columns (fixed length for any channel count, independent of channel order), see
:data:`SHORTCUT_NAMES`:

- ``n_channels``;
- ``cell_count``, ``cell_density`` (nuclei per 10,000 pixels), ``nucleus_area_mean`` (pixels) from
  :func:`chada.features.nuclei.segment_nuclei` on the nuclear channel;
- ``mean_intensity``: mean over channels of the channel means;
- ``<stat>_chmean`` / ``<stat>_chstd`` / ``<stat>_chmax``: mean/std/max over channels of each
  per-channel statistic (mean, std, p1, p50, p99, fg_frac); ``mean_chmean`` equals
  ``mean_intensity``, kept so the pooled block has the same layout as every other pooled block.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chada.features.intensity import (
    STAT_NAMES,
    channel_stats_and_bimodality,
    check_images,
    pool_channels,
    pooled_names,
)
from chada.features.nuclei import (
    nuclei_density,
    pick_nuclear_channel,
    resolve_nuclear_channels,
    segment_nuclei,
)

__all__ = ["SHORTCUT_NAMES", "shortcut_vector", "shortcut_features"]

SHORTCUT_NAMES: list[str] = [
    "n_channels",
    "cell_count",
    "cell_density",
    "nucleus_area_mean",
    "mean_intensity",
    *pooled_names(STAT_NAMES),
]


def shortcut_vector(
    image: np.ndarray, nuclear_channel: int | str = "auto", name: str = "image"
) -> np.ndarray:
    """Shortcut features of one checked ``[C, H, W]`` float32 image: ``[len(SHORTCUT_NAMES)]`` float64."""
    stats, effs = channel_stats_and_bimodality(image)
    nuc = pick_nuclear_channel(image, nuclear_channel, name, bimodality=effs)
    labels = segment_nuclei(image[nuc])
    count = int(labels.max())
    area = float(np.count_nonzero(labels)) / count if count else 0.0
    head = [
        float(image.shape[0]),
        float(count),
        nuclei_density(count, image.shape[1:]),
        area,
        float(stats[:, 0].mean()),
    ]
    return np.concatenate([np.asarray(head), pool_channels(stats)])


def shortcut_features(
    images: Sequence[np.ndarray],
    nuclear_channel: int | str | Sequence[int | str] = "auto",
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Shortcut-control features of a list of images.

    Args:
        images: N images, each ``[C_i, H_i, W_i]`` (1 <= C_i <= 10, values roughly in [0, 1]); channel
            counts and sizes may differ.
        nuclear_channel: channel to count nuclei in, per image or for all: an index, or ``"auto"``
            (the most bimodal channel; order-invariant).
        names: image names used in error messages (default ``"image <i>"``).
        progress: show a progress bar.

    Returns:
        ``([N, F] float64, column names)`` with ``F = len(SHORTCUT_NAMES)`` for every channel count.

    Raises:
        ValueError: an image has NaN/inf pixels, 0 or more than 10 channels, or a bad shape.
    """
    checked = check_images(images, names)
    choices = resolve_nuclear_channels(nuclear_channel, len(checked))
    label = [names[i] if names is not None else f"image {i}" for i in range(len(checked))]
    it = range(len(checked))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="shortcut features", unit="img")
    rows = [shortcut_vector(checked[i], choices[i], label[i]) for i in it]
    return np.stack(rows), list(SHORTCUT_NAMES)
