"""Fixtures of the ssl tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic corpus (``chada.data.synth``) all in the train split: 4 assays x 6 images of 32 px
    with 1, 2, 3 and 5 channels (24 images), written once per test module."""
    from chada.data import synth

    out = tmp_path_factory.mktemp("synth")
    return synth.generate(out, n_per_assay=6, size=32, seed=0, split_fractions=(1.0, 0.0, 0.0))
