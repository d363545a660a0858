"""Synthetic heterogeneous multi-channel cell images with known labels (for tests and CPU smoke runs).

Each image shows one cell (centre jittered) of radius ``R``. Channels available to an assay:

- ``DAPI``: textured elliptic nucleus of radius ~0.45 R;
- ``Actin``: bright cortex ring at the cell boundary plus faint cytoplasm;
- ``Mito``: many small blobs in the cytoplasm;
- ``MarkerA`` / ``MarkerB``: a faint cytoplasm haze plus ``K`` Gaussian spots each (``marker_pattern=
  "spots"``, the module default), or one angular sector of the cell each (``"domain"``: what the
  quickstart uses, because a tiny model learns that relation in a CPU budget and not the spots one).

Default assays (name: channels; file layout written, to exercise every reader):

- ``nuclei_1ch``: DAPI — one 16-bit PNG (``file``);
- ``markers_2ch``: MarkerA, MarkerB — one 8-bit PNG per channel (``channel_files``);
- ``cellpaint_3ch``: DAPI, Actin, Mito — one multi-page uint16 TIFF ``[C, H, W]`` (``file``);
- ``coloc_5ch``: DAPI, Actin, Mito, MarkerA, MarkerB — one 16-bit TIFF per channel (``channel_files``).

Labels (manifest columns):

- ``label``: cell size class 0/1/2 (``label_name`` small/medium/large; ``cell_radius`` in pixels is a
  regression ``target``). It is visible in any single channel (nucleus size, ring size, spot spread).
- ``interchannel_label`` (assays with both markers): 1 = MarkerB co-localises with MarkerA, 0 = it
  sits elsewhere. "domain": MarkerB's sector is MarkerA's or the opposite one (co- vs anti-polarised
  markers); the sector angle is uniform, so each channel alone is identically distributed in both
  classes. "spots" construction: draw ``2K`` well-separated positions,
  randomly permute them; MarkerA gets the first ``K``; MarkerB gets the same ``K`` (class 1) or the
  other ``K`` (class 0). After the random permutation both halves are identically distributed, and
  spot counts, sizes, intensities, haze and noise are drawn independently of the class, so EACH
  channel's distribution is exactly the same in both classes: only the relation between the two
  channels carries the label.

Masks: every image comes with its ground truth (:data:`MASK_NAMES`: ``cell``, ``nucleus``, ``MarkerA``,
``MarkerB`` and ``MarkerB_in_MarkerA``, the relation mask), in ``SynthInfo.masks`` and, from
:func:`generate`, as ``<image_id>_masks.tif`` beside the image (manifest columns ``mask_file``,
``mask_names``). The dense segmentation task (:mod:`chada.tasks.dense`) scores probes against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chada.data.synth_shapes import (
    discs,
    gauss_blobs,
    mitochondria,
    nucleus_ellipse,
    sector,
    separated_points,
    smooth_noise,
)

__all__ = [
    "ASSAYS",
    "SIZE_CLASSES",
    "MARKER_PATTERNS",
    "MASK_NAMES",
    "SynthInfo",
    "render_cell",
    "generate",
]

ASSAYS: dict[str, tuple[str, ...]] = {
    "nuclei_1ch": ("DAPI",),
    "markers_2ch": ("MarkerA", "MarkerB"),
    "cellpaint_3ch": ("DAPI", "Actin", "Mito"),
    "coloc_5ch": ("DAPI", "Actin", "Mito", "MarkerA", "MarkerB"),
}
SIZE_CLASSES = ("small", "medium", "large")
# Cell radius ranges per size class, as fractions of the image side (64 px -> ~10-12, 14-17, 19-22).
_RADIUS = ((0.16, 0.19), (0.22, 0.26), (0.30, 0.34))
# How MarkerA/MarkerB are drawn (module settings, read at render time):
# - "spots" (default): K Gaussian spots per marker; SPOTS = K range, SPOT_SIGMA = sigma range and
#   SPOT_SEPARATION = minimum distance between the 2K candidate positions (pixels at 64 px, scaled with
#   the image side), SPOT_AMPLITUDE = peak range. The defaults reproduce the original corpus bit for bit.
# - "domain": each marker fills one angular sector of the cell body (angular sigma DOMAIN_WIDTH radians);
#   MarkerB's sector is MarkerA's (class 1) or the opposite one (class 0): the coarsest co-localisation.
MARKER_PATTERN = "spots"
MARKER_PATTERNS = ("spots", "domain")
SPOTS = (3, 6)
SPOT_SIGMA = (0.8, 1.6)
SPOT_SEPARATION = 2.5
SPOT_AMPLITUDE = (0.5, 1.0)
DOMAIN_WIDTH = (0.45, 0.65)
# The ground-truth masks every rendered cell comes with (planes of its ``*_masks.tif``, in this order).
# "MarkerB_in_MarkerA" is defined only by the relation of the two marker channels: MarkerB's region
# inside MarkerA's. With the "domain" pattern it is MarkerB's sector when the markers co-localise
# (label 1) and empty when they sit in opposite sectors (label 0).
MASK_NAMES = ("cell", "nucleus", "MarkerA", "MarkerB", "MarkerB_in_MarkerA")


@dataclass
class SynthInfo:
    """Ground truth of one rendered cell."""

    size_class: int
    radius: float
    coloc: int
    n_spots: int
    masks: dict[str, np.ndarray] | None = None  # name (MASK_NAMES) -> bool [size, size]


def render_cell(
    channels: Sequence[str],
    size: int = 64,
    rng: np.random.Generator | None = None,
    size_class: int | None = None,
    coloc: int | None = None,
    marker_pattern: str | None = None,
) -> tuple[np.ndarray, SynthInfo]:
    """Render one synthetic cell.

    Args:
        channels: channel names from ``DAPI, Actin, Mito, MarkerA, MarkerB`` (in output order).
        size: image side in pixels.
        rng: numpy Generator (a fresh unseeded one if None).
        size_class: 0/1/2 (random if None).
        coloc: 1 co-localised / 0 anti-localised markers (random if None).
        marker_pattern: ``"spots"`` or ``"domain"`` (None: the module's ``MARKER_PATTERN``).

    Returns:
        ``([C, size, size] float32 in [0, 1], SynthInfo)``.
    """
    rng = rng if rng is not None else np.random.default_rng()
    unknown = set(channels) - {"DAPI", "Actin", "Mito", "MarkerA", "MarkerB"}
    if unknown:
        raise ValueError(f"unknown synthetic channel(s) {sorted(unknown)}")
    sc = int(rng.integers(0, 3)) if size_class is None else int(size_class)
    cl = int(rng.integers(0, 2)) if coloc is None else int(coloc)
    lo, hi = _RADIUS[sc]
    radius = float(rng.uniform(lo, hi) * size)
    cy, cx = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    cell = 1.0 / (1.0 + np.exp((dist - radius) / 0.8))  # soft cell mask
    scale = size / 64.0

    # Shared random draws happen in a fixed order regardless of which channels are requested, so the
    # same seed gives the same cell in every assay.
    n_r, nuc_d, nucleus = nucleus_ellipse(rng, yy - cy, xx - cx, radius)
    tex = smooth_noise(rng, (size, size), 1.5 * scale)
    mito_pos, mito_sig, mito_amp = mitochondria(rng, cy, cx, n_r, radius, scale)

    pattern = MARKER_PATTERN if marker_pattern is None else marker_pattern
    if pattern not in MARKER_PATTERNS:
        raise ValueError(f"marker pattern (MARKER_PATTERN) must be one of {MARKER_PATTERNS}, got {pattern!r}")
    k = int(rng.integers(SPOTS[0], SPOTS[1] + 1))
    pts = separated_points(rng, 2 * k, cy, cx, radius * 0.85, SPOT_SEPARATION * scale)
    pos_a = pts[:k]
    pos_b = (pts[:k] if cl == 1 else pts[k:]) + rng.normal(0, 0.4 * scale, (k, 2)).astype(np.float32)
    sig_a, sig_b = rng.uniform(*SPOT_SIGMA, k) * scale, rng.uniform(*SPOT_SIGMA, k) * scale
    amp_a, amp_b = rng.uniform(*SPOT_AMPLITUDE, k), rng.uniform(*SPOT_AMPLITUDE, k)

    if pattern == "domain":
        # The sector angle is uniform and MarkerB's is MarkerA's or the opposite one, so each channel alone
        # is identically distributed in both classes. Drawn only here: the "spots" corpus is unchanged.
        ang_a = rng.uniform(0, 2 * np.pi)
        ang_b = ang_a + (0.0 if cl == 1 else np.pi) + rng.normal(0, 0.15)
        wid_a, wid_b = rng.uniform(*DOMAIN_WIDTH, 2)
        phi = np.arctan2(yy - cy, xx - cx)
        body = cell * (dist > 0.25 * radius)

    def _domain(angle: float, width: float, amp: float) -> np.ndarray:
        d = np.angle(np.exp(1j * (phi - angle)))  # wrapped angular distance in (-pi, pi]
        return (amp * np.exp(-(d**2) / (2 * width**2)) * body).astype(np.float32)

    planes: list[np.ndarray] = []
    for name in channels:
        if name == "DAPI":
            p = nucleus * (0.75 + 0.15 * tex)
        elif name == "Actin":
            ring = np.exp(-((dist - radius) ** 2) / (2 * (1.2 * scale) ** 2))
            p = 0.8 * ring + 0.15 * cell
        elif name == "Mito":
            p = gauss_blobs(yy, xx, mito_pos, mito_sig, mito_amp) * cell
        elif name in ("MarkerA", "MarkerB"):
            a = name == "MarkerA"
            if pattern == "domain":
                p = 0.12 * cell + _domain(
                    ang_a if a else ang_b, wid_a if a else wid_b, amp_a[0] if a else amp_b[0]
                )
            else:
                p = 0.12 * cell + gauss_blobs(
                    yy, xx, *((pos_a, sig_a, amp_a) if a else (pos_b, sig_b, amp_b))
                )
        p = p + 0.03 + rng.normal(0, 0.02, (size, size))
        planes.append(np.clip(p, 0.0, 1.0).astype(np.float32))
    img = np.stack(planes, 0)
    if pattern == "domain":
        regions = [sector(phi, ang, wid) & (body > 0.5) for ang, wid in ((ang_a, wid_a), (ang_b, wid_b))]
    else:
        regions = [discs(yy, xx, pos, 1.5 * sig) for pos, sig in ((pos_a, sig_a), (pos_b, sig_b))]
    masks = dict(zip(MASK_NAMES, (dist < radius, nuc_d < n_r, *regions, regions[0] & regions[1])))
    return img, SynthInfo(
        size_class=sc, radius=radius, coloc=cl, n_spots=k if pattern == "spots" else 1, masks=masks
    )


def write_masks(path: str | Path, masks: dict[str, np.ndarray]) -> None:
    """The masks of one cell as a ``[len(MASK_NAMES), H, W]`` uint8 (0/1) TIFF, planes in MASK_NAMES order."""
    import tifffile

    from chada.io import naming_path

    data = np.stack([np.asarray(masks[n], np.uint8) for n in MASK_NAMES])
    with naming_path(path):
        tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "CYX"}, compression="zlib")


def _write(path: Path, planes: np.ndarray, fmt: str) -> None:
    from chada.io import naming_path

    with naming_path(path):  # a full disk names the image it stopped
        _write_image(path, planes, fmt)


def _write_image(path: Path, planes: np.ndarray, fmt: str) -> None:
    import tifffile
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png8":
        Image.fromarray(np.round(planes[0] * 255).astype(np.uint8)).save(path)
    elif fmt == "png16":
        Image.fromarray(np.round(planes[0] * 65535).astype(np.uint16)).save(path)
    else:  # tiff, [C, H, W] or one plane
        data = np.round(planes * 65535).astype(np.uint16)
        if data.shape[0] == 1:
            tifffile.imwrite(path, data[0], compression="zlib")
        else:
            # Explicit axes: 3-plane uint16 would otherwise be stored as RGB.
            tifffile.imwrite(
                path, data, photometric="minisblack", metadata={"axes": "CYX"}, compression="zlib"
            )


# assay -> (layout, format): how each assay is stored, chosen to cover the readers.
_LAYOUT = {
    "nuclei_1ch": ("file", "png16"),
    "markers_2ch": ("channel_files", "png8"),
    "cellpaint_3ch": ("file", "tiff"),
    "coloc_5ch": ("channel_files", "tiff"),
}


def generate(
    out_dir: str | Path,
    n_per_assay: int = 64,
    size: int = 64,
    seed: int = 0,
    assays: Sequence[str] | dict[str, Sequence[str]] | None = None,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    manifest_name: str = "manifest.csv",
    marker_pattern: str | None = None,
    masks: bool = True,
) -> Path:
    """Write synthetic images + ``manifest.csv`` into ``out_dir``; return the manifest path.

    Deterministic given ``seed``. Classes are balanced within each assay (size class cycles 0,1,2;
    co-localisation alternates), then rows are shuffled into splits per assay.

    Args:
        assays: names from :data:`ASSAYS`, or a dict ``name -> channel names`` for custom assays
            (custom assays with >1 channel are stored as per-channel TIFFs, 1 channel as 16-bit PNG).
        marker_pattern: ``"spots"`` or ``"domain"`` for MarkerA/MarkerB (None: the module's
            ``MARKER_PATTERN``); recorded in the manifest's ``marker_pattern`` column.
        masks: also write each image's ground-truth masks beside it (``<image_id>_masks.tif``,
            planes :data:`MASK_NAMES`, uint8 0/1), named in the columns ``mask_file`` and
            ``mask_names``. The images themselves are the same either way.
    """
    import pandas as pd

    from chada.config_reader import integer
    from chada.data.manifest import write_manifest

    n_per_assay, size = integer(n_per_assay, "n_per_assay", 1), integer(size, "size", 1)
    pattern = MARKER_PATTERN if marker_pattern is None else marker_pattern
    if pattern not in MARKER_PATTERNS:
        raise ValueError(f"marker_pattern must be one of {MARKER_PATTERNS}, got {pattern!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if assays is None:
        spec = dict(ASSAYS)
    elif isinstance(assays, dict):
        spec = {k: tuple(v) for k, v in assays.items()}
    else:
        missing = [a for a in assays if a not in ASSAYS]
        if missing:
            raise ValueError(f"unknown assay(s) {missing}; known: {sorted(ASSAYS)}")
        spec = {a: ASSAYS[a] for a in assays}
    rows: list[dict[str, Any]] = []
    for a_idx, (assay, chans) in enumerate(spec.items()):
        if not 1 <= len(chans) <= 10:
            raise ValueError(f"assay {assay}: channel count must be 1..10, got {len(chans)}")
        layout, fmt = _LAYOUT.get(assay, ("channel_files", "tiff") if len(chans) > 1 else ("file", "png16"))
        split_rng = np.random.default_rng([seed, a_idx, 7])
        order = split_rng.permutation(n_per_assay)
        n_tr = int(round(split_fractions[0] * n_per_assay))
        n_va = int(round(split_fractions[1] * n_per_assay))
        split_of = np.empty(n_per_assay, dtype=object)
        split_of[order[:n_tr]] = "train"
        split_of[order[n_tr : n_tr + n_va]] = "val"
        split_of[order[n_tr + n_va :]] = "test"
        has_pair = "MarkerA" in chans and "MarkerB" in chans
        for i in range(n_per_assay):
            rng = np.random.default_rng([seed, a_idx, i])
            img, info = render_cell(
                chans, size, rng, size_class=i % 3, coloc=(i // 3) % 2, marker_pattern=pattern
            )
            iid = f"{assay}_{i:05d}"
            row: dict[str, Any] = {"image_id": iid, "dataset": assay, "file": "", "channel_files": ""}
            if layout == "file":
                ext = ".png" if fmt.startswith("png") else ".tif"
                rel = f"{assay}/{iid}{ext}"
                _write(out / rel, img, fmt)
                row["file"] = rel
            else:
                ext = ".png" if fmt.startswith("png") else ".tif"
                rels = [f"{assay}/{iid}_c{c}_{name}{ext}" for c, name in enumerate(chans)]
                for c, rel in enumerate(rels):
                    _write(out / rel, img[c : c + 1], fmt)
                row["channel_files"] = ";".join(rels)
            row.update(
                channel_names=";".join(chans),
                split=split_of[i],
                label=info.size_class,
                label_name=SIZE_CLASSES[info.size_class],
                interchannel_label=info.coloc if has_pair else None,
                target=round(info.radius, 4),
                n_spots=info.n_spots if has_pair else None,
                marker_pattern=pattern if has_pair else None,
            )
            if masks and info.masks is not None:
                row["mask_file"] = f"{assay}/{iid}_masks.tif"
                row["mask_names"] = ";".join(MASK_NAMES)
                write_masks(out / row["mask_file"], info.masks)
            rows.append(row)
    df = pd.DataFrame(rows)
    df["interchannel_label"] = df["interchannel_label"].astype("Int64")
    df["n_spots"] = df["n_spots"].astype("Int64")
    return write_manifest(df, out / manifest_name)
