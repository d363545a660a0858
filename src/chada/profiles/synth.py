"""A synthetic single-cell feature table with known answers, for tests and the docs' example.

Not an image generator (that is ``chada data synth-plate``): it draws feature rows directly.

Layout: ``n_batches`` batches of ``plates_per_batch`` plates. Each MoA class has compounds in every
batch; a compound sits in one batch, at every dose, ``wells_per_plate`` wells on each of its batch's
plates. A compound of an MoA shifts the cells by ``dose * (MoA direction + its own smaller
direction)``; inactive compounds (MoA ``"inactive"``) shift nothing, like DMSO. Plate effects, when
on, are per-plate, per-feature affine: a scale (staining intensity) and an offset made of a batch
part and a plate part (a stain-specific shift), applied to every cell of the plate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["synthetic_cells"]


def _layout(
    n_moa: int, compounds_per_moa: int, n_inactive: int, n_batches: int
) -> list[tuple[str, str, int]]:
    """``[(compound, moa, batch index)]``: each MoA's compounds spread over the batches."""
    out = []
    for k in range(n_moa):
        for j in range(compounds_per_moa):
            out.append((f"cpd_m{k}_{j}", f"moa_{k}", j % n_batches))
    out += [(f"cpd_inactive_{j}", "inactive", j % n_batches) for j in range(n_inactive)]
    return out


def synthetic_cells(
    plate_effects: bool = True, n_features: int = 16, n_moa: int = 3, compounds_per_moa: int = 4,
    n_inactive: int = 2, doses: tuple[float, ...] = (1.0, 2.0), n_batches: int = 2, plates_per_batch: int = 2,
    wells_per_plate: int = 2, dmso_per_plate: int = 8, cells_per_well: int = 12, effect: float = 1.5,
    plate_shift: float = 3.0, seed: int = 0,
) -> tuple[pd.DataFrame, list[str], dict]:  # fmt: skip
    """Cells ``[N rows]``: metadata (batch, plate, well, compound, dose, moa, object_id) + ``f00..``.

    Returns:
        ``(table, feature names, truth)``; ``truth`` = ``{"active": [(compound, dose)],
        "inactive": [...], "moa": {compound: moa}}``. The same ``seed`` with ``plate_effects`` on
        or off draws the same cells; only the plate effects differ.
    """
    rng = np.random.default_rng(seed)
    F = n_features
    moa_dir = rng.normal(size=(n_moa, F))
    moa_dir /= np.linalg.norm(moa_dir, axis=1, keepdims=True)
    layout = _layout(n_moa, compounds_per_moa, n_inactive, n_batches)
    cpd_dir = {c: 0.5 * rng.normal(size=F) / np.sqrt(F) for c, _, _ in layout}
    n_plates = n_batches * plates_per_batch
    scale = rng.uniform(0.6, 1.6, size=(n_plates, F))
    batch_off = plate_shift * rng.normal(size=(n_batches, F))
    offset = np.repeat(batch_off, plates_per_batch, axis=0) + 0.3 * plate_shift * rng.normal(
        size=(n_plates, F)
    )
    rows, feats = [], []
    for p in range(n_plates):
        b = p // plates_per_batch
        wells = [("DMSO", "control", 0.0, np.zeros(F))] * dmso_per_plate
        for c, m, cb in layout:
            if cb != b:
                continue
            shift = np.zeros(F) if m == "inactive" else moa_dir[int(m.split("_")[1])] + cpd_dir[c]
            wells += [(c, m, d, effect * d * shift) for d in doses for _ in range(wells_per_plate)]
        for w, (c, m, d, shift) in enumerate(wells):
            cells = shift + 0.3 * rng.normal(size=F) + rng.normal(size=(cells_per_well, F))
            if plate_effects:
                cells = cells * scale[p] + offset[p]
            feats.append(cells)
            for i in range(cells_per_well):
                rows.append({"batch": f"B{b + 1}", "plate": f"P{p + 1}", "well": f"W{w + 1:03d}", "compound": c,
                             "dose": d, "moa": m, "object_id": i + 1})  # fmt: skip
    names = [f"f{i:02d}" for i in range(F)]
    table = pd.concat([pd.DataFrame(rows), pd.DataFrame(np.vstack(feats), columns=names)], axis=1)
    truth = {
        "active": [(c, d) for c, m, _ in layout if m != "inactive" for d in doses],
        "inactive": [(c, d) for c, m, _ in layout if m == "inactive" for d in doses],
        "moa": {c: m for c, m, _ in layout},
    }
    return table, names, truth
