"""One dense segmentation task: tiles -> frozen features -> probes -> IoU / Dice with intervals.

For every model (a ViT's ``forward_dense`` maps or hand-made pixel features), every head
(``linear``, ``mlp``) and every seed, a head is trained on the training tiles and predicts the
test tiles (probability > 0.5). The baselines need no training features: ``otsu`` thresholds the
raw nuclear channel at Otsu's threshold of the TRAINING pixels, ``background`` predicts nothing.

Scores (:mod:`.metrics`): pooled IoU and Dice over the test tiles, the mean over seeds, a 95 %
percentile bootstrap over test tiles, and the per-object IoU binned by object diameter in patches
of the ViTs' input (how small an object the token grid still finds). Rows go to the evaluation's
long table (``kind="dense"``, ``feature`` = the head, metrics ``dense_iou`` / ``dense_dice``,
``chance`` = the all-background score, 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from chada.models.precision import resolve_precision
from chada.tasks.dense.config import DenseTask
from chada.tasks.dense.data import DenseData, load_masked_manifest, tile_bundled_nuclei
from chada.tasks.dense.features import fingerprint, handmade_maps, model_maps, patch_size
from chada.tasks.dense.heads import fit_head, predict_probabilities
from chada.tasks.dense.metrics import (
    bootstrap_interval,
    confusion_counts,
    iou_dice,
    object_scores,
    otsu_threshold,
)
from chada.tasks.dense.paired import dense_comparisons
from chada.tasks.dense.probe import DenseProbe

__all__ = ["DenseExample", "DenseOutcome", "load_task_data", "nuclear_channel", "run_dense_task"]

log = logging.getLogger(__name__)

NUCLEAR_NAMES = (
    "dapi",
    "hoechst",
    "nuclei",
    "nucleus",
    "nuclear",
    "h2b",
    "draq5",
    "haematoxylin",
    "hematoxylin",
)


@dataclass(eq=False)
class DenseExample:
    """One test region for the figure: the image ``[C, H, W]``, the labels ``[H, W]`` and each
    model's predicted mask ``[H, W]`` (first seed, the figure's head)."""

    image_id: str
    image: np.ndarray
    labels: np.ndarray
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(eq=False)
class DenseOutcome:
    """What a dense task hands back: long-format rows, the interval table, the size breakdown,
    figure examples, the first seed's probes and facts about the run."""

    task: str
    rows: list[dict[str, Any]]
    table: pd.DataFrame
    sizes: pd.DataFrame
    examples: list[DenseExample]
    channel_names: list[str]
    probes: dict[str, DenseProbe] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    comparisons: pd.DataFrame = field(
        default_factory=pd.DataFrame
    )  # paired IoU differences (dense/paired.py)

    def __deepcopy__(self, memo: dict) -> DenseOutcome:
        # kept in DataFrame.attrs, which pandas deep-copies on every operation: share, do not copy
        return self


def load_task_data(task: DenseTask) -> DenseData:
    if task.source == "dsb2018":
        return tile_bundled_nuclei(task.tile, task.split_axis, task.normalize)
    return load_masked_manifest(task.manifest, task.mask, datasets=task.datasets, max_images=task.max_images,
                                normalize=task.normalize)  # fmt: skip


def nuclear_channel(names: list[str], spec: str | int | None) -> int:
    """The channel Otsu thresholds: ``spec`` (name or index), else the first nuclear stain, else 0."""
    low = [n.lower() for n in names]
    if spec is None:
        return next((i for i, n in enumerate(low) if n in NUCLEAR_NAMES), 0)
    if isinstance(spec, int) or str(spec).lstrip("-").isdigit():
        i = int(spec)
        if not -len(names) <= i < len(names):
            raise ValueError(f"otsu_channel {spec} out of range for channels {names}")
        return i % len(names)
    if str(spec).lower() not in low:
        raise ValueError(f"otsu_channel {spec!r} is not among the channels {names}")
    return low.index(str(spec).lower())


class _Scores:
    """Per (model, head): test-tile counts per seed, per-object IoUs per seed, the first seed's masks."""

    def __init__(self, data: DenseData, test: np.ndarray) -> None:
        self.data, self.test = data, test
        self.counts: dict[tuple[str, str], list[np.ndarray]] = {}
        self.objects: dict[tuple[str, str], list[pd.DataFrame]] = {}
        self.first: dict[tuple[str, str], np.ndarray] = {}

    def add(self, model: str, head: str, pred: np.ndarray) -> None:
        key = (model, head)
        self.counts.setdefault(key, []).append(confusion_counts(pred, self.data.labels[self.test]))
        self.objects.setdefault(key, []).append(pd.DataFrame(self._objects(pred)))
        self.first.setdefault(key, pred)

    def canvases(self, pred: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Source index -> (stitched prediction, scored pixels)."""
        d, t = self.data, self.data.tile
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k, i in enumerate(self.test):
            g = int(d.groups[i])
            if g not in out:
                shape = d.sources[g].instances.shape
                out[g] = (np.zeros(shape, bool), np.zeros(shape, bool))
            y, x = d.origins[i]
            out[g][0][y : y + t, x : x + t] = pred[k]
            out[g][1][y : y + t, x : x + t] = True
        return out

    def _objects(self, pred: np.ndarray) -> list[dict[str, Any]]:
        rows = []
        for g, (canvas, scored) in self.canvases(pred).items():
            src = self.data.sources[g]
            rows += [r | {"source": g} for r in object_scores(canvas, src.instances, src.ignore, scored)]
        return rows


def _model_features(spec: Any, data: DenseData, task: DenseTask) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of every tile and the facts a probe records about them."""
    from chada.encode.encoders import resolve_model
    from chada.eval.config import infer_family

    module, info = resolve_model(spec.model, seed=spec.seed)
    if module is None:
        meta = {"features": "handmade", "model": "handmade", "sigmas": None, "tensor_sigmas": None}
        return handmade_maps(data.images), meta | {
            "family": spec.family or "handmade",
            "arch": "pixel_filters",
            "patch": None,
        }
    if not hasattr(module, "forward_dense"):
        raise ValueError(f"dense task {task.name!r}, model {spec.name!r}: {type(module).__name__} has no dense "
                         "output (forward_dense); use ChAda-ViT or the One-Channel ViT")  # fmt: skip
    module.eval()
    size = task.image_size or data.tile
    dtype, _ = resolve_precision(task.precision)
    maps = model_maps(
        module, data.images, data.channel_names, image_size=size, channels=task.channels, dtype=dtype
    )
    meta = {
        "features": "vit", "model": str(spec.model), "model_seed": info.get("seed"), "arch": spec.arch or info.get("arch"),
        "model_name": info.get("model_name"), "fingerprint": fingerprint(module), "image_size": size,
        "channels": task.channels, "precision": task.precision, "patch": patch_size(module), "family": infer_family(spec.name, info, spec.family),
    }  # fmt: skip
    return maps, meta


def run_dense_task(task: DenseTask, *, progress: bool = True) -> DenseOutcome:
    """Run one dense task (module docstring); every model x head x seed, plus the baselines."""
    from rich.progress import Progress

    previous = torch.get_num_threads()
    if task.num_threads:
        torch.set_num_threads(task.num_threads)
    try:
        data = load_task_data(task)
        train, test = data.positions("train"), data.positions("test")
        scores = _Scores(data, test)
        metas: dict[str, dict[str, Any]] = {}
        probes: dict[str, DenseProbe] = {}
        size = (data.tile, data.tile)
        with Progress(disable=not progress, transient=True) as bar:
            job = bar.add_task(
                f"{task.name}: probes", total=len(task.models) * len(task.heads) * len(task.seeds)
            )
            for name, spec in task.models.items():
                maps, meta = _model_features(spec, data, task)
                metas[name] = meta
                for head in task.heads:
                    for seed in task.seeds:
                        h = fit_head(maps[train], data.labels[train], head, hidden=task.hidden, steps=task.steps,
                                     batch_size=task.batch_size, lr=task.lr, seed=seed)  # fmt: skip
                        scores.add(name, head, predict_probabilities(h, maps[test], size) > 0.5)
                        if seed == task.seeds[0] and task.save_probes:
                            probes[f"{name}_{head}"] = DenseProbe(
                                h, _probe_meta(task, data, meta, name, head)
                            )
                        bar.advance(job)
        _baselines(task, data, train, test, scores, metas)
    finally:
        torch.set_num_threads(previous)
    return _outcome(task, data, train, test, scores, metas, probes)


def _probe_meta(
    task: DenseTask, data: DenseData, meta: dict[str, Any], name: str, head: str
) -> dict[str, Any]:
    keep = {k: v for k, v in meta.items() if k not in ("family", "patch")}
    return keep | {"task": task.name, "model_label": name, "mask": data.mask_name, "tile": data.tile,
                   "channel_names": data.channel_names, "normalize": task.normalize, "threshold": 0.5}  # fmt: skip


def _baselines(task: DenseTask, data: DenseData, train: np.ndarray, test: np.ndarray, scores: _Scores,
               metas: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    if "otsu" in task.baselines:
        c = nuclear_channel(data.channel_names, task.otsu_channel)
        valid = data.labels[train] != 255
        thr = otsu_threshold(data.images[train, c][valid])
        scores.add("otsu", "threshold", data.images[test, c] > thr)
        metas["otsu"] = {
            "family": "chance",
            "arch": "otsu",
            "patch": None,
            "threshold": thr,
            "channel": data.channel_names[c],
        }
    if "background" in task.baselines:
        scores.add("all_background", "constant", np.zeros(data.labels[test].shape, bool))
        metas["all_background"] = {"family": "chance", "arch": "constant", "patch": None}


def _bin_labels(edges: list[float]) -> list[str]:
    inner = [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])]
    return [f"<{edges[0]:g}", *inner, f">={edges[-1]:g}"]


def _outcome(task: DenseTask, data: DenseData, train: np.ndarray, test: np.ndarray, scores: _Scores,
             metas: dict[str, dict[str, Any]], probes: dict[str, DenseProbe]) -> DenseOutcome:  # fmt: skip
    patches = [m["patch"] for m in metas.values() if m.get("patch")]
    input_size = task.image_size or data.tile
    ref = min(patches) if patches else None
    px_per_patch = ref * data.tile / input_size if ref else 1.0  # native pixels one patch covers
    rows, table, sizes = [], [], []
    labels = _bin_labels(task.size_bins)
    for (model, head), counts in scores.counts.items():
        meta = metas[model]
        c = np.stack(counts)  # [S, N, 4]
        iou_s, dice_s = iou_dice(c.sum(1))
        ci = bootstrap_interval(c, task.bootstrap)
        for s, (iou, dice) in enumerate(zip(iou_s, dice_s)):
            for metric, v in (("dense_iou", iou), ("dense_dice", dice)):
                rows.append(dict(task=task.name, kind="dense", model=model, family=meta["family"], arch=meta.get("arch"),
                                 feature=head, fraction=1.0, seed=task.seeds[s] if s < len(task.seeds) else 0,
                                 metric=metric, value=float(v), chance=0.0, n_train=len(train), n_test=len(test)))  # fmt: skip
        table.append(dict(model=model, family=meta["family"], head=head, iou=float(iou_s.mean()), iou_lo=ci["iou"][0],
                          iou_hi=ci["iou"][1], dice=float(dice_s.mean()), dice_lo=ci["dice"][0], dice_hi=ci["dice"][1],
                          n_seeds=len(c), n_test_tiles=len(test)))  # fmt: skip
        obj = pd.concat(scores.objects[(model, head)], keys=range(len(c)), names=["seed"]).reset_index(
            level=0
        )
        if len(obj):
            obj = obj.groupby(["source", "object"], as_index=False).agg(
                iou=("iou", "mean"), diameter=("diameter", "first")
            )
            obj["bin"] = pd.Categorical.from_codes(
                np.searchsorted(task.size_bins, obj.diameter / px_per_patch, "right"), labels
            )
            for b, g in obj.groupby("bin", observed=False):
                sizes.append(
                    dict(
                        model=model,
                        head=head,
                        bin=b,
                        n_objects=len(g),
                        iou=float(g.iou.mean()) if len(g) else np.nan,
                    )
                )
    info = {"notes": data.notes, "tile": data.tile, "image_size": input_size, "patch": ref, "px_per_patch": px_per_patch,
            "n_train_tiles": len(train), "n_test_tiles": len(test), "mask": data.mask_name, "channels": data.channel_names,
            "otsu": metas.get("otsu", {}).get("threshold"), "heads": task.heads, "seeds": task.seeds,
            "figure_head": task.figure_head}  # fmt: skip
    paired = dense_comparisons(
        task.name, {k: np.stack(v) for k, v in scores.counts.items()}, metas, task.bootstrap
    )
    return DenseOutcome(task.name, rows, pd.DataFrame(table), pd.DataFrame(sizes), _examples(task, data, scores),
                        data.channel_names, probes, info, paired)  # fmt: skip


def _examples(task: DenseTask, data: DenseData, scores: _Scores, n: int = 3) -> list[DenseExample]:
    """The first test regions with each model's mask (the figure's head; baselines as they are)."""
    keys = [k for k in scores.first if k[1] in (task.figure_head, "threshold")]
    stitched = {k: scores.canvases(scores.first[k]) for k in keys}
    out = []
    for g in list(next(iter(stitched.values()), {}))[:n]:
        _, scored = next(iter(stitched.values()))[g]
        ys, xs = np.nonzero(scored)
        side = min(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1, 256)
        win = (slice(ys.min(), ys.min() + side), slice(xs.min(), xs.min() + side))
        src = data.sources[g]
        image = _source_image(data, g)
        labels = (src.instances > 0).astype(np.uint8)
        labels[src.ignore] = 255
        ex = DenseExample(src.image_id, image[(slice(None), *win)], labels[win])
        for (model, _head), canv in stitched.items():
            ex.predictions[model] = canv[g][0][win]
        out.append(ex)
    return out


def _source_image(data: DenseData, g: int) -> np.ndarray:
    """A source image put back together from its tiles (zeros where no tile covers it)."""
    shape = data.sources[g].instances.shape
    out = np.zeros((data.images.shape[1], *shape), np.float32)
    t = data.tile
    for i in np.flatnonzero(data.groups == g):
        y, x = data.origins[i]
        out[:, y : y + t, x : x + t] = data.images[i]
    return out
