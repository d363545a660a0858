"""Turn the quickstart's stage outputs into ``report.md`` / ``report.html``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from chada.pipeline.dense_stage import dense_section
from chada.pipeline.report import Section, machine_description, write_report
from chada.pipeline.settings import ENCODERS, TASKS

__all__ = ["build_report", "headline_table"]

CAVEATS = """\
These are small-scale numbers: tiny encoders (about 28 k parameters, 32 px inputs) pretrained for
minutes on a few hundred images on a CPU. They show that the pipeline works end to end and what the
comparison looks like. They are **not** a reproduction of the paper's results, which used ChAda-ViT
Moyen (5.4 M parameters) pretrained for 400 epochs on 104k images on 32 GPUs.

- The synthetic inter-channel task is built so that no single channel carries the label. If an
  encoder beats its untrained copy and the hand-made features there, it has learned something about
  how the channels relate: that is the mechanism the paper claims for inter-channel attention. The
  One-Channel ViT sees each channel alone and the hand-made features are per-channel statistics, so
  neither should rise far above chance on it.
- Untrained networks and hand-made features often score close to learned encoders, as the
  "what are we learning?" study warns. Read every learned score next to those baselines and the
  diagnostics.
- The real labels shipped here are weak (nucleus-area tercile, DAB level) and small. Treat them as
  a check that real cells run through the pipeline, not as biology.
"""


def headline_table(summary: pd.DataFrame) -> str:
    """Markdown: linear probe and kNN at 100 % labels, CLS features, one row per model."""
    s = summary[(summary.fraction == summary.fraction.max()) & (summary.feature == "cls")]
    metrics = {"linear_top1": "probe acc", "knn_top1": "kNN acc", "linear_r2": "ridge R²", "recon_r2": "decoder R²"}
    s = s[s.metric.isin(metrics)]
    if s.empty:
        return "(no results)"
    s = s.assign(col=s.task + " " + s.metric.map(metrics))
    s = s.assign(cell=[f"{m * 100:.1f} ± {d * 100:.1f}" for m, d in zip(s["mean"], s["std"])])
    wide = s.pivot_table(index=["model", "family"], columns="col", values="cell", aggfunc="first", sort=False)
    wide = wide.reset_index()
    order = {"learned": 0, "untrained": 1, "handmade": 2}
    wide = wide.assign(_o=wide.family.map(order).fillna(9)).sort_values(["_o", "model"]).drop(columns="_o")
    cols = list(wide.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in wide.iterrows():
        lines.append("| " + " | ".join(str(r[c]) if pd.notna(r[c]) else "-" for c in cols) + " |")
    return "\n".join(lines)


def _pngs(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern))


def build_report(s, data: dict[str, Any], teachers: dict[str, str], ev: dict[str, Any], figs: dict[str, Any],
                 timings: dict[str, float]) -> Path:  # fmt: skip
    eval_dir = Path(ev["out"])
    summary = pd.read_csv(eval_dir / "results_summary.csv")
    results_md = (eval_dir / "results.md").read_text()
    results_md = "\n".join(line for line in results_md.splitlines() if not line.startswith("# "))
    results_md = results_md.replace("\n## ", "\n### ")
    machine = machine_description()
    sections = [
        Section(
            "What ran",
            "\n".join(
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
                    f"({s.epochs} epochs, `chada/configs/quickstart.yaml`), embeddings at {s.embed_size} px; "
                    "untrained copies (each run's step-0 weights, `init/`); hand-made features (`chada features --kind handmade`)",
                    f"- Evaluation: linear probe, weighted kNN (k=20, T=0.07), 1-NN; 1/10/100 % of the training "
                    f"labels; {s.seeds} seeds; mean ± std",
                ]
            ),
        ),
        Section(
            "Tasks",
            "\n".join(f"- `{name}` ({kind}, label `{label}`): {what}" for name, (_, label, kind, what) in TASKS.items())
            + "\n- `synth_actin_reconstruction` (reconstruction): the Actin channel of the synthetic 3-channel assay "
            "predicted from the frozen CLS embedding of DAPI + Mito by a decoder of 2 fully-connected + 5 conv "
            "layers (the paper's BBBC021 protocol, decoder size scaled to 32 px, equal for every encoder)",
        ),
        Section("Headline: 100 % labels, CLS features (accuracy % / R² x 100)", headline_table(summary)),
        *[sec for sec in (dense_section(s.out),) if sec is not None],
        Section(
            "All results and diagnostics",
            results_md,
            [(p.stem, p) for p in _pngs(eval_dir, "fig1_*.png") + _pngs(eval_dir, "fig4_*.png")
             + _pngs(eval_dir, "reconstruction_*.png")],
        ),
        Section(
            "Attention maps",
            f"Last-layer CLS attention on the synthetic 5-channel test image `{figs.get('image_id')}` "
            "(MarkerB on the same side of the cell as MarkerA), ChAda-ViT against the One-Channel ViT.",
            [("attention", Path(figs["attention"]))],
        ),
        Section(
            "One embedding space for three datasets",
            "ChAda-ViT CLS embeddings of the synthetic assays and the two real datasets (1, 2, 3, 5 channels) "
            "projected together.\n\n```\n" + json.dumps(figs.get("projection_stats", {}), indent=1, default=str)[:3000] + "\n```",
            [("projection", Path(figs["projection"]))],
        ),
        Section("What these numbers can and cannot tell", CAVEATS),
        Section(
            "Timings (seconds)",
            "| stage | seconds |\n|---|---|\n" + "\n".join(f"| {k} | {v:.1f} |" for k, v in timings.items()),
        ),
        Section(
            "Settings and files",
            "```\n" + json.dumps({k: str(v) for k, v in vars(s).items() if k != "timings"}, indent=1) + "\n```\n\n"
            + "\n".join(f"- teacher `{k}`: `{v}`" for k, v in teachers.items())
            + f"\n- evaluation tables: `{eval_dir}`",
        ),
    ]
    md, _ = write_report(sections, s.out, "ChAda-ViT quickstart report")
    return md
