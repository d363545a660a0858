"""Tissue-structure features: real IHC image (scikit-image) and a synthetic lattice of nuclei."""

from __future__ import annotations

import numpy as np
import pytest

from chada.features.tissue import TISSUE_NAMES, tissue_features


def _ihc_crop() -> np.ndarray:
    from skimage import data

    rgb = data.immunohistochemistry()[:160, :160]  # bundled with scikit-image: no network
    return np.moveaxis(rgb.astype(np.float32) / 255.0, -1, 0)


def _lattice(spacing: int = 16, size: int = 128, radius: int = 4) -> np.ndarray:
    """RGB H&E-like image: purple (haematoxylin) discs on a regular grid, pink background."""
    yy, xx = np.mgrid[:size, :size]
    centres = [
        (spacing // 2 + spacing * i, spacing // 2 + spacing * j)
        for i in range(size // spacing)
        for j in range(size // spacing)
    ]
    nuc = np.zeros((size, size), bool)
    for cy, cx in centres:
        nuc |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    pink = np.array([0.95, 0.75, 0.85], np.float32)
    purple = np.array([0.30, 0.20, 0.55], np.float32)
    rgb = np.where(nuc[..., None], purple, pink)
    return np.moveaxis(rgb, -1, 0).astype(np.float32), len(centres)


def test_real_ihc_image():
    x, names = tissue_features([_ihc_crop()], return_names=True)
    assert names == TISSUE_NAMES and x.shape == (1, len(names))
    r = dict(zip(names, x[0]))
    assert np.isfinite(x).all()
    assert r["nuclei_count"] > 5
    assert r["stain0_mean"] > 0  # haematoxylin present
    assert r["stain2_mean"] > 0  # DAB present
    assert r["nn_mean"] > 0 and r["del_mean"] >= r["nn_mean"]
    assert 2.0 < r["del_degree"] < 7.0  # planar triangulation: mean degree < 6 + boundary effects


def test_lattice_structure():
    img, n = _lattice()
    r = dict(zip(TISSUE_NAMES, tissue_features([img])[0]))
    assert r["nuclei_count"] == n
    assert r["nn_mean"] == pytest.approx(16.0, abs=0.5)
    assert r["nn_std"] == pytest.approx(0.0, abs=0.5)
    assert r["del_median"] == pytest.approx(16.0, abs=0.5)  # grid edges (diagonals are longer)
    assert r["clark_evans"] > 1.5  # regular, far from Poisson (1.0)
    assert r["stain0_mean"] > 0


def test_non_rgb_and_degenerate_inputs():
    img, _ = _lattice()
    for c in (1, 2, 5, 10):
        x = tissue_features([np.repeat(img[:1], c, axis=0)])
        assert x.shape == (1, len(TISSUE_NAMES)) and np.isfinite(x).all()
    with pytest.raises(ValueError, match="RGB"):
        tissue_features([img[:2]], stains="hed")
    x = tissue_features([np.ones((3, 32, 32), np.float32)])  # blank slide: no nuclei
    assert np.isfinite(x).all() and x[0, TISSUE_NAMES.index("nuclei_count")] == 0
