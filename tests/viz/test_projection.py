"""One embedding space for several datasets (chada.viz.projection); UMAP is in test_umap.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from chada.encode.store import EmbeddingSet, save_embeddings
from chada.viz.projection import (
    _best_threshold_balanced_accuracy,
    concat_embeddings,
    project,
    separability_1d,
    write_coords_csv,
)
from chada.viz.projection_figure import plot_projection


def _set(rng, n, dataset, shift=0.0, dim=12, model="chada_vit_test", labels=("taxol", "DMSO", "noco")):
    X = rng.normal(size=(n, dim))
    # A shift along a direction spread over all dims (as dataset effects are): survives standardisation.
    X += shift / np.sqrt(dim)
    lab = [labels[i % len(labels)] for i in range(n)]
    meta = pd.DataFrame(
        {
            "image_id": [f"{dataset}-{i:03d}" for i in rng.permutation(n)],  # not sorted: order must be kept
            "dataset": dataset,
            "label": lab,
            "channel_names": [["DAPI", "Actin"]] * n,
        }
    )
    return EmbeddingSet(
        {"cls": X.astype(np.float32), "all": np.hstack([X, X]).astype(np.float32)}, meta, {"model": model}
    )


def test_row_order_and_metadata_kept(tmp_path):
    rng = np.random.default_rng(0)
    e1, e2 = _set(rng, 30, "BBBC021", 5.0), _set(rng, 20, "Bray")
    p1, p2 = save_embeddings(e1, tmp_path / "e1.npz"), save_embeddings(e2, tmp_path / "e2.npz")
    coords, stats = project([p1, p2], methods=["pca"])
    expected = list(e1.meta["image_id"]) + list(e2.meta["image_id"])
    assert list(coords["image_id"]) == expected
    assert list(coords["input_row"]) == list(range(50))
    assert list(coords["source"]) == ["e1"] * 30 + ["e2"] * 20
    assert list(coords["source_row"]) == list(range(30)) + list(range(20))
    csv = write_coords_csv(coords, tmp_path / "proj.csv")
    back = pd.read_csv(csv)
    assert list(back["image_id"]) == expected
    assert back["channel_names"].iloc[0] == "DAPI;Actin"
    np.testing.assert_allclose(back["pc1"], coords["pc1"])
    assert len(stats["explained_variance_ratio"]) == 5
    assert all(
        a >= b for a, b in zip(stats["explained_variance_ratio"], stats["explained_variance_ratio"][1:])
    )


def test_separability_high_for_separated_and_chance_for_identical():
    rng = np.random.default_rng(1)
    _, far = project([_set(rng, 80, "A", 10.0), _set(rng, 80, "B", -10.0)], methods=["pca"])
    s = far["dataset_pc1"]
    assert s["cv_accuracy"] > 0.95 and s["threshold_balanced_accuracy"] > 0.95 and s["chance"] == 0.5
    # Same distribution, different names: held-out accuracy near chance.
    _, same = project([_set(rng, 150, "A"), _set(rng, 150, "B")], methods=["pca"])
    assert abs(same["dataset_pc1"]["cv_accuracy"] - 0.5) < 0.12
    # Exactly the same rows twice: no cut can do better than chance, even in-sample.
    e = _set(rng, 60, "A")
    twin = EmbeddingSet(e.features, e.meta.assign(dataset="B"), e.info)
    _, dup = project([e, twin], methods=["pca"])
    assert dup["dataset_pc1"]["threshold_balanced_accuracy"] == pytest.approx(0.5)
    assert dup["label_pc2"] is not None and dup["label_rows"].startswith("labels shared")


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = np.round(rng.normal(size=25), 1)  # ties on purpose
        y = rng.integers(0, 2, 25)
        if y.min() == y.max():
            continue
        best = 0.0
        for t in np.concatenate([[-np.inf], np.unique(x)]):
            pred = (x > t).astype(int)
            for p in (pred, 1 - pred):
                bal = 0.5 * ((p[y == 1] == 1).mean() + (p[y == 0] == 0).mean())
                best = max(best, bal)
        assert _best_threshold_balanced_accuracy(x, y) == pytest.approx(best)
    assert separability_1d(np.arange(5.0), ["a"] * 5) is None


def test_errors():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="different sizes"):
        concat_embeddings([_set(rng, 5, "A", dim=8), _set(rng, 5, "B", dim=12)])
    with pytest.raises(ValueError, match="different models"):
        concat_embeddings([_set(rng, 5, "A", model="m1"), _set(rng, 5, "B", model="m2")])
    X, meta = concat_embeddings(
        [_set(rng, 5, "A", model="m1"), _set(rng, 5, "B", model="m2")], allow_mixed_models=True
    )
    assert X.shape == (10, 12)
    X, _ = concat_embeddings([_set(rng, 5, "A"), _set(rng, 4, "B")], feature="all")
    assert X.shape == (9, 24)
    with pytest.raises(ValueError, match="no feature 'mean'"):
        concat_embeddings([_set(rng, 5, "A")], feature="mean")
    with pytest.raises(ValueError, match="compound"):
        project([_set(rng, 10, "A")], color_by="compound", methods=["pca"])
    with pytest.raises(ValueError, match="methods"):
        project([_set(rng, 10, "A")], methods=["tsne"])


def test_plot_written(tmp_path):
    rng = np.random.default_rng(4)
    coords, stats = project(
        [_set(rng, 40, "BBBC021", 4.0), _set(rng, 30, "Bray", labels=("taxol", "DMSO", "x"))], methods=["pca"]
    )
    paths = plot_projection(coords, stats, tmp_path / "proj.png")
    assert [p.name for p in paths] == ["proj.png", "proj.svg"]
    assert (tmp_path / "proj.png").stat().st_size > 10_000
    svg = (tmp_path / "proj.svg").read_text()
    for text in ("BBBC021", "Bray", "taxol", "PC1", "coloured by label"):
        assert text in svg
