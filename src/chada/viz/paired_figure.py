"""Forest plot of the paired differences: each learned model minus its untrained copy, per task.

It draws the comparisons of :func:`chada.eval.comparisons.comparison_table` (the rows over seeds, at
each task's largest fraction): one row per task x metric x learned model, the difference x 100
(accuracy points / R² x 100) with its paired 95 % bootstrap interval, a line at 0, and a filled marker
where the Holm-adjusted p is below 0.05 (hollow otherwise). Any reference role can be drawn; the
default is the untrained copy, the picture of "did pretraining learn something".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from chada.viz.style import model_styles, save_figure, use_agg

__all__ = ["forest_rows", "plot_paired_forest"]


def forest_rows(
    comparisons: pd.DataFrame, role: str = "untrained", feature: str | None = None
) -> pd.DataFrame:
    """The rows one forest plot draws: over seeds, reference ``role``, each task's largest fraction."""
    c = comparisons[(comparisons.seed.astype(str) == "all") & (comparisons.role == role)]
    if feature is not None:
        c = c[c.feature == feature]
    if c.empty:
        return c
    return c[c.fraction == c.groupby("task").fraction.transform("max")]


def plot_paired_forest(
    comparisons: pd.DataFrame | None, out_dir: str | os.PathLike, role: str = "untrained"
) -> list[Path]:
    """``paired_<role>_<feature>.png/.svg`` per feature kind; returns the paths written."""
    if comparisons is None or comparisons.empty:
        return []
    use_agg()
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    for feat in dict.fromkeys(comparisons.feature):
        c = forest_rows(comparisons, role, feat)
        if c.empty:
            continue
        c = c.sort_values(["task", "metric", "model"], kind="stable").reset_index(drop=True)
        styles = model_styles([(m, "learned") for m in dict.fromkeys(c.model)])
        fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(c) + 1.4))
        y = np.arange(len(c))[::-1]
        for yi, r in zip(y, c.itertuples()):
            color = styles[r.model]["color"]
            sig = pd.notna(r.p_adj) and r.p_adj < 0.05
            ax.errorbar(r.difference * 100, yi, xerr=[[max(0.0, (r.difference - r.low) * 100)],
                        [max(0.0, (r.high - r.difference) * 100)]], fmt="o", color=color,
                        mfc=color if sig else "white", capsize=2, lw=1)  # fmt: skip
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_yticks(y)
        ax.set_yticklabels(
            [f"{r.task} {r.metric}: {r.model} vs {r.reference}" for r in c.itertuples()], fontsize=7
        )
        ax.set_xlabel("paired difference x 100 (accuracy points / R² x 100), 95 % bootstrap interval")
        ax.set_title(f"Learned minus {role} reference ({feat}); filled: Holm-adjusted p < 0.05", fontsize=9)
        fig.tight_layout()
        paths += save_figure(fig, Path(out_dir) / f"paired_{role}_{feat}")
    return paths
