"""CellProfiler-like per-cell features, aggregated per image with median and MAD.

Per image:

1. nuclei from :func:`chada.features.nuclei.segment_nuclei` on the nuclear channel;
2. a cytoplasm ring around each nucleus: ``skimage.segmentation.expand_labels`` minus the nucleus;
3. per nucleus: shape (``regionprops_table``: area, perimeter, eccentricity, solidity, extent, major
   and minor axis, form factor ``4 pi area / perimeter^2``) and the whole cell's area;
4. per nucleus and channel: mean intensity in the nucleus, in the ring, and their difference;
5. per channel: Haralick texture (``graycomatrix``/``graycoprops``: contrast, dissimilarity,
   homogeneity, energy, correlation, ASM; 16 grey levels, distance 1, four angles averaged) over the
   cell pixels, and the background intensity outside the cells.

Per-cell values become per-image values through the median and the MAD (median absolute deviation,
unscaled) over the image's cells. Image-level block: ``cell_count``, ``cell_density``,
``cell_coverage`` and the shape medians/MADs. Per-channel block ``[C, K]``: intensity medians/MADs,
texture, background. Layouts (see :func:`chada.features.intensity.assemble`): ``"pooled"``
(mean/std/max over channels: fixed length, channel order irrelevant) or ``"per_channel"``.

An image with no nucleus gets zeros for every per-cell statistic (and texture over the whole image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from chada.features.intensity import (
    assemble,
    assemble_names,
    channel_stats_and_bimodality,
    check_images,
    check_layout,
)
from chada.features.nuclei import (
    nuclei_density,
    pick_nuclear_channel,
    resolve_nuclear_channels,
    segment_nuclei,
)

__all__ = [
    "SHAPE_NAMES",
    "INTENSITY_NAMES",
    "TEXTURE_NAMES",
    "cellprofiler_blocks",
    "cellprofiler_block_names",
    "cellprofiler_features",
    "haralick",
]

SHAPE_NAMES = (
    "area",
    "perimeter",
    "eccentricity",
    "solidity",
    "extent",
    "major_axis",
    "minor_axis",
    "form_factor",
    "cell_area",
)
INTENSITY_NAMES = ("nuc_mean", "cyto_mean", "nuc_minus_cyto")
TEXTURE_NAMES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
GLCM_LEVELS = 16
_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def _agg_names(names: Sequence[str]) -> list[str]:
    return [f"{n}_{a}" for n in names for a in ("median", "mad")]


def cellprofiler_block_names() -> tuple[list[str], list[str]]:
    """``(image-level names, per-channel names)`` of :func:`cellprofiler_blocks`."""
    image_level = ["cell_count", "cell_density", "cell_coverage", *_agg_names(SHAPE_NAMES)]
    per_channel = [*_agg_names(INTENSITY_NAMES), *(f"tex_{n}" for n in TEXTURE_NAMES), "bg_mean"]
    return image_level, per_channel


def _median_mad(values: np.ndarray) -> np.ndarray:
    """``[n_cells, K]`` -> ``[2K]`` (median_k, mad_k interleaved), NaN-aware, zeros when empty."""
    k = values.shape[1]
    out = np.zeros(2 * k, dtype=np.float64)
    if values.shape[0] == 0:
        return out
    for j in range(k):
        col = values[:, j]
        col = col[np.isfinite(col)]
        if col.size:
            med = float(np.median(col))
            out[2 * j] = med
            out[2 * j + 1] = float(np.median(np.abs(col - med)))
    return out


def haralick(channel: np.ndarray, mask: np.ndarray | None = None, levels: int = GLCM_LEVELS) -> np.ndarray:
    """Haralick-like texture of a ``[H, W]`` channel in ``[0, 1]`` restricted to ``mask``: ``[6]``.

    Pixels outside the mask get grey level 0, which is dropped from the co-occurrence matrix, so only
    pairs of in-mask pixels count. Properties (:data:`TEXTURE_NAMES`) are averaged over 4 angles.
    """
    q = 1 + np.minimum((np.clip(channel, 0.0, 1.0) * levels).astype(np.uint8), levels - 1)
    if mask is not None and mask.any():
        q = np.where(mask, q, 0).astype(np.uint8)
    glcm = graycomatrix(
        q, distances=[1], angles=list(_ANGLES), levels=levels + 1, symmetric=True, normed=False
    )
    glcm = glcm[1:, 1:].astype(np.float64)
    totals = glcm.sum(axis=(0, 1), keepdims=True)
    if not np.all(totals > 0):
        return np.zeros(len(TEXTURE_NAMES), dtype=np.float64)
    glcm /= totals
    props = np.array([graycoprops(glcm, p).mean() for p in TEXTURE_NAMES], dtype=np.float64)
    return np.nan_to_num(props, nan=0.0, posinf=0.0, neginf=0.0)


def _per_label_means(channel: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``channel`` over each label 1..n: ``[n]`` (NaN for a label with no pixel)."""
    flat = labels.ravel()
    sums = np.bincount(flat, weights=channel.ravel().astype(np.float64), minlength=n + 1)[1:]
    counts = np.bincount(flat, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def cellprofiler_blocks(
    image: np.ndarray,
    nuclear_channel: int | str = "auto",
    ring_width: int | str = "auto",
    name: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Image-level ``[G]`` and per-channel ``[C, K]`` blocks of one checked ``[C, H, W]`` image.

    Args:
        nuclear_channel: index of the nuclear stain, or ``"auto"`` (most bimodal channel).
        ring_width: cytoplasm ring width in pixels, or ``"auto"``: the median nucleus' equivalent
            radius (at least 2 px).
    """
    _, effs = channel_stats_and_bimodality(image)
    nuc_idx = pick_nuclear_channel(image, nuclear_channel, name, bimodality=effs)
    c, h, w = image.shape
    nuclei = segment_nuclei(image[nuc_idx])
    n = int(nuclei.max())
    g_names, k_names = cellprofiler_block_names()
    if n == 0:
        per_channel = np.zeros((c, len(k_names)), dtype=np.float64)
        tex_at = 2 * len(INTENSITY_NAMES)
        for i in range(c):
            per_channel[i, tex_at : tex_at + len(TEXTURE_NAMES)] = haralick(image[i])
            per_channel[i, -1] = float(image[i].mean())
        return np.zeros(len(g_names), dtype=np.float64), per_channel

    props = regionprops_table(
        nuclei,
        properties=(
            "area",
            "perimeter",
            "eccentricity",
            "solidity",
            "extent",
            "axis_major_length",
            "axis_minor_length",
        ),
    )
    area = np.asarray(props["area"], dtype=np.float64)
    perim = np.asarray(props["perimeter"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        form = np.where(perim > 0, 4 * np.pi * area / np.maximum(perim, 1e-12) ** 2, np.nan)
    if isinstance(ring_width, str):
        if ring_width != "auto":
            raise ValueError(f"ring_width must be an int or 'auto', got {ring_width!r}")
        ring_width = max(2, int(round(float(np.sqrt(np.median(area) / np.pi)))))
    cells = expand_labels(nuclei, distance=int(ring_width))
    ring = np.where(nuclei > 0, 0, cells)
    cell_area = np.bincount(cells.ravel(), minlength=n + 1)[1:].astype(np.float64)
    shape = np.column_stack(
        [
            area,
            perim,
            props["eccentricity"],
            props["solidity"],
            props["extent"],
            props["axis_major_length"],
            props["axis_minor_length"],
            form,
            cell_area,
        ]
    ).astype(np.float64)
    cell_mask = cells > 0
    image_level = np.concatenate(
        [
            [float(n), nuclei_density(n, (h, w)), float(cell_mask.mean())],
            _median_mad(shape),
        ]
    )
    rows = []
    bg = ~cell_mask
    for i in range(c):
        nuc_mean = _per_label_means(image[i], nuclei, n)
        cyto_mean = _per_label_means(image[i], ring, n)
        per_cell = np.column_stack([nuc_mean, cyto_mean, nuc_mean - cyto_mean])
        bg_mean = float(image[i][bg].mean()) if bg.any() else 0.0
        rows.append(np.concatenate([_median_mad(per_cell), haralick(image[i], cell_mask), [bg_mean]]))
    return image_level, np.stack(rows)


def cellprofiler_features(
    images: Sequence[np.ndarray],
    layout: str = "pooled",
    nuclear_channel: int | str | Sequence[int | str] = "auto",
    ring_width: int | str = "auto",
    names: Sequence[str] | None = None,
    return_names: bool = False,
    progress: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[str]]:
    """CellProfiler-like features of N images ``[C_i, H, W]`` (1 <= C_i <= 10, values in ~[0, 1]).

    Args:
        layout: ``"pooled"`` (fixed length ``G + 3K`` for any channel count, channel-order invariant
            with ``nuclear_channel="auto"``) or ``"per_channel"`` (``G + C*K``; all images must have
            the same channel count).
        nuclear_channel: per image or for all: channel index or ``"auto"``.
        names: image names for error messages.
        return_names: also return the column names.

    Returns:
        ``[N, F]`` float64, or ``([N, F], names)`` with ``return_names=True``.
    """
    checked = check_images(images, names)
    check_layout(layout, checked)
    choices = resolve_nuclear_channels(nuclear_channel, len(checked))
    it = range(len(checked))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="cellprofiler features", unit="img")
    rows = []
    for i in it:
        label = names[i] if names is not None else f"image {i}"
        g, pc = cellprofiler_blocks(checked[i], choices[i], ring_width, label)
        rows.append(assemble(g, pc, layout))
    x = np.stack(rows)
    if not return_names:
        return x
    g_names, k_names = cellprofiler_block_names()
    return x, assemble_names(g_names, k_names, layout, checked[0].shape[0])
