"""Every diagnostic of an evaluation, for every model: the long table behind the report's diagnostics.

:func:`compute_diagnostics` applies the measures of :mod:`chada.eval.diagnostics` to an evaluation's
results and feature files (columns :data:`DIAG_COLUMNS`), in this order:

1. baseline score ratios and chance-normalised ratios (mean over seeds, higher-is-better metrics);
2. the participation ratio (effective dimensionality) of every feature file;
3. linear CKA between pairs (default: each learned model against its same-architecture untrained
   copy and against every hand-made file);
4. with ``diagnostics.shortcut_features``: how much of each embedding the shortcut features explain
   (top principal components), and how well each embedding predicts each shortcut quantity.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.encode.store import EmbeddingSet
from chada.eval.config import ModelSpec, TaskSpec, arch_name, infer_family
from chada.eval.diagnostics import (
    chance_normalised,
    linear_cka,
    participation_ratio,
    score_ratio,
    shortcut_explained,
    shortcut_probes,
)
from chada.eval.protocol import Loader, align_rows, resolve_kind

__all__ = ["DIAG_COLUMNS", "compute_diagnostics", "shortcut_targets"]

DIAG_COLUMNS = ["measure", "model", "family", "other", "task", "feature", "fraction", "metric", "value"]
_Add = Callable[..., None]

_COUNT = re.compile(r"(^|_)(cell|cells|nuclei|nucleus)?_?count($|_)|^n_?(cells|nuclei)$")
_MEAN_INT = re.compile(r"mean_?intensity|intensity_?mean|^mean(_chmean)?$|^mean_ch(mean)?")


def _feature_names(emb: EmbeddingSet, kind: str) -> list[str] | None:
    names = emb.info.get("feature_names")
    if isinstance(names, dict):
        names = names.get(kind)
    if isinstance(names, list) and len(names) == emb.get(kind).shape[1]:
        return [str(n) for n in names]
    return None


def shortcut_targets(
    emb: EmbeddingSet, kind: str, wanted: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Shortcut quantities ``name -> [N]`` from the shortcut file's meta columns or named features.

    ``wanted`` names columns exactly; by default the first column matching a cell/nuclei count and the
    first matching a mean intensity (e.g. ``mean_intensity``, ``mean_chmean``) are used.
    """
    table: dict[str, np.ndarray] = {}
    for c in emb.meta.columns:
        vals = pd.to_numeric(emb.meta[c], errors="coerce")
        if vals.notna().any():
            table[str(c)] = vals.to_numpy(dtype=np.float64)
    names = _feature_names(emb, kind)
    if names:
        x = emb.get(kind)
        for j, n in enumerate(names):
            table.setdefault(n, x[:, j].astype(np.float64))
    if wanted:
        missing = [w for w in wanted if w not in table]
        if missing:
            raise ValueError(f"shortcut targets {missing} not found; available: {sorted(table)[:40]}")
        return {w: table[w] for w in wanted}
    out = {}
    for pattern in (_COUNT, _MEAN_INT):
        hit = next((n for n in table if pattern.search(n.lower()) and n not in ("label", "target")), None)
        if hit is not None:
            out[hit] = table[hit]
    return out


def _model_file(name: str, models: dict[str, ModelSpec], tasks: list[TaskSpec]) -> Path | None:
    spec = models.get(name)
    if spec is not None and spec.path is not None:
        return spec.path
    return next((t.embeddings[name] for t in tasks if name in t.embeddings), None)


def _cap(n: int, max_rows: int, seed: int = 0) -> np.ndarray:
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


def compute_diagnostics(
    results: pd.DataFrame,
    settings: dict[str, Any],
    models: dict[str, ModelSpec],
    tasks: list[TaskSpec],
    loader: Any | None = None,
) -> pd.DataFrame:
    """Long-format diagnostics (columns :data:`DIAG_COLUMNS`) for every learned model."""
    loader = loader or Loader()
    diag = settings.get("diagnostics", {})
    max_rows = int(diag.get("max_rows", 5000))
    rows: list[dict[str, Any]] = []

    def add(measure, model, family, other, task, feature, fraction, metric, value):
        rows.append(dict(measure=measure, model=model, family=family, other=other, task=task, feature=feature,
                         fraction=fraction, metric=metric, value=float(value)))  # fmt: skip

    _ratios(results, add)
    info = _model_infos(models, tasks, loader)
    kinds = list(dict.fromkeys(k for t in tasks for k in t.feature_kinds))
    for n, (fam, _arch_name, emb) in info.items():
        for k in emb.features:
            x = emb.get(k)
            add(
                "participation_ratio",
                n,
                fam,
                "",
                "",
                k,
                np.nan,
                "",
                participation_ratio(x[_cap(len(x), max_rows)]),
            )
    pairs = diag.get("cka_pairs")
    _cka(info, _default_pairs(info, models) if pairs is None else pairs, kinds, max_rows, add)
    if diag.get("shortcut_features"):
        _shortcuts(info, loader(Path(diag["shortcut_features"])), diag, kinds, max_rows, add)
    return pd.DataFrame(rows, columns=DIAG_COLUMNS)


def _ratios(results: pd.DataFrame, add: _Add) -> None:
    """Baseline score ratios, from the mean over seeds (higher-is-better metrics only)."""
    results = results[~results.metric.isin(["recon_mse", "recon_mae"])]
    if not len(results):
        return
    mean = results.groupby(
        ["task", "model", "family", "arch", "feature", "fraction", "metric"], as_index=False
    )[["value", "chance"]].mean()
    for (task, feat, frac, metric), g in mean.groupby(["task", "feature", "fraction", "metric"]):
        learned = g[g.family == "learned"]
        base = g[g.family != "learned"]
        for _, m in learned.iterrows():
            for _, b in base.iterrows():
                add(
                    "ratio",
                    m.model,
                    b.family,
                    b.model,
                    task,
                    feat,
                    frac,
                    metric,
                    score_ratio(b.value, m.value),
                )
                add("chance_normalised", m.model, b.family, b.model, task, feat, frac, metric,
                    chance_normalised(b.value, m.value, m.chance))  # fmt: skip


def _model_infos(
    models: dict[str, ModelSpec], tasks: list[TaskSpec], loader: Any
) -> dict[str, tuple[str, str, EmbeddingSet]]:
    """``name -> (family, arch, feature file)`` of every model that has a file."""
    info: dict[str, tuple[str, str, EmbeddingSet]] = {}
    for n in sorted({n for t in tasks for n in t.embeddings}):
        path = _model_file(n, models, tasks)
        if path is None:
            continue
        emb = loader(path)
        spec = models.get(n, ModelSpec(n, path))
        info[n] = (infer_family(n, emb.info, spec.family), arch_name(spec, emb.info), emb)
    return info


def _default_pairs(
    info: dict[str, tuple[str, str, EmbeddingSet]], models: dict[str, ModelSpec]
) -> list[list[str]]:
    """Each learned model against its untrained copy (``untrained_of`` or same arch) and every hand-made file."""
    pairs = []
    for n, (fam, arch, _e) in info.items():
        if fam != "learned":
            continue
        for o, (ofam, oarch, _oe) in info.items():
            spec = models.get(o)
            if (
                ofam == "untrained"
                and ((spec and spec.untrained_of == n) or oarch == arch)
                or ofam == "handmade"
            ):
                pairs.append([n, o])
    return pairs


def _cka(
    info: dict[str, tuple[str, str, EmbeddingSet]], pairs: list, kinds: list[str], max_rows: int, add: _Add
) -> None:
    for a, b in pairs:
        if a not in info or b not in info:
            raise ValueError(
                f"cka pair {a!r}-{b!r}: no embeddings for {[m for m in (a, b) if m not in info]}"
            )
        ea, eb = info[a][2], info[b][2]
        ia, ib = align_rows(ea, eb)
        if len(ia) < 3:
            continue
        sel = _cap(len(ia), max_rows)
        for k in kinds:
            ka, kb = resolve_kind(ea, k), resolve_kind(eb, k)
            if ka is None or kb is None:
                continue
            add(
                "cka",
                a,
                info[b][0],
                b,
                "",
                k,
                np.nan,
                "",
                linear_cka(ea.get(ka)[ia[sel]], eb.get(kb)[ib[sel]]),
            )


def _shortcuts(
    info: dict[str, tuple[str, str, EmbeddingSet]],
    sc: EmbeddingSet,
    diag: dict[str, Any],
    kinds: list[str],
    max_rows: int,
    add: _Add,
) -> None:
    """Explained variance of each embedding by the shortcut features, and shortcut probes."""
    sc_kind = "shortcut" if "shortcut" in sc.features else next(iter(sc.features))
    targets_all = shortcut_targets(sc, sc_kind, diag.get("shortcut_targets"))
    ncomp = int(diag.get("n_components", 10))
    folds = int(diag.get("folds", 5))
    for n, (fam, _arch_name, emb) in info.items():
        ie, isc = align_rows(emb, sc)
        if len(ie) < max(folds, 4):
            continue
        sel = _cap(len(ie), max_rows)
        s_x = sc.get(sc_kind)[isc[sel]]
        good = np.isfinite(s_x).all(0)
        for k in kinds:
            kk = resolve_kind(emb, k)
            if kk is None:
                continue
            x = emb.get(kk)[ie[sel]]
            if good.any():
                r = shortcut_explained(s_x[:, good], x, n_components=ncomp, folds=folds)
                add(
                    "shortcut_r2_pcs",
                    n,
                    fam,
                    "shortcut",
                    "",
                    k,
                    np.nan,
                    f"top{r['n_components']}",
                    r["r2_weighted"],
                )
            tg = {t: v[isc[sel]] for t, v in targets_all.items()}
            for t, v in shortcut_probes(x, tg, folds=folds).items():
                add("shortcut_probe_r2", n, fam, t, "", k, np.nan, t, v)
