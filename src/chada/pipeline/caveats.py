"""The quickstart report's words, written from the run's numbers: what a score can and cannot tell.

Every sentence here that makes a claim about a result reads it from the summary table
(:func:`chada.eval.report.summarize`) and says the opposite when the numbers say the opposite, so the
report and the README (:mod:`.readme`) never contradict their own tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from chada.eval.intervals import separated
from chada.pipeline.paired_section import best_row, significant, verdict
from chada.pipeline.settings import ENCODERS, TASKS

__all__ = ["caveats", "determinism", "one_channel_note", "reading_guide"]

INTERCHANNEL = "synth_interchannel"


def _row(summary: pd.DataFrame, task: str, model: str, metric: str, feature: str = "cls") -> Any:
    """The summary row of one score at the largest fraction, or None."""
    s = summary[(summary.task == task) & (summary.model == model) & (summary.metric == metric)
                & (summary.feature == feature)]  # fmt: skip
    if s.empty:
        return None
    return s[s.fraction == s.fraction.max()].iloc[0]


def _pct(r: Any) -> str:
    return f"{r['mean'] * 100:.1f} % [{r['ci_low'] * 100:.1f}, {r['ci_high'] * 100:.1f}]"


def _ci(r: Any) -> tuple[float, float]:
    return (float(r["ci_low"]), float(r["ci_high"]))


def _above_chance(r: Any) -> bool:
    return bool(pd.notna(r["ci_low"]) and r["ci_low"] > r["chance"])


def _interval_verdict(chada: Any, chada_u: Any) -> str:
    """The verdict from the two separate intervals (a run without paired comparisons)."""
    if separated(_ci(chada), _ci(chada_u)) and chada["mean"] > chada_u["mean"]:
        return ("the intervals do not overlap: pretraining taught ChAda-ViT something about how the channels "
                "relate, the mechanism the paper claims for inter-channel attention")  # fmt: skip
    verdict = "the intervals overlap, so this run alone does not show that pretraining learned the relation"
    if _above_chance(chada) and not _above_chance(chada_u):
        verdict += " (though only the pretrained model's interval lies above chance)"
    return verdict


def _paired_verdict(pr: Any) -> str:
    """The verdict from the paired test against the untrained copy (same test images)."""
    words = verdict(pr, "ChAda-ViT", "its untrained copy")
    if significant(pr):
        return (f"{words}. The paired test separates them: pretraining taught ChAda-ViT something about how the "
                "channels relate, the mechanism the paper claims for inter-channel attention")  # fmt: skip
    return f"{words}. The paired test does not separate them, so this run alone does not show that pretraining learned the relation"


def _interchannel(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None) -> list[str]:
    """The inter-channel bullets: each claim checked against this run's paired tests (else intervals)."""
    out = []
    chada, chada_u = (
        _row(summary, INTERCHANNEL, "chada_vit", "knn_top1"),
        _row(summary, INTERCHANNEL, "chada_vit_untrained", "knn_top1"),
    )
    if chada is not None and chada_u is not None:
        pr = best_row(comparisons, INTERCHANNEL, "chada_vit", "untrained", "knn_top1")
        verdict_text = _paired_verdict(pr) if pr is not None else _interval_verdict(chada, chada_u)
        out.append(
            f"- **Inter-channel label.** It says whether MarkerB fills the same sector of the cell as MarkerA or the "
            f"opposite one; each channel alone has the same distribution in both classes. ChAda-ViT's kNN accuracy "
            f"is {_pct(chada)} against {_pct(chada_u)} for its untrained copy (chance {chada['chance'] * 100:.1f} %). "
            f"{verdict_text[0].upper() + verdict_text[1:]}; over 4 pretraining seeds the kNN margin at k=20 was +0.09 "
            "(Appendix A of the README)."
        )
    one = _row(summary, INTERCHANNEL, "one_channel_vit", "knn_top1")
    if one is not None:
        where = ("its interval includes chance, as expected of a model whose channels never meet"
                 if not _above_chance(one) else
                 "above chance, although it never lets channels meet: the per-channel tokens it averages still "
                 "carry some of the relation")  # fmt: skip
        text = f"- The One-Channel ViT scores {_pct(one)} in kNN there: {where}."
        po = best_row(comparisons, INTERCHANNEL, "chada_vit", "one_channel", "knn_top1")
        if po is not None:
            text += (f" Against it, {verdict(po, 'ChAda-ViT', 'the One-Channel ViT')}: "
                     + ("ChAda-ViT is better by the paired test." if significant(po)
                        else "the paired test does not separate them."))  # fmt: skip
        out.append(text)
    hand = _row(summary, INTERCHANNEL, "handmade", "linear_top1")
    if hand is not None:
        if _above_chance(hand):
            out.append(
                f"- The hand-made features reach {_pct(hand)} with a linear probe (chance "
                f"{hand['chance'] * 100:.1f} %). They are not blind to channel relations: every channel is measured "
                "inside objects segmented from the nuclear channel, which on the 2-channel assay is a marker, so "
                "these compartment features measure how much of MarkerB lies where MarkerA is. CellProfiler's "
                "compartment measurements are a real co-localisation readout, and a serious benchmark should keep "
                "them as a baseline."
            )
        else:
            out.append(
                f"- The hand-made features stay at chance there ({_pct(hand)}, chance {hand['chance'] * 100:.1f} %): "
                "their per-channel statistics do not see the relation between the channels."
            )
    return out


def _small_tasks(summary: pd.DataFrame) -> str | None:
    full = summary[summary.fraction == summary.fraction.max()]
    small = full[full["design"].astype(str).str.contains("CV", na=False)].drop_duplicates("task")
    if small.empty:
        return None
    parts = [
        f"`{r.task}` ({int(r.n_test)} images: one image is {100 / r.n_test:.1f} points)"
        for r in small.itertuples()
    ]
    return (
        "- The real labels shipped here are weak (nucleus-area tercile, DAB level) and the datasets small: "
        + ", ".join(parts)
        + ". They are scored by stratified 5-fold cross-validation over all their images, repeated once per "
        "seed, so every image is tested; even so most differences there sit inside the intervals. Treat them as "
        "a check that real cells run through the pipeline, not as biology."
    )


def _task_by_task(comparisons: pd.DataFrame | None) -> str | None:
    """One bullet: on which tasks ChAda-ViT beats its untrained copy by the paired test (kNN and probe)."""
    parts = []
    for task in TASKS:
        for metric, name in (("knn_top1", "kNN"), ("linear_top1", "probe"), ("linear_r2", "ridge R²")):
            r = best_row(comparisons, task, "chada_vit", "untrained", metric)
            if r is not None:
                word = "better" if significant(r) else "not separated"
                parts.append(f"`{task}` {name} {r['difference'] * 100:+.1f} ({int(r['n_a_only'])} vs "
                             f"{int(r['n_b_only'])} images, Holm p {r['p_adj']:.2g}: {word})")  # fmt: skip
    if not parts:
        return None
    return ("- **Did pretraining help, task by task?** ChAda-ViT minus its untrained copy, paired on the same test "
            "images (100 % labels, CLS): " + "; ".join(parts) + ".")  # fmt: skip


def caveats(
    summary: pd.DataFrame, pretrain_seeds: int = 1, pretrain_minutes: float | None = None,
    comparisons: pd.DataFrame | None = None,
) -> str:  # fmt: skip
    """The "What these numbers can and cannot tell" section, from this run's summary and, when given,
    its paired comparisons (``comparisons.csv``: the verdicts then come from the paired tests)."""
    lines = [
        "These are small-scale numbers: tiny encoders (about 28 k parameters, 32 px inputs) pretrained for "
        "minutes on a few hundred images on a CPU. They show that the pipeline works end to end and what the "
        "comparison looks like. They are **not** a reproduction of the paper's results, which used ChAda-ViT "
        "Moyen (5.4 M parameters) pretrained for 400 epochs on 104k images on 32 GPUs.",
        "",
        *_interchannel(summary, comparisons),
        *[b for b in (_task_by_task(comparisons),) if b],
        '- Untrained networks and hand-made features often score close to learned encoders, as the "what are '
        'we learning?" study warns. Read every learned score next to those baselines and the diagnostics.',
    ]
    small = _small_tasks(summary)
    if small:
        lines.append(small)
    if pretrain_seeds <= 1:
        lines.append(
            "- **One pretraining seed.** Every learned model here is one DINO run (`--pretrain-seeds 1`, the "
            "default: each further seed adds a full pretraining stage"
            + (f", {pretrain_minutes:.0f} minutes in this run" if pretrain_minutes else "")
            + "). The ± std and the intervals cover the evaluation's seeds and test images, not the pretraining "
            "seed, which moves the inter-channel margin by several points (Appendix A of the README)."
        )
    else:
        lines.append(
            f"- **{pretrain_seeds} pretraining seeds.** Each learned model was pretrained {pretrain_seeds} times "
            '(`<encoder>_s<k>` rows); the table "Learned models over pretraining seeds" gives their mean and spread.'
        )
    return "\n".join(lines)


def determinism() -> str:
    """What is deterministic and what is not (measured facts, see the README's results section)."""
    return (
        "- **Deterministic:** the same machine (CPU model), the same thread counts (the quickstart fixes them: "
        "1 thread per pretraining, 1 BLAS thread in the evaluation) and the same versions of torch, NumPy and "
        "scikit-learn give the same numbers, run after run: every random draw is seeded.\n"
        "- **Not deterministic across machines:** another CPU model makes the math libraries pick other kernels, "
        "which sum in another order; DINO's 3,060 steps grow those last-bit differences into different "
        "encoders. On an Intel Xeon instead of the AMD EPYC used here, 13 of 55 headline cells differed (for "
        "example ChAda-ViT kNN 67.2 -> 67.8 %, inter_channel_vit radius R² 71.2 -> 62.8; reported in issue 19). "
        "Compare runs on one machine, and read differences between machines against the intervals."
    )


def reading_guide() -> str:
    """How to read a cell of the tables: the intervals, the marks, chance, the small-data design."""
    return (
        "Every score carries its **95 % interval over the test images**: the Wilson score interval for accuracy "
        "(each test image is right or wrong, a binomial count; Wilson keeps its coverage with a few dozen test "
        "images and near 0 or 100 %, where the usual p ± 1.96·sqrt(p(1-p)/n) fails), and a percentile bootstrap over "
        "the test images (1,000 resamples) for R², which has no closed-form interval. It measures which images "
        "happened to be tested, the largest source of noise here; the ± std over seeds (training subsets) is in "
        "the full tables. **Bold**: the best of its column, and its interval separates it from every other "
        "model's. **~**: the interval overlaps the best one's, so the table does not rank the two. (Non-overlap "
        "is a conservative test: every model sees the same test images, so the report also compares models image "
        'by image, a paired test that separates more pairs: the marks ▲u / ▲1 and the section "Paired tests"; '
        "docs/reading-the-report.md.) **Chance** is the score of the best constant predictor on the same test images: the most "
        "frequent class's rate for accuracy, the R² of predicting the training mean for regression. Tasks with "
        "fewer than 200 labelled images are scored by stratified 5-fold cross-validation over all their images, "
        "repeated once per seed, instead of one fixed split."
    )


def one_channel_note(mixed_groups: Mapping[str, list[int]]) -> str:
    """What the One-Channel ViT's embedding is on each task, and why."""
    mixed = [t for t, (group, *_rest) in TASKS.items() if group in mixed_groups]
    fixed = [t for t in TASKS if t not in mixed]
    if "one_channel_vit" not in ENCODERS:
        return ""
    text = ("The One-Channel ViT encodes each channel alone. On tasks whose images all have the same channel count "
            f"({', '.join(f'`{t}`' for t in fixed) or 'none here'}) its embedding concatenates the per-channel CLS "
            "tokens (C x D, as in the paper).")  # fmt: skip
    if mixed:
        text += (f" On the mixed-channel tasks ({', '.join(f'`{t}`' for t in mixed)}) it is their **mean** (D): a "
                 "probe needs one vector of one size per image, and a concatenation would be 1 x D for one "
                 "image and 5 x D for the next.")  # fmt: skip
    return text
