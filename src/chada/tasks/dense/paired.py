"""Paired comparisons of dense probes: the difference of pooled IoU over the SAME test tiles.

Each learned model's probe is compared, head by head, with its untrained copy, the One-Channel ViT and
the hand-made pixel features (the references of :func:`chada.eval.comparisons.reference_pairs`).
The statistic is the task's own score, the pooled IoU of the test tiles averaged over probe seeds;
the bootstrap resamples the test tiles once for both models (every seed's counts of a tile travel
together), so the interval is of the paired difference. ``p`` is the two-sided bootstrap p;
``n_a_only`` / ``n_b_only`` count the tiles where the model's seed-mean IoU is higher / lower.
Rows have the columns of :data:`chada.eval.comparisons.COMPARISON_COLUMNS` (``feature`` = the head,
``metric`` = ``dense_iou``); Holm is applied with the feature-file comparisons in
:mod:`chada.tasks.evaluation`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from chada.eval.comparisons import COMPARISON_COLUMNS, reference_pairs
from chada.eval.paired import bootstrap_p, paired_bootstrap
from chada.tasks.dense.metrics import iou_dice

__all__ = ["dense_comparisons", "pooled_iou_rows"]


def pooled_iou_rows(x: np.ndarray) -> np.ndarray:
    """``[B, N, S, 4]`` per-tile (tp, fp, fn, tn) counts of B resamples -> ``[B]`` seed-mean pooled IoU."""
    iou, _ = iou_dice(x.sum(1))  # pooled over tiles: [B, S]
    return iou.mean(-1)


def _tile_iou(c: np.ndarray) -> np.ndarray:
    """``[N, S, 4]`` -> ``[N]`` each tile's IoU, mean over seeds."""
    return iou_dice(c)[0].mean(-1)


def dense_comparisons(
    task: str, counts: dict[tuple[str, str], np.ndarray], metas: dict[str, dict[str, Any]], n_boot: int = 2000
) -> pd.DataFrame:
    """``counts``: ``(model, head) -> [S, N, 4]`` per-seed, per-test-tile counts; ``metas``: model ->
    ``{"family", "arch"}``. One row per (learned model, reference, head) both have."""
    models = pd.DataFrame(
        [(m, meta.get("family"), str(meta.get("arch") or m)) for m, meta in metas.items()],
        columns=["model", "family", "arch"],
    )
    rows = []
    for model, ref, role in reference_pairs(models):
        for (m, head), ca in counts.items():
            if m != model or (ref, head) not in counts:
                continue
            a = np.moveaxis(np.asarray(ca, np.float64), 0, 1)  # [N, S, 4]: a tile's seeds travel together
            b = np.moveaxis(np.asarray(counts[(ref, head)], np.float64), 0, 1)
            if a.shape != b.shape:
                raise ValueError(f"dense task {task!r}: {model} and {ref} were scored on different tiles")
            diff, low, high = paired_bootstrap(a, b, pooled_iou_rows, n_boot, seed=0)
            ta, tb = _tile_iou(a), _tile_iou(b)
            rows.append(dict(task=task, feature=head, fraction=1.0, metric="dense_iou", kind="iou", model=model,
                             reference=ref, role=role, seed="all", n=len(a), difference=diff, low=low, high=high,
                             p=bootstrap_p(a, b, pooled_iou_rows, n_boot, seed=0), p_adj=np.nan, n_comparisons=0,
                             n_a_only=int((ta > tb).sum()), n_b_only=int((ta < tb).sum()), n_seeds=a.shape[1],
                             seeds_p05=np.nan, diff_seed_min=np.nan, diff_seed_max=np.nan))  # fmt: skip
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
