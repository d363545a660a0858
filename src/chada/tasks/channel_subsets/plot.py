"""The channel-subset figure: score against the number of channels kept."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from chada.tasks.channel_subsets.scoring import METRIC_TITLES, METRICS, SETTING_TITLES, SETTINGS
from chada.viz.style import model_styles, save_figure, use_agg

__all__ = ["plot_channel_subsets"]


def plot_channel_subsets(
    summary: pd.DataFrame, out: str | os.PathLike, title: str | None = None
) -> list[Path]:
    """Score against k: one column per setting, one row per metric, one line per model (PNG + SVG).

    Error bars: std over seeds; shaded band: min-max over the subsets of each k; dashed: chance.
    """
    use_agg()
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in set(summary["metric"])]
    settings = [s for s in SETTINGS if s in set(summary["setting"])]
    if not metrics or not settings:
        raise ValueError("nothing to plot: the summary has no known metric/setting rows")
    models = list(dict.fromkeys(summary["model"]))
    colors = {
        m: st["color"] for m, st in model_styles([(m, None) for m in models]).items()
    }  # as in every figure
    fig, axes = plt.subplots(
        len(metrics),
        len(settings),
        figsize=(4.6 * len(settings), 3.4 * len(metrics)),
        squeeze=False,
        sharey="row",
    )
    for r, metric in enumerate(metrics):
        for c, setting in enumerate(settings):
            ax = axes[r][c]
            part = summary[(summary["metric"] == metric) & (summary["setting"] == setting)]
            for model in models:
                g = part[part["model"] == model].sort_values("k")
                if g.empty:
                    continue
                col = colors[model]
                ax.fill_between(g["k"], g["subset_min"], g["subset_max"], color=col, alpha=0.12, linewidth=0)
                ax.errorbar(
                    g["k"], g["mean"], yerr=g["std"], color=col, marker="o", ms=4, capsize=3, label=model
                )
            if len(part) and np.isfinite(part["chance"].iloc[0]):
                ax.axhline(part["chance"].iloc[0], color="0.5", ls="--", lw=1, label="chance")
            ax.set_xticks(sorted(summary["k"].unique()))
            ax.set_xlabel("channels kept (k)")
            if c == 0:
                ax.set_ylabel(METRIC_TITLES.get(metric, metric))
            if r == 0:
                ax.set_title(SETTING_TITLES.get(setting, setting), fontsize=9)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)
