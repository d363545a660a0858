"""Results tables and figures of an evaluation run.

Files written by :func:`write_report` into ``out_dir``::

    results_long.csv        one row per task x model x feature x fraction x seed x metric
    results_summary.csv     mean, std (sample std, ddof=1; 0 for a single seed) and n over seeds
    results.json            {"summary": [...], "diagnostics": [...], "extra": {...}, "comparisons": [...]}
    comparisons.csv         paired comparisons of each learned model with its references
                            (:mod:`chada.eval.comparisons`)
    results.md              one Markdown table per task (mean +- std) and the diagnostics tables
    diagnostics.csv         long-format diagnostics (ratios, CKA, participation ratio, shortcuts)

Every score comes with the 95 % interval over its test images (``ci_low``, ``ci_high``;
:mod:`chada.eval.intervals`) and a ``mark``: ``best`` when that interval separates the best model of
a column from every other, ``tie`` when it does not. The figures (``fig1_<feature>``,
``fig4_<feature>``) are drawn by :mod:`chada.viz.results_figures`, which :mod:`chada.tasks.evaluation`
calls: ``eval/`` imports no plotting toolkit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.eval.comparisons import comparisons_markdown
from chada.eval.intervals import separated
from chada.eval.markdown import markdown_table
from chada.io import atomic_write_bytes

FAMILY_ORDER = {"learned": 0, "untrained": 1, "handmade": 2}

__all__ = [
    "FAMILY_ORDER",
    "MARK_LEGEND",
    "diagnostics_markdown",
    "format_score",
    "mark_ties",
    "metric_scale",
    "print_tables",
    "task_caption",
    "summarize",
    "summary_markdown",
    "write_report",
]

GROUP = ["task", "kind", "model", "family", "feature", "fraction", "metric"]
SUMMARY_COLUMNS = [*GROUP, "mean", "std", "n", "chance", "ci_low", "ci_high", "n_test", "design", "mark"]
# Lower is better for these; every other metric is higher-is-better.
LOWER_IS_BETTER = ("recon_mse", "recon_mae")
MARK_LEGEND = (
    "Cells: mean ± std over seeds [95 % interval over the test images]. **Bold**: the best score of its "
    "column, and its interval separates it from every other model's. ~: the interval overlaps the best "
    "score's, so the table does not rank this model against the best one (a difference of a few images)."
)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per setting: mean, std (ddof=1, 0 for one seed), n seeds, mean chance, the 95 % interval (mean of
    the seeds' bounds), test images, design, and ``mark`` (``best`` / ``tie`` / empty, see
    :func:`mark_ties`)."""
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    results = results.copy()
    for col in ("ci_low", "ci_high"):
        if col not in results:
            results[col] = np.nan
    if "design" not in results:
        results["design"] = ""
    results["design"] = results["design"].fillna("")
    g = results.groupby(GROUP, sort=False)
    out = g["value"].agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    out["chance"] = g["chance"].mean().to_numpy()
    out["ci_low"] = g["ci_low"].mean().to_numpy()
    out["ci_high"] = g["ci_high"].mean().to_numpy()
    out["n_test"] = g["n_test"].max().to_numpy()
    out["design"] = g["design"].first().to_numpy()
    return mark_ties(out)


def mark_ties(summary: pd.DataFrame) -> pd.DataFrame:
    """Add ``mark``: within each (task, feature, fraction, metric), ``best`` for the best mean when its
    95 % interval separates it from every other model's, ``tie`` for every model whose interval overlaps
    the best one's (the best included, when anything overlaps it), else empty."""
    out = summary.copy()
    out["mark"] = ""
    if out.empty:
        return out
    for _, g in out.groupby(["task", "feature", "fraction", "metric"], sort=False):
        if len(g) < 2 or g["mean"].isna().all():
            continue
        lower = g.metric.iloc[0] in LOWER_IS_BETTER
        best = g["mean"].idxmin() if lower else g["mean"].idxmax()
        b = (out.at[best, "ci_low"], out.at[best, "ci_high"])
        ties = [
            i for i in g.index if i != best and not separated(b, (out.at[i, "ci_low"], out.at[i, "ci_high"]))
        ]
        if ties:
            out.loc[[best, *ties], "mark"] = "tie"
        else:
            out.at[best, "mark"] = "best"
    return out


def format_score(r: Any, scale: float, std: bool = True, mark: bool = True) -> str:
    """One summary row as ``~67.2 ± 1.3 [60.1, 74.0]`` (``**67.2**`` for a separated best)."""
    if r is None or pd.isna(r["mean"]):
        return "-"
    digits = 1 if scale != 1.0 else 3
    value = f"{r['mean'] * scale:.{digits}f}"
    m = r.get("mark", "") if mark else ""
    value = f"**{value}**" if m == "best" else (f"~{value}" if m == "tie" else value)
    text = value + (f" ± {r['std'] * scale:.{digits}f}" if std else "")
    lo, hi = r.get("ci_low"), r.get("ci_high")
    if lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi):
        text += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
    return text


def metric_scale(metric: str) -> float:
    """100 for accuracies (shown in %), 1 otherwise."""
    return 100.0 if metric.endswith("top1") else 1.0


def _frac_label(f: float) -> str:
    return f"{f * 100:g}%"


def _wide(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (model, family, feature), one column per metric@fraction (:func:`format_score`)."""
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
                rec[f"{m} @{_frac_label(f)}"] = format_score(r.iloc[0], metric_scale(m)) if len(r) else "-"
        records.append(rec)
    return pd.DataFrame(records)


def task_caption(s: pd.DataFrame) -> str:
    """``"classification; 5-fold CV over all 103 images, 5 repeats; chance 38.8"``-style caption of one
    task's summary rows."""
    kind = s.kind.iloc[0]
    n = int(s["n"].max()) if len(s) else 0
    full = s[s.fraction == s.fraction.max()]
    design = str(full["design"].iloc[0]) if "design" in full and len(full) else ""
    n_test = int(full["n_test"].max()) if "n_test" in full and full["n_test"].notna().any() else None
    if "CV" in design:
        where = f"{design} over all {n_test} images, {n} repeats (one per seed)"
    else:
        where = f"{n} seeds" + (f"; {n_test} test images" if n_test else "")
    if kind == "reconstruction":
        chance = full[full.metric == "recon_r2"]["chance"].mean()
        label = f"chance (train-mean prediction) R² {chance:.3g}"
    else:
        scale = metric_scale(full.metric.iloc[0])
        label = f"chance (best constant predictor) {full['chance'].mean() * scale:.3g}"
    return f"{kind}; {where}; {label}"


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "(empty)\n"
    cols = list(df.columns)
    return markdown_table(cols, [[r[c] for c in cols] for _, r in df.iterrows()])


def summary_markdown(summary: pd.DataFrame) -> str:
    """Markdown tables, one per task; accuracies in %, R² as is; mean ± std [95 % interval]."""
    parts = [MARK_LEGEND + "\n"]
    for task in dict.fromkeys(summary.task):
        s = summary[summary.task == task]
        parts.append(f"### {task} ({task_caption(s)})\n")
        parts.append(_md_table(_wide(summary, task)))
    return "\n".join(parts)


RATIO_NOTE = (
    "ratio = baseline / model; chance_normalised = (baseline − chance) / (model − chance), the share of "
    'the model\'s above-chance score that the baseline also reaches. "-": undefined, because the learned '
    "model scores at or below chance there (model − chance ≤ 0), so it has no above-chance score to share."
)


def _ratio_view(d: pd.DataFrame, summary: pd.DataFrame | None) -> pd.DataFrame | None:
    """Baseline ratios at 100 % of the training data (linear probe), beside the model's score and chance."""
    sc = d[d.measure.isin(["ratio", "chance_normalised"])]
    if len(sc):
        sc = sc[(sc.fraction == sc.fraction.max()) & sc.metric.str.startswith("linear")]
    if not len(sc):  # (a reconstruction-only run has ratios, but none of a linear probe)
        return None
    keys = ["task", "feature", "model", "other", "family", "fraction", "metric"]
    piv = sc.groupby([*keys, "measure"], sort=False)["value"].mean().unstack("measure").reset_index()
    piv.columns.name = None
    if summary is not None and len(summary):
        m = summary[["task", "feature", "model", "fraction", "metric", "mean", "chance"]].rename(
            columns={"mean": "model score"}
        )
        piv = piv.merge(m, on=["task", "feature", "model", "fraction", "metric"], how="left")
    piv = piv.drop(columns=["fraction", "metric"])
    for c in piv.columns:
        if pd.api.types.is_float_dtype(piv[c]):
            piv[c] = [f"{v:.3f}" if pd.notna(v) else "-" for v in piv[c]]
    return piv


def _diag_views(diagnostics: pd.DataFrame, summary: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Compact views: baseline ratios (100 % data, linear probe), CKA, participation ratio, shortcuts."""
    views: dict[str, pd.DataFrame] = {}
    if diagnostics.empty:
        return views
    d = diagnostics
    ratios = _ratio_view(d, summary)
    if ratios is not None:
        views["Baseline vs learned model (linear probe, 100 % of the training data)"] = ratios
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


def diagnostics_markdown(diagnostics: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    """The diagnostics views as Markdown tables (``summary`` adds each model's score beside its ratios)."""
    views = _diag_views(diagnostics, summary)
    if not views:
        return ""
    parts = []
    for title, v in views.items():
        note = f"\n{RATIO_NOTE}\n" if title.startswith("Baseline") else ""
        parts.append(f"### {title}\n\n{_md_table(v)}{note}")
    return "\n".join(parts)


def print_tables(results: pd.DataFrame, diagnostics: pd.DataFrame | None = None, console: Any = None) -> None:
    """Print the results (and diagnostics) tables with rich."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(220, Console().width))
    summary = summarize(results)
    for task in dict.fromkeys(summary.task):
        wide = _wide(summary, task)
        table = Table(title=f"{task} ({task_caption(summary[summary.task == task])})", show_lines=False)
        for c in wide.columns:
            table.add_column(
                c, justify="left" if c in ("model", "family", "feature") else "right", no_wrap=True
            )
        for _, r in wide.iterrows():
            table.add_row(*[str(r[c]) for c in wide.columns])
        console.print(table)
    console.print(MARK_LEGEND.replace("**Bold**", "Bold (**x**)"))
    if diagnostics is not None:
        for title, v in _diag_views(diagnostics, summary).items():
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
    comparisons: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write every table; returns ``{name: path}``. (The figures are :mod:`chada.viz.results_figures`.)

    ``comparisons`` (:func:`chada.eval.comparisons.comparison_table`) go to ``comparisons.csv``, the
    ``"comparisons"`` section of ``results.json`` and a section of ``results.md``.
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
    if comparisons is not None:
        put("comparisons.csv", comparisons.to_csv(index=False))
        payload["comparisons"] = _json_safe(comparisons.to_dict("records"))
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
    if comparisons is not None and len(comparisons):
        md += ["\n## Paired comparisons (same test images)\n", comparisons_markdown(comparisons)]
    dmd = diagnostics_markdown(diagnostics, summary)
    if dmd:
        md += ["\n## Diagnostics\n", dmd]
    put("results.md", "\n".join(md))
    return files
