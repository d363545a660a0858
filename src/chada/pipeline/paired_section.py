"""The report's paired words: did pretraining help, task by task, from ``comparisons.csv``.

:mod:`chada.eval.comparisons` compares every learned model with its untrained copy, the One-Channel
ViT and the hand-made features on the same test images. This module turns those rows into what the
quickstart's report and the README show: the marks of the headline table (:func:`headline_marks`),
the table "did pretraining help?" (:func:`paired_table`), the per-pretraining-seed spread
(:func:`seed_spread`) and the one-line verdicts the caveats quote (:func:`verdict`).

A mark or a "yes" always means: the paired difference is positive and its Holm-adjusted p-value
(over the tasks of one table) is below 0.05.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from chada.eval.markdown import markdown_table

__all__ = [
    "ALPHA", "MARK_NOTE", "MARKS", "best_row", "headline_marks", "load_comparisons", "paired_table",
    "seed_spread", "significant", "verdict",
]  # fmt: skip

ALPHA = 0.05
#: role -> the mark a learned model's headline cell gets when it beats that reference by a paired test
MARKS = {"untrained": "▲u", "one_channel": "▲1"}
MARK_NOTE = (
    "**▲u**: beats its untrained copy, **▲1**: beats the One-Channel ViT, by a paired test on the same test "
    "images (exact McNemar for accuracy, paired bootstrap for R²; Holm-adjusted p < 0.05 over the tasks of "
    'the table). The differences, intervals and discordant-image counts are in "Paired tests" below.'
)


def load_comparisons(eval_dir: str | os.PathLike) -> pd.DataFrame | None:
    """``comparisons.csv`` of an evaluation folder (seed as text), or None when there is none."""
    path = Path(eval_dir) / "comparisons.csv"
    if not path.exists():
        return None
    return pd.read_csv(path, dtype={"seed": str})


def _top(comparisons: pd.DataFrame, feature: str) -> pd.DataFrame:
    """The rows over seeds, feature ``feature``, at each task's largest fraction."""
    c = comparisons[(comparisons.seed.astype(str) == "all") & (comparisons.feature == feature)]
    if c.empty:
        return c
    return c[c.fraction == c.groupby("task").fraction.transform("max")]


def significant(r: Any) -> bool:
    """Positive paired difference with a Holm-adjusted p below :data:`ALPHA`."""
    return bool(pd.notna(r["p_adj"]) and r["p_adj"] < ALPHA and r["difference"] > 0)


def headline_marks(comparisons: pd.DataFrame | None, feature: str = "cls") -> dict[tuple[str, str, str], str]:
    """``{(task, metric, model): "▲u ▲1"}`` for the learned models that beat a reference."""
    if comparisons is None or comparisons.empty:
        return {}
    out: dict[tuple[str, str, str], list[str]] = {}
    for _, r in _top(comparisons, feature).iterrows():
        if r["role"] in MARKS and significant(r):
            marks = out.setdefault((r["task"], r["metric"], r["model"]), [])
            if MARKS[r["role"]] not in marks:
                marks.append(MARKS[r["role"]])
    return {k: " ".join(sorted(v, key=list(MARKS.values()).index)) for k, v in out.items()}


def best_row(comparisons: pd.DataFrame | None, task: str, model: str, role: str, metric: str,
             feature: str = "cls") -> Any:  # fmt: skip
    """The over-seeds comparison of ``model`` against its ``role`` reference, or None."""
    if comparisons is None or comparisons.empty:
        return None
    c = _top(comparisons, feature)
    c = c[(c.task == task) & (c.model == model) & (c.role == role) & (c.metric == metric)]
    return None if c.empty else c.iloc[0]


def _pts(v: float) -> str:
    return f"{v * 100:+.1f}"


def _p(p: float) -> str:
    return "-" if pd.isna(p) else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")


def verdict(r: Any, a: str, b: str) -> str:
    """One sentence of one comparison: the discordant images, the paired difference and both p-values."""
    unit = "points" if str(r["metric"]).endswith("top1") else "R² x 100"
    if str(r["metric"]).endswith("top1"):
        counts = f"{a} is right where {b} is wrong on {int(r['n_a_only'])} of {int(r['n'])} test images and the reverse on {int(r['n_b_only'])}"
    else:
        counts = f"{a} predicts closer than {b} on {int(r['n_a_only'])} of {int(r['n'])} test images and farther on {int(r['n_b_only'])}"
    test = "exact McNemar" if str(r["metric"]).endswith("top1") else "paired bootstrap"
    return (f"{counts} (paired difference {_pts(r['difference'])} {unit}, 95 % interval "
            f"[{_pts(r['low'])}, {_pts(r['high'])}]; {test} p = {_p(r['p'])}, "
            f"Holm-adjusted over {int(r['n_comparisons'])} tasks p = {_p(r['p_adj'])})")  # fmt: skip


def paired_table(
    comparisons: pd.DataFrame | None, metrics: Mapping[str, str], feature: str = "cls"
) -> str | None:
    """Markdown: per task and headline metric, each learned model against its untrained copy and the
    One-Channel ViT: difference x 100 [95 %], discordant images, p and Holm p, and a yes / no."""
    if comparisons is None or comparisons.empty:
        return None
    c = _top(comparisons, feature)
    c = c[c.metric.isin(list(metrics)) & c.role.isin(list(MARKS))]
    if c.empty:
        return None
    c = c.sort_values(["task", "metric", "model", "role"], kind="stable")
    rows = [
        [r.task, metrics.get(r.metric, r.metric), r.model, r.reference, int(r.n),
         f"{r.difference * 100:+.1f} [{r.low * 100:+.1f}, {r.high * 100:+.1f}]",
         f"{int(r.n_a_only)} / {int(r.n_b_only)}", _p(r.p), f"{_p(r.p_adj)} ({int(r.n_comparisons)})",
         "**yes**" if significant(r._asdict()) else "no"]
        for r in c.itertuples()
    ]  # fmt: skip
    header = ["task", "metric", "model", "reference", "images", "difference [95 %]", "a / b", "p", "Holm p (m)",
              "better?"]  # fmt: skip
    return (
        "Each learned model against its untrained copy and the One-Channel ViT on the same test images (100 % "
        f"labels, {feature.upper()} features; differences x 100: accuracy points, R² x 100). **a / b**: images "
        "only the model gets right / only the reference gets right (R²: predicted closer / farther). **p**: exact "
        "McNemar (accuracy) or paired bootstrap (R²); **Holm p (m)**: adjusted over the m tasks of the table. "
        "**better?**: yes when the difference is positive and the Holm p below 0.05. All comparisons, every "
        "fraction and feature kind, the per-seed tests and the hand-made baselines: `comparisons.csv`.\n\n"
        + markdown_table(header, rows)
    )


_SEED = re.compile(r"_s(\d+)$")


def seed_spread(
    comparisons: pd.DataFrame | None, metrics: Mapping[str, str], feature: str = "cls"
) -> str | None:
    """With several pretraining seeds (models ``<encoder>_s<k>``): per encoder, task, metric and
    reference, each seed's paired difference and how many seeds beat the reference (Holm p < 0.05)."""
    if comparisons is None or comparisons.empty:
        return None
    c = _top(comparisons, feature)
    c = c[c.metric.isin(list(metrics)) & c.role.isin(list(MARKS))]
    # the seed-0 run keeps the encoder's name (chada_vit), the others are chada_vit_s1, chada_vit_s2, ...
    c = c.assign(encoder=c.model.str.replace(_SEED, "", regex=True),
                 pseed=c.model.str.extract(_SEED)[0].fillna("0").astype(int))  # fmt: skip
    c = c[c.groupby("encoder").pseed.transform("nunique") >= 2]
    if c.empty:
        return None
    rows = []
    for (enc, task, metric, role), g in c.groupby(["encoder", "task", "metric", "role"], sort=True):
        g = g.sort_values("pseed")
        diffs = ", ".join(f"s{k}: {v * 100:+.1f}" for k, v in zip(g.pseed, g.difference))
        wins = sum(significant(r) for _, r in g.iterrows())
        spread = (
            f"{g.difference.mean() * 100:+.1f} ± {g.difference.std(ddof=1) * 100:.1f}" if len(g) > 1 else "-"
        )
        rows.append([enc, task, metrics.get(metric, metric), role, diffs, spread, f"{wins} / {len(g)}"])
    header = ["encoder", "task", "metric", "reference", "difference per seed", "mean ± std", "seeds better"]
    return ("The paired analysis once per pretraining seed: a result that one lucky seed carries shows as "
            "one \"better\" out of N.\n\n" + markdown_table(header, rows))  # fmt: skip
