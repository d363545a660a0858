"""Readers (TIFF, OME-TIFF, PNG/JPEG 8/16 bit, OME-Zarr v2/v3, npy) and per-channel normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from chada.data.normalize import Normalizer, normalize_channels
from chada.data.readers import ImageReadError, read_channels, read_image, to_chw


def _chw(c: int = 3, h: int = 16, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, (c, h, w)).astype(np.uint16)


def test_tiff_single_page(tmp_path):
    a = _chw(1)[0]
    tifffile.imwrite(tmp_path / "a.tif", a)
    out = read_image(tmp_path / "a.tif")
    assert out.shape == (1, 16, 20) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], a.astype(np.float32))


def test_tiff_multipage_chw(tmp_path):
    a = _chw(5)
    tifffile.imwrite(tmp_path / "m.tiff", a)  # one page per channel
    out = read_image(tmp_path / "m.tiff")
    np.testing.assert_array_equal(out, a.astype(np.float32))
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as tw:
        for plane in a:
            tw.write(plane)
    np.testing.assert_array_equal(read_image(pages), a.astype(np.float32))


def test_tiff_hwc_rule(tmp_path):
    a = _chw(3)
    tifffile.imwrite(tmp_path / "hwc.tif", np.moveaxis(a, 0, -1), photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "hwc.tif"), a.astype(np.float32))


def test_ome_tiff_axes(tmp_path):
    a = _chw(4)
    tifffile.imwrite(tmp_path / "x.ome.tif", a[None, :, None], metadata={"axes": "TCZYX"})
    out = read_image(tmp_path / "x.ome.tif")
    np.testing.assert_array_equal(out, a.astype(np.float32))
    # A real z-stack is not a set of channels.
    tifffile.imwrite(tmp_path / "z.ome.tif", np.stack([a, a], 1), metadata={"axes": "CZYX"})
    with pytest.raises(ImageReadError, match="not channels"):
        read_image(tmp_path / "z.ome.tif")


def test_png_8_16_bit_grey_rgb_and_jpeg(tmp_path):
    g8 = np.random.default_rng(1).integers(0, 255, (16, 20)).astype(np.uint8)
    Image.fromarray(g8).save(tmp_path / "g8.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g8.png")[0], g8.astype(np.float32))
    g16 = np.random.default_rng(2).integers(0, 65535, (16, 20)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out16 = read_image(tmp_path / "g16.png")
    assert out16.shape == (1, 16, 20)
    np.testing.assert_array_equal(out16[0], g16.astype(np.float32))
    rgb = np.random.default_rng(3).integers(0, 255, (16, 20, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), np.moveaxis(rgb, -1, 0).astype(np.float32))
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    assert read_image(tmp_path / "rgb.jpg").shape == (3, 16, 20)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_first_level(tmp_path, zarr_format):
    import zarr

    a = _chw(3, 32, 24)
    path = tmp_path / "img.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = [
        {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]},
        {"path": "s1", "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}]},
    ]
    ms = [{"version": "0.4" if zarr_format == 2 else "0.5", "name": "img", "axes": axes, "datasets": datasets}]
    root.attrs.update({"multiscales": ms} if zarr_format == 2 else {"ome": {"version": "0.5", "multiscales": ms}})
    root.create_array("s0", data=a, chunks=(1, 16, 16))
    root.create_array("s1", data=a[:, ::2, ::2], chunks=(1, 16, 12))
    out = read_image(path)
    np.testing.assert_array_equal(out, a.astype(np.float32))


def test_npy_and_errors(tmp_path):
    a = _chw(2).astype(np.float64)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), a.astype(np.float32))
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "bad.tif")
    (tmp_path / "x.bmpx").write_bytes(b"")
    with pytest.raises(ImageReadError, match="unsupported"):
        read_image(tmp_path / "x.bmpx")


def test_read_channels_stacks_and_checks_sizes(tmp_path):
    a = _chw(2)
    for i in range(2):
        tifffile.imwrite(tmp_path / f"c{i}.tif", a[i])
    out = read_channels([tmp_path / "c0.tif", tmp_path / "c1.tif"])
    np.testing.assert_array_equal(out, a.astype(np.float32))
    tifffile.imwrite(tmp_path / "small.tif", a[0, :8])
    with pytest.raises(ImageReadError, match="differ in H/W"):
        read_channels([tmp_path / "c0.tif", tmp_path / "small.tif"])


def test_to_chw_shape_rule():
    assert to_chw(np.zeros((5, 64, 64))).shape == (5, 64, 64)
    assert to_chw(np.zeros((64, 64, 5))).shape == (5, 64, 64)
    assert to_chw(np.zeros((64, 48))).shape == (1, 64, 48)
    assert to_chw(np.zeros((1, 1, 3, 8, 8))).shape == (3, 8, 8)


def test_normalize_methods_and_constant_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 10, (3, 32, 32)).astype(np.float32)
    x[0, 0, 0] = 1e6  # hot pixel: percentile clipping must ignore it
    x[2] = 7.0  # constant channel
    p = normalize_channels(x)
    assert p.dtype == np.float32 and np.isfinite(p).all()
    assert p.min() >= 0 and p.max() <= 1
    assert p[0].mean() > 0.3  # the hot pixel did not squash the channel
    np.testing.assert_array_equal(p[2], 0)
    m = normalize_channels(torch.from_numpy(x), "minmax")
    assert isinstance(m, torch.Tensor) and float(m[1].min()) == 0 and float(m[1].max()) == 1
    assert float(m[0].mean()) < 0.01  # minmax is dominated by the hot pixel, by design
    n = Normalizer("none")(x)
    np.testing.assert_array_equal(n, x)
    with pytest.raises(ValueError):
        normalize_channels(x, "zscore")
