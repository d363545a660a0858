"""The parallel test run of scripts/test.sh: the files tests/conftest.py collects first exist and come
first, and the script hands files out in that order (pytest-xdist would otherwise sort them by test
count and start the longest file, which has one test, last)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import LONG_FIRST
from tests.helpers import REPO


def test_the_long_files_exist():
    missing = [p for p in LONG_FIRST if not (REPO / p).is_file()]
    assert not missing, f"tests/conftest.py LONG_FIRST names files that are gone: {missing}"


def test_the_long_files_are_collected_first():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *[str(REPO / "tests" / d) for d in
                          ("core", "ssl", "pipeline", "crosscutting")]],
                         cwd=REPO, capture_output=True, text=True, timeout=300).stdout  # fmt: skip
    files = list(dict.fromkeys(line.split("::", 1)[0] for line in out.splitlines() if "::" in line))
    assert files[: len(LONG_FIRST)] == list(LONG_FIRST)
    assert len(files) > len(LONG_FIRST) + 10


def test_the_script_keeps_the_collection_order():
    script = (REPO / "scripts" / "test.sh").read_text()
    assert "--dist loadfile --no-loadscope-reorder" in script
    assert script.count('"${parallel[@]}"') == 2  # every test and the lowest versions' fast tests
