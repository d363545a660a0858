"""A real browser for the report tests: headless Chromium through selenium, and the layout rules.

``browser_check(html)`` opens a page at 1400 px and asserts: no sideways scroll (a wide table scrolls
in its own box), no number wrapping over lines, every picture loaded. Where no Chromium/chromedriver
is installed it skips, saying why, unless ``CHADA_REQUIRE_BROWSER=1`` (CI, after installing one).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _no_browser(reason: str) -> None:
    """Skip where no browser is installed; fail where CI installed one (``.ci/run`` sets the variable)."""
    if os.environ.get("CHADA_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CHADA_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _driver():
    if BROWSER is None or not CHROMEDRIVER.exists():
        _no_browser(
            f"no browser: chromium {BROWSER or 'missing'}, {CHROMEDRIVER} {'found' if CHROMEDRIVER.exists() else 'missing'}"
        )
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
    assert facts["page"] <= facts["viewport"], (
        f"the page scrolls sideways: {facts['page']} > {facts['viewport']} px"
    )
    assert facts["bare"] == 0, "a table outside a scrolling box"
    for w in facts["wraps"]:
        assert w["left"] >= 0 and w["right"] <= facts["viewport"] + 0.5, f"a table box leaves the page: {w}"
        assert w["table_right"] <= w["right"] + 0.5 or w["scrolls"], (
            f"a table is cut off, its box does not scroll: {w}"
        )
    bad = [i for i in facts["imgs"] if not i["complete"] or i["w"] == 0]
    assert not bad, f"figures that did not load: {bad}"
    assert facts["maxLines"] <= 1, "a number wraps over lines inside a table cell"
    return facts
