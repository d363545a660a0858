"""UMAP in ``chada.viz.projection`` (slow: numba compiles UMAP on first use, ~15 s of CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chada.encode.store import EmbeddingSet
from chada.viz.projection import project
from chada.viz.projection_figure import plot_projection


@pytest.mark.slow
def test_umap_small_n_keeps_order_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    sets = []
    for name, n, shift in [("A", 12, 4.0), ("B", 8, -4.0)]:
        meta = pd.DataFrame(
            {
                "image_id": [f"{name}{i}" for i in rng.permutation(n)],
                "dataset": name,
                "label": ["x", "y"] * (n // 2),
            }
        )
        sets.append(EmbeddingSet({"cls": (rng.normal(size=(n, 6)) + shift).astype(np.float32)}, meta, {}))
    coords, stats = project(sets, methods=["umap", "pca"], seed=0)
    assert stats["umap"]["n_neighbors"] == 15 and stats["methods"] == ["pca", "umap"]
    assert list(coords["image_id"]) == list(sets[0].meta["image_id"]) + list(sets[1].meta["image_id"])
    assert np.isfinite(coords[["umap1", "umap2"]].to_numpy()).all()
    tiny, tstats = project([sets[1].subset(np.arange(5))], methods=["umap"])
    assert tstats["umap"]["n_neighbors"] == 4  # adapted to N - 1
    paths = plot_projection(coords, stats, tmp_path / "u.png")
    assert paths[0].stat().st_size > 10_000
