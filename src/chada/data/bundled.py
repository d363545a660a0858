"""Small REAL microscopy material that ships inside the package, turned into manifest datasets.

Assets (``chada/assets/``, sources and licences in ``assets/README.md`` and ``data/README.md``):

- ``dsb2018_img2d.tif`` / ``dsb2018_mask2d.tif``: a 512x512 fluorescence nuclei image from the 2018
  Data Science Bowl (BBBC038, CC0) with its instance mask (125 nuclei, label ids up to 183), as shipped in the stardist 0.9.2
  wheel (BSD-3). Stored as zlib-compressed uint16 TIFF, pixel values unchanged.
- ``skimage_ihc.png``: scikit-image's ``ihc.png`` (immunohistochemistry of colonic glands, FHL2 in DAB
  with haematoxylin counterstain; CMMI; "no known copyright restrictions"), byte-identical copy.

:func:`prepare` derives two datasets (weak labels, named for exactly what they are):

- ``dsb2018_nuclei`` (1 channel ``Nuclei``): a ``crop`` x ``crop`` crop centred on every nucleus whose
  crop fits in the image; ``label`` = tercile (0/1/2) of that nucleus' mask area (``label_name``
  ``area_tercile_small|mid|large``), ``target`` = area in pixels. A nucleus-size proxy, not biology.
- ``ihc_hed`` (3 channels ``Haematoxylin;Eosin;DAB`` from ``skimage.color.rgb2hed`` colour
  deconvolution): ``tile`` x ``tile`` tiles; ``label`` = 1 if the tile's mean DAB optical density is
  above the median tile (``label_name`` ``dab_high|dab_low``), ``target`` = that mean DAB density.

Regenerate the assets from the wheels with ``python -m chada.data.bundled --stardist-wheel WHEEL``.
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["ASSET_DIR", "ASSET_FILES", "asset_path", "prepare", "regenerate_assets"]

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"
ASSET_FILES = ("dsb2018_img2d.tif", "dsb2018_mask2d.tif", "skimage_ihc.png")


def asset_path(name: str) -> Path:
    p = ASSET_DIR / name
    if not p.exists():
        raise FileNotFoundError(f"bundled asset {name} missing from {ASSET_DIR}; reinstall chada")
    return p


def _splits(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    out = np.empty(n, dtype=object)
    n_tr, n_va = int(round(0.7 * n)), int(round(0.15 * n))
    out[order[:n_tr]] = "train"
    out[order[n_tr : n_tr + n_va]] = "val"
    out[order[n_tr + n_va :]] = "test"
    return out


def _nuclei_rows(out: Path, crop: int, seed: int) -> list[dict]:
    import tifffile
    from skimage.measure import regionprops

    img = tifffile.imread(asset_path("dsb2018_img2d.tif"))
    mask = tifffile.imread(asset_path("dsb2018_mask2d.tif"))
    h, w = img.shape
    half = crop // 2
    items = []
    for rp in regionprops(mask):
        cy, cx = (int(round(v)) for v in rp.centroid)
        top, left = cy - half, cx - half
        if top < 0 or left < 0 or top + crop > h or left + crop > w:
            continue  # partial crops would mix padding into the statistics
        items.append((rp.label, int(rp.area), float(rp.eccentricity), top, left))
    areas = np.array([a for _, a, _, _, _ in items], float)
    cuts = np.quantile(areas, [1 / 3, 2 / 3])
    split = _splits(len(items), seed)
    names = ("area_tercile_small", "area_tercile_mid", "area_tercile_large")
    rows = []
    (out / "dsb2018_nuclei").mkdir(parents=True, exist_ok=True)
    for k, (lab, area, ecc, top, left) in enumerate(items):
        tercile = int(np.searchsorted(cuts, area, side="right"))
        rel = f"dsb2018_nuclei/nucleus_{lab:03d}.tif"
        tifffile.imwrite(out / rel, img[top : top + crop, left : left + crop])
        rows.append(
            {
                "image_id": f"dsb2018_nucleus_{lab:03d}",
                "dataset": "dsb2018_nuclei",
                "file": rel,
                "channel_names": "Nuclei",
                "split": split[k],
                "label": tercile,
                "label_name": names[tercile],
                "target": float(area),
                "eccentricity": round(ecc, 4),
                "source": "BBBC038 (DSB2018) via stardist 0.9.2 img2d.tif/mask2d.tif",
            }
        )
    return rows


def _ihc_rows(out: Path, tile: int, seed: int) -> list[dict]:
    import tifffile
    from PIL import Image
    from skimage.color import rgb2hed

    rgb = np.asarray(Image.open(asset_path("skimage_ihc.png")).convert("RGB"))
    hed = rgb2hed(rgb).astype(np.float32)  # [H, W, 3] optical densities
    h, w, _ = hed.shape
    tiles = [(y, x) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
    dab = np.array([hed[y : y + tile, x : x + tile, 2].mean() for y, x in tiles])
    med = float(np.median(dab))
    split = _splits(len(tiles), seed + 1)
    rows = []
    (out / "ihc_hed").mkdir(parents=True, exist_ok=True)
    for k, (y, x) in enumerate(tiles):
        rel = f"ihc_hed/tile_y{y:03d}_x{x:03d}.tif"
        chw = np.ascontiguousarray(np.moveaxis(hed[y : y + tile, x : x + tile], -1, 0))
        tifffile.imwrite(out / rel, chw, photometric="minisblack", metadata={"axes": "CYX"})
        high = int(dab[k] > med)
        rows.append(
            {
                "image_id": f"ihc_hed_y{y:03d}_x{x:03d}",
                "dataset": "ihc_hed",
                "file": rel,
                "channel_names": "Haematoxylin;Eosin;DAB",
                "split": split[k],
                "label": high,
                "label_name": "dab_high" if high else "dab_low",
                "target": round(float(dab[k]), 6),
                "eccentricity": None,
                "source": "scikit-image ihc.png, rgb2hed colour deconvolution",
            }
        )
    return rows


def prepare(out_dir: str | Path, crop: int = 32, tile: int = 64, seed: int = 0) -> Path:
    """Write the bundled real datasets (images + ``manifest.csv``) into ``out_dir``; return the manifest.

    Deterministic. About 170 nucleus crops (1 channel) and 64 IHC tiles (3 channels) with the default
    sizes; takes ~1 s.
    """
    import pandas as pd

    from chada.data.manifest import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _nuclei_rows(out, crop, seed) + _ihc_rows(out, tile, seed)
    for name in ("LICENSE-stardist.txt", "LICENSE-CC0-1.0.txt", "LICENSE-scikit-image.txt", "README.md"):
        src = ASSET_DIR / name
        if src.exists():
            shutil.copyfile(src, out / name)
    return write_manifest(pd.DataFrame(rows), out / "manifest.csv")


def regenerate_assets(stardist_wheel: str | Path, out_dir: str | Path = ASSET_DIR) -> list[Path]:
    """Rebuild the image assets from a stardist 0.9.2 wheel and the installed scikit-image.

    ``pip download --no-deps stardist==0.9.2`` gives the wheel. The licence texts (stardist's
    ``LICENSE.txt`` from the wheel; scikit-image's ``LICENSE.txt`` from its dist-info) are copied too;
    the CC0 1.0 legal code is kept as a static file.
    """
    import importlib.metadata as md
    import io

    import skimage
    import tifffile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(stardist_wheel) as zf:
        for member, name in (
            ("stardist/data/images/img2d.tif", "dsb2018_img2d.tif"),
            ("stardist/data/images/mask2d.tif", "dsb2018_mask2d.tif"),
        ):
            arr = tifffile.imread(io.BytesIO(zf.read(member)))
            tifffile.imwrite(out / name, arr.astype(np.uint16), compression="zlib")
            written.append(out / name)
        lic = [n for n in zf.namelist() if n.endswith("licenses/LICENSE.txt") or n.endswith("LICENSE.txt")]
        if lic:
            (out / "LICENSE-stardist.txt").write_bytes(zf.read(lic[0]))
            written.append(out / "LICENSE-stardist.txt")
    shutil.copyfile(Path(skimage.__file__).parent / "data" / "ihc.png", out / "skimage_ihc.png")
    written.append(out / "skimage_ihc.png")
    dist = md.distribution("scikit-image")
    lic_files = [f for f in (dist.files or []) if str(f).endswith("LICENSE.txt")]
    if lic_files:
        shutil.copyfile(dist.locate_file(lic_files[0]), out / "LICENSE-scikit-image.txt")
        written.append(out / "LICENSE-scikit-image.txt")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate chada's bundled real-data assets.")
    parser.add_argument("--stardist-wheel", required=True, help="path to stardist-0.9.2-*.whl")
    parser.add_argument("--out", default=str(ASSET_DIR))
    args = parser.parse_args(argv)
    for p in regenerate_assets(args.stardist_wheel, args.out):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
