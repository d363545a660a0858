"""Fig. 1 / Fig. 4: one colour per model in every figure, chance drawn, far-off scores clipped and marked."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chada.viz.results_figures import Y_FLOOR, lowdata_figure, plot_results
from chada.viz.style import model_style, model_styles


def _summary() -> pd.DataFrame:
    rows = []
    for model, fam in (
        ("chada_vit", "learned"),
        ("inter_channel_vit_untrained", "untrained"),
        ("handmade", "handmade"),
    ):
        for frac in (0.01, 0.1, 1.0):
            # handmade at 1 %: R² -67.7, the point that stretched the old axis to -20,000
            mean = -67.7 if (model == "handmade" and frac == 0.01) else 0.5 + 0.4 * frac
            rows.append(dict(task="synth_radius", kind="regression", model=model, family=fam, feature="cls",
                             fraction=frac, metric="linear_r2", mean=mean, std=1.5, n=5, chance=-0.02,
                             ci_low=mean - 0.1, ci_high=mean + 0.1, n_test=96, design="split", mark=""))  # fmt: skip
    return pd.DataFrame(rows)


def test_far_off_scores_are_clipped_and_written_beside_the_axis():
    import matplotlib.pyplot as plt

    fig = lowdata_figure(_summary(), "t")
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low == Y_FLOOR and high < 150  # the axis stays readable
    assert any(t.get_text() == "-6770" for t in ax.texts)  # the clipped value, written
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert chance and np.allclose(chance[0].get_ydata(), -2.0)
    plt.close(fig)


def test_one_colour_per_model_across_figures(tmp_path):
    import matplotlib.pyplot as plt

    # The same model keeps its colour whatever else is drawn beside it, and in any order.
    a = model_styles([("chada_vit", "learned"), ("inter_channel_vit", "learned"), ("foo", None)])
    b = model_styles([("foo", None), ("inter_channel_vit", "learned")])
    assert a["inter_channel_vit"]["color"] == b["inter_channel_vit"]["color"]
    assert a["foo"]["color"] == b["foo"]["color"]
    assert len({st["color"] for st in a.values()}) == 3
    # An untrained copy is a lighter tint of its model's hue; the attention figure's label finds it too.
    assert model_style("ChAda-ViT (DINO)")["color"] == a["chada_vit"]["color"]
    light = model_style("chada_vit_untrained")["color"]
    assert all(u >= c for u, c in zip(light, a["chada_vit"]["color"]))
    fig = lowdata_figure(_summary(), "t")
    drawn = {c.get_label(): c.lines[0].get_color() for c in fig.axes[0].containers}
    assert (
        drawn["inter_channel_vit_untrained (untrained)"]
        == model_style("inter_channel_vit_untrained", "untrained")["color"]
    )
    plt.close(fig)
    assert {p.name for p in plot_results(_summary(), tmp_path)} == {
        "fig1_cls.png",
        "fig1_cls.svg",
        "fig4_cls.png",
        "fig4_cls.svg",
    }
