"""Paired comparisons of models' readouts: the paired items are the treatments both models scored."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import combinations

import pandas as pd

from chada.eval.paired import paired_bootstrap

__all__ = ["compare_models"]


def compare_models(
    per_treatment: Mapping[str, pd.DataFrame],
    keys: list[str],
    readouts: list[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """For every pair of models and readout: ``model_a - model_b`` with its paired 95 % interval.

    Args:
        per_treatment: ``{model: one row per treatment}`` with the ``keys`` columns and the readouts.

    Returns:
        rows ``model_a, model_b, readout, diff, ci_low, ci_high, n`` (n = treatments both scored).
    """
    rows = []
    for ma, mb in combinations(per_treatment, 2):
        for r in readouts:
            if r not in per_treatment[ma].columns or r not in per_treatment[mb].columns:
                continue  # a readout one of the two did not score (no MoA column)
            left = per_treatment[ma][keys + [r]].dropna()
            right = per_treatment[mb][keys + [r]].dropna()
            both = left.merge(right, on=keys, suffixes=("_a", "_b"))
            d = lo = hi = float("nan")  # no treatment scored by both: no difference to give
            if len(both):
                d, lo, hi = paired_bootstrap(
                    both[f"{r}_a"].to_numpy(), both[f"{r}_b"].to_numpy(), n_boot=n_boot, seed=seed
                )
            rows.append({"model_a": ma, "model_b": mb, "readout": r, "diff": d, "ci_low": lo, "ci_high": hi,
                         "n": len(both)})  # fmt: skip
    return pd.DataFrame(rows, columns=["model_a", "model_b", "readout", "diff", "ci_low", "ci_high", "n"])
