"""features_for_manifest / `chada features`: embeddings files from a synthetic manifest."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from chada.encode.handmade import FEATURES_RUN, features_for_manifest
from chada.encode.options import ImageOptions
from chada.encode.store import load_embeddings
from chada.features.extract import KINDS, extract_features

QUIET = dataclasses.replace(FEATURES_RUN, progress=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from chada.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), n_per_assay=3, size=32, seed=0)


@pytest.mark.parametrize("kind", KINDS)
def test_writes_embedding_set(manifest, tmp_path, kind):
    out = tmp_path / f"{kind}.npz"
    emb = features_for_manifest(manifest, kind, out, run=QUIET)
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
        features_for_manifest(manifest, "handmade", tmp_path / "x.npz", layout="per_channel", run=QUIET)
    with pytest.raises(ValueError, match="unknown feature kind"):
        features_for_manifest(manifest, "sift", tmp_path / "x.npz", run=QUIET)
    emb = features_for_manifest(manifest, "shortcut", tmp_path / "s.npz", image=ImageOptions(size=48), run=QUIET)
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


def _nucleus_vs_bimodal_manifest(folder):
    """Images where the named nuclear stain (DAPI, small dim nuclei) is not the most bimodal channel
    (Actin: one big bright cell): the pixel rule and the name rule pick different nuclear channels."""
    import pandas as pd
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    rows = []
    for i in range(3):
        dapi = rng.normal(0.2, 0.08, (48, 48))
        for cy, cx in ((12, 12), (12, 34), (34, 14), (33, 35)):
            dapi[(yy - cy - i) ** 2 + (xx - cx) ** 2 < 16] += 0.35
        actin = np.where((yy - 24) ** 2 + (xx - 24 + i) ** 2 < 20**2, 1.0, 0.0) + rng.normal(0, 0.01, (48, 48))
        arr = (np.clip(np.stack([dapi, actin]), 0, None) * 4000).astype(np.uint16)
        tifffile.imwrite(folder / f"img{i}.tif", arr, photometric="minisblack", metadata={"axes": "CYX"})
        rows.append(dict(image_id=f"img{i}", dataset="d", file=f"img{i}.tif", channel_names="DAPI;Actin"))
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_embed_handmade_and_features_handmade_are_one_route(tmp_path, capsys):
    """`chada embed --model handmade` == `chada features --kind handmade`, both with the nuclear channel
    taken from the channel names (issue 19: the two differed where the pixel rule picked another)."""
    from chada.cli import main
    from chada.data.dataset import ManifestDataset
    from chada.features.handmade import handmade_features
    from chada.features.intensity import check_images
    from chada.features.nuclei import pick_nuclear_channel

    man = _nucleus_vs_bimodal_manifest(tmp_path)
    ds = ManifestDataset(man)
    images = [ds.read(i)[0].numpy() for i in range(len(ds))]
    assert all(pick_nuclear_channel(check_images([x])[0], "auto") == 1 for x in images)  # the case exists

    assert main(["embed", "--model", "handmade", "--manifest", str(man), "--out", str(tmp_path / "e.npz"),
                 "--quiet"]) == 0  # fmt: skip
    assert main(["features", "--kind", "handmade", "--manifest", str(man), "--out", str(tmp_path / "f.npz"),
                 "--quiet"]) == 0  # fmt: skip
    e, f = load_embeddings(tmp_path / "e.npz"), load_embeddings(tmp_path / "f.npz")
    for pool in ("cls", "all"):
        np.testing.assert_array_equal(e.get(pool), f.get(pool))
    assert e.info["feature_names"] == f.info["feature_names"]
    by_name = handmade_features(images, nuclear_channel=0).astype(np.float32)
    by_pixels = handmade_features(images).astype(np.float32)
    np.testing.assert_array_equal(e.get("cls"), by_name)
    j = e.info["feature_names"].index("area_median")
    assert not np.allclose(by_name[:, j], by_pixels[:, j])  # the rules really disagree here
