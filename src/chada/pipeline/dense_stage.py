"""The quickstart's dense stage: segmentation probes on the frozen encoders, scored on real nuclei.

It writes ``OUT/dense/dense_config.yaml`` (a ``chada evaluate`` config with one ``dense:`` task)
and runs it, so ``chada evaluate --config OUT/dense/dense_config.yaml`` repeats it. The task is the
bundled DSB2018 image, cut into 32-px tiles (left half train, right half test,
:mod:`chada.tasks.dense.data`), probed with the pretrained ChAda-ViT and One-Channel ViT, their
untrained copies (each run's step-0 weights), hand-made pixel features, Otsu and all-background.

Why 32-px tiles at their native size: the quickstart's encoders take 32-px inputs (patch 8, a 4 x 4
token grid) and were pretrained on 32-px crops of this image's nuclei, so the tiles show nuclei at
the pixel scale the encoders learned, with no resizing and no interpolated positional embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chada.io import atomic_write_bytes
from chada.pipeline.report import Section
from chada.pipeline.settings import QuickstartSettings

__all__ = ["DENSE_ENCODERS", "DENSE_TASK", "dense_config", "dense_section", "stage_dense"]

DENSE_TASK = "dsb2018_nuclei"
# the quickstart encoders that have a dense output (the Inter-Channel ViT keeps one token per channel)
DENSE_ENCODERS = ("chada_vit", "one_channel_vit")


def dense_config(
    s: QuickstartSettings, teachers: dict[str, str], untrained: dict[str, str]
) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for enc in DENSE_ENCODERS:
        models[enc] = {"model": teachers[enc], "family": "learned", "arch": enc}
    for enc in DENSE_ENCODERS:
        models[f"{enc}_untrained"] = {"model": untrained[enc], "family": "untrained", "arch": enc}
    models["handmade"] = {"model": "handmade", "family": "handmade"}
    task = {
        "name": DENSE_TASK, "source": "dsb2018", "tile": s.embed_size, "models": models,
        "seeds": 2 if s.fast else 3, "steps": 100 if s.fast else 300,
    }  # fmt: skip
    return {"seeds": task["seeds"], "dense": [task]}


def stage_dense(s: QuickstartSettings, teachers: dict[str, str], untrained: dict[str, str]) -> dict[str, Any]:
    import yaml

    from chada.tasks.evaluation import run_evaluation

    cfg = dense_config(s, teachers, untrained)
    out = s.out / "dense"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "dense_config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    results = run_evaluation(cfg, out, progress=not s.fast, print_table=False)
    outcome = results.attrs["dense"][0]
    return {"out": str(out), "table": outcome.table.to_dict("records"), "info": outcome.info}


def dense_section(out: str | Path) -> Section | None:
    """The report's section: the interval table, the size breakdown and the picture (None before the stage)."""
    folder = Path(out) / "dense"
    md = folder / f"dense_{DENSE_TASK}.md"
    if not md.exists():
        return None
    text = md.read_text().replace(f"### {DENSE_TASK} ", f"`{DENSE_TASK}` ", 1)
    intro = (
        "Nucleus segmentation from frozen features on the real DSB2018 image: a linear (1x1) probe and a "
        "2-layer head on each encoder's `forward_dense` token maps (logits resized to pixels), beside "
        "hand-made pixel filters, Otsu on the raw channel and all-background. Rerun with "
        f"`chada evaluate --config {folder / 'dense_config.yaml'}`.\n\n"
    )
    return Section(
        "Dense: nuclei segmentation from frozen tokens",
        intro + text,
        [("dense", folder / f"dense_{DENSE_TASK}.png")],
    )
