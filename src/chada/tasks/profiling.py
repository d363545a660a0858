"""Profiling as a task: several models' feature tables -> profiles, readouts, paired differences,
figures and a report section in one folder. Behind ``chada profile`` and the ``profiles:`` section
of ``chada evaluate`` configs.

A ``profiles:`` section holds :class:`chada.profiles.ProfileConfig`'s keys, plus ``tables`` (``{model:
path}``; default: the ``models:`` section's files), ``projection`` (``umap``/``pca``/``none``) and
``pool`` (the ``.npz`` feature array)::

    profiles:
      tables: {chada_vit: ../emb/cells_chada.parquet, cp_measure: ../emb/cells_cp.parquet}
      batch_cols: [batch]
      exclude_moa: [inactive]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from chada.errors import InputError
from chada.profiles.config import ProfileConfig

__all__ = ["ProfilingTask", "parse_profiles_section", "run_profiling"]


@dataclass
class ProfilingTask:
    """What to profile: ``{model: table path}`` and the settings."""

    tables: dict[str, Path]
    config: ProfileConfig
    projection: str = "umap"
    pool: str = "cls"


def parse_profiles_section(
    raw: Mapping[str, Any] | None, base: Path, model_paths: Mapping[str, Path]
) -> ProfilingTask | None:
    """The ``profiles:`` section of an evaluation config (None when absent); paths resolve against ``base``."""
    if not raw:
        return None
    raw = dict(raw)
    tables = raw.pop("tables", None)
    projection, pool = raw.pop("projection", "umap"), raw.pop("pool", "cls")
    if projection not in ("umap", "pca", "none"):
        raise InputError(f"profiles: projection={projection!r}; choose umap, pca or none")
    if tables is None:
        paths = dict(model_paths)
    elif isinstance(tables, Mapping):
        paths = {str(k): (base / str(v)).expanduser() for k, v in tables.items()}
    else:
        raise InputError("profiles: 'tables' must map model names to feature tables")
    if not paths:
        raise InputError("profiles: no feature table (give 'tables' or a models: section)")
    return ProfilingTask(paths, ProfileConfig.from_dict(raw), projection, pool)


def _figures(results: Mapping[str, Any], cfg: ProfileConfig, out: Path, method: str) -> dict[str, str]:
    from chada.viz.profile_figures import embed_2d, plot_map_scatter, plot_treatment_map

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    plot_map_scatter({m: r.activity for m, r in results.items()}, figs / "map_scatter.png")
    shown = {"activity mAP vs -log10 p": "figures/map_scatter.png"}
    if method != "none":
        coords = {m: embed_2d(r.treatments[r.names].to_numpy(), method, cfg.seed) for m, r in results.items()}
        labels = {m: r.treatments for m, r in results.items()}
        colour_by = ([cfg.moa_col] if cfg.moa_col else []) + ["batches"]
        plot_treatment_map(coords, labels, colour_by, figs / "treatment_map.png", method)
        shown[f"treatment {method} by {' and '.join(colour_by)}"] = "figures/treatment_map.png"
    return shown


def run_profiling(
    task: ProfilingTask, out: str | os.PathLike, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], pd.DataFrame, str]:
    """Profile every table, compare every pair of models, write everything under ``out``.

    Returns:
        ``({model: ProfileResult}, comparisons, markdown section)``.
    """
    from chada.io import atomic_write_text
    from chada.profiles.aggregate import to_frame
    from chada.profiles.compare import compare_models
    from chada.profiles.io import read_feature_table
    from chada.profiles.report import markdown_section, write_outputs
    from chada.profiles.run import READOUTS, profile_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg, results = task.config, {}
    for name, table in task.tables.items():
        log(f"{name}: reading {table}")
        meta, X, feats = read_feature_table(table, pool=task.pool)
        results[name] = profile_table(to_frame(meta, X, feats), feats, cfg)
    per = {m: r.per_treatment for m, r in results.items()}
    comparisons = compare_models(per, cfg.treatment_cols, list(READOUTS), cfg.n_boot, cfg.seed)
    write_outputs(out, results, comparisons, cfg)
    section = markdown_section(results, comparisons, cfg, _figures(results, cfg, out, task.projection))
    atomic_write_text(out / "profiles.md", section)
    return results, comparisons, section
