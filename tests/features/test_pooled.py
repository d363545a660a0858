"""Shortcut and hand-made features: fixed length for 1..10 channels, channel-order invariance, NaN refusal."""

from __future__ import annotations

import numpy as np
import pytest

from chada.features import (
    SHORTCUT_NAMES,
    cellprofiler_features,
    handmade_features,
    shortcut_features,
    tissue_features,
)
from chada.features.handmade import handmade_feature_names
from chada.features.intensity import channel_histograms, channel_stats, check_image

EXTRACTORS = {
    "shortcut": lambda ims: shortcut_features(ims)[0],
    "handmade": handmade_features,
    "cellprofiler": cellprofiler_features,
    "tissue": tissue_features,
}


def _cells(channels: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """``[channels, size, size]`` image: channel 0 holds bright discs (nuclei), others noise + haze."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    nuc = np.zeros((size, size), np.float32)
    for cy, cx in rng.uniform(8, size - 8, (6, 2)):
        nuc = np.maximum(nuc, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2)).astype(np.float32))
    planes = [nuc * 0.9 + 0.05 * rng.random((size, size), dtype=np.float32)]
    for c in range(1, channels):
        planes.append((0.2 + 0.1 * c / channels) * rng.random((size, size), dtype=np.float32) + 0.3 * nuc)
    return np.stack(planes)


@pytest.mark.parametrize("kind", sorted(EXTRACTORS))
def test_fixed_length_for_1_to_10_channels(kind):
    images = [_cells(c, seed=c) for c in range(1, 11)]
    x = EXTRACTORS[kind](images)
    assert x.shape[0] == 10
    assert np.isfinite(x).all()
    # Mixed channel counts in one call and one at a time give the same rows.
    single = EXTRACTORS[kind]([images[4]])
    np.testing.assert_allclose(single[0], x[4])


@pytest.mark.parametrize("kind", ["shortcut", "handmade", "cellprofiler"])
def test_pooled_layout_ignores_channel_order(kind):
    img = _cells(5, seed=3)
    perm = img[[3, 0, 4, 2, 1]]
    a, b = EXTRACTORS[kind]([img, perm])
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", sorted(EXTRACTORS))
def test_nan_refused_with_image_name(kind):
    good = _cells(2)
    bad = good.copy()
    bad[1, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"image 1: contains NaN"):
        EXTRACTORS[kind]([good, bad])


@pytest.mark.parametrize("kind", sorted(EXTRACTORS))
def test_channel_count_limits(kind):
    with pytest.raises(ValueError, match="1 to 10"):
        EXTRACTORS[kind]([np.zeros((11, 16, 16), np.float32)])
    with pytest.raises(ValueError, match="1 to 10"):
        EXTRACTORS[kind]([np.zeros((0, 16, 16), np.float32)])


def test_names_in_errors_come_from_caller():
    bad = _cells(1)
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="plate7_A01"):
        handmade_features([bad], names=["plate7_A01"])


def test_shortcut_columns_and_values():
    img = _cells(3)
    x, names = shortcut_features([img])
    assert names == SHORTCUT_NAMES and x.shape == (1, len(names))
    row = dict(zip(names, x[0]))
    assert row["n_channels"] == 3
    assert row["cell_count"] == 6  # six well-separated Gaussian nuclei in channel 0
    assert row["cell_density"] == pytest.approx(6 * 1e4 / 64**2)
    assert row["mean_intensity"] == pytest.approx(float(img.mean(axis=(1, 2)).mean()), rel=1e-5)
    assert row["mean_chmean"] == pytest.approx(row["mean_intensity"])
    assert row["p99_chmax"] == pytest.approx(max(np.percentile(img[c], 99) for c in range(3)), abs=2e-3)


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(1)
    img = check_image(np.stack([rng.random((40, 50)), rng.normal(0.3, 0.1, (40, 50)).clip(0, 1)]))
    s = channel_stats(img)
    flat = img.reshape(2, -1)
    np.testing.assert_allclose(s[:, 0], flat.mean(1), rtol=1e-6)
    np.testing.assert_allclose(s[:, 1], flat.std(1), rtol=1e-5)
    span = flat.max(1) - flat.min(1)
    err = np.abs(s[:, 2:5] - np.percentile(flat, [1, 50, 99], axis=1).T)
    assert (err <= span[:, None] / 1024 + 1e-7).all()
    from skimage.filters import threshold_otsu

    for c in range(2):
        assert s[c, 5] == pytest.approx(float((img[c] > threshold_otsu(img[c])).mean()))
    h = channel_histograms(img, bins=8)
    np.testing.assert_allclose(h.sum(1), 1.0)
    np.testing.assert_allclose(h[0], np.histogram(img[0], bins=8, range=(0, 1))[0] / img[0].size)


def test_per_channel_layout():
    images = [_cells(4, seed=s) for s in range(2)]
    x, names = handmade_features(images, layout="per_channel", return_names=True)
    pooled, pooled_names = handmade_features(images, return_names=True)
    assert x.shape == (2, len(names)) and names == handmade_feature_names("per_channel", 4)
    assert pooled.shape[1] == len(pooled_names)
    # Per-channel blocks hold the per-channel values the pooled layout summarises.
    mean_cols = [names.index(f"ch{c}_mean") for c in range(4)]
    j = pooled_names.index("mean_chmax")
    assert pooled[0, j] == pytest.approx(x[0, mean_cols].max())
    with pytest.raises(ValueError, match="fixed channel set"):
        handmade_features([_cells(2), _cells(3)], layout="per_channel")
    with pytest.raises(ValueError, match="unknown layout"):
        handmade_features(images, layout="stacked")
