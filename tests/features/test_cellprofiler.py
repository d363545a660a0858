"""CellProfiler-like features on a synthetic image with known nuclei, cytoplasm and texture."""

from __future__ import annotations

import numpy as np
import pytest

from chada.features.cellprofiler import cellprofiler_block_names, cellprofiler_features, haralick

CENTRES = [(16 + 32 * i, 16 + 32 * j) for i in range(3) for j in range(4)]  # 12 nuclei
RADIUS = 6


def _known_cells(size: int = 112) -> np.ndarray:
    """``[2, size, size]``: DAPI discs of radius 6 (0.8) and a cytoplasm marker ring of width ~6 (0.5)."""
    yy, xx = np.mgrid[:size, :size]
    d = np.full((size, size), np.inf)
    for cy, cx in CENTRES:
        d = np.minimum(d, np.hypot(yy - cy, xx - cx))
    dapi = np.where(d <= RADIUS, 0.8, 0.05).astype(np.float32)
    cyto = np.where((d > RADIUS) & (d <= 2 * RADIUS), 0.5, 0.1).astype(np.float32)
    cyto[d <= RADIUS] = 0.2
    return np.stack([dapi, cyto])


def _row(layout: str = "per_channel") -> dict[str, float]:
    x, names = cellprofiler_features([_known_cells()], layout=layout, nuclear_channel=0, return_names=True)
    return dict(zip(names, x[0]))


def test_known_nuclei_count_shape_and_compartments():
    r = _row()
    assert r["cell_count"] == len(CENTRES)
    assert r["area_median"] == pytest.approx(np.pi * RADIUS**2, rel=0.1)
    assert r["area_mad"] == pytest.approx(0.0, abs=1.0)  # identical discs
    assert r["eccentricity_median"] < 0.3
    assert r["form_factor_median"] > 0.8
    assert r["solidity_median"] > 0.9
    assert r["cell_area_median"] > r["area_median"] * 2  # nucleus + ring of width ~ radius
    # Per-compartment intensities of each channel.
    assert r["ch0_nuc_mean_median"] == pytest.approx(0.8, abs=1e-4)
    assert r["ch0_cyto_mean_median"] == pytest.approx(0.05, abs=1e-4)
    assert r["ch1_nuc_mean_median"] == pytest.approx(0.2, abs=1e-4)
    assert r["ch1_cyto_mean_median"] == pytest.approx(0.5, abs=0.02)
    assert r["ch1_nuc_minus_cyto_median"] < 0 < r["ch0_nuc_minus_cyto_median"]
    assert r["ch1_bg_mean"] == pytest.approx(0.1, abs=0.02)


def test_auto_nuclear_channel_finds_the_discs():
    x = cellprofiler_features([_known_cells()[::-1].copy()])  # DAPI last; "auto" still finds it
    names = [*cellprofiler_block_names()[0]]
    assert x[0, names.index("cell_count")] == len(CENTRES)


def test_layouts_lengths():
    g, k = cellprofiler_block_names()
    img = _known_cells()
    assert cellprofiler_features([img]).shape == (1, len(g) + 3 * len(k))
    assert cellprofiler_features([img], layout="per_channel").shape == (1, len(g) + 2 * len(k))
    assert cellprofiler_features([img[:1]]).shape == (1, len(g) + 3 * len(k))


def test_image_without_nuclei_gives_zeros_not_nan():
    x = cellprofiler_features([np.zeros((2, 48, 48), np.float32)])
    assert np.isfinite(x).all()
    assert x[0, 0] == 0


def test_haralick_tells_smooth_from_noisy():
    rng = np.random.default_rng(0)
    smooth = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    noisy = rng.random((64, 64)).astype(np.float32)
    contrast, _, homogeneity, _, correlation, _ = range(6)
    hs, hn = haralick(smooth), haralick(noisy)
    assert hs[contrast] < hn[contrast]
    assert hs[homogeneity] > hn[homogeneity]
    assert hs[correlation] > 0.9 and abs(hn[correlation]) < 0.1
    # Masked: only in-mask pixel pairs count.
    mask = np.zeros((64, 64), bool)
    mask[:, :32] = True
    assert np.isfinite(haralick(noisy, mask)).all()
