"""Synthetic generator: determinism, file layouts, and the inter-channel label's guarantee."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from chada.data.manifest import check_manifest, load_manifest
from chada.data.readers import read_image
from chada.data.synth import ASSAYS, generate, render_cell


def _channel_stats(p: np.ndarray) -> list[float]:
    """Per-channel features only: intensity histogram moments/quantiles, spot count and spot sizes."""
    q = np.quantile(p, [0.1, 0.5, 0.9, 0.99])
    spots = p > 0.45
    lab, n = ndimage.label(spots)
    sizes = np.bincount(lab.ravel())[1:] if n else np.zeros(1)
    return [p.mean(), p.std(), *q, n, sizes.mean(), sizes.max(), spots.sum()]


def _features(n: int = 240, seed: int = 0):
    per_channel, cross, y_ic, y_size = [], [], [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        img, info = render_cell(("MarkerA", "MarkerB"), 48, rng, size_class=i % 3, coloc=(i // 3) % 2)
        per_channel.append(_channel_stats(img[0]) + _channel_stats(img[1]))
        a, b = img[0] - img[0].mean(), img[1] - img[1].mean()
        cross.append([(a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())])
        y_ic.append(info.coloc)
        y_size.append(info.size_class)
    return np.array(per_channel), np.array(cross), np.array(y_ic), np.array(y_size)


def test_interchannel_label_needs_both_channels():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_pc, x_cross, y_ic, y_size = _features()
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    rf = RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=1)
    acc_pc_lr = cross_val_score(lr, x_pc, y_ic, cv=5).mean()
    acc_pc_rf = cross_val_score(rf, x_pc, y_ic, cv=5).mean()
    acc_cross = cross_val_score(lr, x_cross, y_ic, cv=5).mean()
    # Near chance from per-channel statistics (240 samples: chance band is roughly +-0.07) ...
    assert acc_pc_lr < 0.62, acc_pc_lr
    assert acc_pc_rf < 0.62, acc_pc_rf
    # ... while one cross-channel number solves it, and the single-channel label is easy.
    assert acc_cross > 0.95, acc_cross
    assert cross_val_score(lr, x_pc, y_size, cv=5).mean() > 0.85


def test_generate_deterministic_and_valid(tmp_path):
    m1 = generate(tmp_path / "a", n_per_assay=9, size=32, seed=3)
    m2 = generate(tmp_path / "b", n_per_assay=9, size=32, seed=3)
    d1, d2 = load_manifest(m1), load_manifest(m2)
    assert d1.equals(d2)
    assert check_manifest(m1) == []
    assert set(d1["dataset"]) == set(ASSAYS)
    assert set(d1["split"]) <= {"train", "val", "test"}
    assert {"label", "interchannel_label", "target", "label_name"} <= set(d1.columns)
    for name, chans in ASSAYS.items():
        row = d1[d1["dataset"] == name].iloc[0]
        assert row["channel_names"].split(";") == list(chans)
    pair = d1[d1["dataset"].isin(["markers_2ch", "coloc_5ch"])]
    assert pair["interchannel_label"].notna().all()
    assert d1[d1["dataset"] == "nuclei_1ch"]["interchannel_label"].isna().all()
    # Mixed formats are really on disk, and pixels are identical across runs.
    files = {p.suffix for p in (tmp_path / "a").rglob("*.*") if p.suffix in (".png", ".tif")}
    assert files == {".png", ".tif"}
    r = d1[d1["dataset"] == "cellpaint_3ch"].iloc[0]
    np.testing.assert_array_equal(
        read_image(tmp_path / "a" / r["file"]), read_image(tmp_path / "b" / r["file"])
    )
    assert read_image(tmp_path / "a" / r["file"]).shape == (3, 32, 32)
    m3 = generate(tmp_path / "c", n_per_assay=9, size=32, seed=4)
    r3 = load_manifest(m3).iloc[0]
    assert not np.array_equal(
        read_image(tmp_path / "a" / d1.iloc[0]["file"]), read_image(tmp_path / "c" / r3["file"])
    )


def test_domain_pattern_keeps_marginals(monkeypatch):
    """The coarse "domain" marker pattern: per-channel statistics stay near chance, the relation solves it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from chada.data import synth

    monkeypatch.setattr(synth, "MARKER_PATTERN", "domain")
    x_pc, x_cross, y_ic, _ = _features(n=160, seed=1)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    # 160 samples: chance band roughly +-0.08.
    assert cross_val_score(lr, x_pc, y_ic, cv=5).mean() < 0.63
    assert cross_val_score(lr, x_cross, y_ic, cv=5).mean() > 0.95
    img, info = render_cell(("MarkerA", "MarkerB"), 32, np.random.default_rng(0), coloc=1)
    assert img.shape == (2, 32, 32) and info.n_spots == 1


def test_unknown_marker_pattern(monkeypatch):
    from chada.data import synth

    monkeypatch.setattr(synth, "MARKER_PATTERN", "rings")
    with pytest.raises(ValueError, match="MARKER_PATTERN"):
        render_cell(("MarkerA",), 32, np.random.default_rng(0))


def test_generate_marker_pattern_argument(tmp_path):
    """``marker_pattern=`` picks the design per call (no module state) and is recorded per marker row."""
    from chada.data import synth

    dom = load_manifest(generate(tmp_path / "d", n_per_assay=6, size=32, seed=0, marker_pattern="domain"))
    spo = load_manifest(generate(tmp_path / "s", n_per_assay=6, size=32, seed=0, marker_pattern="spots"))
    assert synth.MARKER_PATTERN == "spots"
    pair = dom["dataset"].isin(["markers_2ch", "coloc_5ch"])
    assert (
        set(dom.loc[pair, "marker_pattern"]) == {"domain"} and dom.loc[~pair, "marker_pattern"].isna().all()
    )
    assert set(spo.loc[spo["dataset"] == "markers_2ch", "marker_pattern"]) == {"spots"}
    r = dom[dom["dataset"] == "markers_2ch"].iloc[0]
    a = np.concatenate([read_image(tmp_path / "d" / f) for f in r["channel_files"].split(";")])
    b = np.concatenate([read_image(tmp_path / "s" / f) for f in r["channel_files"].split(";")])
    assert a.shape == b.shape and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="marker_pattern"):
        generate(tmp_path / "x", n_per_assay=3, size=32, marker_pattern="rings")
