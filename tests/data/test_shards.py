"""WebDataset shards: write, stream back (also with 2 workers), same sample dict as the manifest."""

from __future__ import annotations

import json

import torch
from torch.utils.data import DataLoader

from chada.cli import main
from chada.data.dataset import ManifestDataset, collate_channels
from chada.data.shards import ShardDataset, write_shards
from chada.data.synth import generate


def test_shard_round_trip(tmp_path):
    m = generate(tmp_path / "syn", n_per_assay=5, size=32, seed=2)
    index = write_shards(m, tmp_path / "shards", shard_size=6, dtype="float16")
    info = json.loads(index.read_text())
    assert info["n_samples"] == 20 and len(info["shards"]) == 4
    ref = {s["image_id"]: s for s in ManifestDataset(m)}
    got = list(ShardDataset(tmp_path / "shards"))
    assert len(got) == 20
    for s in got:
        r = ref[s["image_id"]]
        assert set(s) == set(r)
        assert s["channel_names"] == r["channel_names"] and s["dataset"] == r["dataset"]
        assert s["label"] == r["label"] and s["split"] == r["split"]
        assert s["meta"]["interchannel_label"] == r["meta"]["interchannel_label"]
        assert s["image"].dtype == torch.float32
        assert torch.allclose(s["image"], r["image"], atol=1e-3)

    index16 = write_shards(m, tmp_path / "u16", shard_size=50, dtype="uint16", split="train")
    got16 = list(ShardDataset(index16))
    assert len(got16) == sum(1 for s in ref.values() if s["split"] == "train")
    for s in got16:
        assert torch.allclose(s["image"], ref[s["image_id"]]["image"], atol=1e-4)


def test_shards_two_workers_and_cli(tmp_path, capsys):
    m = generate(tmp_path / "syn", n_per_assay=4, size=32, seed=0)
    assert main(["data", "shard", str(m), str(tmp_path / "sh"), "--shard-size", "5"]) == 0
    assert "16 samples in 4 shard(s)" in capsys.readouterr().out
    ds = ShardDataset(tmp_path / "sh" / "shards.json", shuffle=8)
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_channels)
    ids = [i for b in loader for i in b["image_ids"]]
    assert sorted(ids) == sorted({s["image_id"] for s in ManifestDataset(m)})
