"""Results tables and figures of an evaluation run.

Files written by :func:`write_report` into ``out_dir``::

    results_long.csv        one row per task x model x feature x fraction x seed x metric
    results_summary.csv     mean, std (sample std, ddof=1; 0 for a single seed) and n over seeds
    results.json            {"summary": [...], "diagnostics": [...], "extra": {...}}
    results.md              one Markdown table per task (mean +- std) and the diagnostics tables
    diagnostics.csv         long-format diagnostics (ratios, CKA, participation ratio, shortcuts)
    fig1_<feature>.png/.svg     paper Fig. 1 style: bars per task and model at 100 % of the data
    fig4_<feature>.png/.svg     paper Fig. 4 style: linear-probe score vs training-data fraction

(:mod:`chada.eval.figures` draws the figures. A run with channel-reconstruction tasks also gets
``reconstruction_<task>.png``, paper Fig. 16 style, from :mod:`chada.tasks.reconstruction.figure`.)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.eval.figures import FAMILY_ORDER, plot_bars, plot_lowdata
from chada.io import atomic_write_bytes

__all__ = [
    "diagnostics_markdown",
    "print_tables",
    "summarize",
    "summary_markdown",
    "write_report",
]

GROUP = ["task", "kind", "model", "family", "feature", "fraction", "metric"]


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1, 0 for one seed), n and mean chance over seeds for every setting."""
    if results.empty:
        return pd.DataFrame(columns=[*GROUP, "mean", "std", "n", "chance"])
    g = results.groupby(GROUP, sort=False)
    out = g["value"].agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    out["chance"] = g["chance"].mean().to_numpy()
    return out


def _fmt(mean: float, std: float, scale: float = 1.0) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean * scale:.1f} ± {std * scale:.1f}" if scale != 1.0 else f"{mean:.3f} ± {std:.3f}"


def _scale(metric: str) -> float:
    return 100.0 if metric.endswith("top1") else 1.0


def _frac_label(f: float) -> str:
    return f"{f * 100:g}%"


def _wide(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (model, family, feature), one column per metric@fraction with 'mean ± std'."""
    s = summary[summary.task == task]
    fracs = sorted(s.fraction.unique(), reverse=True)
    metrics = list(dict.fromkeys(s.metric))
    records = []
    keys = s[["model", "family", "feature"]].drop_duplicates()
    keys = keys.assign(_o=keys.family.map(FAMILY_ORDER).fillna(9)).sort_values(["feature", "_o", "model"])
    for _, k in keys.iterrows():
        rec: dict[str, Any] = {"model": k.model, "family": k.family, "feature": k.feature}
        for m in metrics:
            for f in fracs:
                r = s[(s.model == k.model) & (s.feature == k.feature) & (s.metric == m) & (s.fraction == f)]
                col = f"{m} @{_frac_label(f)}"
                rec[col] = _fmt(r["mean"].iloc[0], r["std"].iloc[0], _scale(m)) if len(r) else "-"
        records.append(rec)
    return pd.DataFrame(records)


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(empty)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def summary_markdown(summary: pd.DataFrame) -> str:
    """Markdown tables, one per task; accuracies in %, R2 as is, mean ± std over seeds."""
    parts = []
    for task in dict.fromkeys(summary.task):
        s = summary[summary.task == task]
        n = int(s["n"].max()) if len(s) else 0
        if s.kind.iloc[0] == "reconstruction":
            # metrics of one task have different chance levels: report the R2 one (train-mean predictor)
            chance = s[s.metric == "recon_r2"]["chance"].mean()
            label = "chance (train-mean prediction) R2"
        else:
            chance = s[s.fraction == s.fraction.max()]["chance"].mean() * _scale(s.metric.iloc[0])
            label = "chance"
        parts.append(f"### {task} ({s.kind.iloc[0]}; mean ± std over {n} seeds; {label} {chance:.3g})\n")
        parts.append(_md_table(_wide(summary, task)))
    return "\n".join(parts)


def _diag_views(diagnostics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Compact views: baseline ratios (100 % data, linear probe), CKA, participation ratio, shortcuts."""
    views: dict[str, pd.DataFrame] = {}
    if diagnostics.empty:
        return views
    d = diagnostics
    sc = d[d.measure.isin(["ratio", "chance_normalised"])]
    if len(sc):
        sc = sc[(sc.fraction == sc.fraction.max()) & sc.metric.str.startswith("linear")]
    if len(sc):  # (a reconstruction-only run has ratios, but none of a linear probe)
        piv = sc.pivot_table(
            index=["task", "feature", "model", "other", "family"], columns="measure", values="value"
        )
        views["Baseline vs learned model (linear probe, 100 % of the training split)"] = (
            piv.reset_index().round(3)
        )
    for measure, title in (
        ("cka", "Linear CKA between embeddings of the same images"),
        ("participation_ratio", "Effective dimensionality (participation ratio)"),
        (
            "shortcut_r2_pcs",
            "Shortcut features -> embedding top PCs (cross-validated ridge R2, variance-weighted)",
        ),
        ("shortcut_probe_r2", "Shortcut probes: embedding -> shortcut quantity (cross-validated ridge R2)"),
    ):
        v = d[d.measure == measure]
        if len(v):
            cols = (
                ["model", "family", "other", "feature", "value"]
                if measure != "participation_ratio"
                else ["model", "family", "feature", "value"]
            )
            views[title] = v[cols].round(3).reset_index(drop=True)
    return views


def diagnostics_markdown(diagnostics: pd.DataFrame) -> str:
    views = _diag_views(diagnostics)
    if not views:
        return ""
    return "\n".join(f"### {title}\n\n{_md_table(v)}" for title, v in views.items())


def print_tables(results: pd.DataFrame, diagnostics: pd.DataFrame | None = None, console: Any = None) -> None:
    """Print the results (and diagnostics) tables with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(220, Console().width))
    summary = summarize(results)
    for task in dict.fromkeys(summary.task):
        wide = _wide(summary, task)
        n = int(summary[summary.task == task]["n"].max())
        unit = (
            "target scaled to [0, 1]"
            if (summary[summary.task == task].kind == "reconstruction").all()
            else "accuracy in %"
        )
        table = Table(title=f"{task} (mean ± std over {n} seeds; {unit})", show_lines=False)
        for c in wide.columns:
            table.add_column(
                c, justify="left" if c in ("model", "family", "feature") else "right", no_wrap=True
            )
        for _, r in wide.iterrows():
            table.add_row(*[str(r[c]) for c in wide.columns])
        console.print(table)
    if diagnostics is not None:
        for title, v in _diag_views(diagnostics).items():
            table = Table(title=title)
            for c in v.columns:
                table.add_column(str(c))
            for _, r in v.iterrows():
                table.add_row(*[f"{x:.3f}" if isinstance(x, float) else str(x) for x in r.tolist()])
            console.print(table)


# ----------------------------------------------------------------------------- files
def _json_safe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def conv(v):
        if isinstance(v, (np.floating, float)):
            return None if not np.isfinite(v) else float(v)
        if isinstance(v, np.integer):
            return int(v)
        return v

    return [{k: conv(v) for k, v in r.items()} for r in records]


def write_report(
    results: pd.DataFrame,
    diagnostics: pd.DataFrame | None,
    out_dir: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write every table and the Fig. 1 / Fig. 4 figures; returns ``{name: path}``.

    ``extra["reconstruction"]`` (per-model decoder facts) is also written to ``results.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    diagnostics = diagnostics if diagnostics is not None else pd.DataFrame()
    summary = summarize(results)
    files: dict[str, Path] = {}

    def put(name: str, text: str) -> None:
        p = out / name
        atomic_write_bytes(p, text.encode())
        files[name] = p

    put("results_long.csv", results.to_csv(index=False))
    put("results_summary.csv", summary.to_csv(index=False))
    put("diagnostics.csv", diagnostics.to_csv(index=False))
    payload = {
        "summary": _json_safe(summary.to_dict("records")),
        "diagnostics": _json_safe(diagnostics.to_dict("records")),
        "extra": extra or {},
    }
    put("results.json", json.dumps(payload, indent=1, default=str))
    md = ["# Frozen-feature evaluation\n", summary_markdown(summary)]
    recon = (extra or {}).get("reconstruction")
    if recon:
        cols = ["task", "model", "family", "target", "image_size", "embed_dim", "decoder_params", "epochs",
                "n_images"]  # fmt: skip
        table = pd.DataFrame(recon)
        md += [
            "\n## Reconstruction decoders (same size for every encoder of a task)\n",
            _md_table(table[[c for c in cols if c in table.columns]]),
        ]
    dmd = diagnostics_markdown(diagnostics)
    if dmd:
        md += ["\n## Diagnostics\n", dmd]
    put("results.md", "\n".join(md))
    if plots and len(summary):
        for p in plot_bars(summary, out) + plot_lowdata(summary, out):
            files[p.name] = p
    return files
