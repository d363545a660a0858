"""Nuclear segmentation: a real annotated image (bundled DSB 2018 image) and synthetic blobs."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest

from chada.features.nuclei import (
    count_nuclei,
    nuclear_index_from_names,
    nuclei_density,
    pick_nuclear_channel,
    segment_nuclei,
)

ASSETS = files("chada") / "assets"


def _dsb() -> tuple[np.ndarray, np.ndarray]:
    tifffile = pytest.importorskip("tifffile")
    img_path, mask_path = ASSETS / "dsb2018_img2d.tif", ASSETS / "dsb2018_mask2d.tif"
    assert img_path.is_file() and mask_path.is_file(), (
        "bundled Data Science Bowl image missing from chada/assets (see chada/assets/README.md)"
    )
    raw = tifffile.imread(str(img_path)).astype(np.float32)
    mask = tifffile.imread(str(mask_path))
    lo, hi = np.percentile(raw, [1.0, 99.8])
    return np.clip((raw - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), mask


def _blobs(centres, size: int = 96, radius: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    for cy, cx in centres:
        img = np.maximum(img, ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.float32))
    return img


def test_dsb_mask_has_125_nuclei():
    # The label ids go up to 183 but only 125 distinct nuclei are annotated; the count test uses 125.
    _, mask = _dsb()
    ids = np.unique(mask)
    assert ids.max() == 183
    assert len(ids[ids > 0]) == 125


@pytest.mark.parametrize("size", [None, 224])
def test_counts_real_nuclei_within_15_percent(size):
    img, mask = _dsb()
    truth = len(np.unique(mask)) - 1
    if size is not None:
        from skimage.transform import resize

        img = resize(img, (size, size), anti_aliasing=True).astype(np.float32)
    n = count_nuclei(img)
    assert abs(n - truth) <= 0.15 * truth, f"counted {n} nuclei, annotation has {truth}"


def test_segmentation_overlaps_annotation():
    img, mask = _dsb()
    labels = segment_nuclei(img)
    fg, truth = labels > 0, mask > 0
    iou = np.logical_and(fg, truth).sum() / np.logical_or(fg, truth).sum()
    assert iou > 0.7


def test_separated_blobs_are_counted_exactly():
    centres = [(12 + 20 * i, 12 + 20 * j) for i in range(4) for j in range(4)]
    img = _blobs(centres) * 0.8 + 0.05
    labels = segment_nuclei(img)
    assert labels.max() == 16
    assert sorted(np.unique(labels)) == list(range(17))  # consecutive ids


def test_touching_pair_is_split():
    img = _blobs([(48, 42), (48, 54)], radius=7.0)  # two discs overlapping a little
    assert count_nuclei(img) == 2


def test_constant_and_empty_channels_have_no_nuclei():
    assert count_nuclei(np.zeros((32, 32), np.float32)) == 0
    assert count_nuclei(np.full((32, 32), 0.5, np.float32)) == 0


def test_nan_refused():
    img = np.zeros((32, 32), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment_nuclei(img)


def test_density_and_channel_choice():
    assert nuclei_density(10, (100, 100)) == pytest.approx(10.0)
    assert nuclei_density(10, (200, 100)) == pytest.approx(5.0)
    assert nuclear_index_from_names(["Actin", "DAPI", "Mito"]) == 1
    assert nuclear_index_from_names(["Hoechst 33342"]) == 0
    assert nuclear_index_from_names(["Actin", "Mito"]) is None
    rng = np.random.default_rng(0)
    blobs = _blobs([(20, 20), (60, 60), (30, 70)])
    noise = rng.random((96, 96)).astype(np.float32)
    assert pick_nuclear_channel(np.stack([noise, blobs, noise * 0.5]), "auto") == 1
    assert pick_nuclear_channel(np.stack([blobs, noise]), -1) == 1
    with pytest.raises(ValueError, match="out of range"):
        pick_nuclear_channel(np.stack([blobs, noise]), 2)
