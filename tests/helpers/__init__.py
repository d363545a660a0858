"""Code the test files share (imported as ``tests.helpers.<module>``); fixtures live in conftest.py files."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: src/, configs/, benchmarks/, scripts/, docs/
