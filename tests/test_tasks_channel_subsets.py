"""Channel-subset evaluation on the synthetic 5-channel assay with tiny models."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from chada.encode.options import RunOptions
from chada.tasks.channel_subsets import (
    embed_subsets,
    enumerate_subsets,
    load_subset_data,
    run_channel_subsets,
)

CHANNELS = ["DAPI", "Actin", "Mito", "MarkerA", "MarkerB"]
QUIET = RunOptions(batch_size=128, progress=False)


@pytest.fixture(scope="module")
def coloc(tmp_path_factory):
    from chada.data import synth

    root = tmp_path_factory.mktemp("synth")
    return synth.generate(root, n_per_assay=40, size=32, seed=0, assays=["coloc_5ch"])


def test_enumeration_counts_and_seeded_sampling():
    subs = enumerate_subsets(5, max_subsets=20)
    assert {k: len(v) for k, v in subs.items()} == {k: math.comb(5, k) for k in range(1, 6)}
    assert subs[2][0] == (0, 1) and len(set(subs[3])) == 10
    capped = enumerate_subsets(7, max_subsets=20, seed=3)  # comb(7, 3) = comb(7, 4) = 35 > 20
    assert {k: len(v) for k, v in capped.items()} == {1: 7, 2: 20, 3: 20, 4: 20, 5: 20, 6: 7, 7: 1}
    assert all(len(set(v)) == len(v) and all(len(s) == k for s in v) for k, v in capped.items())
    assert capped == enumerate_subsets(7, max_subsets=20, seed=3)
    assert capped[3] != enumerate_subsets(7, max_subsets=20, seed=4)[3]
    assert all(s in set(__import__("itertools").combinations(range(7), 3)) for s in capped[3])
    with pytest.raises(ValueError):
        enumerate_subsets(0)


def test_subset_keeps_channel_slots_not_positions(coloc):
    """A subset's channels keep their canonical slots: the embedding of {Mito} differs from {DAPI}'s
    image fed at slot 0, and equals feeding Mito by hand at slot 2."""
    from chada.models.registry import create_model

    data = load_subset_data(coloc, progress=False)
    assert data.channels == CHANNELS
    torch.manual_seed(0)
    model = create_model("chada_vit_test").eval()
    slots = np.tile(np.arange(5), (len(data), 1))
    feats = embed_subsets(model, data, [(2,)], slots)
    with torch.no_grad():
        by_hand = model([data.images[0][2:3]], pool="cls")  # slot 0: the shifted reading
        from chada.models.batch import ChannelBatch

        kept = model(ChannelBatch.from_images([data.images[0][2:3]], channel_ids=[[2]]))
    np.testing.assert_allclose(feats[(2,)][0], kept[0].numpy(), atol=1e-5)
    assert np.abs(feats[(2,)][0] - by_hand[0].numpy()).max() > 1e-3


def test_run_rows_for_every_k_and_setting_and_full_set_agrees(coloc, tmp_path):
    models = {"chada": "chada_vit_test", "one_channel": "one_channel_vit_test"}
    df = run_channel_subsets(models, coloc, "label", tmp_path / "out", seeds=2, max_subsets=3, run=QUIET,
                             train_split=["train", "val"])  # fmt: skip
    assert set(df["setting"]) == {"train_all", "train_subset"}
    assert set(df["metric"]) == {"linear_probe", "knn"}
    for key, g in df.groupby(["model", "setting", "metric"]):
        assert sorted(g["k"].unique()) == [1, 2, 3, 4, 5], key
        assert len(g) == (3 + 3 + 3 + 3 + 1) * 2  # every subset (at most 3 per k) x every seed
    # one-channel ViT is read through its fixed-size mean pool in both settings
    assert set(df.loc[df["model"] == "one_channel", "pool"]) == {"mean"}
    full = df[df["k"] == 5].pivot_table(index=["model", "metric", "seed"], columns="setting", values="score")
    np.testing.assert_array_equal(full["train_all"].to_numpy(), full["train_subset"].to_numpy())
    # slots follow the names (canonical ids), not the positions inside the subset
    two = df[df["k"] == 2].iloc[0]
    assert two["slots"] == [CHANNELS.index(c) for c in two["subset"].split("+")]
    assert df["score"].between(0, 1).all()
    for name in ("channel_subsets.csv", "channel_subsets_summary.csv", "channel_subsets.md",
                 "channel_subsets.json", "channel_subsets.png", "channel_subsets.svg"):  # fmt: skip
        assert (tmp_path / "out" / name).stat().st_size > 0
    summary = pd.read_csv(tmp_path / "out" / "channel_subsets_summary.csv")
    assert len(summary) == 2 * 2 * 2 * 5 and (summary["n_seeds"] == 2).all()
    assert set(summary.loc[summary["k"] == 2, "n_subsets"]) == {3}


def test_handmade_and_deterministic_models_repeat_over_seeds(coloc, tmp_path):
    pytest.importorskip("skimage")
    df = run_channel_subsets({"handmade": "handmade"}, coloc, "label", None, seeds=2, max_subsets=2,
                             metrics=["knn"], run=QUIET, train_split=["train", "val"])  # fmt: skip
    assert sorted(df.groupby("k").size().to_dict().items()) == [(1, 8), (2, 8), (3, 8), (4, 8), (5, 4)]
    by_seed = df.pivot_table(index=["subset", "setting"], columns="seed", values="score")
    np.testing.assert_array_equal(by_seed[0].to_numpy(), by_seed[1].to_numpy())


def test_reordered_files_and_mixed_channel_sets(coloc, tmp_path):
    from chada.data.manifest import load_manifest, write_manifest

    df = load_manifest(coloc)
    perm = [4, 2, 0, 3, 1]
    rev = df.copy()
    rev.loc[::2, "channel_files"] = [";".join(np.array(f.split(";"))[perm]) for f in df["channel_files"][::2]]
    rev.loc[::2, "channel_names"] = [";".join(np.array(n.split(";"))[perm]) for n in df["channel_names"][::2]]
    path = tmp_path / "reordered.csv"
    write_manifest(rev, path)
    data = load_subset_data(path, root=coloc.parent, progress=False, reference=CHANNELS)
    assert data.channels == CHANNELS
    orig = load_subset_data(coloc, progress=False)
    # position of DAPI differs per image, the pixels picked by name are the same
    assert data.positions[0, 0] == 2 and data.positions[1, 0] == 0
    for i in range(2):
        torch.testing.assert_close(data.images[i][data.positions[i]], orig.images[i])
    bad = df.copy()
    bad.loc[0, "channel_names"] = "DAPI;Actin;Mito;MarkerA;Other"
    write_manifest(bad, tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="same channels"):
        load_subset_data(tmp_path / "bad.csv", root=coloc.parent, progress=False)


def test_cli_subsets(coloc, tmp_path, capsys, monkeypatch):
    import argparse
    import json

    import chada.encode.encoders as encoders
    from chada.cli import subsets

    real, seen = encoders.autocast, set()

    def spy(dtype, *a, **k):  # the dtype --precision resolves to reaches every forward pass
        seen.add(dtype)
        return real(dtype, *a, **k)

    monkeypatch.setattr(encoders, "autocast", spy)

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    subsets.register(sub)
    args = parser.parse_args(["subsets", "--manifest", str(coloc), "--models", "untrained=chada_vit_test",
                              "--out", str(tmp_path / "o"), "--seeds", "1", "--max-subsets", "1",
                              "--metrics", "knn", "--train-split", "train", "val", "--quiet",
                              "--channel-order", "MarkerB,DAPI,Actin,Mito,MarkerA", "--precision", "bf16"])  # fmt: skip
    assert args.func(args) == 0
    assert seen == {torch.bfloat16}
    assert json.loads((tmp_path / "o" / "channel_subsets.json").read_text())["precision"] == "bf16"
    out = pd.read_csv(tmp_path / "o" / "channel_subsets.csv")
    assert sorted(out["k"].unique()) == [1, 2, 3, 4, 5]
    assert out.loc[out["k"] == 5, "subset"].iloc[0] == "MarkerB+DAPI+Actin+Mito+MarkerA"
    assert out.loc[out["k"] == 5, "slots"].iloc[0] == "0;1;2;3;4"
    captured = capsys.readouterr()
    assert "k=5" in captured.out and "precision: bf16 (as asked" in captured.err
    assert subsets.parse_models(["a=x", "runs/b/"]) == {"a": "x", "b": "runs/b/"}
    with pytest.raises(ValueError):
        subsets.parse_models(["a=x", "a=y"])
