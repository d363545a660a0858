"""The forest plot of paired differences (chada.viz.paired_figure)."""

from __future__ import annotations

import pandas as pd

from chada.viz.paired_figure import forest_rows, plot_paired_forest


def _row(**kw):
    base = dict(task="t", feature="cls", fraction=1.0, metric="knn_top1", model="m", reference="m_untrained",
                role="untrained", seed="all", difference=0.1, low=0.02, high=0.18, p_adj=0.01)  # fmt: skip
    return {**base, **kw}


def test_forest_draws_the_over_seed_rows_at_the_largest_fraction(tmp_path):
    comp = pd.DataFrame([_row(), _row(seed="0"), _row(fraction=0.1), _row(role="handmade", reference="h"),
                         _row(task="u", fraction=0.1, p_adj=0.3), _row(feature="all")])  # fmt: skip
    rows = forest_rows(comp, feature="cls")
    assert sorted(zip(rows.task, rows.fraction)) == [
        ("t", 1.0),
        ("u", 0.1),
    ]  # each task's own largest fraction
    paths = plot_paired_forest(comp, tmp_path)
    assert sorted(p.name for p in paths) == ["paired_untrained_all.png", "paired_untrained_all.svg",
                                             "paired_untrained_cls.png", "paired_untrained_cls.svg"]  # fmt: skip
    assert plot_paired_forest(pd.DataFrame(), tmp_path) == []
