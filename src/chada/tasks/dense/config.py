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


def _int(value: Any, what: str, low: int = 1) -> int:
    try:
        v = int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if v < low or v != float(value):
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return v


def _choices(label: str, values: Any, allowed: tuple[str, ...], what: str) -> list[str]:
    values = [values] if isinstance(values, str) else list(values or [])
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"dense task {label!r}: {what} must be among {allowed}, got {bad}")
    return values


def _parse_one(i: int, t: Any, base: Path, seeds: list[int]) -> DenseTask:
    if not isinstance(t, dict):
        raise ValueError(f"dense task #{i}: expected a mapping, got {type(t).__name__}")
    label = str(t.get("name", f"#{i}"))
    bad = sorted(set(t) - _KEYS)
    if bad:
        raise ValueError(f"dense task {label!r}: unknown keys {bad}; known: {sorted(_KEYS)}")
    if "name" not in t:
        raise ValueError(f"dense task #{i}: 'name' is required")
    if (t.get("source") is None) == (t.get("manifest") is None):
        raise ValueError(f"dense task {label!r}: give exactly one of source: dsb2018 or manifest: FILE")
    if t.get("source") is not None and t["source"] != "dsb2018":
        raise ValueError(
            f"dense task {label!r}: source must be 'dsb2018' (or use manifest:), got {t['source']!r}"
        )
    s = t.get("seeds", seeds)
    s = list(range(_int(s, "seeds"))) if isinstance(s, (int, float)) else [_int(v, "seed", 0) for v in s]
    if not s:
        raise ValueError(f"dense task {label!r}: seeds is empty")
    heads = _choices(label, t.get("heads", list(HEADS)), HEADS, "heads")
    bins = sorted(float(b) for b in t.get("size_bins", [1, 2, 3, 4]))
    task = DenseTask(
        name=label, source=t.get("source"),
        models=parse_task_models("dense", label, t.get("models"), base, True, "folder, registered name or handmade"),
        manifest=None if t.get("manifest") is None else base / Path(str(t["manifest"])),
        mask=t.get("mask"), datasets=[str(d) for d in t["datasets"]] if t.get("datasets") else None,
        max_images=None if t.get("max_images") is None else _int(t["max_images"], "max_images"),
        tile=_int(t.get("tile", 32), "tile"), split_axis=str(t.get("split_axis", "x")),
        image_size=None if t.get("image_size") is None else _int(t["image_size"], "image_size"),
        channels=str(t.get("channels", "each")),
        baselines=_choices(label, t.get("baselines", list(BASELINES)), BASELINES, "baselines"),
        otsu_channel=t.get("otsu_channel"), heads=heads, hidden=_int(t.get("hidden", 64), "hidden"),
        steps=_int(t.get("steps", 300), "steps"), lr=float(t.get("lr", 3e-2)),
        batch_size=_int(t.get("batch_size", 64), "batch_size"), seeds=s, size_bins=bins,
        bootstrap=_int(t.get("bootstrap", 2000), "bootstrap"),
        figure_head=(t.get("figure_head") or heads[-1]) if heads else None,
        save_probes=bool(t.get("save_probes", True)), normalize=str(t.get("normalize", "percentile")),
        num_threads=None if t.get("num_threads", 1) is None else _int(t.get("num_threads", 1), "num_threads"),
    )  # fmt: skip
    if task.channels not in ("each", "pooled"):
        raise ValueError(f"dense task {label!r}: channels must be 'each' or 'pooled', got {task.channels!r}")
    if task.split_axis not in ("x", "y"):
        raise ValueError(f"dense task {label!r}: split_axis must be 'x' or 'y', got {task.split_axis!r}")
    if not task.lr > 0:
        raise ValueError(f"dense task {label!r}: lr must be > 0, got {task.lr}")
    if task.figure_head is not None and task.figure_head not in heads:
        raise ValueError(f"dense task {label!r}: figure_head {task.figure_head!r} is not among heads {heads}")
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
