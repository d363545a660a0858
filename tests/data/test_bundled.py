"""Bundled real data: assets + licences present, prepare() writes a valid manifest."""

from __future__ import annotations

import numpy as np

from chada.data import bundled
from chada.data.dataset import ManifestDataset, collate_channels
from chada.data.manifest import check_manifest, load_manifest


def test_assets_and_licences_present():
    for name in (
        *bundled.ASSET_FILES,
        "LICENSE-stardist.txt",
        "LICENSE-CC0-1.0.txt",
        "LICENSE-scikit-image.txt",
        "README.md",
    ):
        assert (bundled.ASSET_DIR / name).is_file(), name
    total = sum(p.stat().st_size for p in bundled.ASSET_DIR.iterdir() if p.is_file())
    assert total < 3_000_000
    assert "BSD" in (bundled.ASSET_DIR / "LICENSE-stardist.txt").read_text()
    assert "CC0 1.0 Universal" in (bundled.ASSET_DIR / "LICENSE-CC0-1.0.txt").read_text()


def test_prepare_real_datasets(tmp_path):
    m = bundled.prepare(tmp_path / "real")
    assert check_manifest(m) == []
    df = load_manifest(m)
    nuc = df[df["dataset"] == "dsb2018_nuclei"]
    ihc = df[df["dataset"] == "ihc_hed"]
    assert len(nuc) > 80 and len(ihc) == 64
    assert set(nuc["label"]) == {0, 1, 2} and set(ihc["label"]) == {0, 1}
    assert (ihc["channel_names"] == "Haematoxylin;Eosin;DAB").all()
    # terciles are ordered by the stored area target
    assert nuc.groupby("label")["target"].max().is_monotonic_increasing
    assert set(df["split"]) == {"train", "val", "test"}
    ds = ManifestDataset(m, size=32)
    counts = {ds[i]["image"].shape[0] for i in range(0, len(ds), 7)}
    assert counts == {1, 3}
    batch = collate_channels([ds[0], ds[len(ds) - 1]])["batch"]
    assert batch.counts.tolist() == [1, 3]
    assert np.isfinite(batch.pixels.numpy()).all()
    assert (tmp_path / "real" / "LICENSE-CC0-1.0.txt").exists()
