"""CellProfiler's per-object measurements with ``cp_measure`` (the Carpenter-Singh lab's package of
CellProfiler's measurement modules): one field ``[C, H, W]`` + a label image ``[H, W]`` -> one row
per object.

Groups (all on by default, as cp_measure's featurizer): size/shape (AreaShape, Zernike, Feret),
intensity, intensity distribution (radial), texture (Haralick), granularity and, with two channels
or more, colocalisation (Pearson, Costes, Manders, RWC). Column names are cp_measure's (CellProfiler's
feature names, channel after ``__``), prefixed with the compartment, pycytominer-style:
``Nuclei_Area``, ``Nuclei_Intensity_MeanIntensity__DNA``.

Intensities are divided by ``intensity_max`` before measuring, as CellProfiler rescales a 16-bit
image to [0, 1]: one fixed scale keeps intensity features comparable between images.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from chada.errors import InputError

__all__ = ["cp_measure_objects", "check_labels"]


def check_labels(labels: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    """The label image as int32 ``[H, W]``, or a one-line error naming ``name``."""
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 2:
        raise InputError(f"{name}: label image has shape {labels.shape}; expected [H, W]")
    if labels.shape != tuple(shape):
        raise InputError(f"{name}: label image is {labels.shape[0]}x{labels.shape[1]} but its field is "
                         f"{shape[0]}x{shape[1]}; use the mask made from this field")  # fmt: skip
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(
            f"{name}: label image has dtype {labels.dtype}; expected integer labels (0 = background)"
        )
    if labels.size and labels.min() < 0:
        raise InputError(f"{name}: label image has negative labels; expected 0 = background, 1.. = objects")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise InputError(f"{name}: label values beyond int32")
    return labels.astype(np.int32, copy=False)


def cp_measure_objects(
    image: np.ndarray,
    labels: np.ndarray,
    channel_names: Sequence[str] | None = None,
    object_name: str = "Cells",
    intensity_max: float | None = None,
    name: str = "image",
    **groups: Any,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-object CellProfiler measurements of one field.

    Args:
        image: ``[C, H, W]`` (or ``[H, W]``) intensities.
        labels: ``[H, W]`` integer label image, 0 = background.
        channel_names: ``C`` names used in the feature names (default ``ch0``, ``ch1``, ...).
        intensity_max: the value that maps to 1 (default: the dtype's maximum for integer images, 1
            for float images).
        groups: cp_measure ``make_featurizer_config`` switches, e.g. ``texture=False``.

    Returns:
        ``(object ids [K] int64, X [K, F] float64, F feature names)``, one row per label > 0 in
        increasing label order; K = 0 when the label image is empty.
    """
    from cp_measure.featurizer import featurize, make_featurizer_config

    image = np.asarray(image)
    image = image[None] if image.ndim == 2 else image
    if image.ndim != 3:
        raise InputError(f"{name}: image has shape {image.shape}; expected [C, H, W]")
    labels = check_labels(labels, image.shape[1:], name)
    if intensity_max is None:
        intensity_max = float(np.iinfo(image.dtype).max) if np.issubdtype(image.dtype, np.integer) else 1.0
    pixels = image.astype(np.float64) / float(intensity_max)
    if pixels.size and (pixels.max() > 1.0 + 1e-6 or pixels.min() < 0):
        raise InputError(f"{name}: intensities outside [0, {intensity_max:g}]; set the intensity maximum "
                         "(--intensity-max) to the range of the images")  # fmt: skip
    names = list(channel_names) if channel_names else [f"ch{i}" for i in range(image.shape[0])]
    if len(names) != image.shape[0]:
        raise InputError(f"{name}: {len(names)} channel names for {image.shape[0]} channels")
    params = {"correlation_costes_params": {"scale_max": 65535}, **groups}  # Costes bins [0, 1] into 16 bits
    cfg = make_featurizer_config(names, objects=[object_name], **params)
    if not labels.any():
        return np.zeros(0, np.int64), np.zeros((0, 0)), []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN moments, one-channel correlation: dropped later, by name
        data, cols, rows = featurize(pixels[None], labels[None, None], cfg)
    ids = np.array([int(r[2]) for r in rows], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.asarray(data, dtype=np.float64)[order], [f"{object_name}_{c}" for c in cols]
