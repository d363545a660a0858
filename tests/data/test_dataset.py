"""ManifestDataset, collation of mixed channel counts, multi-crop collation, 2-worker DataLoader."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from chada.data.augment import MultiCropAugment
from chada.data.dataset import ManifestDataset, collate_channels, collate_multicrop, make_collate
from chada.data.synth import generate
from chada.models.batch import ChannelBatch


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), n_per_assay=12, size=32, seed=0)


def test_sample_dict(synth_manifest):
    ds = ManifestDataset(synth_manifest)
    assert len(ds) == 48
    s = ds[0]
    assert set(s) == {
        "image",
        "channel_names",
        "channel_index",
        "image_id",
        "dataset",
        "split",
        "label",
        "meta",
    }
    assert s["image"].dtype == torch.float32 and s["image"].ndim == 3
    assert len(s["channel_names"]) == s["image"].shape[0]
    assert float(s["image"].min()) >= 0.0 and float(s["image"].max()) <= 1.0
    assert "interchannel_label" in s["meta"] and "target" in s["meta"]
    assert ds.classes == [0, 1, 2]
    train = ManifestDataset(
        synth_manifest, split="train", datasets=["coloc_5ch"], size=20, label_column="target"
    )
    t = train[0]
    assert t["image"].shape == (5, 20, 20) and isinstance(t["label"], float)
    assert all(train[i]["split"] == "train" for i in range(len(train)))


def test_collate_mixed_channel_counts(synth_manifest):
    ds = ManifestDataset(synth_manifest)
    by_ds = {}
    for i in range(len(ds)):
        by_ds.setdefault(ds[i]["dataset"], ds[i])
    samples = list(by_ds.values())
    out = collate_channels(samples)
    b = out["batch"]
    assert isinstance(b, ChannelBatch)
    assert sorted(b.counts.tolist()) == [1, 2, 3, 5]
    assert b.pixels.shape == (11, 32, 32)
    assert set(out) == {"batch", "image_ids", "datasets", "channel_names", "labels", "meta"}
    for img, s in zip(b.split(), samples):
        assert torch.equal(img, s["image"])
    vocab = ["DAPI", "Actin", "Mito", "MarkerA", "MarkerB"]
    ids = collate_channels(samples, channel_vocab=vocab)["batch"].channel_ids
    expect = [vocab.index(n) for s in samples for n in s["channel_names"]]
    assert ids.tolist() == expect


def test_dataloader_two_workers_multicrop(synth_manifest):
    aug = MultiCropAugment(
        global_size=24,
        local_size=12,
        n_global=2,
        n_local=2,
        channel_drop_max=1,
        channel_drop_p=0.5,
        return_channel_index=True,
    )
    ds = ManifestDataset(synth_manifest, transform=aug)
    vocab = ["DAPI", "Actin", "Mito", "MarkerA", "MarkerB"]
    loader = DataLoader(
        ds,
        batch_size=8,
        shuffle=True,
        num_workers=2,
        collate_fn=make_collate(multicrop=True, channel_vocab=vocab),
    )
    seen = 0
    for batch in loader:
        bs = batch["batches"]
        assert len(bs) == 4
        assert bs[0].image_size == (24, 24) and bs[3].image_size == (12, 12)
        for b in bs:
            assert torch.equal(b.counts, bs[0].counts)
            assert b.channel_ids.tolist() == bs[0].channel_ids.tolist()
        names = [n for ns in batch["channel_names"] for n in ns]
        assert bs[0].channel_ids.tolist() == [vocab.index(n) for n in names]
        seen += len(batch["image_ids"])
    assert seen == len(ds)


def test_dataloader_two_workers_single_view(synth_manifest):
    ds = ManifestDataset(synth_manifest, split="train")
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_channels)
    ids = [i for batch in loader for i in batch["image_ids"]]
    assert sorted(ids) == sorted(ds.frame["image_id"].tolist())


def test_collate_errors():
    with pytest.raises(ValueError):
        collate_channels([])
    s = {
        "image": [torch.zeros(1, 4, 4)],
        "channel_names": ["a"],
        "image_id": "x",
        "dataset": "d",
        "label": None,
        "meta": {},
    }
    with pytest.raises(TypeError):
        collate_channels([s])
    t = dict(s, image=[torch.zeros(1, 4, 4), torch.zeros(1, 2, 2)])
    with pytest.raises(ValueError, match="numbers of views"):
        collate_multicrop([s, t])
