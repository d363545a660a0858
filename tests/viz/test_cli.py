"""Smoke tests of ``chada attention`` and ``chada project`` through ``chada.cli.main``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

import chada
from chada.cli import main
from chada.encode.store import EmbeddingSet, save_embeddings


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz_cli")
    rng = np.random.default_rng(0)
    names = ["DAPI", "Actin", "Tubulin"]
    paths = []
    for i, n in enumerate(names):
        p = d / f"{n}.tif"
        tifffile.imwrite(p, (rng.random((40, 40)) * 1000 * (i + 1)).astype(np.uint16))
        paths.append(p)
    pd.DataFrame(
        {
            "image_id": ["img_001"],
            "dataset": ["synth"],
            "channel_files": [";".join(p.name for p in paths)],
            "channel_names": [";".join(names)],
        }
    ).to_csv(d / "manifest.csv", index=False)
    torch.manual_seed(0)
    chada.create_model("chada_vit_test").save_pretrained(d / "model")
    return d, paths


def test_attention_cli_files_and_compare(files, capsys):
    d, paths = files
    out = d / "attn.png"
    rc = main(
        [
            "attention",
            "--model",
            str(d / "model"),
            "--image",
            *map(str, paths),
            "--channel-names",
            "DAPI",
            "Actin",
            "Tubulin",
            "--compare",
            "one_channel_vit_test",
            "--image-size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "attention mass per channel" in text and "rows sum to 1" in text and "Tubulin" in text
    assert out.stat().st_size > 10_000 and (d / "attn.svg").stat().st_size > 10_000


def test_attention_cli_manifest(files, capsys):
    d, _ = files
    rc = main(
        [
            "attention",
            "--model",
            "chada_vit_test",
            "--manifest",
            str(d / "manifest.csv"),
            "--image-id",
            "img_001",
            "--no-heads",
            "--out",
            str(d / "attn_m.png"),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "image 3x40x40" in text or "image 3x" in text
    assert "Actin" in text  # channel names come from the manifest
    assert (d / "attn_m.png").exists() and (d / "attn_m.svg").exists()
    rc = main(
        [
            "attention",
            "--model",
            "chada_vit_test",
            "--manifest",
            str(d / "manifest.csv"),
            "--image-id",
            "nope",
            "--out",
            str(d / "x.png"),
        ]
    )
    assert rc == 2
    assert "not in" in capsys.readouterr().err


def test_project_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths, ids = [], []
    for k, (name, shift) in enumerate([("bbbc021", 3.0), ("bray", -3.0)]):
        n = 25 + 5 * k
        meta = pd.DataFrame(
            {
                "image_id": [f"{name}_{i}" for i in rng.permutation(n)],
                "dataset": name,
                "label": rng.choice(["taxol", "DMSO"], n),
            }
        )
        ids += list(meta["image_id"])
        X = rng.normal(size=(n, 8)) + shift
        paths.append(
            save_embeddings(
                EmbeddingSet({"cls": X.astype(np.float32)}, meta, {"model": "m"}), tmp_path / f"{name}.npz"
            )
        )
    rc = main(
        ["project", "--embeddings", *map(str, paths), "--method", "pca", "--out", str(tmp_path / "proj.png")]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "PC1:" in text and "dataset along PC1: CV accuracy" in text and "label along PC2" in text
    coords = pd.read_csv(tmp_path / "proj.csv")
    assert list(coords["image_id"]) == ids
    stats = json.loads((tmp_path / "proj_stats.json").read_text())
    assert stats["dataset_pc1"]["cv_accuracy"] > 0.9
    assert (tmp_path / "proj.svg").exists()
    rc = main(
        [
            "project",
            "--embeddings",
            str(paths[0]),
            "--color-by",
            "compound",
            "--method",
            "pca",
            "--out",
            str(tmp_path / "p2.png"),
        ]
    )
    assert rc == 2 and "compound" in capsys.readouterr().err
