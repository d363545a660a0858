"""The evaluation's figures: Fig. 1-style bars and Fig. 4-style low-data curves (PNG + SVG).

The headline metric of a task is its linear probe (``linear_top1`` or ``linear_r2``), or ``recon_r2``
for a channel-reconstruction task; R2 is drawn as 0-100 beside accuracies in % as in the paper's
Fig. 1. Reconstruction tasks have one data fraction and are left out of the Fig. 4 plot.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from chada.io import atomic_write_bytes

__all__ = ["FAMILY_ORDER", "HEADLINE", "plot_bars", "plot_lowdata"]

HEADLINE = ("linear_top1", "linear_r2", "recon_r2")
FAMILY_ORDER = {"learned": 0, "untrained": 1, "handmade": 2}


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    import io

    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        p = out_dir / f"{stem}.{ext}"
        atomic_write_bytes(p, buf.getvalue())
        paths.append(p)
    return paths


def _headline(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary.metric.isin(HEADLINE)]


def plot_bars(summary: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Fig. 1 style: per feature kind, grouped bars (tasks x models) of the linear probe at the largest
    fraction; error bars = std over seeds; baselines hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    s = _headline(summary)
    paths: list[Path] = []
    for feat in dict.fromkeys(s.feature):
        sf = s[s.feature == feat]
        sf = sf[sf.fraction == sf.groupby("task").fraction.transform("max")]
        tasks = list(dict.fromkeys(sf.task))
        mods = sf[["model", "family"]].drop_duplicates()
        mods = mods.assign(_o=mods.family.map(FAMILY_ORDER).fillna(9)).sort_values(["_o", "model"])
        width = 0.8 / max(len(mods), 1)
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) + 0.3 * len(mods)), 4))
        cmap = plt.get_cmap("tab10")
        for j, (_, m) in enumerate(mods.iterrows()):
            vals, errs = [], []
            for t in tasks:
                r = sf[(sf.task == t) & (sf.model == m.model)]
                vals.append(r["mean"].iloc[0] * 100 if len(r) else np.nan)
                errs.append(r["std"].iloc[0] * 100 if len(r) else 0)
            x = np.arange(len(tasks)) + (j - (len(mods) - 1) / 2) * width
            hatch = {"untrained": "//", "handmade": ".."}.get(m.family)
            ax.bar(x, vals, width, yerr=errs, label=f"{m.model} ({m.family})", color=cmap(j % 10), hatch=hatch,
                   edgecolor="black", linewidth=0.5, capsize=2)  # fmt: skip
        ax.set_xticks(np.arange(len(tasks)))
        ax.set_xticklabels(tasks, rotation=20, ha="right")
        ax.set_ylabel("linear probe: top-1 accuracy (%) / R² x 100\n(reconstruction: decoder R² x 100)")
        ax.set_title(f"Frozen features ({feat})")
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        paths += _save(fig, out_dir, f"fig1_{feat}")
        plt.close(fig)
    return paths


def plot_lowdata(summary: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """Fig. 4 style: linear-probe score vs fraction of the training split, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    s = _headline(summary)
    s = s[s.kind != "reconstruction"]
    paths: list[Path] = []
    for feat in dict.fromkeys(s.feature):
        sf = s[s.feature == feat]
        tasks = list(dict.fromkeys(sf.task))
        fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
        for ax, t in zip(axes[0], tasks):
            st = sf[sf.task == t]
            for j, (model, g) in enumerate(st.groupby("model", sort=False)):
                g = g.sort_values("fraction")
                fam = g.family.iloc[0]
                ls = {"learned": "-", "untrained": "--", "handmade": ":"}.get(fam, "-")
                ax.errorbar(g.fraction * 100, g["mean"] * 100, yerr=g["std"] * 100, marker="o", ls=ls, capsize=2,
                            label=f"{model} ({fam})", color=plt.get_cmap("tab10")(j % 10))  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel("training data (%)")
            ax.set_ylabel("accuracy (%)" if st.kind.iloc[0] == "classification" else "R² x 100")
            ax.set_title(t)
        axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        fig.suptitle(f"Low-data regimes ({feat})")
        fig.tight_layout()
        paths += _save(fig, out_dir, f"fig4_{feat}")
        plt.close(fig)
    return paths
