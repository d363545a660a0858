"""The evaluation's figures: Fig. 1-style bars and Fig. 4-style low-data curves (PNG + SVG).

They draw the summary table of :func:`chada.eval.report.summarize`. The headline metric of a task is
its linear probe (``linear_top1`` or ``linear_r2``), or ``recon_r2`` for a channel-reconstruction task
(any other task kind shows its first metric); scores are drawn x 100 (accuracy in %, R² x 100) as in
the paper's Fig. 1. Every model keeps its colour of :func:`chada.viz.style.model_styles`; chance (the
best constant predictor) is a dashed line; error bars are the 95 % interval over the test images
where the summary has one, else the std over seeds. A score far below the axis (an R² of -60 at 1 %
of the labels) is drawn at the bottom edge as a down-pointing triangle with its value written
beside it, so one point cannot squash every other curve.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from chada.viz.style import model_styles, save_figure, use_agg

__all__ = ["HEADLINE", "Y_FLOOR", "lowdata_figure", "plot_bars", "plot_lowdata", "plot_results"]

HEADLINE = ("linear_top1", "linear_r2", "recon_r2")
FAMILY_ORDER = {"learned": 0, "untrained": 1, "handmade": 2}
# Lowest y drawn (score x 100): R² = -1 predicts worse than the mean by a whole variance; anything
# below is off the scale and shown as a clipped marker.
Y_FLOOR = -100.0


def _headline(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of each task's headline metric (the linear probe / decoder R², else its first metric)."""
    keep = []
    for _task, g in summary.groupby("task", sort=False):
        known = [m for m in HEADLINE if m in set(g.metric)]
        keep.append(g[g.metric == (known[0] if known else g.metric.iloc[0])])
    return pd.concat(keep) if keep else summary.iloc[:0]


def _models(sf: pd.DataFrame) -> pd.DataFrame:
    mods = sf[["model", "family"]].drop_duplicates("model")
    return mods.assign(_o=mods.family.map(FAMILY_ORDER).fillna(9)).sort_values(["_o", "model"])


def _errors(r: pd.Series) -> tuple[float, float]:
    """``(below, above)`` error-bar lengths x 100: the 95 % interval, else ± std."""
    lo, hi = r.get("ci_low"), r.get("ci_high")
    if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
        return max(0.0, (r["mean"] - lo) * 100), max(0.0, (hi - r["mean"]) * 100)
    return r["std"] * 100, r["std"] * 100


def _floor(values: list[float], chance: list[float]) -> float:
    """The lower y limit: a little below the lowest score and chance, never below :data:`Y_FLOOR`."""
    finite = [v for v in values + chance if np.isfinite(v)]
    low = min(finite) if finite else 0.0
    return max(Y_FLOOR, min(0.0, low - 5.0))


def _clip_marks(ax, xs, ys, floor: float, color, vertical: bool = False) -> None:
    """Scores below ``floor``: a triangle on the bottom edge and the value beside it (``vertical``: written
    upwards from the edge, so that the values of neighbouring bars do not overlap)."""
    for x, y in zip(xs, ys):
        if np.isfinite(y) and y < floor:
            ax.plot(
                [x], [floor], marker="v", ms=7, color=color, mec="black", mew=0.5, clip_on=False, zorder=5
            )
            if vertical:
                ax.annotate(f"{y:.0f}", (x, floor), xytext=(0, 6), textcoords="offset points", fontsize=6,
                            rotation=90, ha="center", va="bottom", color="black", zorder=6)  # fmt: skip
            else:
                ax.annotate(f"{y:.0f}", (x, floor), xytext=(3, 4), textcoords="offset points", fontsize=6)


def plot_bars(summary: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Fig. 1 style: per feature kind, grouped bars (tasks x models) at each task's largest fraction;
    untrained copies hatched and lighter, hand-made features dotted; chance as a dashed segment."""
    use_agg()
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    s = _headline(summary)
    paths: list[Path] = []
    for feat in dict.fromkeys(s.feature):
        sf = s[s.feature == feat]
        sf = sf[sf.fraction == sf.groupby("task").fraction.transform("max")]
        tasks = list(dict.fromkeys(sf.task))
        mods = _models(sf)
        styles = model_styles(list(zip(mods.model, mods.family)))
        width = 0.8 / max(len(mods), 1)
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) + 0.3 * len(mods)), 4))
        all_vals: list[float] = []
        for j, (_, m) in enumerate(mods.iterrows()):
            st = styles[m.model]
            vals, err = [], [[], []]
            for t in tasks:
                r = sf[(sf.task == t) & (sf.model == m.model)]
                vals.append(r["mean"].iloc[0] * 100 if len(r) else np.nan)
                lo, hi = _errors(r.iloc[0]) if len(r) else (0.0, 0.0)
                err[0].append(lo)
                err[1].append(hi)
            x = np.arange(len(tasks)) + (j - (len(mods) - 1) / 2) * width
            ax.bar(x, vals, width, yerr=err, label=f"{m.model} ({m.family})", color=st["color"], hatch=st["hatch"],
                   edgecolor="black", linewidth=0.5, capsize=2, error_kw={"lw": 0.8})  # fmt: skip
            all_vals += vals
        chance = []
        for i, t in enumerate(tasks):
            c = sf[sf.task == t]["chance"].mean() * 100
            if np.isfinite(c):
                chance.append(c)
                ax.hlines(c, i - 0.45, i + 0.45, colors="black", linestyles="--", lw=1,
                          label="chance (best constant predictor)" if len(chance) == 1 else None)  # fmt: skip
        floor = _floor(all_vals, chance)
        ax.set_ylim(bottom=floor)
        for j, (_, m) in enumerate(mods.iterrows()):
            xs = np.arange(len(tasks)) + (j - (len(mods) - 1) / 2) * width
            ys = [sf[(sf.task == t) & (sf.model == m.model)]["mean"].mean() * 100 for t in tasks]
            _clip_marks(ax, xs, ys, floor, styles[m.model]["color"], vertical=True)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_xticks(np.arange(len(tasks)))
        ax.set_xticklabels(tasks, rotation=20, ha="right")
        ax.set_ylabel("linear probe: accuracy (%) / R² x 100\n(reconstruction: decoder R² x 100)")
        ax.set_title(f"Frozen features ({feat}); error bars: 95 % interval over the test images", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        paths += save_figure(fig, out_dir / f"fig1_{feat}")
    return paths


def lowdata_figure(sf: pd.DataFrame, title: str):
    """The Fig. 4 figure of one feature kind's headline rows ``sf`` (one panel per task)."""
    use_agg()
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(sf.task))
    all_mods = _models(sf)
    styles = model_styles(list(zip(all_mods.model, all_mods.family)))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks) + 2.2, 3.4), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        st_all = sf[sf.task == t]
        ch = st_all.groupby("fraction")["chance"].mean().sort_index() * 100
        floor = _floor(list(st_all["mean"] * 100), list(ch))
        ax.plot(
            ch.index * 100,
            ch.to_numpy(),
            color="black",
            ls="--",
            lw=1,
            label="chance (best constant predictor)",
        )
        for _, m in _models(st_all).iterrows():
            g = st_all[st_all.model == m.model].sort_values("fraction")
            style = styles[m.model]
            err = np.array([_errors(r) for _, r in g.iterrows()]).T
            y = g["mean"].to_numpy() * 100
            shown = np.where(y < floor, np.nan, y)  # clipped points get a marker instead
            ax.errorbar(g.fraction * 100, shown, yerr=err, marker=style["marker"], ms=4, ls=style["linestyle"],
                        capsize=2, lw=1.2, color=style["color"], label=f"{m.model} ({m.family})")  # fmt: skip
            _clip_marks(ax, g.fraction.to_numpy() * 100, y, floor, style["color"])
        ax.set_ylim(bottom=floor)
        ax.set_xscale("log")
        ax.set_xlabel("training data (%)")
        ax.set_ylabel("accuracy (%)" if st_all.kind.iloc[0] == "classification" else "R² x 100")
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_lowdata(summary: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Fig. 4 style: headline score vs fraction of the training data, one panel per task with more
    than one fraction; chance per fraction as a dashed line; scores below the floor clipped."""
    s = _headline(summary)
    s = s[s.groupby("task").fraction.transform("nunique") > 1]
    paths: list[Path] = []
    for feat in dict.fromkeys(s.feature):
        title = (f"Low-data regimes ({feat}); error bars: 95 % interval over the test images; "
                 "▼ = below the axis (value written)")  # fmt: skip
        paths += save_figure(lowdata_figure(s[s.feature == feat], title), Path(out_dir) / f"fig4_{feat}")
    return paths


def plot_results(summary: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Both figures of an evaluation (nothing when the summary is empty)."""
    if summary.empty:
        return []
    return plot_bars(summary, out_dir) + plot_lowdata(summary, out_dir)
