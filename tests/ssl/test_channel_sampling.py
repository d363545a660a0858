"""Channel sampling schemes for DINO pretraining: kept-count distributions, shared views, determinism, runs."""

import collections
from pathlib import Path

import pytest
import torch

from chada.data.dataset import make_collate
from chada.ssl.channel_sampling import ChannelSampler, ChannelSamplingCollate, kept_counts
from chada.ssl.config import load_config
from chada.ssl.trainer import Trainer
from tests.helpers.dino import tiny_dino


def _draws(sampler: ChannelSampler, counts: list[int], n_batches: int) -> list[list[torch.Tensor]]:
    return [
        sampler.draw(counts, [f"img{b}_{i}" for i in range(len(counts))], epoch=0) for b in range(n_batches)
    ]


def _assert_valid(keep: torch.Tensor, c: int) -> None:
    assert 1 <= len(keep) <= c
    assert len(set(keep.tolist())) == len(keep) and all(0 <= i < c for i in keep.tolist())


def test_none_keeps_everything_in_order() -> None:
    for keep, c in zip(_draws(ChannelSampler("none"), [1, 3, 5], 1)[0], [1, 3, 5]):
        assert keep.tolist() == list(range(c))
    assert not ChannelSampler("none").active and ChannelSampler("none", shuffle=True).active


def test_hierarchical_per_sample_k_is_uniform_over_1_to_c() -> None:
    counts = [5] * 16
    hist = collections.Counter()
    for batch in _draws(ChannelSampler("hierarchical", per="sample", seed=3), counts, 250):
        for keep in batch:
            _assert_valid(keep, 5)
            assert keep.tolist() == sorted(keep.tolist())  # no shuffle: original order
        hist.update(kept_counts(batch))
    n = sum(hist.values())  # 4000 draws: each k in 1..5 expected 800, binomial sd ~ 25
    assert set(hist) == {1, 2, 3, 4, 5}
    for k in range(1, 6):
        assert abs(hist[k] - n / 5) < 150, hist
    # mixed counts inside one batch (what ChAda-ViT can take)
    batch = _draws(ChannelSampler("hierarchical", per="sample"), counts, 1)[0]
    assert len(set(kept_counts(batch))) > 1


def test_hierarchical_per_sample_each_channel_equally_likely() -> None:
    seen = collections.Counter()
    for batch in _draws(ChannelSampler("hierarchical", seed=1), [4] * 10, 200):
        for keep in batch:
            seen.update(keep.tolist())
    n = sum(seen.values())
    assert all(abs(seen[c] - n / 4) < 0.1 * n / 4 for c in range(4)), seen


def test_discard_one_keeps_c_or_c_minus_one_never_zero() -> None:
    hist = collections.Counter()
    for batch in _draws(ChannelSampler("discard_one", discard_p=0.5, seed=2), [1, 2, 5, 5], 300):
        ks = kept_counts(batch)
        assert ks[0] == 1  # a one-channel image is never emptied
        assert ks[1] in (1, 2)
        for keep, c in zip(batch, [1, 2, 5, 5]):
            _assert_valid(keep, c)
        hist.update(ks[2:])
    assert set(hist) == {4, 5}
    assert abs(hist[4] / (hist[4] + hist[5]) - 0.5) < 0.08
    always = _draws(ChannelSampler("discard_one", discard_p=1.0), [3, 1], 5)
    assert all(kept_counts(b) == [2, 1] for b in always)


def test_per_batch_same_k_where_capacity_allows() -> None:
    ks_seen = collections.Counter()
    for batch in _draws(ChannelSampler("hierarchical", per="batch", seed=4), [5, 5, 3, 1, 5], 300):
        ks = kept_counts(batch)
        k = max(ks)
        assert ks == [min(k, c) for c in (5, 5, 3, 1, 5)]
        for keep, c in zip(batch, [5, 5, 3, 1, 5]):
            _assert_valid(keep, c)
        ks_seen[k] += 1
    assert set(ks_seen) == {1, 2, 3, 4, 5}
    # channels are still chosen per image: two 5-channel images do not always keep the same ones
    differ = any(b[0].tolist() != b[1].tolist() for b in _draws(ChannelSampler("hierarchical", per="batch"), [5, 5], 40)
                 if len(b[0]) < 5)  # fmt: skip
    assert differ
    for batch in _draws(ChannelSampler("discard_one", per="batch", discard_p=0.5), [5, 3, 1], 50):
        assert kept_counts(batch) in ([5, 3, 1], [4, 2, 1])


def test_shuffle_permutes_but_keeps_the_set() -> None:
    orders = set()
    for batch in _draws(ChannelSampler("none", shuffle=True), [4] * 8, 5):
        for keep in batch:
            assert sorted(keep.tolist()) == [0, 1, 2, 3]
            orders.add(tuple(keep.tolist()))
    assert len(orders) > 5


def test_deterministic_given_seed_epoch_and_ids() -> None:
    s = ChannelSampler("hierarchical", per="sample", shuffle=True, seed=7)
    ids = [f"a{i}" for i in range(12)]
    a, b = s.draw([5] * 12, ids, epoch=3), s.draw([5] * 12, ids, epoch=3)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    c = s.draw([5] * 12, ids, epoch=4)
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    d = ChannelSampler("hierarchical", per="sample", shuffle=True, seed=8).draw([5] * 12, ids, epoch=3)
    assert [x.tolist() for x in a] != [x.tolist() for x in d]
    # per sample: an image's draw does not depend on its batch-mates
    alone = s.draw([5], ["a0"], epoch=3)
    assert alone[0].tolist() == a[0].tolist()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scheme"):
        ChannelSampler("random")
    with pytest.raises(ValueError, match="per"):
        ChannelSampler("hierarchical", per="epoch")
    with pytest.raises(ValueError, match="at least one channel"):
        ChannelSampler("hierarchical").draw([0], ["x"])


def _sample(iid: str, names: list[str], n_views: int = 3) -> dict:
    c = len(names)
    base = torch.arange(c, dtype=torch.float32)[:, None, None]
    views = [base.expand(c, 8, 8).clone() + 100 * v for v in range(n_views)]
    return {"image": views, "channel_names": names, "channel_index": torch.arange(c), "image_id": iid,
            "dataset": "d", "split": "train", "label": 0, "meta": {}}  # fmt: skip


def test_views_of_one_image_keep_identical_channels_and_names_follow() -> None:
    names = ["DAPI", "Actin", "Mito", "MarkerA", "MarkerB"]
    samples = [_sample(f"s{i}", names) for i in range(6)] + [_sample("one", ["DAPI"])]
    sampler = ChannelSampler("hierarchical", per="sample", shuffle=True, seed=0)
    out = sampler.apply(samples, epoch=0)
    for s_in, s in zip(samples, out):
        idx = s["channel_index"].tolist()
        assert s["channel_names"] == [s_in["channel_names"][i] for i in idx]
        for v, view in enumerate(s["image"]):
            # every view carries exactly the kept channels, in the same order (pixel value = original index)
            assert view[:, 0, 0].tolist() == [i + 100 * v for i in idx]
    assert out[-1]["channel_names"] == ["DAPI"]
    assert samples[0]["image"][0].shape[0] == 5  # inputs untouched
    # collate with a vocabulary: ids follow names (the stain keeps its embedding slot)
    vocab = names
    collate = ChannelSamplingCollate(make_collate(multicrop=True, channel_vocab=vocab), sampler)
    batch = collate(samples)
    ids = batch["batches"][0].channel_ids.tolist()
    flat_names = [n for s in out for n in s["channel_names"]]
    assert ids == [vocab.index(n) for n in flat_names]
    assert batch["batches"][0].counts.tolist() == [len(s["channel_names"]) for s in out]
    collate.set_epoch(1)
    assert collate(samples)["channel_names"] != batch["channel_names"]


def test_shuffle_with_vocabulary_does_not_change_the_embedding() -> None:
    """With ids following names, an order shuffle is invisible to ChAda-ViT (channel-permutation invariant)."""
    import chada

    torch.manual_seed(0)
    model = chada.create_model("chada_vit_test", img_size=16).eval()
    img = torch.rand(4, 16, 16)
    perm = torch.tensor([2, 0, 3, 1])
    from chada.models.batch import ChannelBatch

    a = model(ChannelBatch.from_images([img], channel_ids=[[0, 1, 2, 3]]))
    b = model(ChannelBatch.from_images([img[perm]], channel_ids=[perm.tolist()]))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _overrides(manifest: Path, out: Path, extra: list[str]) -> list[str]:
    return tiny_dino(manifest, out, "head.out_dim=32", "run.max_steps=3", *extra)


@pytest.mark.parametrize(
    "extra",
    [
        ["data.channel_sampling.scheme=discard_one"],
        [
            "data.channel_sampling.scheme=hierarchical",
            "data.channel_sampling.per=sample",
            "data.channel_vocab=auto",
        ],
        ["data.channel_sampling.scheme=hierarchical", "data.channel_sampling.per=batch"],
        ["data.channel_sampling.shuffle=true"],
    ],
    ids=["discard_one", "hierarchical_sample", "hierarchical_batch", "shuffle"],
)
def test_tiny_pretrain_runs_with_each_scheme(manifest: Path, tmp_path: Path, extra: list[str]) -> None:
    trainer = Trainer(load_config(None, _overrides(manifest, tmp_path / "run", extra)))
    assert isinstance(trainer.collate, ChannelSamplingCollate)
    first = next(iter(trainer._loader(0, 0)))
    counts = [b.counts.tolist() for b in first["batches"]]
    assert all(c == counts[0] for c in counts)  # every view of an image holds the same channels
    trainer.fit()
    assert trainer.global_step == 3


def test_config_rejects_unknown_scheme(manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channel_sampling"):
        load_config(None, _overrides(manifest, tmp_path, ["data.channel_sampling.scheme=all"])).validate()
