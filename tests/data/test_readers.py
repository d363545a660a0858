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
    np.testing.assert_array_equal(
        read_image(tmp_path / "rgb.png"), np.moveaxis(rgb, -1, 0).astype(np.float32)
    )
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
    ms = [
        {"version": "0.4" if zarr_format == 2 else "0.5", "name": "img", "axes": axes, "datasets": datasets}
    ]
    root.attrs.update(
        {"multiscales": ms} if zarr_format == 2 else {"ome": {"version": "0.5", "multiscales": ms}}
    )
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


# ------------------------------------------------------------------------------ NaN / inf policy
def test_nan_pixels_are_an_error_naming_image_channel_and_file(tmp_path):
    from chada.data.readers import NonFinitePixelError, check_finite_pixels

    a = _chw(3).astype(np.float32)
    a[1, 2, 3] = np.nan
    a[2, 0, 0] = np.inf
    a[2, 0, 1] = -np.inf
    tifffile.imwrite(tmp_path / "n.tif", a, photometric="minisblack", metadata={"axes": "CYX"})
    with pytest.raises(NonFinitePixelError, match="n.tif"):
        read_image(tmp_path / "n.tif")
    with pytest.raises(NonFinitePixelError) as info:
        check_finite_pixels(a, image_id="img9", channel_names=["DAPI", "Actin", "Mito"], files=["x.tif"])
    msg = str(info.value)
    assert "'img9'" in msg and "x.tif" in msg
    assert "channel 1 'Actin': 1 NaN pixel(s)" in msg and "channel 2 'Mito': 2 inf pixel(s)" in msg
    assert "channel 0" not in msg
    # per-channel files: each channel names its own file
    for k in range(3):
        tifffile.imwrite(tmp_path / f"c{k}.tif", a[k])
    with pytest.raises(NonFinitePixelError, match=r"channel 1: 1 NaN pixel\(s\) in \S*c1.tif"):
        read_channels([tmp_path / f"c{k}.tif" for k in range(3)])
    assert np.isnan(read_image(tmp_path / "n.tif", nan_policy="keep")[1, 2, 3])


def test_nan_replace_uses_the_finite_median_or_nan_fill_and_warns_per_image():
    from chada.data.readers import NonFinitePixelWarning, check_finite_pixels

    a = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    a[0, 0, 0] = np.nan
    a[1, 1, 1] = np.inf
    with pytest.warns(NonFinitePixelWarning, match=r"'im3'.*channel 0 'A' with 8.*channel 1 'B' with 24"):
        out = check_finite_pixels(a, image_id="im3", channel_names=["A", "B"], nan_policy="replace")
    assert out[0, 0, 0] == np.median(a[0][np.isfinite(a[0])]) == 8.0
    assert out[1, 1, 1] == np.median(a[1][np.isfinite(a[1])]) == 24.0
    assert np.isnan(a[0, 0, 0])  # the input is not modified
    with pytest.warns(NonFinitePixelWarning, match="nan_fill"):
        out = check_finite_pixels(a, nan_policy="replace", nan_fill=-1.0)
    assert out[0, 0, 0] == -1.0 and out[1, 1, 1] == -1.0
    all_nan = np.full((1, 2, 2), np.nan, np.float32)
    with pytest.warns(NonFinitePixelWarning):
        assert (check_finite_pixels(all_nan, nan_policy="replace") == 0).all()  # no finite pixel: 0
    clean = np.ones((1, 2, 2), np.float32)
    assert check_finite_pixels(clean) is clean  # nothing to do, no copy
    with pytest.raises(ValueError, match="nan_policy"):
        check_finite_pixels(clean, nan_policy="ignore")


def test_one_nan_no_longer_zeroes_the_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 10, (2, 32, 32)).astype(np.float32)
    x[0, 5, 5] = np.nan
    x[1, 6, 6] = np.inf
    for method in ("percentile", "minmax"):
        out = normalize_channels(x, method)
        assert np.isnan(out[0, 5, 5]) and np.isnan(out).sum() == 1
        assert out[1, 6, 6] == 1.0
        for c in range(2):
            finite = np.isfinite(x[c])
            assert out[c][finite].max() == pytest.approx(1.0) and out[c][finite].mean() > 0.2


def test_float64_values_beyond_float32_are_an_error(tmp_path):
    np.save(tmp_path / "big.npy", np.array([[1.0, 1e300]]))
    with pytest.raises(ImageReadError, match="do not fit float32"):
        read_image(tmp_path / "big.npy")


def test_directory_and_corrupt_files_name_the_file(tmp_path):
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(ImageReadError, match=r"d.tif: is a directory"):
        read_image(tmp_path / "d.tif")
    (tmp_path / "t.tif").write_bytes(b"II*\x00" + bytes(range(256)))
    with pytest.raises(ImageReadError, match=r"t.tif: cannot read image"):
        read_image(tmp_path / "t.tif")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
