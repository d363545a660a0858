"""The quickstart's profiling stage: treatment profiles of a small synthetic plate, scored by mAP and NSC/NSCB.

``OUT/profiles/plate/`` is a ``chada data synth-plate`` screen (2 plates x 32 wells, one 128-px field
per well, 3 MoAs x 2 compounds, 2 inactive compounds, doses 1 and 10 uM, 3 replicate wells, design
``split``: each compound on one plate), scanned into a manifest and cut into 32-px single-cell crops
(``chada embed --objects``) for the pretrained ChAda-ViT, its untrained copy (the run's step-0
weights) and the hand-made features, and measured per object on the same label images by
CellProfiler's modules (``cp_measure``, the field's baseline; :data:`CP_MEASURE_GROUPS`); ``chada
profile`` then aggregates cells to wells and treatments and writes ``OUT/profiles/`` (readouts,
paired differences, figures, ``profiles.md``).

The plate has its own seed: no random draw of an earlier stage is consumed, so the quickstart's other
numbers do not change. :func:`profiles_section` is the report's section (like the dense stage's),
written into ``report.md`` and ``report.html`` by :func:`chada.pipeline.summary.build_report`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from chada.pipeline.report import Section
from chada.pipeline.settings import QuickstartSettings

__all__ = ["PROFILE_ENCODER", "profiles_section", "stage_profiles"]

PROFILE_ENCODER = "chada_vit"
PLATE_SEED = 0
# Haralick texture (1.36 s of a 128-px field's 1.52 s) and Costes colocalisation (0.21 s) left out,
# so the stage's 64 fields take seconds, not minutes; every other group of cp_measure is measured
CP_MEASURE_GROUPS = {"texture": False, "correlation_costes": False}


def _plate(out: Path) -> Path:
    """Draw, scan and write the plate's manifest (kept when already there)."""
    from chada.data.manifest import write_manifest
    from chada.data.plate_synth import PlateSpec, generate_plate
    from chada.data.scan import scan_folder

    manifest = out / "manifest.csv"
    if manifest.exists():
        return manifest
    spec = PlateSpec(n_wells=32, n_sites=1, design="split", replicates=3, seed=PLATE_SEED)
    truth = generate_plate(out, spec)
    import json

    scan = json.loads(truth.read_text())["scan"]
    result = scan_folder(out / "images", scan["pattern"], channel_names=scan["channel_names"],
                         platemap=out / "platemap.csv", objects_pattern=scan["objects_pattern"],
                         dataset="synth_plate", base=out)  # fmt: skip
    return write_manifest(result.table, manifest)


def stage_profiles(s: QuickstartSettings, teachers: dict[str, str], untrained: dict[str, str]) -> dict[str, Any]:
    """Embed the plate's cells with each model and profile them; return the readouts per model."""
    from chada.data.objects import ObjectOptions
    from chada.encode.cp_measure import cp_measure_for_manifest
    from chada.encode.embed import embed_manifest
    from chada.encode.options import ImageOptions, RunOptions
    from chada.profiles.config import ProfileConfig
    from chada.tasks.profiling import ProfilingTask, run_profiling

    out = s.out / "profiles"
    manifest = _plate(out / "plate")
    cells = out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    crops = ObjectOptions(crop_size=s.embed_size, mask_neighbours=True, skip_border=True)
    # the encoders see crops scaled as in pretraining (percentile); the hand-made features the raw
    # intensities, without which a plate's gain and an intensity phenotype are both invisible
    models = {PROFILE_ENCODER: (teachers[PROFILE_ENCODER], "percentile"),
              f"{PROFILE_ENCODER}_untrained": (untrained[PROFILE_ENCODER], "percentile"),
              "handmade": ("handmade", "none")}  # fmt: skip
    tables = {}
    for name, (model, norm) in models.items():
        tables[name] = cells / f"{name}.parquet"
        if not tables[name].exists():
            embed_manifest(model, manifest, tables[name], ("cls",), image=ImageOptions(size=s.embed_size, normalize=norm),
                           run=RunOptions(batch_size=256, progress=False), objects=crops)  # fmt: skip
    tables["cp_measure"] = cells / "cp_measure.parquet"
    if not tables["cp_measure"].exists():  # every labelled cell, on the raw 16-bit intensities
        cp_measure_for_manifest(manifest, tables["cp_measure"], progress=False, groups=CP_MEASURE_GROUPS)
    cfg = ProfileConfig(batch_cols=["plate"], null_size=1000, n_boot=200, seed=PLATE_SEED)
    results, comparisons, _ = run_profiling(ProfilingTask(tables, cfg, "pca", "cls"), out, log=lambda m: None)
    readouts = {m: {k: v["value"] for k, v in r.readouts.items()} for m, r in results.items()}
    return {"out": str(out), "readouts": readouts, "n_comparisons": len(comparisons)}


def _section_text(folder: Path) -> tuple[str, list[tuple[str, Path]]]:
    """``profiles.md`` without its heading and figure links, and its figures ``(caption, path)``."""
    text = (folder / "profiles.md").read_text()
    images = [(cap, folder / rel) for cap, rel in re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)]
    text = re.sub(r"^## Profiles\s*", "", re.sub(r"!\[[^\]]*\]\([^)]+\)\n?", "", text)).strip()
    intro = (
        "Treatment profiles of a synthetic plate (`chada data synth-plate`, design `split`, seed "
        f"{PLATE_SEED}: 3 MoAs, 2 inactive compounds, DMSO on both plates) from 32-px single-cell crops: "
        "the pretrained ChAda-ViT, its untrained copy and the hand-made features; and CellProfiler's "
        "per-object measurements on the same label images (`cp_measure`, without Haralick texture and "
        f"Costes colocalisation, for time). Files in `{folder}`; "
        "`ground_truth.json` under `plate/` holds the known answers; docs/profiling.md explains the readouts."
    )
    return intro + "\n\n" + text, images


def profiles_section(out: str | Path) -> Section | None:
    """The report's section: the readouts, their paired differences and pictures (None before the stage)."""
    folder = Path(out) / "profiles"
    if not (folder / "profiles.md").exists():
        return None
    text, images = _section_text(folder)
    return Section("Profiles: a synthetic plate, mAP and NSC/NSCB", text, images)
