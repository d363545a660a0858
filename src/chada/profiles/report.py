"""Write a profiling run: profiles (Parquet), readouts (CSV + JSON), comparisons, a markdown section."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from chada.io import atomic_write_bytes, atomic_write_json, atomic_write_text, safe_filename
from chada.profiles.config import ProfileConfig
from chada.profiles.run import READOUTS, ProfileResult

__all__ = ["readouts_table", "write_outputs", "markdown_section"]


def readouts_table(results: Mapping[str, ProfileResult]) -> pd.DataFrame:
    """Long table: ``model, readout, value, ci_low, ci_high, n`` (one row per model x readout)."""
    rows = [{"model": m, "readout": k, **v} for m, r in results.items() for k, v in r.readouts.items()]
    return pd.DataFrame(rows, columns=["model", "readout", "value", "ci_low", "ci_high", "n"])


def _parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def _csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def write_outputs(
    out: Path, results: Mapping[str, ProfileResult], comparisons: pd.DataFrame, cfg: ProfileConfig
) -> list[Path]:
    """Per model ``<model>/{wells,treatments}.parquet`` and its tables; ``readouts.csv/.json`` and
    ``comparisons.csv`` for all models. Returns the paths written."""
    written = []
    for model, r in results.items():
        d = out / safe_filename(model)
        d.mkdir(parents=True, exist_ok=True)
        for name, df in (("wells", r.wells), ("treatments", r.treatments)):
            _parquet(df, d / f"{name}.parquet")
            written.append(d / f"{name}.parquet")
        for name, df in (
            ("activity", r.activity),
            ("consistency", r.consistency),
            ("per_treatment", r.per_treatment),
        ):
            _csv(df, d / f"{name}.csv")
            written.append(d / f"{name}.csv")
    table = readouts_table(results)
    _csv(table, out / "readouts.csv")
    _csv(comparisons, out / "comparisons.csv")
    atomic_write_json(out / "readouts.json", {
        "config": dataclasses.asdict(cfg),
        "readouts": {m: r.readouts for m, r in results.items()},
        "n_features": {m: len(r.names) for m, r in results.items()},
        "comparisons": comparisons.to_dict(orient="records"),
    }, indent=2, default=str)  # fmt: skip
    return written + [out / "readouts.csv", out / "comparisons.csv", out / "readouts.json"]


def _fmt(v: float) -> str:
    return "n/a" if pd.isna(v) else f"{v:.3f}"


def markdown_section(
    results: Mapping[str, ProfileResult],
    comparisons: pd.DataFrame,
    cfg: ProfileConfig,
    figures: Mapping[str, str],
) -> str:
    """The report's profiles section: readouts with 95 % intervals, paired differences, figures."""
    lines = ["## Profiles", "",
             f"Wells: {cfg.aggregate} of the rows; normalised per plate against `{cfg.control_query}` "
             f"({cfg.normalize}); correction: {cfg.correction}"
             f"{' on ' + ', '.join(cfg.batch_cols) if cfg.correction != 'none' else ''}; treatments = "
             f"{' x '.join(cfg.treatment_cols)}. Intervals: 95 %, bootstrap over treatments.", "",
             "| model | " + " | ".join(READOUTS) + " |", "|---" * (len(READOUTS) + 1) + "|"]  # fmt: skip
    for model, r in results.items():
        cells = [
            f"{_fmt(v['value'])} [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}] (n={v['n']})"
            for v in r.readouts.values()
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Readouts: " + "; ".join(f"`{k}`: {v}" for k, v in READOUTS.items()) + "."]
    if len(comparisons):
        lines += ["", "### Paired differences (model a - model b, treatments as the paired items)", "",
                  "| model a | model b | readout | difference [95 %] | n |", "|---|---|---|---|---|"]  # fmt: skip
        for c in comparisons.itertuples(index=False):
            lines.append(f"| {c.model_a} | {c.model_b} | {c.readout} | {_fmt(c.diff)} [{_fmt(c.ci_low)}, "
                         f"{_fmt(c.ci_high)}] | {c.n} |")  # fmt: skip
    for title, path in figures.items():
        lines += ["", f"![{title}]({path})"]
    return "\n".join(lines) + "\n"
