"""Dense evaluation: segmentation probes on frozen per-channel feature maps, scored on pixel masks.

A linear (1x1) probe and a 2-layer 1x1 head are trained on frozen dense features (a ViT's
``forward_dense`` maps at token resolution, logits resized to pixels; or hand-made pixel features)
to predict a mask, and scored by IoU and Dice on held-out tiles with bootstrap intervals, beside
untrained copies, the One-Channel ViT, hand-made pixel features, Otsu on the nuclear channel and
all-background. Modules: :mod:`.data` (tiles, splits, masks), :mod:`.features`, :mod:`.heads`,
:mod:`.metrics`, :mod:`.config` (the ``dense:`` section of ``chada evaluate``), :mod:`.task` (the
runner), :mod:`.probe` (saved probes, ``chada segment``), :mod:`.report` and :mod:`.figure`.
"""

from chada.tasks.dense.config import DenseModelSpec, DenseTask, parse_dense_tasks
from chada.tasks.dense.data import IGNORE, DenseData, load_masked_manifest, split_at_cut, tile_bundled_nuclei
from chada.tasks.dense.heads import HEADS, DenseHead, fit_head, predict_probabilities
from chada.tasks.dense.metrics import (
    bootstrap_interval,
    confusion_counts,
    iou_dice,
    object_scores,
    otsu_threshold,
)
from chada.tasks.dense.probe import DenseProbe, load_probe, segment_image
from chada.tasks.dense.report import dense_markdown, write_dense_outputs
from chada.tasks.dense.task import DenseOutcome, run_dense_task

__all__ = [
    "HEADS",
    "IGNORE",
    "DenseData",
    "DenseHead",
    "DenseModelSpec",
    "DenseOutcome",
    "DenseProbe",
    "DenseTask",
    "bootstrap_interval",
    "confusion_counts",
    "dense_markdown",
    "fit_head",
    "iou_dice",
    "load_masked_manifest",
    "load_probe",
    "object_scores",
    "otsu_threshold",
    "parse_dense_tasks",
    "predict_probabilities",
    "run_dense_task",
    "segment_image",
    "split_at_cut",
    "tile_bundled_nuclei",
    "write_dense_outputs",
]
