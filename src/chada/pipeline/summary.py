"""Turn the quickstart's stage outputs into ``report.md`` / ``report.html``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd

from chada.eval.markdown import markdown_table
from chada.eval.report import FAMILY_ORDER, format_score
from chada.io import atomic_write_bytes, check_finished
from chada.pipeline.caveats import caveats, determinism, one_channel_note, reading_guide
from chada.pipeline.dense_stage import dense_section
from chada.pipeline.paired_section import (
    MARK_NOTE,
    headline_marks,
    load_comparisons,
    paired_table,
    seed_spread,
)
from chada.pipeline.profile_stage import profiles_section
from chada.pipeline.report import Section, machine_description, write_report
from chada.pipeline.settings import ENCODERS, RECONSTRUCTION_TASK, TASKS

__all__ = ["HEADLINE_METRICS", "build_report", "headline_table", "seed_table"]

# The columns of the headline table, per task: these metrics where the task has them, else its first.
HEADLINE_METRICS = {
    "linear_top1": "probe",
    "knn_top1": "kNN",
    "linear_r2": "ridge R²",
    "recon_r2": "decoder R²",
}


def _headline_rows(summary: pd.DataFrame, feature: str) -> pd.DataFrame:
    s = summary[summary.feature == feature]
    s = s[s.fraction == s.groupby("task").fraction.transform("max")]
    keep = []
    for _task, g in s.groupby("task", sort=False):
        known = [m for m in HEADLINE_METRICS if m in set(g.metric)]
        keep.append(g[g.metric.isin(known or [g.metric.iloc[0]])])
    return pd.concat(keep) if keep else s


def headline_table(
    summary: pd.DataFrame, feature: str = "cls", comparisons: pd.DataFrame | None = None
) -> str:
    """Markdown: every task's headline metrics at 100 % of the labels, ``feature`` features, one row per
    model: ``mean [95 % interval]`` with the tie marks, then a chance row and the test design. With
    ``comparisons`` (``comparisons.csv``) a learned model's cell also carries the paired marks of
    :func:`chada.pipeline.paired_section.headline_marks` (beats its untrained copy / the One-Channel ViT)."""
    marks = headline_marks(comparisons, feature)
    s = _headline_rows(summary, feature)
    if s.empty:
        return "(no results)"
    cols = list(dict.fromkeys(zip(s.task, s.metric)))
    names = [f"{t} {HEADLINE_METRICS.get(m, m)}" for t, m in cols]
    mods = s[["model", "family"]].drop_duplicates("model")
    mods = mods.assign(_o=mods.family.map(FAMILY_ORDER).fillna(9)).sort_values(["_o", "model"])
    rows = []
    for m in mods.itertuples():
        cells = []
        for t, metric in cols:
            r = s[(s.task == t) & (s.metric == metric) & (s.model == m.model)]
            cell = format_score(r.iloc[0], 100.0, std=False) if len(r) else "-"
            mark = marks.get((t, metric, m.model))
            cells.append(f"{cell} {mark}" if mark else cell)
        rows.append([m.model, m.family, *cells])
    chance, design = [], []
    for t, metric in cols:
        r = s[(s.task == t) & (s.metric == metric)]
        chance.append(f"{r['chance'].mean() * 100 + 0.0:.1f}".replace("-0.0", "0.0"))
        d, n = str(r["design"].iloc[0] or "split"), int(r["n_test"].max())
        design.append(f"{n} (CV)" if "CV" in d else f"{n}")
    rows += [["chance", "constant", *chance], ["test images", "", *design]]
    return markdown_table(["model", "family", *names], rows).rstrip("\n")


def seed_table(summary: pd.DataFrame, runs: dict[str, tuple[str, int]], feature: str = "cls") -> str | None:
    """With several pretraining seeds: each encoder's headline scores as mean ± std over its seeds."""
    seeds_of: dict[str, list[str]] = {}
    for run, (enc, _seed) in runs.items():
        seeds_of.setdefault(enc, []).append(run)
    if max(len(v) for v in seeds_of.values()) < 2:
        return None
    s = _headline_rows(summary, feature)
    cols = list(dict.fromkeys(zip(s.task, s.metric)))
    rows = []
    for enc, members in seeds_of.items():
        for tag in ("", "_untrained"):
            cells = []
            for t, metric in cols:
                v = s[(s.task == t) & (s.metric == metric) & s.model.isin([f"{r}{tag}" for r in members])][
                    "mean"
                ]
                cells.append(f"{v.mean() * 100:.1f} ± {v.std(ddof=1) * 100:.1f}" if len(v) > 1 else "-")
            rows.append([f"{enc}{tag}", len(members), *cells])
    header = ["encoder", "seeds", *(f"{t} {HEADLINE_METRICS.get(m, m)}" for t, m in cols)]
    return markdown_table(header, rows).rstrip("\n")


def _pngs(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern))


def _what_ran(s: Any, data: dict[str, Any], machine: dict[str, str]) -> str:
    return "\n".join(
        [
            f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; mode: {'--fast smoke run' if s.fast else 'full'}",
            f"- Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
            f"({machine['torch_threads']} threads), CUDA: {machine['cuda']}, Python {machine['python']}",
            f"- Data: {data['images']['synth_all']} synthetic images (assays with 1, 2, 3 and 5 channels, "
            f"{s.synth_size} px), {data['images']['real_nuclei']} real DSB2018 nucleus crops (1 channel), "
            f"{data['images']['real_ihc']} real IHC tiles (3 channels); DINO corpus: "
            f"{data['images']['pretrain_corpus']} training images of all of them; the inter-channel task "
            f"is scored on {data['images'].get('synth_markers_eval', 0)} held-out marker images (another seed)",
            f"- Encoders ({', '.join(f'`{v}`' for v in ENCODERS.values())}): DINO with one recipe and budget "
            f"({s.epochs} epochs, `chada/configs/quickstart.yaml`), {s.pretrain_seeds} pretraining seed(s), "
            f"embeddings at {s.embed_size} px; untrained copies (each run's step-0 weights, `init/`); hand-made "
            "features (`chada features --kind handmade`)",
            f"- Evaluation: linear probe, weighted kNN (k=20, T=0.07), 1-NN; 1/10/100 % of the training "
            f"labels; {s.seeds} seeds; mean ± std over seeds and the 95 % interval over the test images",
        ]
    )


def _tasks(mixed_groups: dict[str, list[int]]) -> str:
    return (
        "\n".join(
            f"- `{name}` ({kind}, label `{label}`): {what}" for name, (_, label, kind, what) in TASKS.items()
        )
        + f"\n- `{RECONSTRUCTION_TASK}` (reconstruction): the Actin channel of the synthetic 3-channel assay "
        "predicted from the frozen CLS embedding of DAPI + Mito by a decoder of 2 fully-connected + 5 conv "
        "layers (the paper's BBBC021 protocol, decoder size scaled to 32 px, equal for every encoder)\n\n"
        + one_channel_note(mixed_groups)
    )


def _results_markdown(eval_dir: Path) -> str:
    """The evaluation's results.md, its headings one level down, without its title and its paired
    comparisons (each a long table: the report has its own paired section, the rest is in comparisons.csv)."""
    results_md = (eval_dir / "results.md").read_text()
    results_md = re.sub(r"\n## Paired comparisons.*?(?=\n## |\Z)", "\n", results_md, flags=re.S)
    results_md = "\n".join(line for line in results_md.splitlines() if not line.startswith("# "))
    return results_md.replace("\n## ", "\n### ")


def _figure_sections(figs: dict[str, Any]) -> list[Section]:
    """The attention-map and joint-projection sections (figures written by the quickstart's figure stage)."""
    return [
        Section(
            "Attention maps",
            f"Last-layer CLS attention on the synthetic 5-channel test image `{figs.get('image_id')}` "
            "(MarkerB on the same side of the cell as MarkerA), ChAda-ViT against the One-Channel ViT.",
            [("attention", Path(figs["attention"]))],
        ),
        Section(
            "One embedding space for three datasets",
            "ChAda-ViT CLS embeddings of the synthetic assays and the two real datasets (1, 2, 3, 5 channels) "
            "projected together.\n\n```\n"
            + json.dumps(figs.get("projection_stats", {}), indent=1, default=str)[:3000]
            + "\n```",
            [("projection", Path(figs["projection"]))],
        ),
    ]


def build_report(s, data: dict[str, Any], teachers: dict[str, str], ev: dict[str, Any], figs: dict[str, Any],
                 timings: dict[str, float], emb: dict[str, Any] | None = None) -> Path:  # fmt: skip
    eval_dir = Path(ev["out"])
    check_finished(eval_dir, "evaluation", rerun=f"run `chada quickstart --out {s.out}` again")
    summary = pd.read_csv(eval_dir / "results_summary.csv", keep_default_na=True)
    summary["design"] = summary["design"].fillna("") if "design" in summary else ""
    machine = machine_description()
    # The README block (scripts/readme_results.py) describes the machine the run was on, not its own.
    atomic_write_bytes(s.out / "machine.json", json.dumps(machine, indent=1).encode())
    pretrain_s = max((v for k, v in timings.items() if k.startswith("pretrain_")), default=None)
    seeds = seed_table(summary, s.runs())
    comparisons = load_comparisons(eval_dir)
    paired = paired_table(comparisons, HEADLINE_METRICS)
    spread = seed_spread(comparisons, HEADLINE_METRICS)
    sections = [
        Section("What ran", _what_ran(s, data, machine)),
        Section("Tasks", _tasks((emb or {}).get("mixed_groups") or {})),
        Section("How to read the numbers", reading_guide()),
        Section(
            "Headline: 100 % labels, CLS features (accuracy % / R² x 100; mean [95 % interval])",
            headline_table(summary, comparisons=comparisons) + ("\n\n" + MARK_NOTE if paired else ""),
        ),
        *(
            [
                Section(
                    "Paired tests: did pretraining help? (same test images)",
                    paired,
                    [(f.stem, f) for f in _pngs(eval_dir, "paired_untrained_cls.png")],
                )
            ]
            if paired
            else []
        ),  # fmt: skip
        *([Section("Learned models over pretraining seeds (mean ± std over seeds)", seeds)] if seeds else []),
        *([Section("Paired tests per pretraining seed", spread)] if spread else []),
        *[sec for sec in (dense_section(s.out), profiles_section(s.out)) if sec is not None],
        Section(
            "All results and diagnostics",
            _results_markdown(eval_dir),
            [
                (p.stem, p)
                for p in _pngs(eval_dir, "fig1_*.png")
                + _pngs(eval_dir, "fig4_*.png")
                + _pngs(eval_dir, "reconstruction_*.png")
            ],
        ),
        *_figure_sections(figs),
        Section(
            "What these numbers can and cannot tell",
            caveats(summary, s.pretrain_seeds, pretrain_s / 60 if pretrain_s else None, comparisons)
            + "\n"
            + determinism(),
        ),
        Section(
            "Timings (seconds)",
            markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()]),
        ),
        Section(
            "Settings and files",
            "```\n"
            + json.dumps({k: str(v) for k, v in vars(s).items() if k != "timings"}, indent=1)
            + "\n```\n\n"
            + "\n".join(f"- teacher `{k}`: `{v}`" for k, v in teachers.items())
            + f"\n- evaluation tables: `{eval_dir}`",
        ),
    ]
    md, _ = write_report(sections, s.out, "ChAda-ViT quickstart report")
    return md
