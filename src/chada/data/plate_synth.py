"""A synthetic high-content screen with known answers: ``chada data synth-plate OUT``.

Written (ImageXpress-like: one single-channel uint16 TIFF per field and channel, wells ``A01``...)::

    OUT/images/P1/A01_s1_w1.tif ... A01_s1_w3.tif     plate P1, well A01, site 1, channels w1..wN
    OUT/images/P1/A01_s1_cp_masks.tif                 uint16 label image of the cells (0 = background)
    OUT/platemap.csv                                  plate, well, compound, dose, moa, control_type
    OUT/ground_truth.json                             the answers (below) + the scan command's options

Each field holds ``cells`` non-overlapping round cells (radius ~9 px), wholly inside the field, drawn
on the channels :data:`CHANNELS` (the first ``n_channels``): DAPI a textured elliptic nucleus, Tubulin
a textured cytoplasm, Actin a cortex ring, Mito cytoplasmic spots, ER a perinuclear haze.

**Treatments.** Compounds come in MoA classes (:data:`PHENOTYPES`): each MoA changes one named
feature of one channel by a relative ``effect`` at a saturating dose (nuclear area on DAPI, cytoplasm
intensity on Tubulin, cortex intensity on Actin, spot intensity on Mito, haze intensity on ER). A
compound's effect at dose ``d`` is ``max_effect * d^h / (d^h + ec50^h)`` (Hill, ``h`` = 1.5), its own
``max_effect`` and ``ec50`` drawn per compound; inactive compounds change nothing. Design ``all``
(default): every plate holds each (compound, dose) ``replicates`` times, so plates are replicates;
``split``: the i-th compound of each MoA (and of the inactive ones) is on plate ``i mod n_plates``
only, so compounds of one MoA sit on different plates (batches), as BBBC021's NSCB assumes;
``confounded``: MoA m's compounds sit on its home plate m mod ``n_plates``, all but the last, which
goes to plate m + 1 mod ``n_plates`` (inactive compounds as in ``split``; it needs 2 plates or more
and 3 compounds per MoA or more). A plate then holds several compounds of one MoA, as BBBC021's
weeks held the compounds of one MoA: with uncorrected plate effects a treatment's nearest other
compound is often on its own plate, which NSC counts and NSCB does not (with at least as many plates
as MoAs, each plate is one MoA's home; with fewer, MoAs share a home plate). DMSO
(``control_type`` ``negcon``, dose 0) fills the other wells, at least two per plate; well positions
are shuffled per plate.

**Plate effects** (``plate_effects=False`` switches them off, so plates are identically distributed):
an intensity gain of the whole plate, an illumination gradient across every field (a plane of given
strength and direction) and a stain-specific additive shift of one channel. The gain and gradient
multiply signal and background, the shift adds to one channel, then camera noise is added.

**Ground truth** (``ground_truth.json``): per compound its MoA, ``active``, affected ``channels``,
``feature``, ``max_effect``, ``ec50`` and ``effect_by_dose`` (the relative change applied); per plate
its effects; per field (``"P1/A01_s1"``) its cell count, which equals the number of labels in its
label image. Deterministic given ``seed``: a field's pixels depend on (seed, plate, well, site) only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chada.data.synth import _gauss_blobs, _smooth_noise
from chada.errors import InputError

__all__ = ["CHANNELS", "PHENOTYPES", "Phenotype", "PlateSpec", "well_names", "generate_plate", "render_field"]

CHANNELS = ("DAPI", "Tubulin", "Actin", "Mito", "ER")
HILL = 1.5
CELL_RADIUS = 9.0  # pixels: a fixed magnification, so a larger field holds more cells
BACKGROUND, NOISE = 0.03, 0.015
DESIGNS = ("all", "split", "confounded")


@dataclass(frozen=True)
class Phenotype:
    """What one MoA does: ``feature`` of ``channel`` times ``1 + effect`` at a saturating dose."""

    moa: str
    channel: str
    feature: str
    effect: float


PHENOTYPES = (
    Phenotype("nuclear_swelling", "DAPI", "nuclear_area", 0.8),
    Phenotype("tubulin_gain", "Tubulin", "cytoplasm_intensity", 0.8),
    Phenotype("actin_loss", "Actin", "cortex_intensity", -0.5),
    Phenotype("mito_gain", "Mito", "spot_intensity", 0.8),
    Phenotype("er_gain", "ER", "haze_intensity", 0.8),
)


@dataclass
class PlateSpec:
    """The screen's size and design (defaults: 2 plates x 24 wells x 2 sites x 3 channels, 128 px)."""

    n_plates: int = 2
    n_wells: int = 24
    n_sites: int = 2
    n_channels: int = 3
    size: int = 128
    cells: tuple[int, int] | None = None  # per field, inclusive; None: 10-20 per 128 x 128 px
    n_moas: int = 3
    compounds_per_moa: int = 2
    n_inactive: int = 2
    replicates: int = 1  # wells per (compound, dose) on each plate that holds the compound
    design: str = "all"  # "all": every compound on every plate; "split", "confounded": each compound on one plate
    doses: tuple[float, ...] = (1.0, 10.0)
    plate_effects: bool = True
    seed: int = 0
    compress: bool = True

    def check(self) -> None:
        """Refuse a design that cannot be drawn, naming the option."""
        if not 1 <= self.n_channels <= len(CHANNELS):
            raise InputError(f"--channels must be 1..{len(CHANNELS)} ({', '.join(CHANNELS)}), got {self.n_channels}")
        usable = [p for p in PHENOTYPES if p.channel in CHANNELS[: self.n_channels]]
        if not 0 <= self.n_moas <= len(usable):
            raise InputError(f"--moas: {self.n_channels} channel(s) allow 0..{len(usable)} MoA classes, got {self.n_moas}")
        for name in ("n_plates", "n_sites", "compounds_per_moa"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.size < 48:
            raise InputError(f"--size must be >= 48 px (cells are ~{2 * CELL_RADIUS:.0f} px wide), got {self.size}")
        if not self.doses or any(d <= 0 for d in self.doses) or len(set(self.doses)) != len(self.doses):
            raise InputError(f"--doses must be distinct positive numbers, got {list(self.doses)}")
        if self.design not in DESIGNS or self.replicates < 1:
            raise InputError(f"--design must be one of {DESIGNS} and --replicates >= 1, got {self.design!r}, {self.replicates}")
        if self.design == "confounded" and (self.n_plates < 2 or self.compounds_per_moa < 3):
            raise InputError(f"--design confounded needs --plates >= 2 and --compounds-per-moa >= 3 (two compounds of an "
                             f"MoA on its home plate, one elsewhere), got {self.n_plates} and {self.compounds_per_moa}")
        per_plate = max(np.bincount(plate_indices(self), minlength=self.n_plates)) if self.design != "all" else (
            self.n_moas * self.compounds_per_moa + self.n_inactive)  # fmt: skip
        need = per_plate * len(self.doses) * self.replicates + 2
        if not need <= self.n_wells <= 1536:
            raise InputError(
                f"--wells {self.n_wells}: the design needs {need - 2} treatment wells + at least 2 DMSO wells "
                f"per plate, so {need}..1536 wells (or fewer compounds/doses/replicates)"
            )

    def cell_range(self) -> tuple[int, int]:
        if self.cells is not None:
            return int(self.cells[0]), int(self.cells[1])
        a = (self.size / 128.0) ** 2
        return max(1, round(10 * a)), max(1, round(20 * a))


def well_names(n: int) -> list[str]:
    """The first ``n`` wells of the smallest standard plate that holds them, row by row (A01, A02...)."""
    cols = 12 if n <= 96 else 24 if n <= 384 else 48
    rows = [chr(65 + i) for i in range(26)] + [f"A{chr(65 + i)}" for i in range(6)]
    return [f"{rows[i // cols]}{i % cols + 1:02d}" for i in range(n)]


def _compounds(spec: PlateSpec) -> dict[str, dict[str, Any]]:
    """Name -> ground truth (MoA, active, channels, feature, max_effect, ec50, effect_by_dose)."""
    rng = np.random.default_rng([spec.seed, 17])
    usable = [p for p in PHENOTYPES if p.channel in CHANNELS[: spec.n_channels]][: spec.n_moas]
    out: dict[str, dict[str, Any]] = {}
    lo, hi = min(spec.doses), max(spec.doses)
    for ph in usable:
        for _ in range(spec.compounds_per_moa):
            max_effect = ph.effect * rng.uniform(0.8, 1.2)
            # log-uniform over the lower half of the dose range: the lowest dose shows 15-50 % of the effect
            ec50 = float(np.exp(rng.uniform(np.log(lo), 0.5 * (np.log(lo) + np.log(hi)))))
            by_dose = {f"{d:g}": float(max_effect * d**HILL / (d**HILL + ec50**HILL)) for d in spec.doses}
            out[f"cmpd_{len(out) + 1:02d}"] = {"moa": ph.moa, "active": True, "channels": [ph.channel],
                                                 "feature": ph.feature, "max_effect": float(max_effect),
                                                 "ec50": ec50, "effect_by_dose": by_dose}  # fmt: skip
    for _ in range(spec.n_inactive):
        out[f"cmpd_{len(out) + 1:02d}"] = {"moa": "", "active": False, "channels": [], "feature": "",
                                             "max_effect": 0.0, "ec50": None,
                                             "effect_by_dose": {f"{d:g}": 0.0 for d in spec.doses}}  # fmt: skip
    return out


def _plate_effects(spec: PlateSpec, plate: int) -> dict[str, Any]:
    channels = CHANNELS[: spec.n_channels]
    if not spec.plate_effects:
        return {"gain": 1.0, "gradient_strength": 0.0, "gradient_angle": 0.0, "shift_channel": None, "shift": 0.0}
    rng = np.random.default_rng([spec.seed, 29, plate])
    return {
        "gain": float(rng.uniform(0.75, 1.25)),
        "gradient_strength": float(rng.uniform(0.2, 0.4)),  # relative change from one edge to the other
        "gradient_angle": float(rng.uniform(0, 2 * np.pi)),
        "shift_channel": str(channels[int(rng.integers(len(channels)))]),
        "shift": float(rng.uniform(0.03, 0.08)),
    }


def plate_indices(spec: PlateSpec) -> list[int]:
    """The plate (0-based) of each compound, in :func:`_compounds`' order (MoA by MoA, then the inactive
    ones), for the one-plate designs: ``split`` puts the i-th compound of a group on plate i mod n;
    ``confounded`` puts MoA m's compounds on its home plate m mod n, all but its last, which goes to
    plate m + 1 mod n (inactive compounds as in ``split``)."""
    n, k = spec.n_plates, spec.compounds_per_moa
    out = []
    for m in range(spec.n_moas):
        if spec.design == "confounded":
            out += [(m + (i == k - 1)) % n for i in range(k)]
        else:
            out += [i % n for i in range(k)]
    return out + [i % n for i in range(spec.n_inactive)]


def _assign_plates(spec: PlateSpec, compounds: dict[str, dict[str, Any]]) -> None:
    """Record each compound's ``plates``: all of them (``all``), or the one of :func:`plate_indices`."""
    every = [f"P{p + 1}" for p in range(spec.n_plates)]
    one = plate_indices(spec) if spec.design != "all" else []
    for j, t in enumerate(compounds.values()):
        t["plates"] = every if spec.design == "all" else [f"P{one[j] + 1}"]


def _layout(spec: PlateSpec, compounds: dict[str, dict[str, Any]], plate: int) -> list[tuple[str, float]]:
    """(compound, dose) per well of one plate: its treatments ``replicates`` times, DMSO elsewhere, shuffled."""
    here = [c for c, t in compounds.items() if f"P{plate + 1}" in t["plates"]]
    treat = [(c, float(d)) for c in here for d in spec.doses for _ in range(spec.replicates)]
    treat += [("DMSO", 0.0)] * (spec.n_wells - len(treat))
    order = np.random.default_rng([spec.seed, 31, plate]).permutation(len(treat))
    return [treat[i] for i in order]


def _place_cells(rng: np.random.Generator, size: int, n: int) -> list[tuple[float, float, float]]:
    """Up to ``n`` non-overlapping cells ``(cy, cx, radius)`` wholly inside the field (1 px apart)."""
    placed: list[tuple[float, float, float]] = []
    for r in CELL_RADIUS * rng.uniform(0.85, 1.15, n):
        for _ in range(200):  # a crowded field keeps fewer cells; the count is recorded, not assumed
            cy, cx = rng.uniform(r + 1, size - r - 1, 2)
            if all((cy - y) ** 2 + (cx - x) ** 2 >= (r + q + 1) ** 2 for y, x, q in placed):
                placed.append((float(cy), float(cx), float(r)))
                break
    return placed


def _draw_cell(rng: np.random.Generator) -> dict[str, Any]:
    """One cell's random traits, drawn in a fixed order whatever the channels (same seed, same cells)."""
    n_max = 14
    return {
        "nuc_scale": rng.uniform(0.9, 1.1), "ecc": rng.uniform(0.8, 1.0), "theta": rng.uniform(0, np.pi),
        "dapi": rng.uniform(0.9, 1.1), "tub": rng.uniform(0.9, 1.1), "act": rng.uniform(0.9, 1.1),
        "er": rng.uniform(0.9, 1.1), "n_spots": int(rng.integers(8, n_max + 1)),
        "spot_ang": rng.uniform(0, 2 * np.pi, n_max), "spot_rad": rng.uniform(0.55, 0.85, n_max),
        "spot_sig": rng.uniform(0.7, 1.1, n_max), "spot_amp": rng.uniform(0.6, 1.0, n_max),
    }  # fmt: skip


def render_field(
    spec: PlateSpec, effects: dict[str, float], plate_fx: dict[str, Any], key: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """One field: ``([C, size, size] float32 in [0, 1], [size, size] uint16 labels)``.

    ``effects``: channel name -> relative change of its feature (a treatment at one dose); ``key``:
    the field's seed key (seed, plate, well, site).
    """
    size, channels = spec.size, CHANNELS[: spec.n_channels]
    rng = np.random.default_rng([*key, 1])
    lo, hi = spec.cell_range()
    cells = _place_cells(rng, size, int(rng.integers(lo, hi + 1)))
    tex_dapi, tex_tub = _smooth_noise(rng, (size, size), 1.5), _smooth_noise(rng, (size, size), 1.0)
    sig = {c: np.zeros((size, size), np.float32) for c in CHANNELS}
    labels = np.zeros((size, size), np.uint16)
    e = {c: float(effects.get(c, 0.0)) for c in CHANNELS}
    for i, (cy, cx, r) in enumerate(cells):
        t = _draw_cell(rng)
        y0, y1, x0, x1 = max(0, int(cy - r) - 3), min(size, int(cy + r) + 4), max(0, int(cx - r) - 3), min(size, int(cx + r) + 4)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        win = (slice(y0, y1), slice(x0, x1))
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        labels[win][dist < r] = i + 1
        cell = 1.0 / (1.0 + np.exp((dist - r) / 0.8))
        rn = min(0.45 * r * t["nuc_scale"] * np.sqrt(1.0 + e["DAPI"]), 0.8 * r)  # area x (1 + effect)
        ry = (yy - cy) * np.cos(t["theta"]) - (xx - cx) * np.sin(t["theta"])
        rx = (yy - cy) * np.sin(t["theta"]) + (xx - cx) * np.cos(t["theta"])
        nuc_d = np.sqrt((ry / t["ecc"]) ** 2 + (rx * t["ecc"]) ** 2)
        nuc = 1.0 / (1.0 + np.exp((nuc_d - rn) / 0.7))
        sig["DAPI"][win] += 0.5 * t["dapi"] * nuc * (1 + 0.1 * tex_dapi[win])
        cyto = cell * (1 - 0.7 * nuc)
        sig["Tubulin"][win] += 0.22 * t["tub"] * (1 + e["Tubulin"]) * cyto * (1 + 0.25 * tex_tub[win])
        ring = np.exp(-((dist - r) ** 2) / (2 * 1.2**2)) * (dist < r + 3)
        sig["Actin"][win] += 0.4 * t["act"] * (1 + e["Actin"]) * ring + 0.06 * cell
        k = t["n_spots"]
        ang, rad = t["spot_ang"][:k], t["spot_rad"][:k] * r
        pos = np.stack([cy + rad * np.sin(ang), cx + rad * np.cos(ang)], 1)
        sig["Mito"][win] += _gauss_blobs(yy, xx, pos, t["spot_sig"][:k], 0.35 * (1 + e["Mito"]) * t["spot_amp"][:k]) * cell
        sig["ER"][win] += 0.25 * t["er"] * (1 + e["ER"]) * cyto * np.exp(-np.maximum(nuc_d - rn, 0) / (0.35 * r))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a, s = plate_fx["gradient_angle"], plate_fx["gradient_strength"]
    light = plate_fx["gain"] * (1 + s * ((xx - size / 2) * np.cos(a) + (yy - size / 2) * np.sin(a)) / size)
    noise = np.random.default_rng([*key, 2])
    planes = []
    for c in channels:
        p = (sig[c] + BACKGROUND) * light + (plate_fx["shift"] if plate_fx["shift_channel"] == c else 0.0)
        planes.append(np.clip(p + noise.normal(0, NOISE, p.shape), 0, 1).astype(np.float32))
    return np.stack(planes), labels


def generate_plate(out_dir: str | Path, spec: PlateSpec | None = None) -> Path:
    """Write the screen (module docstring) into ``out_dir``; return ``ground_truth.json``'s path.

    The platemap and the ground truth are written last, atomically: a run cut short has neither.

    Raises:
        InputError: an impossible design (:meth:`PlateSpec.check`), or ``out_dir/images`` already there.
    """
    import pandas as pd
    import tifffile

    from chada.io import atomic_write_json, atomic_write_text

    spec = spec or PlateSpec()
    spec.check()
    out = Path(out_dir)
    if (out / "images").exists():
        raise InputError(f"{out / 'images'} already exists; write the plate into a new folder")
    compounds = _compounds(spec)
    _assign_plates(spec, compounds)
    wells = well_names(spec.n_wells)
    rows, counts, plates = [], {}, {}
    comp = "zlib" if spec.compress else None
    for p in range(spec.n_plates):
        plate = f"P{p + 1}"
        fx = plates[plate] = _plate_effects(spec, p)
        folder = out / "images" / plate
        folder.mkdir(parents=True, exist_ok=True)
        for w, (well, (cmpd, dose)) in enumerate(zip(wells, _layout(spec, compounds, p))):
            truth = compounds.get(cmpd)
            effects = {ch: truth["effect_by_dose"][f"{dose:g}"] for ch in truth["channels"]} if truth else {}
            rows.append({"plate": plate, "well": well, "compound": cmpd, "dose": dose,
                         "moa": truth["moa"] if truth else "", "control_type": "trt" if truth else "negcon"})  # fmt: skip
            for s in range(1, spec.n_sites + 1):
                img, labels = render_field(spec, effects, fx, (spec.seed, p, w, s))
                for c in range(spec.n_channels):
                    tifffile.imwrite(folder / f"{well}_s{s}_w{c + 1}.tif", np.round(img[c] * 65535).astype(np.uint16), compression=comp)
                tifffile.imwrite(folder / f"{well}_s{s}_cp_masks.tif", labels, compression=comp)
                counts[f"{plate}/{well}_s{s}"] = int(labels.max())
    channels = list(CHANNELS[: spec.n_channels])
    atomic_write_text(out / "platemap.csv", pd.DataFrame(rows).to_csv(index=False))
    truth_path = out / "ground_truth.json"
    atomic_write_json(truth_path, {
        "spec": asdict(spec), "channels": channels,
        "scan": {"pattern": "{plate}/{well}_s{site}_w{channel}.tif", "objects_pattern": "{plate}/{well}_s{site}_cp_masks.tif",
                 "channel_names": ",".join(f"w{i + 1}={c}" for i, c in enumerate(channels))},
        "moas": {p.moa: asdict(p) for p in PHENOTYPES if any(t["moa"] == p.moa for t in compounds.values())},
        "compounds": compounds, "plates": plates, "cells": counts,
    }, indent=1)  # fmt: skip
    return truth_path
