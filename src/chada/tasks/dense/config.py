"""The ``dense:`` section of an evaluation config (one entry per dense segmentation task).

::

    dense:
      - name: dsb2018_nuclei
        source: dsb2018          # the bundled DSB2018 image + instance mask, tiled (chada.tasks.dense.data)
        tile: 32                 # tile side in pixels (source dsb2018)
        split_axis: x            # train = left half, test = right half (y: top / bottom)
        # or a manifest whose rows name their masks (chada data synth writes them):
        # manifest: ../../data/synth/manifest.csv
        # mask: nucleus          # plane of mask_file (mask_names); omit for a single-plane mask
        # datasets: [cellpaint_3ch]
        # max_images: 200        # cap per split (seeded)
        image_size: null         # model input side: tiles are resized to it (default: the tile side)
        channels: each           # forward_dense: each (per-channel maps side by side) | pooled
        models:                  # name -> folder / registered name (random weights from seed) / handmade
          chada_vit: {model: ../../runs/q/teacher, family: learned, arch: chada_vit}
          chada_vit_untrained: {model: chada_vit_test, seed: 0}
          handmade: handmade     # hand-made pixel features (chada.features.pixels)
        baselines: [otsu, background]   # chance rows: Otsu on the raw nuclear channel, all-background
        otsu_channel: null       # channel for Otsu (default: the first nuclear stain by name, else channel 0)
        heads: [linear, mlp]
        hidden: 64               # units of the mlp head
        steps: 300               # Adam steps per head
        lr: 3.0e-2               # cosine-decayed
        batch_size: 64           # tiles per step (token-resolution features)
        seeds: 3                 # head initialisation and batch order (default: the config's seeds)
        size_bins: [1, 2, 3, 4]  # object diameter bin edges, in patches of the ViTs' input
        bootstrap: 2000          # resamples of the test tiles for the 95 % intervals
        figure_head: mlp         # the head whose masks the figure shows
        save_probes: true        # the first seed's probes, for chada segment
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chada.config_reader import check_keys, choice, expected, integer, number
from chada.tasks.dense.heads import HEADS
from chada.tasks.model_specs import TaskModelSpec, parse_task_models

__all__ = ["BASELINES", "DenseModelSpec", "DenseTask", "parse_dense_tasks"]

BASELINES = ("otsu", "background")
DenseModelSpec = TaskModelSpec  # the name this module exported before the shared parser


@dataclass
class DenseTask:
    name: str
    models: dict[str, DenseModelSpec]
    source: str | None = None
    manifest: Path | None = None
    mask: str | None = None
    datasets: list[str] | None = None
    max_images: int | None = None
    tile: int = 32
    split_axis: str = "x"
    image_size: int | None = None
    channels: str = "each"
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    otsu_channel: str | int | None = None
    heads: list[str] = field(default_factory=lambda: list(HEADS))
    hidden: int = 64
    steps: int = 300
    lr: float = 3e-2
    batch_size: int = 64
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    size_bins: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0])
    bootstrap: int = 2000
    figure_head: str | None = None
    save_probes: bool = True
    normalize: str = "percentile"
    num_threads: int | None = 1
    #: ``"fp32"`` or ``"bf16"`` (autocast) for the encoders' forward pass (``chada evaluate --precision``).
    precision: str = "fp32"


_KEYS = {
    "name", "source", "manifest", "mask", "datasets", "max_images", "tile", "split_axis", "image_size",
    "channels", "models", "baselines", "otsu_channel", "heads", "hidden", "steps", "lr", "batch_size",
    "seeds", "size_bins", "bootstrap", "figure_head", "save_probes", "normalize", "num_threads",
}  # fmt: skip


def _choices(where: str, values: Any, allowed: tuple[str, ...]) -> list[str]:
    values = [values] if isinstance(values, str) else list(values or [])
    for v in values:
        choice(v, where, allowed)
    return values


def _parse_one(i: int, t: Any, base: Path, seeds: list[int]) -> DenseTask:
    if not isinstance(t, dict):
        raise expected(f"dense.#{i}", "a mapping", t)
    label = str(t.get("name", f"#{i}"))
    w = f"dense.{label}"
    check_keys(t, sorted(_KEYS), w)
    if "name" not in t:
        raise ValueError(f"dense.#{i}.name: required")
    if (t.get("source") is None) == (t.get("manifest") is None):
        raise ValueError(f"{w}: give exactly one of source: dsb2018 or manifest: FILE")
    if t.get("source") is not None and t["source"] != "dsb2018":
        raise expected(f"{w}.source", "'dsb2018' (or use manifest:)", t["source"])
    s = t.get("seeds", seeds)
    s = (
        list(range(integer(s, f"{w}.seeds", 1)))
        if isinstance(s, (int, float))
        else [integer(v, f"{w}.seeds", 0) for v in s]
    )
    if not s:
        raise expected(f"{w}.seeds", "at least one seed", s)
    heads = _choices(f"{w}.heads", t.get("heads", list(HEADS)), HEADS)
    bins = sorted(float(b) for b in t.get("size_bins", [1, 2, 3, 4]))
    task = DenseTask(
        name=label, source=t.get("source"),
        models=parse_task_models("dense", label, t.get("models"), base, True, "folder, registered name or handmade"),
        manifest=None if t.get("manifest") is None else base / Path(str(t["manifest"])),
        mask=t.get("mask"), datasets=[str(d) for d in t["datasets"]] if t.get("datasets") else None,
        max_images=None if t.get("max_images") is None else integer(t["max_images"], f"{w}.max_images", 1),
        tile=integer(t.get("tile", 32), f"{w}.tile", 1),
        split_axis=choice(str(t.get("split_axis", "x")), f"{w}.split_axis", ("x", "y")),
        image_size=None if t.get("image_size") is None else integer(t["image_size"], f"{w}.image_size", 1),
        channels=choice(str(t.get("channels", "each")), f"{w}.channels", ("each", "pooled")),
        baselines=_choices(f"{w}.baselines", t.get("baselines", list(BASELINES)), BASELINES),
        otsu_channel=t.get("otsu_channel"), heads=heads, hidden=integer(t.get("hidden", 64), f"{w}.hidden", 1),
        steps=integer(t.get("steps", 300), f"{w}.steps", 1),
        lr=number(t.get("lr", 3e-2), f"{w}.lr", 0, strict_low=True),
        batch_size=integer(t.get("batch_size", 64), f"{w}.batch_size", 1), seeds=s, size_bins=bins,
        bootstrap=integer(t.get("bootstrap", 2000), f"{w}.bootstrap", 1),
        figure_head=(t.get("figure_head") or heads[-1]) if heads else None,
        save_probes=bool(t.get("save_probes", True)), normalize=str(t.get("normalize", "percentile")),
        num_threads=None if t.get("num_threads", 1) is None else integer(t.get("num_threads", 1), f"{w}.num_threads", 1),
    )  # fmt: skip
    if task.figure_head is not None:
        choice(task.figure_head, f"{w}.figure_head", heads)
    return task


def parse_dense_tasks(
    raw: Any, base: str | os.PathLike = ".", *, seeds: list[int] | None = None
) -> list[DenseTask]:
    """Validate the ``dense:`` section (module docstring); relative paths resolve against ``base``."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ValueError(f"dense must be a list of tasks, got {type(raw).__name__}")
    tasks = [
        _parse_one(i, t, Path(base), list(seeds) if seeds is not None else [0, 1, 2])
        for i, t in enumerate(raw)
    ]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"dense task names must be unique, got {names}")
    return tasks
