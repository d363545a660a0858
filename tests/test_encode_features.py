"""features_for_manifest / `chada features`: embeddings files from a synthetic manifest."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from chada.encode.handmade import features_for_manifest
from chada.encode.store import load_embeddings
from chada.features.extract import KINDS, extract_features


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from chada.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), n_per_assay=3, size=32, seed=0)


@pytest.mark.parametrize("kind", KINDS)
def test_writes_embedding_set(manifest, tmp_path, kind):
    out = tmp_path / f"{kind}.npz"
    emb = features_for_manifest(manifest, kind, out, progress=False)
    back = load_embeddings(out)
    n = len(back)
    assert n == 12  # 4 assays x 3 images, mixed 1/2/3/5 channels
    assert set(back.features) == {"cls", "all"}
    np.testing.assert_array_equal(back.get("cls"), back.get("all"))
    np.testing.assert_allclose(back.get("cls"), emb.get("cls"))
    assert back.info["model"] == kind and back.info["family"] == "handmade"
    assert len(back.info["feature_names"]) == back.get("cls").shape[1]
    assert np.isfinite(back.get("cls")).all()
    for col in ("image_id", "dataset", "label", "split", "interchannel_label", "channel_names", "n_channels"):
        assert col in back.meta.columns
    assert sorted(set(back.meta["n_channels"])) == [1, 2, 3, 5]
    if kind == "shortcut":
        for col in ("cell_count", "mean_intensity", "cell_density", "p99_chmax"):
            assert col in back.meta.columns
        j = back.info["feature_names"].index("mean_intensity")
        np.testing.assert_allclose(back.meta["mean_intensity"], back.get("cls")[:, j], rtol=1e-6)
    else:
        assert "cell_count" not in back.meta.columns


def test_image_size_and_per_channel_layout(manifest, tmp_path):
    with pytest.raises(ValueError, match="fixed channel set"):
        features_for_manifest(manifest, "handmade", tmp_path / "x.npz", layout="per_channel", progress=False)
    with pytest.raises(ValueError, match="unknown feature kind"):
        features_for_manifest(manifest, "sift", tmp_path / "x.npz", progress=False)
    emb = features_for_manifest(manifest, "shortcut", tmp_path / "s.npz", image_size=48, progress=False)
    assert emb.info["image_size"] == 48


def test_extract_features_api():
    rng = np.random.default_rng(0)
    images = [rng.random((c, 32, 32)).astype(np.float32) for c in (1, 4)]
    for kind in KINDS:
        x, names = extract_features(images, kind)
        assert x.shape == (2, len(names))
    with pytest.raises(ValueError, match="single channel-independent layout"):
        extract_features(images, "shortcut", layout="per_channel")


def test_cli_handler(manifest, tmp_path, capsys):
    from chada.cli import features as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.npz"
    args = parser.parse_args(
        ["features", "--manifest", str(manifest), "--kind", "cellprofiler", "--out", str(out), "--quiet"]
    )
    assert args.func(args) == 0
    assert "12 images" in capsys.readouterr().out
    assert load_embeddings(out).info["model"] == "cellprofiler"
