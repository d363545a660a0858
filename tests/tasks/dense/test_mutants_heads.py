"""The dense probes (chada.tasks.dense.heads) against a plain training loop written here from the
docstring: per-feature standardisation, seeded init and batch order, Adam with weight decay, a cosine
learning rate, pixel BCE with ignored pixels left out (tile batches) or drawn labelled pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import chada.tasks.dense.heads as H
from chada.tasks.dense.data import IGNORE


def _net(in_dim: int, kind: str, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, 1)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))


def _plain_fit(maps, labels, kind, hidden, steps, batch_size, pixels, lr, wd, seed):
    """The fit written out: returns (mean, std, net)."""
    torch.manual_seed(seed)
    net = _net(maps.shape[1], kind, hidden)
    flat = maps.transpose(1, 0, 2, 3).reshape(maps.shape[1], -1).astype(np.float64)
    mean = torch.tensor(flat.mean(1), dtype=torch.float32)
    std = torch.tensor(np.maximum(flat.std(1, ddof=1), 1e-6), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))

    def logits_of(x):  # [B, F, h, w] -> [B, h, w]
        return net((x.permute(0, 2, 3, 1) - mean) / std)[..., 0]

    if maps.shape[-2:] == labels.shape[-2:]:
        valid = labels != IGNORE
        rows = torch.from_numpy(np.ascontiguousarray(maps.transpose(0, 2, 3, 1)[valid]))
        target = torch.from_numpy((labels[valid] == 1).astype(np.float32))
        for _ in range(steps):
            idx = torch.randint(0, len(rows), (min(pixels, len(rows)),), generator=gen)
            loss = F.binary_cross_entropy_with_logits(net((rows[idx] - mean) / std)[..., 0], target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        return mean, std, net
    n, order, pos = len(maps), torch.randperm(len(maps), generator=gen), 0
    for _ in range(steps):
        if pos >= n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        lg = F.interpolate(logits_of(torch.from_numpy(maps[idx.numpy()]))[:, None], size=labels.shape[-2:],
                           mode="bilinear", align_corners=False)[:, 0]  # fmt: skip
        w = torch.from_numpy((labels[idx.numpy()] != IGNORE).astype(np.float32))
        t = torch.from_numpy((labels[idx.numpy()] == 1).astype(np.float32))
        if w.sum() == 0:
            continue
        loss = F.binary_cross_entropy_with_logits(lg, t, w, reduction="sum") / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return mean, std, net


def _data(n=7, f=3, h=4, t=8, seed=0):
    rng = np.random.default_rng(seed)
    maps = (rng.normal(size=(n, f, h, h)) * [[[2.0]], [[0.5]], [[1.0]]][:f] + 3.0).astype(np.float32)
    labels = (rng.random((n, t, t)) > 0.6).astype(np.uint8)
    labels[rng.random((n, t, t)) > 0.8] = IGNORE
    labels[min(2, n - 1)] = IGNORE  # one tile with no labelled pixel: its steps are skipped
    return maps, labels


@pytest.mark.parametrize(
    "kind,hidden,steps,batch", [("linear", 64, 9, 3), ("mlp", 5, 6, 4), ("linear", 64, 4, 1)]
)
def test_tile_fit_equals_the_plain_loop(kind: str, hidden: int, steps: int, batch: int) -> None:
    maps, labels = _data()
    head = H.fit_head(maps, labels, kind, hidden=hidden, steps=steps, batch_size=batch, lr=0.05, weight_decay=0.01,
                      seed=3)  # fmt: skip
    mean, std, net = _plain_fit(maps, labels, kind, hidden, steps, batch, 0, 0.05, 0.01, 3)
    assert not head.training
    torch.testing.assert_close(head.mean, mean)
    torch.testing.assert_close(head.std, std)
    for a, b in zip(head.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pixels", [50, 10_000])
def test_pixel_fit_equals_the_plain_loop(pixels: int) -> None:
    maps, _ = _data(h=8)
    _, labels = _data()
    head = H.fit_head(maps, labels, "mlp", hidden=4, steps=5, pixels_per_step=pixels, lr=0.1, seed=1)
    mean, std, net = _plain_fit(maps, labels, "mlp", 4, 5, 64, pixels, 0.1, 1e-4, 1)
    for a, b in zip(head.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_defaults_of_fit_head(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(H, "_fit", lambda *a: seen.append(a[2:]) or "head")
    maps, labels = _data(n=2)
    H.fit_head(maps, labels)
    # kind, hidden, steps, batch_size, pixels_per_step, lr, weight_decay, seed
    assert seen == [("linear", 64, 300, 64, 8192, 3e-2, 1e-4, 0)]


def test_nothing_labelled_leaves_the_init() -> None:
    maps, labels = _data(n=3, h=8)
    labels[:] = IGNORE
    torch.manual_seed(0)
    net = _net(3, "linear", 64)
    head = H.fit_head(maps, labels, steps=3)  # pixel features, no labelled pixel: no step
    for a, b in zip(head.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_threads_during_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(H, "_fit", lambda *a: seen.append(torch.get_num_threads()) or "head")
    before = torch.get_num_threads()
    maps, labels = _data(n=2)
    assert H.fit_head(maps, labels, num_threads=1) == "head"
    assert H.fit_head(maps, labels, num_threads=None) == "head"
    assert seen == [1, before] and torch.get_num_threads() == before
    for m, lab in ((maps, labels[:1]), (maps[:0], labels[:0])):
        with pytest.raises(ValueError) as info:
            H.fit_head(m, lab)
        assert str(info.value) == f"{len(m)} feature maps for {len(lab)} label tiles"


def test_head_module() -> None:
    for kind, hidden, message in (("conv", 4, "head must be one of ('linear', 'mlp'), got 'conv'"),
                                  ("linear", 0, "need in_dim >= 1 and hidden >= 1, got 3, 0")):  # fmt: skip
        with pytest.raises(ValueError) as info:
            H.DenseHead(3, kind, hidden)
        assert str(info.value) == message
    with pytest.raises(ValueError, match=r"need in_dim >= 1 and hidden >= 1, got 0, 64"):
        H.DenseHead(0)
    head = H.DenseHead(2, "mlp", 3)
    assert head.config() == {"head": "mlp", "in_dim": 2, "hidden": 3}
    assert [p.shape for p in head.net.parameters()] == [(3, 2), (3,), (1, 3), (1,)]
    assert isinstance(head.net[1], nn.GELU)
    with pytest.raises(ValueError) as info:
        head(torch.zeros(1, 3, 2, 2))
    assert str(info.value) == "head expects [B, 2, h, w] features, got (1, 3, 2, 2)"
    with pytest.raises(ValueError):
        head(torch.zeros(3, 2, 2))
    x = torch.randn(2, 2, 3, 3)
    assert head(x).shape == (2, 1, 3, 3) and head(x, (3, 3)).shape == (2, 1, 3, 3)
    want = F.interpolate(head(x), size=(6, 5), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(x, (6, 5)), want)
    head.mean.fill_(1.0)
    head.std.fill_(2.0)
    rows = torch.randn(4, 2)
    torch.testing.assert_close(head.rows(rows), head.net((rows - 1.0) / 2.0)[:, 0])


def test_predict_probabilities() -> None:
    torch.manual_seed(0)
    head = H.DenseHead(3, "linear")
    maps = np.random.default_rng(0).normal(size=(5, 3, 2, 2)).astype(np.float32)
    p = H.predict_probabilities(head, maps, (4, 4), batch_size=2)
    assert p.dtype == np.float32 and p.shape == (5, 4, 4)
    want = torch.sigmoid(F.interpolate(head(torch.from_numpy(maps)), size=(4, 4), mode="bilinear"))[:, 0]
    np.testing.assert_allclose(p, want.detach().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(H.predict_probabilities(head, maps, (4, 4)), p)
    head.train()
    empty = H.predict_probabilities(head, maps[:0], (4, 3))
    assert empty.shape == (0, 4, 3) and empty.dtype == np.float32 and not head.training


def test_the_smallest_head_is_allowed() -> None:
    # the bounds are inclusive: one input feature and one hidden unit make a valid (tiny) MLP
    head = H.DenseHead(1, "mlp", 1)
    assert [p.shape for p in head.net.parameters()] == [(1, 1), (1,), (1, 1), (1,)]
