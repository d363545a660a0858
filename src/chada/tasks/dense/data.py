"""Where a dense task's pixels and masks come from: tiles of equal size with train/test splits.

Two sources:

- :func:`tile_bundled_nuclei`: the bundled 512 x 512 DSB2018 fluorescence image and its instance
  mask (:mod:`chada.data.bundled`), cut into ``tile`` x ``tile`` tiles. The image is split into two
  halves at ``x = W / 2`` (or ``y = H / 2``): tiles left of the cut are for training, tiles right of
  it for testing, so the two sets never share pixels. A nucleus that crosses the cut would still be
  in both halves; its pixels are marked :data:`IGNORE` on both sides (left out of the loss and of
  every score) instead of being moved to one side, which would need pixels of the other half, or
  called background, which would teach the probe that nucleus pixels are background. The nucleus
  is therefore in neither set. On the bundled image the vertical cut crosses 5 of the 125 nuclei.
- :func:`load_masked_manifest`: any manifest whose rows name a mask file (``mask_file``, and
  ``mask_names`` for a multi-plane file, as :func:`chada.data.synth.generate` writes). Each image is
  one tile; the manifest's ``split`` column says train or test, so images are not shared.

Images are normalised per source image (``normalize``, as ``chada embed`` does) before tiling, so a
tile's pixels do not depend on how the image was cut. Labels are 0 (background), 1 (foreground) and
:data:`IGNORE`. Each source keeps its instance map (connected components of a binary mask), used to
score objects by size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chada.errors import InputError

__all__ = ["IGNORE", "DenseData", "Source", "load_masked_manifest", "split_at_cut", "tile_bundled_nuclei"]

IGNORE = 255


@dataclass(eq=False)
class Source:
    """One source image: its id, its instance map ``[H, W]`` int32 (0 = background) and the pixels
    left out of training and scoring (``ignore [H, W]`` bool)."""

    image_id: str
    instances: np.ndarray
    ignore: np.ndarray


@dataclass(eq=False)
class DenseData:
    """The tiles of one dense task.

    Attributes:
        images: ``[N, C, T, T]`` float32, normalised.
        labels: ``[N, T, T]`` uint8: 0 background, 1 foreground, :data:`IGNORE`.
        split: ``[N]`` ``"train"`` / ``"test"``.
        groups: ``[N]`` index into ``sources`` of each tile's source image.
        origins: ``[N, 2]`` ``(y, x)`` of each tile in its source image.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    tile_ids: list[str]
    channel_names: list[str]
    groups: np.ndarray
    origins: np.ndarray
    sources: list[Source]
    mask_name: str = "foreground"
    notes: list[str] = field(default_factory=list)

    @property
    def tile(self) -> int:
        return int(self.images.shape[-1])

    def positions(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def split_at_cut(instances: np.ndarray, cut: int, axis: int = 1) -> tuple[np.ndarray, list[int]]:
    """Pixels to ignore so that no object is on both sides of ``cut`` along ``axis`` (1 = x).

    Returns ``(ignore [H, W] bool, ids of the objects that cross the cut)``.
    """
    if not 0 < cut < instances.shape[axis]:
        raise ValueError(
            f"cut {cut} must lie inside the image (size {instances.shape[axis]} along axis {axis})"
        )
    before = np.take(instances, np.arange(cut), axis=axis)
    after = np.take(instances, np.arange(cut, instances.shape[axis]), axis=axis)
    crossing = sorted(set(np.unique(before[before > 0]).tolist()) & set(np.unique(after[after > 0]).tolist()))
    return np.isin(instances, crossing), crossing


def _labels(instances: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    lab = (instances > 0).astype(np.uint8)
    lab[ignore] = IGNORE
    return lab


def tile_bundled_nuclei(tile: int = 32, axis: str = "x", normalize: str = "percentile") -> DenseData:
    """The bundled DSB2018 image (1 channel ``Nuclei``) tiled, train half | test half (module docstring)."""
    import tifffile

    from chada.data.bundled import asset_path
    from chada.data.normalize import normalize_channels

    if axis not in ("x", "y"):
        raise ValueError(f"split axis must be 'x' or 'y', got {axis!r}")
    raw = tifffile.imread(asset_path("dsb2018_img2d.tif"))
    instances = tifffile.imread(asset_path("dsb2018_mask2d.tif")).astype(np.int32)
    image = normalize_channels(raw[None].astype(np.float32), normalize)
    h, w = instances.shape
    ax = 1 if axis == "x" else 0
    cut = (w if ax == 1 else h) // 2
    if tile < 1 or cut % tile or h % tile or w % tile:
        raise ValueError(f"tile {tile} must divide the image ({h} x {w}) and its half ({cut})")
    ignore, crossing = split_at_cut(instances, cut, ax)
    labels = _labels(instances, ignore)
    tiles, labs, split, ids, origins = [], [], [], [], []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            tiles.append(image[:, y : y + tile, x : x + tile])
            labs.append(labels[y : y + tile, x : x + tile])
            split.append("train" if (x if ax == 1 else y) < cut else "test")
            ids.append(f"dsb2018_y{y:03d}_x{x:03d}")
            origins.append((y, x))
    n_obj = len(np.unique(instances[instances > 0]))
    note = (
        f"DSB2018 {h}x{w}, {n_obj} nuclei; {tile}-px tiles; train = {'left' if ax == 1 else 'top'} half, "
        f"test = {'right' if ax == 1 else 'bottom'} half; {len(crossing)} nuclei cross the cut and are ignored "
        f"on both sides ({int(ignore.sum())} px)"
    )
    return DenseData(
        name="dsb2018", images=np.stack(tiles).astype(np.float32), labels=np.stack(labs), split=np.array(split),
        tile_ids=ids, channel_names=["Nuclei"], groups=np.zeros(len(tiles), np.int64),
        origins=np.array(origins, np.int64), sources=[Source("dsb2018_img2d", instances, ignore)],
        mask_name="nucleus", notes=[note],
    )  # fmt: skip


def _mask_plane(row: dict[str, Any], root: Path, mask: str | None, who: str) -> np.ndarray:
    from chada.data.manifest import split_list
    from chada.data.readers import read_image

    rel = row.get("mask_file")
    if not isinstance(rel, str) or not rel:
        raise InputError(f"{who}: no mask_file; every image of a dense task needs its mask")
    path = Path(rel) if Path(rel).is_absolute() else root / rel
    if not path.exists():
        raise FileNotFoundError(f"{who}: mask file {path} does not exist")
    planes = read_image(path)
    names = split_list(row.get("mask_names")) if isinstance(row.get("mask_names"), str) else []
    if mask is None:
        if planes.shape[0] != 1:
            raise InputError(
                f"{who}: {path} has {planes.shape[0]} planes ({', '.join(names)}); name one with mask:"
            )
        return planes[0]
    if mask not in names:
        raise InputError(f"{who}: mask {mask!r} is not among its mask_names ({', '.join(names) or 'none'})")
    if len(names) != planes.shape[0]:
        raise InputError(f"{who}: {len(names)} mask_names for {planes.shape[0]} planes in {path}")
    return planes[names.index(mask)]


def _instances(plane: np.ndarray) -> np.ndarray:
    """An instance map: the plane itself when it holds instance ids, else its connected components."""
    from skimage.measure import label

    values = np.unique(plane)
    if len(values) > 2 or (len(values) == 2 and values[1] != 1):
        return plane.astype(np.int32)
    return label(plane > 0, connectivity=1).astype(np.int32)


def load_masked_manifest(
    manifest: str | os.PathLike,
    mask: str | None,
    *,
    datasets: list[str] | None = None,
    train_split: str = "train",
    test_split: str = "test",
    max_images: int | None = None,
    normalize: str = "percentile",
    root: str | os.PathLike | None = None,
) -> DenseData:
    """Images of a manifest with the mask plane ``mask`` of each row's ``mask_file`` (module docstring).

    Every kept image must have the same size and channel names. ``max_images`` caps the train and
    the test split each (a seeded draw).
    """
    from chada.data.manifest import load_manifest, read_row_image, row_channel_names
    from chada.data.normalize import normalize_channels

    path = Path(manifest)
    df = load_manifest(path)
    base = Path(root) if root is not None else path.parent
    if "mask_file" not in df.columns:
        raise InputError(f"{path}: no mask_file column; a dense task needs a mask per image")
    if datasets:
        df = df[df["dataset"].astype(str).isin([str(d) for d in datasets])]
    split_col = df["split"].astype(str) if "split" in df.columns else None
    if split_col is None:
        raise InputError(f"{path}: no split column; a dense task needs train and test images")
    picked = []
    for which in (train_split, test_split):
        pos = np.flatnonzero(split_col.to_numpy() == str(which))
        if not len(pos):
            raise InputError(
                f"{path}: no image with split {which!r}" + (f" in datasets {datasets}" if datasets else "")
            )
        if max_images is not None and len(pos) > max_images:
            pos = np.sort(np.random.default_rng(0).choice(pos, max_images, replace=False))
        picked += [(p, "train" if which == train_split else "test") for p in pos]
    images, labels, split, ids, sources, names0 = [], [], [], [], [], None
    for p, s in picked:
        row = df.iloc[p].to_dict()
        who = f"{path}: image {row.get('image_id')!r}"
        img = normalize_channels(read_row_image(row, base), normalize)
        names = row_channel_names(row)
        plane = _mask_plane(row, base, mask, who)
        if plane.shape != img.shape[1:]:
            raise InputError(
                f"{who}: mask is {plane.shape[0]}x{plane.shape[1]}, image {img.shape[1]}x{img.shape[2]}"
            )
        if names0 is None:
            names0, shape0 = names, img.shape
        elif names != names0 or img.shape != shape0:
            raise InputError(
                f"{who}: channels {names} / size {img.shape} differ from the first image's {names0} / {shape0}; "
                "a dense task needs one channel set and one size (choose datasets:)"
            )
        if img.shape[1] != img.shape[2]:
            raise InputError(
                f"{who}: the image is {img.shape[1]}x{img.shape[2]}; dense tasks take square images"
            )
        inst = _instances(plane)
        ignore = np.zeros(inst.shape, bool)
        images.append(img)
        labels.append(_labels(inst, ignore))
        split.append(s)
        ids.append(str(row.get("image_id")))
        sources.append(Source(str(row.get("image_id")), inst, ignore))
    n = len(images)
    return DenseData(
        name=path.stem, images=np.stack(images).astype(np.float32), labels=np.stack(labels), split=np.array(split),
        tile_ids=ids, channel_names=list(names0 or []), groups=np.arange(n), origins=np.zeros((n, 2), np.int64),
        sources=sources, mask_name=mask or "mask",
        notes=[f"{path.name}: {n} images ({', '.join(datasets) if datasets else 'all datasets'}), mask {mask!r}"],
    )  # fmt: skip
