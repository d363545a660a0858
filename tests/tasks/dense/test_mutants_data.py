"""The dense task's tiles and masks (chada.tasks.dense.data): the bundled tiling along both axes, masked
manifests (caps, filters, every refusal and its message) and instance maps, on small files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from chada.data.manifest import write_manifest
from chada.errors import InputError
from chada.tasks.dense.data import IGNORE, _instances, load_masked_manifest, split_at_cut, tile_bundled_nuclei


def test_split_at_cut_along_y_and_its_bounds() -> None:
    inst = np.zeros((6, 4), np.int32)
    inst[0:2, 0] = 3  # above the cut at y = 3
    inst[2:5, 2] = 7  # crosses it
    inst[1:4, 3] = 5  # crosses it
    inst[4:6, 0] = 9  # below
    ignore, crossing = split_at_cut(inst, 3, axis=0)
    assert crossing == [5, 7] and (ignore == np.isin(inst, [5, 7])).all()
    assert split_at_cut(inst, 1, axis=0)[1] == [3]
    for cut in (0, 6):
        with pytest.raises(ValueError) as info:
            split_at_cut(inst, cut, axis=0)
        assert str(info.value) == f"cut {cut} must lie inside the image (size 6 along axis 0)"
    assert split_at_cut(inst, 3)[1] == []  # axis 1 by default: nothing crosses x = 3


def test_bundled_tiling_along_y() -> None:
    d = tile_bundled_nuclei(64, "y", "minmax")
    assert d.notes == ["DSB2018 512x512, 125 nuclei; 64-px tiles; train = top half, test = bottom half; 6 nuclei "
                       "cross the cut and are ignored on both sides (2638 px)"]  # fmt: skip
    assert (
        d.tile_ids[:2] == ["dsb2018_y000_x000", "dsb2018_y000_x064"] and d.tile_ids[-1] == "dsb2018_y448_x448"
    )
    assert d.origins.tolist()[:2] == [[0, 0], [0, 64]] and d.origins.dtype == np.int64
    assert ((d.origins[:, 0] < 256) == (d.split == "train")).all()
    assert d.groups.tolist() == [0] * 64 and d.groups.dtype == np.int64
    assert (d.name, d.channel_names, d.mask_name, d.tile) == ("dsb2018", ["Nuclei"], "nucleus", 64)
    assert d.images.shape == (64, 1, 64, 64) and d.images.dtype == np.float32
    assert d.images.min() == 0.0 and d.images.max() == 1.0  # minmax reached the normaliser
    assert d.sources[0].image_id == "dsb2018_img2d" and d.sources[0].instances.dtype == np.int32
    assert (d.labels[d.split == "train"] == IGNORE).any()
    x = tile_bundled_nuclei(64)
    assert "train = left half, test = right half; 5 nuclei" in x.notes[0]
    assert not np.array_equal(tile_bundled_nuclei(64, "x", "none").images, x.images)


def test_bundled_tiling_refusals() -> None:
    with pytest.raises(ValueError) as info:
        tile_bundled_nuclei(32, "z")
    assert str(info.value) == "split axis must be 'x' or 'y', got 'z'"
    for tile in (0, 96, 512):
        with pytest.raises(ValueError) as info:
            tile_bundled_nuclei(tile)
        assert str(info.value) == f"tile {tile} must divide the image (512 x 512) and its half (256)"
    assert tile_bundled_nuclei(256).images.shape[0] == 4


def test_instance_maps() -> None:
    binary = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], np.uint8)  # diagonal pixels are separate objects
    inst = _instances(binary)
    assert inst.dtype == np.int32 and inst.max() == 3 and inst[1, 1] == inst[2, 1] == inst[2, 0]
    ids = np.array([[0, 2], [2, 0]], np.uint16)  # one id other than 1: ids as they are
    assert _instances(ids).tolist() == [[0, 2], [2, 0]]
    many = np.array([[0, 1], [3, 3]])
    assert _instances(many).tolist() == [[0, 1], [3, 3]]
    assert _instances(np.zeros((2, 2))).tolist() == [[0, 0], [0, 0]]
    assert _instances(np.ones((2, 2))).tolist() == [[1, 1], [1, 1]]


def _manifest(root: Path, n_train: int = 3, n_test: int = 2, **change) -> Path:
    rows = []
    for i in range(n_train + n_test):
        img = np.full((2, 8, 8), 10.0 * i, np.float32)
        img[:, 0, 0] = 0.0
        mask = np.zeros((2, 8, 8), np.uint8)
        mask[0, 1:3, 1:3] = 1
        mask[1, 5:7, 5:7] = 1
        mask[1, 0, 7] = 1
        tifffile.imwrite(root / f"im{i}.tif", img, photometric="minisblack", metadata={"axes": "CYX"})
        tifffile.imwrite(root / f"m{i}.tif", mask, photometric="minisblack", metadata={"axes": "CYX"})
        rows.append(dict(image_id=f"im{i}", dataset="a" if i % 2 == 0 else "b", file=f"im{i}.tif",
                         channel_names="DNA;RNA", split="train" if i < n_train else "test", mask_file=f"m{i}.tif",
                         mask_names="nucleus;cell"))  # fmt: skip
    df = pd.DataFrame(rows)
    for key, value in change.items():
        df[key] = value
    return write_manifest(df, root / "manifest.csv")


def test_masked_manifest_reads_the_named_plane(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    d = load_masked_manifest(m, "cell", normalize="none")
    assert d.split.tolist() == ["train"] * 3 + ["test"] * 2 and d.tile_ids == [f"im{i}" for i in range(5)]
    assert d.labels.shape == (5, 8, 8) and int(d.labels[0].sum()) == 5 and d.labels[0, 0, 7] == 1
    assert d.sources[0].instances.max() == 2  # two separate blobs of the cell plane
    assert (d.name, d.mask_name, d.channel_names) == ("manifest", "cell", ["DNA", "RNA"])
    assert d.groups.tolist() == [0, 1, 2, 3, 4] and d.origins.shape == (5, 2) and not d.origins.any()
    assert d.images.dtype == np.float32 and d.images[2, 0, 1, 1] == 20.0  # not normalised
    assert d.notes == ["manifest.csv: 5 images (all datasets), mask 'cell'"]
    p = load_masked_manifest(m, "nucleus")
    assert int(p.labels[0].sum()) == 4 and p.images.max() <= 1.0
    d = load_masked_manifest(m, "cell", datasets=["a"])
    assert d.tile_ids == ["im0", "im2", "im4"] and d.notes[0] == "manifest.csv: 3 images (a), mask 'cell'"


def test_masked_manifest_caps_each_split_with_a_seeded_draw(tmp_path: Path) -> None:
    m = _manifest(tmp_path, n_train=6, n_test=4)
    d = load_masked_manifest(m, "cell", max_images=2)
    train = np.sort(np.random.default_rng(0).choice(np.arange(6), 2, replace=False))
    test = np.sort(np.random.default_rng(0).choice(np.arange(6, 10), 2, replace=False))
    assert d.tile_ids == [f"im{i}" for i in [*train, *test]]
    assert len(load_masked_manifest(m, "cell", max_images=4).tile_ids) == 8
    assert len(load_masked_manifest(m, "cell", max_images=6).tile_ids) == 10


def test_masked_manifest_other_split_names_and_root(tmp_path: Path) -> None:
    m = _manifest(tmp_path, split=["tr", "tr", "te", "te", "x"])
    d = load_masked_manifest(m, "cell", train_split="tr", test_split="te")
    assert d.split.tolist() == ["train", "train", "test", "test"]
    sub = tmp_path / "sub"
    sub.mkdir()
    moved = write_manifest(pd.read_csv(m), sub / "moved.csv")
    assert (
        load_masked_manifest(moved, "cell", train_split="tr", test_split="te", root=tmp_path).name == "moved"
    )


@pytest.mark.parametrize("change,message", [
    (dict(mask_file=None), "{m}: no mask_file column; a dense task needs a mask per image"),
    (dict(split=None), "{m}: no split column; a dense task needs train and test images"),
    (dict(split="train"), "{m}: no image with split 'test'"),
    (dict(mask_file=""), "{m}: image 'im0': no mask_file; every image of a dense task needs its mask"),
    (dict(mask_file="nope.tif"), "{m}: image 'im0': mask file {root}/nope.tif does not exist"),
    (dict(mask_names="nucleus;other"), "{m}: image 'im0': mask 'cell' is not among its mask_names (nucleus, other)"),
    (dict(mask_names=""), "{m}: image 'im0': mask 'cell' is not among its mask_names (none)"),
    (dict(mask_names="a;cell;b"), "{m}: image 'im0': 3 mask_names for 2 planes in {root}/m0.tif"),
])  # fmt: skip
def test_masked_manifest_refusals(tmp_path: Path, change: dict, message: str) -> None:
    drop = [k for k, v in change.items() if v is None]
    m = _manifest(tmp_path, **{k: v for k, v in change.items() if v is not None})
    if drop:
        write_manifest(pd.read_csv(m).drop(columns=drop), m)
    with pytest.raises((InputError, FileNotFoundError)) as info:
        load_masked_manifest(m, "cell")
    assert str(info.value) == message.format(m=m, root=tmp_path)


def test_masked_manifest_refusals_of_shapes(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    with pytest.raises(InputError) as info:
        load_masked_manifest(m, "cell", datasets=["c"])
    assert str(info.value) == f"{m}: no image with split 'train' in datasets ['c']"
    with pytest.raises(InputError) as info:
        load_masked_manifest(m, None)
    assert (
        str(info.value)
        == f"{m}: image 'im0': {tmp_path / 'm0.tif'} has 2 planes (nucleus, cell); name one with mask:"
    )
    tifffile.imwrite(tmp_path / "m1.tif", np.zeros((2, 8, 6), np.uint8), photometric="minisblack",
                     metadata={"axes": "CYX"})  # fmt: skip
    with pytest.raises(InputError) as info:
        load_masked_manifest(m, "cell")
    assert str(info.value) == f"{m}: image 'im1': mask is 8x6, image 8x8"
    m = _manifest(tmp_path, channel_names=["DNA;RNA", "DNA;ER", "DNA;RNA", "DNA;RNA", "DNA;RNA"])
    with pytest.raises(InputError) as info:
        load_masked_manifest(m, "cell")
    assert str(info.value) == (
        f"{m}: image 'im1': channels ['DNA', 'ER'] / size (2, 8, 8) differ from the first image's ['DNA', 'RNA'] / "
        "(2, 8, 8); a dense task needs one channel set and one size (choose datasets:)"
    )
    for i in range(5):
        tifffile.imwrite(tmp_path / f"im{i}.tif", np.ones((2, 8, 6), np.float32), photometric="minisblack",
                         metadata={"axes": "CYX"})  # fmt: skip
        tifffile.imwrite(tmp_path / f"m{i}.tif", np.ones((2, 8, 6), np.uint8), photometric="minisblack",
                         metadata={"axes": "CYX"})  # fmt: skip
    with pytest.raises(InputError) as info:
        load_masked_manifest(m, "cell")
    assert str(info.value) == f"{m}: image 'im0': the image is 8x6; dense tasks take square images"


def test_single_plane_mask_and_absolute_path(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    df = pd.read_csv(m)
    for i in range(5):
        plane = np.zeros((8, 8), np.uint8)
        plane[2:4, 2:4] = 1
        tifffile.imwrite(tmp_path / f"s{i}.tif", plane)
    df["mask_file"] = [str(tmp_path / f"s{i}.tif") for i in range(5)]
    df = df.drop(columns="mask_names")
    write_manifest(df, m)
    d = load_masked_manifest(m, None)
    assert d.mask_name == "mask" and int(d.labels[0].sum()) == 4


def test_masked_manifest_sources_keep_their_image_ids(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    d = load_masked_manifest(m, "cell")
    assert [s.image_id for s in d.sources] == [f"im{i}" for i in range(5)]  # the examples' figure names them
    d = load_masked_manifest(m, "cell", datasets=["a", "b"])
    assert d.notes == ["manifest.csv: 5 images (a, b), mask 'cell'"]
