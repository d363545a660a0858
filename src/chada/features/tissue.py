"""Tissue-structure features for RGB histology: stains, nuclei and the layout of the nuclei.

Per image ``[3, H, W]`` RGB in [0, 1] (``stains="auto"`` or ``"hed"``):

- stain separation with ``skimage.color.rgb2hed`` (haematoxylin, eosin, DAB) and the intensity
  statistics of each stain's concentration (:data:`chada.features.intensity.STAT_NAMES`);
- nuclei segmented in the haematoxylin channel (rescaled to [0, 1] by its 1-99.8 % percentiles);
- structure: count, density (per 10,000 px), coverage, nucleus area mean/std;
- nearest-neighbour distances between nucleus centroids (``scipy.spatial.cKDTree``): mean, std,
  median, min, max, coefficient of variation, mean distance to the 3 nearest, and the Clark-Evans
  aggregation index (observed mean NN distance / the Poisson expectation ``0.5 / sqrt(density)``;
  < 1 clustered, > 1 regular);
- Delaunay triangulation of the centroids (``scipy.spatial.Delaunay``): edge-length mean, std,
  median, 10/90 % percentiles, max, and the mean number of neighbours.

Images that are not RGB (C != 3) or ``stains="none"``: the three "stain" slots become the nuclear
channel (``"auto"``: the most bimodal), the mean over channels and the max over channels, so every
image gets the same columns; values too few to define a statistic (fewer than 2 or 3 nuclei, or
collinear centroids) are 0. Distances are in pixels of the image given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import Delaunay, QhullError, cKDTree
from skimage.color import rgb2hed

from chada.features.intensity import STAT_NAMES, channel_stats, channel_stats_and_bimodality, check_images
from chada.features.nuclei import (
    nuclei_density,
    pick_nuclear_channel,
    resolve_nuclear_channels,
    segment_nuclei,
)

__all__ = ["STAIN_SLOTS", "TISSUE_NAMES", "stain_channels", "tissue_vector", "tissue_features"]

STAIN_SLOTS = ("stain0", "stain1", "stain2")  # H, E, DAB for RGB histology
_STRUCTURE = ("nuclei_count", "nuclei_density", "nuclei_coverage", "nucleus_area_mean", "nucleus_area_std")
_NN = ("nn_mean", "nn_std", "nn_median", "nn_min", "nn_max", "nn_cv", "nn3_mean", "clark_evans")
_DELAUNAY = ("del_mean", "del_std", "del_median", "del_p10", "del_p90", "del_max", "del_degree")
TISSUE_NAMES: list[str] = [
    *(f"{s}_{stat}" for s in STAIN_SLOTS for stat in STAT_NAMES),
    *_STRUCTURE,
    *_NN,
    *_DELAUNAY,
]


def _rescale(channel: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    lo, hi = np.percentile(channel, [low, high])
    if hi <= lo:
        return np.zeros_like(channel, dtype=np.float32)
    return np.clip((channel - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def stain_channels(
    image: np.ndarray, stains: str = "auto", nuclear_channel: int | str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """``(stain images [3, H, W], nuclear image [H, W] in [0, 1])`` of a checked ``[C, H, W]`` image.

    ``"hed"`` (or ``"auto"`` with 3 channels): RGB -> haematoxylin/eosin/DAB concentrations, nuclei
    from haematoxylin. ``"none"`` (or ``"auto"`` otherwise): nuclear channel, channel mean, channel max.
    """
    c = image.shape[0]
    if stains not in ("auto", "hed", "none"):
        raise ValueError(f"stains must be 'auto', 'hed' or 'none', got {stains!r}")
    if stains == "hed" and c != 3:
        raise ValueError(f"stains='hed' needs an RGB image (3 channels), got {c} channel(s)")
    if stains == "hed" or (stains == "auto" and c == 3):
        hed = rgb2hed(np.clip(np.moveaxis(image, 0, -1), 0.0, 1.0)).astype(np.float32)  # [H, W, 3]
        stain = np.moveaxis(hed, -1, 0)
        return np.ascontiguousarray(stain), _rescale(stain[0])
    _, effs = channel_stats_and_bimodality(image)
    nuc = image[pick_nuclear_channel(image, nuclear_channel, bimodality=effs)]
    return np.stack([nuc, image.mean(axis=0), image.max(axis=0)]), nuc


def _centroids(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids [n, 2] (row, col), areas [n])`` of labels 1..n."""
    flat = labels.ravel()
    rows, cols = np.indices(labels.shape)
    areas = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    r = np.bincount(flat, weights=rows.ravel().astype(np.float64), minlength=n + 1)[1:] / areas
    c = np.bincount(flat, weights=cols.ravel().astype(np.float64), minlength=n + 1)[1:] / areas
    return np.column_stack([r, c]), areas


def _nn_stats(points: np.ndarray, density_px: float) -> np.ndarray:
    out = np.zeros(len(_NN), dtype=np.float64)
    n = len(points)
    if n < 2:
        return out
    k = min(4, n)  # self + up to 3 neighbours
    dist, _ = cKDTree(points).query(points, k=k)
    nn = dist[:, 1]
    mean = float(nn.mean())
    out[:6] = [mean, nn.std(), np.median(nn), nn.min(), nn.max(), nn.std() / mean if mean > 0 else 0.0]
    out[6] = float(dist[:, 1:].mean())
    out[7] = mean / (0.5 / np.sqrt(density_px)) if density_px > 0 else 0.0
    return out


def _delaunay_stats(points: np.ndarray) -> np.ndarray:
    out = np.zeros(len(_DELAUNAY), dtype=np.float64)
    if len(points) < 3:
        return out
    try:
        tri = Delaunay(points)
    except (QhullError, ValueError):  # all centroids on a line
        return out
    s = tri.simplices
    edges = np.concatenate([s[:, [0, 1]], s[:, [1, 2]], s[:, [0, 2]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    lengths = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    degree = np.bincount(edges.ravel(), minlength=len(points))
    out[:] = [
        lengths.mean(),
        lengths.std(),
        np.median(lengths),
        np.percentile(lengths, 10),
        np.percentile(lengths, 90),
        lengths.max(),
        degree.mean(),
    ]
    return out


def tissue_vector(image: np.ndarray, stains: str = "auto", nuclear_channel: int | str = "auto") -> np.ndarray:
    """Tissue features of one checked ``[C, H, W]`` image: ``[len(TISSUE_NAMES)]`` float64."""
    stain, nuc = stain_channels(image, stains, nuclear_channel)
    h, w = nuc.shape
    labels = segment_nuclei(nuc)
    n = int(labels.max())
    structure = np.zeros(len(_STRUCTURE), dtype=np.float64)
    points = np.zeros((0, 2))
    if n:
        points, areas = _centroids(labels, n)
        structure[:] = [
            n,
            nuclei_density(n, (h, w)),
            float(np.count_nonzero(labels)) / (h * w),
            areas.mean(),
            areas.std(),
        ]
    density_px = n / float(h * w)
    return np.concatenate(
        [channel_stats(stain).ravel(), structure, _nn_stats(points, density_px), _delaunay_stats(points)]
    )


def tissue_features(
    images: Sequence[np.ndarray],
    stains: str | Sequence[str] = "auto",
    nuclear_channel: int | str | Sequence[int | str] = "auto",
    names: Sequence[str] | None = None,
    return_names: bool = False,
    progress: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[str]]:
    """Tissue-structure features of N images ``[C_i, H, W]`` (RGB histology: C_i = 3, in [0, 1]).

    Args:
        stains: per image or for all: ``"auto"`` (H&E/DAB separation for 3-channel images, generic
            slots otherwise), ``"hed"`` (require RGB) or ``"none"``.
        nuclear_channel: for non-RGB images: nuclear channel index or ``"auto"``.
        names: image names used in error messages.
        return_names: also return the column names (:data:`TISSUE_NAMES`).

    Returns:
        ``[N, 38]`` float64, or ``([N, 38], names)``.
    """
    checked = check_images(images, names)
    choices = resolve_nuclear_channels(nuclear_channel, len(checked))
    stain_modes = [stains] * len(checked) if isinstance(stains, str) else list(stains)
    if len(stain_modes) != len(checked):
        raise ValueError(f"{len(stain_modes)} stains choices for {len(checked)} images")
    it = range(len(checked))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="tissue features", unit="img")
    x = np.stack([tissue_vector(checked[i], stain_modes[i], choices[i]) for i in it])
    return (x, list(TISSUE_NAMES)) if return_names else x
