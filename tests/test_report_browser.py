"""report.html looked at in a real browser (headless Chromium through selenium).

The page must not scroll sideways at 1400 px: a wide table scrolls inside its own box. No number wraps
over lines, every picture loads, and the paired marks are visible. Skips, saying why, where no
Chromium or chromedriver is installed (Debian: ``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chada.cli import main
from chada.eval.report import summarize, summary_markdown
from chada.pipeline.paired_section import MARK_NOTE, paired_table
from chada.pipeline.report import Section, write_report
from chada.pipeline.summary import HEADLINE_METRICS, headline_table

CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _no_browser(reason: str) -> None:
    """Skip where no browser is installed; fail where CI installed one (``.ci/run`` sets the variable)."""
    if os.environ.get("CHADA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CHADA_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _driver():
    if BROWSER is None or not CHROMEDRIVER.exists():
        _no_browser(f"no browser: chromium {BROWSER or 'missing'}, {CHROMEDRIVER} {'found' if CHROMEDRIVER.exists() else 'missing'}")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):  # fmt: skip
        opts.add_argument(arg)
    opts.binary_location = BROWSER
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


# What the page reports about itself: page width, each table box, each image, each number.
_PROBE = """
const doc = document.documentElement;
const wraps = [...document.querySelectorAll('.table-wrap')].map(w => {
  const r = w.getBoundingClientRect(), t = w.querySelector('table').getBoundingClientRect();
  return {left: r.left, right: r.right, scroll: w.scrollWidth, client: w.clientWidth, table_right: t.right,
          scrolls: ['auto', 'scroll'].includes(getComputedStyle(w).overflowX)};
});
const bare = [...document.querySelectorAll('table')].filter(t => !t.parentElement.classList.contains('table-wrap')).length;
const imgs = [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, complete: i.complete}));
const lines = [...document.querySelectorAll('td, td .ci')].map(e => {
  const one = e.matches('.ci') ? e : e.firstChild;
  if (!one) return 1;
  const range = document.createRange(); range.selectNodeContents(one);
  return range.getClientRects().length;
});
const marks = [...document.querySelectorAll('.mark')].map(m => m.getBoundingClientRect().width);
return {viewport: doc.clientWidth, page: doc.scrollWidth, wraps, bare, imgs, maxLines: Math.max(0, ...lines), marks};
"""


def browser_check(html: Path) -> dict:
    """Open ``html`` in headless Chromium at 1400 px; assert the layout rules; return the page facts."""
    driver = _driver()
    try:
        driver.get(html.resolve().as_uri())
        driver.execute_script("return document.readyState")
        facts = driver.execute_script(_PROBE)
    finally:
        driver.quit()
    assert facts["page"] <= facts["viewport"], f"the page scrolls sideways: {facts['page']} > {facts['viewport']} px"
    assert facts["bare"] == 0, "a table outside a scrolling box"
    for w in facts["wraps"]:
        assert w["left"] >= 0 and w["right"] <= facts["viewport"] + 0.5, f"a table box leaves the page: {w}"
        assert w["table_right"] <= w["right"] + 0.5 or w["scrolls"], f"a table is cut off, its box does not scroll: {w}"
    bad = [i for i in facts["imgs"] if not i["complete"] or i["w"] == 0]
    assert not bad, f"figures that did not load: {bad}"
    assert facts["maxLines"] <= 1, "a number wraps over lines inside a table cell"
    return facts


def _fixture_report(out: Path) -> Path:
    """A report shaped like the quickstart's: 14 models x 5 tasks, full tables, paired marks, a figure."""
    rng = np.random.default_rng(0)
    tasks = {"synth_interchannel": "knn_top1", "synth_size": "linear_top1", "synth_radius": "linear_r2",
             "real_nuclei_size": "linear_top1", "real_ihc_dab": "knn_top1"}  # fmt: skip
    encs = ["chada_vit", "one_channel_vit", "inter_channel_vit"] + [f"other_vit_{i}" for i in range(4)]
    models = [(e, "learned") for e in encs] + [(f"{e}_untrained", "untrained") for e in encs] + [("handmade", "handmade")]
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
        Section("Paired tests", paired_table(comp, HEADLINE_METRICS) or "", [("wide figure", out / "wide.png")]),
        Section("All results", summary_markdown(summary)),
    ]
    return write_report(sections, out, "browser test")[1]


def test_fixture_report_reads_in_a_browser(tmp_path):
    html = _fixture_report(tmp_path)
    facts = browser_check(html)
    assert len(facts["wraps"]) >= 7 and any(w["scroll"] > w["client"] for w in facts["wraps"])  # one scrolls
    assert len(facts["marks"]) >= 10 and min(facts["marks"]) > 0  # the paired marks are drawn


@pytest.mark.slow
def test_quickstart_report_reads_in_a_browser(tmp_path):
    """The report of a real run (``chada quickstart --fast``, a few minutes on 2 loaded cores)."""
    if BROWSER is None or not CHROMEDRIVER.exists():
        _no_browser("no browser installed (chromium + chromium-driver)")
    assert main(["quickstart", "--fast", "--out", str(tmp_path / "run")]) == 0
    facts = browser_check(tmp_path / "run" / "report.html")
    assert len(facts["imgs"]) >= 5
