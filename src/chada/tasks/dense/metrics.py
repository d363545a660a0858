"""Scores of a predicted mask: IoU and Dice pooled over tiles, bootstrap intervals, per-object IoU, Otsu.

- **IoU and Dice** are of the foreground class, pooled over every scored pixel of the test set
  (``TP / (TP + FP + FN)`` and ``2 TP / (2 TP + FP + FN)``); :data:`IGNORE` pixels do not count.
  An all-background prediction scores 0 on both: that is the chance row. When neither the truth nor
  the prediction has any foreground, both are 1 (nothing to find, nothing claimed).
- **Intervals**: a percentile bootstrap over test TILES. Each resample draws the test tiles with
  replacement, pools their counts and takes the mean over the probe seeds, so the interval is that
  of the seed-averaged score under resampling of the test set. Neighbouring tiles of one image are
  correlated, so on the tiled nuclei image the interval is, if anything, too narrow.
- **Per-object IoU**: for every object of the truth, the IoU of prediction and object inside the
  object's bounding box grown by half its diameter (at least 2 px), leaving out the pixels of other
  objects and ignored pixels. It says how well objects of a given size are found, which is what
  the size breakdown bins.
"""

from __future__ import annotations

import numpy as np

from chada.eval.intervals import bootstrap_values
from chada.tasks.dense.data import IGNORE

__all__ = [
    "bootstrap_interval",
    "confusion_counts",
    "iou_dice",
    "object_scores",
    "otsu_threshold",
]


def confusion_counts(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-tile ``[N, 4]`` int64 counts ``(TP, FP, FN, TN)`` of ``pred [N, H, W]`` (bool) against
    ``labels [N, H, W]`` (0, 1, :data:`IGNORE`)."""
    pred = np.asarray(pred, bool)
    labels = np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"prediction {pred.shape} and labels {labels.shape} differ in shape")
    if pred.ndim == 2:
        pred, labels = pred[None], labels[None]
    valid = labels != IGNORE
    truth = labels == 1
    axes = tuple(range(1, pred.ndim))
    tp = (pred & truth & valid).sum(axes)
    fp = (pred & ~truth & valid).sum(axes)
    fn = (~pred & truth & valid).sum(axes)
    tn = (~pred & ~truth & valid).sum(axes)
    return np.stack([tp, fp, fn, tn], -1).astype(np.int64)


def iou_dice(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice from counts ``[..., 4]`` (already summed over the pixels to pool)."""
    c = np.asarray(counts, np.float64)
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, 1.0)
        dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), 1.0)
    return iou, dice


def bootstrap_interval(
    counts: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over tiles of the seed-averaged pooled IoU and Dice.

    ``counts``: ``[S, N, 4]`` (seeds x test tiles) or ``[N, 4]``. Returns ``{"iou": (lo, hi),
    "dice": (lo, hi)}``.
    """
    c = np.asarray(counts, np.int64)
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3 or c.shape[-1] != 4 or c.shape[1] == 0:
        raise ValueError(f"counts must be [seeds, tiles, 4] with at least one tile, got {c.shape}")

    def statistic(idx: np.ndarray) -> np.ndarray:  # [chunk, N] tile indices -> [chunk, 2] (IoU, Dice)
        iou, dice = iou_dice(c[:, idx].sum(2))  # pooled counts [S, chunk, 4]
        return np.stack([iou.mean(0), dice.mean(0)], -1)

    vals = bootstrap_values(statistic, c.shape[1], n_boot, seed)
    alpha = (1 - level) / 2
    return {
        name: (float(np.quantile(vals[:, j], alpha)), float(np.quantile(vals[:, j], 1 - alpha)))
        for j, name in enumerate(("iou", "dice"))
    }


def object_scores(
    pred: np.ndarray, instances: np.ndarray, ignore: np.ndarray, scored: np.ndarray
) -> list[dict]:
    """IoU of ``pred`` with every object of ``instances`` (all ``[H, W]``) that lies wholly in ``scored``.

    Returns one ``{"object", "area", "diameter", "iou"}`` per object (``diameter`` is the
    equivalent-circle diameter in pixels).
    """
    from scipy.ndimage import find_objects

    pred = np.asarray(pred, bool)
    out = []
    boxes = find_objects(np.where(ignore, 0, instances))
    for i, box in enumerate(boxes):
        if box is None:
            continue
        oid = i + 1
        in_box = instances[box] == oid
        if not scored[box][in_box].all():
            continue
        area = int(in_box.sum())
        diameter = 2.0 * np.sqrt(area / np.pi)
        grow = max(2, int(round(diameter / 2)))
        ys = slice(max(0, box[0].start - grow), min(pred.shape[0], box[0].stop + grow))
        xs = slice(max(0, box[1].start - grow), min(pred.shape[1], box[1].stop + grow))
        inst = instances[ys, xs]
        o = inst == oid
        keep = scored[ys, xs] & ~ignore[ys, xs] & ((inst == 0) | o)
        p = pred[ys, xs] & keep
        union = (p | o).sum()
        out.append({"object": oid, "area": area, "diameter": float(diameter),
                    "iou": float((p & o).sum() / union) if union else 1.0})  # fmt: skip
    return out


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of a set of pixel values (``skimage.filters.threshold_otsu``)."""
    from skimage.filters import threshold_otsu

    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("Otsu threshold of an empty set of pixels")
    if v.min() == v.max():
        return float(v[0])
    return float(threshold_otsu(v))
