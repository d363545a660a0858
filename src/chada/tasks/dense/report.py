"""The dense task's tables and files.

:func:`write_dense_outputs` writes, for task ``NAME`` into the evaluation folder::

    dense_NAME.md           IoU and Dice with 95 % intervals per model and head; IoU by object size
    dense_NAME.csv          the same table as CSV
    dense_NAME_sizes.csv    mean per-object IoU per model, head and object-size bin
    dense_NAME.png          the figure (chada.tasks.dense.figure)
    probes/NAME/MODEL_HEAD.safetensors + .json   the first seed's probes, for ``chada segment``
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from chada.eval.markdown import markdown_table
from chada.io import atomic_write_text, safe_filename
from chada.tasks.dense.figure import plot_dense_examples

__all__ = ["dense_markdown", "dense_table_markdown", "write_dense_outputs"]

_ORDER = {"learned": 0, "untrained": 1, "handmade": 2, "chance": 3}


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return (
        table.assign(_o=table.family.map(_ORDER).fillna(9))
        .sort_values(["_o", "model", "head"])
        .drop(columns="_o")
    )


def dense_table_markdown(outcome: Any) -> str:
    """``| model | family | head | IoU [95 % CI] | Dice [95 % CI] |``, learned models first."""
    t = _sorted(outcome.table)
    rows = [[r.model, r.family, r["head"], f"{r.iou:.3f} [{r.iou_lo:.3f}, {r.iou_hi:.3f}]",
             f"{r.dice:.3f} [{r.dice_lo:.3f}, {r.dice_hi:.3f}]"] for _, r in t.iterrows()]  # fmt: skip
    return markdown_table(["model", "family", "head", "IoU [95 % CI]", "Dice [95 % CI]"], rows).rstrip("\n")


def _sizes_markdown(outcome: Any) -> str:
    s = outcome.sizes
    if s is None or s.empty:
        return ""
    bins = [str(b) for b in dict.fromkeys(s["bin"].astype(str))]
    counts = s.assign(bin=s["bin"].astype(str)).groupby("bin", sort=False)["n_objects"].first()
    head = ["model", "head"] + [f"{b} (n={int(counts.get(b, 0))})" for b in bins]
    rows = []
    for (model, hd), g in s.groupby(["model", "head"], sort=False):
        vals = {str(r["bin"]): r["iou"] for _, r in g.iterrows()}
        rows.append(
            [model, hd, *(f"{vals[b]:.3f}" if b in vals and pd.notna(vals[b]) else "-" for b in bins)]
        )
    return markdown_table(head, rows).rstrip("\n")


def _paired_markdown(outcome: Any) -> str:
    """Each learned probe minus its references' (:mod:`chada.tasks.dense.paired`), one row per pair and head."""
    c = getattr(outcome, "comparisons", None)
    if c is None or c.empty:
        return ""
    rows = [[r.model, r.reference, r.feature, f"{r.difference * 100:+.1f} [{r.low * 100:+.1f}, {r.high * 100:+.1f}]",
             f"{int(r.n_a_only)} / {int(r.n_b_only)}", f"{r.p:.2g}"] for r in c.itertuples()]  # fmt: skip
    return markdown_table(
        ["model", "reference", "head", "IoU difference [95 %]", "tiles + / -", "p"], rows
    ).rstrip("\n")


def dense_markdown(outcome: Any) -> str:
    """The task's section of ``results.md``: what ran, the interval table and the size breakdown."""
    info = outcome.info
    unit = f"patches ({info['px_per_patch']:g} px of the tile each)" if info.get("patch") else "pixels"
    parts = [
        f"### {outcome.task} (dense; mask `{info.get('mask')}`; pooled test IoU / Dice, mean over "
        f"{len(info.get('seeds', []))} probe seeds; 95 % bootstrap interval over the {info['n_test_tiles']} "
        f"test tiles; chance (all background) 0)\n",
        "\n".join(f"- {n}" for n in info.get("notes", [])),
        f"- tiles of {info['tile']} px, model input {info['image_size']} px; {info['n_train_tiles']} train / "
        f"{info['n_test_tiles']} test tiles"
        + (f"; Otsu threshold {info['otsu']:.3f}" if info.get("otsu") is not None else ""),
        "",
        dense_table_markdown(outcome),
    ]
    paired = _paired_markdown(outcome)
    if paired:
        parts += ["", "Paired IoU differences on the same test tiles (x 100; tiles better / worse; bootstrap p; "
                  "Holm over the dense tasks in `comparisons.csv`):", "", paired]  # fmt: skip
    sizes = _sizes_markdown(outcome)
    if sizes:
        parts += [
            "",
            f"Mean per-object IoU by object diameter, in {unit}; n = objects in the test set:",
            "",
            sizes,
        ]
    return "\n".join(parts) + "\n"


def write_dense_outputs(outcome: Any, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
    """Write the files listed in the module docstring; returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = safe_filename(outcome.task)
    files: dict[str, Path] = {}
    for fname, text in ((f"dense_{name}.md", dense_markdown(outcome)),
                        (f"dense_{name}.csv", _sorted(outcome.table).to_csv(index=False)),
                        (f"dense_{name}_sizes.csv", outcome.sizes.to_csv(index=False))):  # fmt: skip
        atomic_write_text(out / fname, text)
        files[fname] = out / fname
    for key, probe in outcome.probes.items():
        st, js = probe.save(out / "probes" / name / safe_filename(key))
        files[st.name] = st
    if plots:
        best = outcome.table[
            outcome.table["head"].isin([outcome.info.get("figure_head"), "threshold", "constant"])
        ]
        png = plot_dense_examples(outcome, out, dict(zip(best.model, best.iou)))
        if png is not None:
            files[png.name] = png
    return files
