"""The paired comparisons of ``chada evaluate``: every learned model against its references.

For each task, feature kind, fraction, metric and seed, every learned model is compared image by image
(:func:`chada.eval.paired.compare`) with

- ``untrained``: its untrained copy (the config's ``untrained_of``, else the untrained model named
  ``<model>_untrained``, else the only untrained model of the same architecture);
- ``one_channel``: the One-Channel ViT (learned, architecture ``one_channel_vit*``; with several, the
  one with the same ``_s<k>`` pretraining-seed suffix);
- ``handmade``: every hand-made feature file.

Cross-validated tasks pair the out-of-fold predictions: every image is tested once per seed, by the
model of the fold that held it out. Seeds are paired within a seed (the same split or folds for both
models); the row over seeds (``seed = "all"``) is the test of the median seed (by difference), with
the spread of the per-seed differences (``diff_seed_min`` / ``diff_seed_max``) and how many seeds
reach p < 0.05 (``seeds_p05``), so one lucky seed cannot carry a result unseen.

Many comparisons: one table (one model against one reference, one feature kind, fraction and method:
linear probe, kNN or 1-NN, accuracy or R²) holds one test per task; their p-values are Holm-adjusted together (``p_adj``), and
``n_comparisons`` says how many tests the family holds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from chada.eval.config import ModelSpec
from chada.eval.markdown import markdown_table
from chada.eval.paired import PairedItems, compare, holm

__all__ = [
    "COMPARISON_COLUMNS",
    "ROLES",
    "comparison_table",
    "comparisons_markdown",
    "holm_by_table",
    "metric_kind",
    "reference_pairs",
]

ROLES = ("untrained", "one_channel", "handmade")
COMPARISON_COLUMNS = [
    "task", "feature", "fraction", "metric", "kind", "model", "reference", "role", "seed", "n", "difference",
    "low", "high", "p", "p_adj", "n_comparisons", "n_a_only", "n_b_only", "n_seeds", "seeds_p05",
    "diff_seed_min", "diff_seed_max",
]  # fmt: skip
_SEED_SUFFIX = re.compile(r"_s\d+$")


def metric_kind(metric: str) -> str | None:
    """``"accuracy"`` for ``*_top1``, ``"r2"`` for ``*_r2``, else None (not compared)."""
    if metric.endswith("_top1"):
        return "accuracy"
    if metric.endswith("_r2"):
        return "r2"
    return None


def _seed_tag(name: str) -> str:
    m = _SEED_SUFFIX.search(name)
    return m.group(0) if m else ""


def reference_pairs(
    models: pd.DataFrame, specs: Mapping[str, ModelSpec] | None = None
) -> list[tuple[str, str, str]]:
    """``[(model, reference, role)]`` for every learned model of ``models`` (columns model, family, arch)."""
    specs = specs or {}
    m = models.drop_duplicates("model")
    fam = dict(zip(m.model, m.family))
    arch = dict(zip(m.model, m.arch.astype(str)))
    untrained = [n for n in m.model if fam[n] == "untrained"]
    one_ch = [n for n in m.model if fam[n] == "learned" and arch[n].startswith("one_channel")]
    hand = [n for n in m.model if fam[n] == "handmade"]
    out = []
    for name in (n for n in m.model if fam[n] == "learned"):
        copies = [u for u in untrained if specs.get(u) is not None and specs[u].untrained_of == name]
        copies = copies or [u for u in untrained if u == f"{name}_untrained"]
        same_arch = [u for u in untrained if arch[u] == arch[name]]
        copies = copies or (same_arch if len(same_arch) == 1 else [])
        out += [(name, u, "untrained") for u in copies]
        if name not in one_ch:
            same_seed = [o for o in one_ch if _seed_tag(o) == _seed_tag(name)]
            out += [(name, o, "one_channel") for o in same_seed or one_ch]
        out += [(name, h, "handmade") for h in hand]
    return out


def _per_seed(items: Mapping[tuple, PairedItems], pairs: list, n_boot: int) -> list[dict[str, Any]]:
    """One comparison record per (pair, task, feature, fraction, seed, metric) found in ``items``."""
    by_model: dict[str, list[tuple]] = {}
    for key in items:
        by_model.setdefault(key[1], []).append(key)
    rows = []
    for model, ref, role in pairs:
        for task, _m, feat, frac, seed, metric in by_model.get(model, []):
            kind = metric_kind(metric)
            other = items.get((task, ref, feat, frac, seed, metric))
            if kind is None or other is None:
                continue
            c = compare(items[(task, model, feat, frac, seed, metric)], other, kind, n_boot=n_boot, seed=0,
                        task=task, feature=feat, fraction=frac, model=model, reference=ref)  # fmt: skip
            rows.append({**c.record(), "metric": metric, "role": role, "seed": seed})
    return rows


def _over_seeds(per_seed: pd.DataFrame) -> pd.DataFrame:
    """The median seed's test of each comparison (by difference), with the spread over seeds."""
    keys = ["task", "feature", "fraction", "metric", "model", "reference"]
    out = []
    for _, g in per_seed.groupby(keys, sort=False):
        g = g.sort_values("difference", kind="stable")
        row = g.iloc[(len(g) - 1) // 2].to_dict()
        row.update(seed="all", n_seeds=len(g), seeds_p05=int((g.p < 0.05).sum()),
                   diff_seed_min=float(g.difference.min()), diff_seed_max=float(g.difference.max()))  # fmt: skip
        out.append(row)
    return pd.DataFrame(out)


def holm_by_table(df: pd.DataFrame) -> pd.DataFrame:
    """``p_adj`` and ``n_comparisons``: Holm over the tasks of one table (model x reference x feature
    x fraction x method, per seed; the method is the metric's prefix, so a linear probe's accuracy on
    one task and its R² on another are one table)."""
    df = df.copy()
    df["p_adj"], df["n_comparisons"] = np.nan, 0
    method = df.metric.astype(str).str.split("_").str[0]
    for _, g in df.groupby([df.model, df.reference, df.feature, df.fraction, method, df.seed], sort=False):
        df.loc[g.index, "p_adj"] = holm(g.p.to_numpy())
        df.loc[g.index, "n_comparisons"] = int(g.p.notna().sum())
    return df


def comparison_table(
    items: Mapping[tuple, PairedItems],
    results: pd.DataFrame,
    specs: Mapping[str, ModelSpec] | None = None,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Every paired comparison (columns :data:`COMPARISON_COLUMNS`): per seed, then over seeds.

    ``items``: :func:`chada.eval.protocol.run_feature_tasks`'s per-image results; ``results``: its
    long table (for each model's family and architecture).
    """
    if not items or results.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    pairs = reference_pairs(results[["model", "family", "arch"]], specs)
    per_seed = pd.DataFrame(_per_seed(items, pairs, n_boot))
    if per_seed.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    per_seed = per_seed.assign(n_seeds=1, seeds_p05=(per_seed.p < 0.05).astype(int),
                               diff_seed_min=per_seed.difference, diff_seed_max=per_seed.difference)  # fmt: skip
    both = pd.concat([_over_seeds(per_seed), per_seed.astype({"seed": object})], ignore_index=True)
    both["seed"] = both["seed"].astype(str)
    return holm_by_table(both)[COMPARISON_COLUMNS]


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "-"
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def comparisons_markdown(comparisons: pd.DataFrame) -> str:
    """Markdown: the comparisons over seeds at each task's largest fraction, one row per test.

    Differences x 100 (accuracy points, R² x 100) with the paired 95 % interval; ``a/b``: discordant
    images (only the model right / only the reference right; R²: smaller / larger squared error).
    """
    c = comparisons[comparisons.seed.astype(str) == "all"]
    if c.empty:
        return "(no paired comparisons)\n"
    c = c[c.fraction == c.groupby("task").fraction.transform("max")]
    header = ["task", "feature", "metric", "model", "reference", "n", "difference [95 %]", "a / b", "p",
              "p Holm (m)"]  # fmt: skip
    rows = [
        [r.task, r.feature, r.metric, r.model, r.reference, str(int(r.n)),
         f"{r.difference * 100:+.1f} [{r.low * 100:+.1f}, {r.high * 100:+.1f}]", f"{int(r.n_a_only)} / {int(r.n_b_only)}",
         _fmt_p(r.p), f"{_fmt_p(r.p_adj)} ({int(r.n_comparisons)})"]
        for r in c.itertuples()
    ]  # fmt: skip
    note = (
        "Paired: both models on the same test images, resampled together (1,000 bootstrap resamples); p is "
        "the exact McNemar test for accuracy, the bootstrap p for R²; Holm over the m tasks of one model, "
        "reference, feature, fraction and method (linear, kNN, 1-NN). Over seeds: the median seed's test.\n\n"
    )
    return note + markdown_table(header, rows)
