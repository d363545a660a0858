"""DINO head, loss (centering, temperatures, view pairing), multi-crop wrapper, collapse detection."""

import math

import pytest
import torch
import torch.nn.functional as F

from chada import create_model
from chada.models.batch import ChannelBatch
from chada.ssl.dino import (
    DINOHead,
    DINOLoss,
    MultiCropWrapper,
    WeightNormLinear,
    backbone_dim,
    collapse_kind,
    concat_channel_batches,
)


def test_head_shapes_and_weight_norm() -> None:
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=100, hidden_dim=64, bottleneck_dim=16, nlayers=3)
    out = head(torch.randn(5, 32))
    assert out.shape == (5, 100)
    # last layer rows have unit norm and the input is L2-normalised: |logit| <= 1
    assert out.abs().max() <= 1.0 + 1e-5
    assert not head.last_layer.weight_g.requires_grad
    rows = head.last_layer.weight.norm(dim=1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    free = DINOHead(32, 10, 16, 8, nlayers=1, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad
    assert free(torch.randn(2, 32)).shape == (2, 10)
    with pytest.raises(ValueError):
        head(torch.randn(5, 2, 32))
    with pytest.raises(ValueError):
        DINOHead(32, 10, nlayers=0)


def test_weight_norm_linear_matches_definition() -> None:
    torch.manual_seed(1)
    lin = WeightNormLinear(8, 4, fix_norm=False)
    with torch.no_grad():
        lin.weight_g.mul_(3.0)
    x = torch.randn(3, 8)
    w = lin.weight_v / lin.weight_v.norm(dim=1, keepdim=True) * 3.0
    assert torch.allclose(lin(x), x @ w.T, atol=1e-6)


def _reference_loss(student, teacher, center, n_views, n_global, s_temp, t_temp):
    """DINO's original loop, written independently."""
    s = (student / s_temp).chunk(n_views)
    t = F.softmax((teacher - center) / t_temp, dim=-1).chunk(n_global)
    total, n = 0.0, 0
    for iq, q in enumerate(t):
        for v in range(n_views):
            if v == iq:
                continue
            total += torch.sum(-q * F.log_softmax(s[v], dim=-1), dim=-1).mean()
            n += 1
    return total / n


def test_loss_matches_reference_and_updates_center() -> None:
    torch.manual_seed(0)
    B, K, V, G = 4, 16, 5, 2
    loss_fn = DINOLoss(K, n_global=G, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.fill_(0.3)
    student, teacher = torch.randn(V * B, K), torch.randn(G * B, K)
    got = loss_fn(student, teacher, teacher_temp=0.05)
    want = _reference_loss(student, teacher, torch.full((1, K), 0.3), V, G, 0.1, 0.05)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(loss_fn.center, 0.9 * 0.3 + 0.1 * teacher.mean(0, keepdim=True), atol=1e-6)


def test_loss_gradient_only_to_student() -> None:
    K = 8
    loss_fn = DINOLoss(K, n_global=2)
    s = torch.randn(6, K, requires_grad=True)
    t = torch.randn(4, K, requires_grad=True)
    loss_fn(s, t, 0.04).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_loss_rejects_bad_shapes() -> None:
    loss_fn = DINOLoss(8, n_global=2)
    with pytest.raises(ValueError):
        loss_fn(torch.randn(6, 9), torch.randn(4, 9), 0.04)
    with pytest.raises(ValueError):
        loss_fn(torch.randn(6, 8), torch.randn(3, 8), 0.04)
    with pytest.raises(ValueError):
        loss_fn(torch.randn(1, 8), torch.randn(2, 8), 0.04)  # one student view: nothing to compare


def test_stats_and_collapse_detection() -> None:
    K = 64
    loss_fn = DINOLoss(K, n_global=2)
    # uniform collapse: constant outputs -> uniform teacher, student equal -> KL 0
    const = torch.zeros(8, K)
    st = loss_fn.stats(const, const, 0.04)
    assert st["teacher_entropy"] == pytest.approx(math.log(K), rel=1e-4)
    assert collapse_kind(st) == "uniform"
    # one-prototype collapse: every input peaks on prototype 3
    peaked = torch.zeros(8, K)
    peaked[:, 3] = 10.0
    st = loss_fn.stats(peaked, peaked, 0.04)
    assert st["teacher_batch_entropy"] < 0.01
    assert collapse_kind(st) == "one_prototype"
    # healthy: different inputs pick different prototypes
    torch.manual_seed(0)
    healthy = torch.randn(8, K)
    st = loss_fn.stats(torch.randn(8, K), healthy, 0.04)
    assert collapse_kind(st) is None


def _views(B: int, sizes: list[int], counts: list[int]) -> list[ChannelBatch]:
    out = []
    for s in sizes:
        imgs = [torch.rand(c, s, s) for c in counts[:B]]
        out.append(ChannelBatch.from_images(imgs))
    return out


def test_multicrop_wrapper_groups_by_size_and_keeps_view_order() -> None:
    torch.manual_seed(0)
    bb = create_model("chada_vit_test", img_size=16)
    calls: list[int] = []
    bb.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    head = DINOHead(backbone_dim(bb), 20, 32, 8)
    wrapper = MultiCropWrapper(bb, head).eval()
    views = _views(3, [16, 16, 8, 8, 8], [1, 3, 5])
    out = wrapper(views)
    assert out.shape == (5 * 3, 20)
    assert calls == [6, 9]  # one backbone call for the 2 global views, one for the 3 local views
    # view-major order: rows 3..5 are view 1, equal to running view 1 alone
    alone = wrapper([views[1]])
    assert torch.allclose(out[3:6], alone, atol=1e-5)


def test_concat_channel_batches() -> None:
    a = ChannelBatch.from_images([torch.rand(2, 8, 8)], channel_ids=[[3, 1]])
    b = ChannelBatch.from_images([torch.rand(1, 8, 8), torch.rand(3, 8, 8)])
    c = concat_channel_batches([a, b])
    assert c.counts.tolist() == [2, 1, 3]
    assert c.channel_ids.tolist() == [3, 1, 0, 0, 1, 2]
    with pytest.raises(ValueError):
        concat_channel_batches([a, ChannelBatch.from_images([torch.rand(1, 4, 4)])])
