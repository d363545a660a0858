"""report.html looked at in a real browser (headless Chromium through selenium).

The page must not scroll sideways at 1400 px: a wide table scrolls inside its own box. No number wraps
over lines, every picture loads, and the paired marks are visible. Skips, saying why, where no
Chromium or chromedriver is installed (Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chada.eval.report import summarize, summary_markdown
from chada.pipeline.paired_section import MARK_NOTE, paired_table
from chada.pipeline.report import Section, write_report
from chada.pipeline.summary import HEADLINE_METRICS, headline_table
from tests.helpers.browser import browser_check


def _fixture_report(out: Path) -> Path:
    """A report shaped like the quickstart's: 14 models x 5 tasks, full tables, paired marks, a figure."""
    rng = np.random.default_rng(0)
    tasks = {"synth_interchannel": "knn_top1", "synth_size": "linear_top1", "synth_radius": "linear_r2",
             "real_nuclei_size": "linear_top1", "real_ihc_dab": "knn_top1"}  # fmt: skip
    encs = ["chada_vit", "one_channel_vit", "inter_channel_vit"] + [f"other_vit_{i}" for i in range(4)]
    models = (
        [(e, "learned") for e in encs]
        + [(f"{e}_untrained", "untrained") for e in encs]
        + [("handmade", "handmade")]
    )
    rows = []
    for task, metric in tasks.items():
        kind = "regression" if metric.endswith("r2") else "classification"
        for m, fam in models:
            for metric2 in (metric, "knn_" + metric.split("_")[1], "nn1_" + metric.split("_")[1]):
                for frac in (0.01, 0.1, 0.5, 1.0):
                    for seed in range(3):
                        v = float(rng.uniform(0.4, 0.95))
                        rows.append(dict(task=task, kind=kind, model=m, family=fam, arch=m, feature="cls",
                                         fraction=frac, seed=seed, metric=metric2, value=v, chance=0.5,
                                         n_train=100, n_test=180, ci_low=v - 0.07, ci_high=v + 0.06,
                                         design="split"))  # fmt: skip
    summary = summarize(pd.DataFrame(rows))
    comp = pd.DataFrame([dict(task=t, feature="cls", fraction=1.0, metric=m, kind="accuracy", model="chada_vit",
                              reference=f"{ref}", role=role, seed="all", n=180, difference=0.117, low=0.033,
                              high=0.2, p=0.01, p_adj=0.04, n_comparisons=5, n_a_only=41, n_b_only=20)
                         for t, m in tasks.items()
                         for ref, role in (("chada_vit_untrained", "untrained"), ("one_channel_vit", "one_channel"))])  # fmt: skip
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 3))
    ax.plot([0, 1], [0, 1])
    fig.savefig(out / "wide.png")
    plt.close(fig)
    sections = [
        Section("Headline", headline_table(summary, comparisons=comp) + "\n\n" + MARK_NOTE),
        Section(
            "Paired tests", paired_table(comp, HEADLINE_METRICS) or "", [("wide figure", out / "wide.png")]
        ),
        Section("All results", summary_markdown(summary)),
    ]
    return write_report(sections, out, "browser test")[1]


def test_fixture_report_reads_in_a_browser(tmp_path):
    html = _fixture_report(tmp_path)
    facts = browser_check(html)
    assert len(facts["wraps"]) >= 7 and any(w["scroll"] > w["client"] for w in facts["wraps"])  # one scrolls
    assert len(facts["marks"]) >= 10 and min(facts["marks"]) > 0  # the paired marks are drawn
