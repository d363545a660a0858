"""Hand-made PIXEL features: a small filter bank per channel, the dense baseline of the segmentation task.

For each channel of a ``[C, H, W]`` image (scikit-image / SciPy filters, ilastik-style):

- the intensity itself;
- Gaussian smoothing at each ``sigma``;
- the scale-normalised Laplacian of Gaussian ``sigma^2 * LoG`` at each ``sigma`` (blob / edge detector);
- the two eigenvalues of the structure tensor at each ``tensor_sigma`` (edges and orientation
  coherence), ``skimage.feature.structure_tensor`` + ``structure_tensor_eigenvalues``.

With the defaults that is ``1 + 3 + 3 + 2 * 2 = 11`` features per channel, ``11 * C`` in all, in
channel-major order (:func:`pixel_feature_names`). Borders are reflected (``mode="reflect"``), so a
tile's features depend only on the tile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_SIGMAS", "DEFAULT_TENSOR_SIGMAS", "pixel_feature_names", "pixel_features"]

DEFAULT_SIGMAS = (1.0, 2.0, 4.0)
DEFAULT_TENSOR_SIGMAS = (1.0, 2.0)


def pixel_feature_names(
    channel_names: Sequence[str],
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    tensor_sigmas: Sequence[float] = DEFAULT_TENSOR_SIGMAS,
) -> list[str]:
    """Names of :func:`pixel_features`' planes, e.g. ``DAPI:gauss_2``, ``DAPI:st_2_l1``."""
    per = ["intensity"]
    per += [f"gauss_{s:g}" for s in sigmas]
    per += [f"log_{s:g}" for s in sigmas]
    per += [f"st_{s:g}_l{k}" for s in tensor_sigmas for k in (1, 2)]
    return [f"{c}:{p}" for c in channel_names for p in per]


def _channel_features(
    x: np.ndarray, sigmas: Sequence[float], tensor_sigmas: Sequence[float]
) -> list[np.ndarray]:
    from scipy.ndimage import gaussian_laplace
    from skimage.feature import structure_tensor, structure_tensor_eigenvalues
    from skimage.filters import gaussian

    out = [x]
    out += [gaussian(x, sigma=s, mode="reflect", preserve_range=True) for s in sigmas]
    out += [(s * s) * gaussian_laplace(x, sigma=s, mode="reflect") for s in sigmas]
    for s in tensor_sigmas:
        tensor = structure_tensor(x, sigma=s, mode="reflect", order="rc")
        out += list(structure_tensor_eigenvalues(tensor))
    return out


def pixel_features(
    image: np.ndarray,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    tensor_sigmas: Sequence[float] = DEFAULT_TENSOR_SIGMAS,
) -> np.ndarray:
    """Per-pixel filter responses of a ``[C, H, W]`` image: ``[C * F, H, W]`` float32.

    ``F = 1 + 2 * len(sigmas) + 2 * len(tensor_sigmas)``; planes are named by
    :func:`pixel_feature_names`. The image should already be normalised (e.g. to [0, 1]).
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] < 1 or min(x.shape[1:]) < 1:
        raise ValueError(f"pixel_features expects a [C, H, W] image, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("pixel_features: the image has NaN or inf pixels")
    planes: list[np.ndarray] = []
    for c in range(x.shape[0]):
        planes += _channel_features(x[c].astype(np.float64), sigmas, tensor_sigmas)
    return np.stack(planes).astype(np.float32)
