"""DINO head, loss, multi-crop wrapper and schedules: the behaviours mutation testing found untested.

Each test compares with DINO's equations (Caron et al. 2021, the official ``DINOHead``, ``DINOLoss``
and ``utils.cosine_scheduler``) written out here, or with values computed by hand. See
docs/testing.md, "Mutation scores: ssl/ and eval/" (``python scripts/mutation.py ssl/dino.py``).
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chada.models.batch import ChannelBatch
from chada.ssl import dino as dino_mod
from chada.ssl.dino import (
    DINOHead,
    DINOLoss,
    MultiCropWrapper,
    WeightNormLinear,
    backbone_dim,
    collapse_kind,
    concat_channel_batches,
)
from chada.ssl.schedules import CosineSchedule, LinearWarmupConstant, cosine_value, warmup_value

# ---------------------------------------------------------------------------------------------- head


def _layers(head: DINOHead) -> list[tuple]:
    """The MLP as a list of ("linear", in, out) / ("bn", n) / ("gelu",)."""
    mods = [head.mlp] if isinstance(head.mlp, nn.Linear) else list(head.mlp)
    out = []
    for m in mods:
        if isinstance(m, nn.Linear):
            out.append(("linear", m.in_features, m.out_features))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("bn", m.num_features))
        elif isinstance(m, nn.GELU):
            out.append(("gelu",))
        else:
            out.append((type(m).__name__,))
    return out


@pytest.mark.parametrize("use_bn", [False, True])
def test_head_mlp_layout_is_dinos(use_bn: bool) -> None:
    # DINO's DINOHead: Linear(in, hid) [BN] GELU, (nlayers - 2) x (Linear(hid, hid) [BN] GELU), Linear(hid, bot)
    bn = [("bn", 6)] if use_bn else []
    assert _layers(DINOHead(4, 3, 6, 5, nlayers=1, use_bn=use_bn)) == [("linear", 4, 5)]
    assert _layers(DINOHead(4, 3, 6, 5, nlayers=2, use_bn=use_bn)) == [
        ("linear", 4, 6),
        *bn,
        ("gelu",),
        ("linear", 6, 5),
    ]
    mid = [("linear", 6, 6), *bn, ("gelu",)]
    for n in (3, 4):
        got = _layers(DINOHead(4, 3, 6, 5, nlayers=n, use_bn=use_bn))
        assert got == [("linear", 4, 6), *bn, ("gelu",), *mid * (n - 2), ("linear", 6, 5)]


def test_head_defaults_are_dinos() -> None:
    head = DINOHead(8)
    assert _layers(head) == [
        ("linear", 8, 2048),
        ("gelu",),
        ("linear", 2048, 2048),
        ("gelu",),
        ("linear", 2048, 256),
    ]
    assert head.out_dim == 65536 and tuple(head.last_layer.weight_v.shape) == (65536, 256)
    assert not head.last_layer.weight_g.requires_grad  # norm_last_layer=True


def test_head_init_is_dinos() -> None:
    torch.manual_seed(0)
    head = DINOHead(64, out_dim=2048, hidden_dim=512, bottleneck_dim=64, nlayers=2)
    for m in head.mlp.modules():
        if isinstance(m, nn.Linear):  # trunc_normal_(std=0.02), zero bias
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.05)
            assert m.weight.mean().abs().item() < 0.002
            assert torch.count_nonzero(m.bias) == 0
    # last layer: nn.Linear's default, kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
    v = head.last_layer.weight_v
    bound = 1 / math.sqrt(64)
    assert v.abs().max().item() <= bound and v.abs().max().item() > 0.99 * bound
    assert torch.equal(head.last_layer.weight_g, torch.ones(2048, 1))


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_forward_is_mlp_l2_then_weight_normalised_layer(norm_last_layer: bool) -> None:
    torch.manual_seed(0)
    head = DINOHead(6, out_dim=7, hidden_dim=9, bottleneck_dim=5, nlayers=3, norm_last_layer=norm_last_layer)
    with torch.no_grad():
        head.last_layer.weight_g.copy_(torch.arange(1.0, 8.0).view(7, 1))
    x = torch.randn(4, 6)
    h = head.mlp(x)
    h = h / h.pow(2).sum(1, keepdim=True).sqrt()
    v = head.last_layer.weight_v
    w = torch.arange(1.0, 8.0).view(7, 1) * v / v.pow(2).sum(1, keepdim=True).sqrt()
    torch.testing.assert_close(head(x), h @ w.T, rtol=1e-5, atol=1e-6)
    assert head.last_layer.weight_g.requires_grad is (not norm_last_layer)


def test_head_rejects_bad_sizes_and_accepts_ones() -> None:
    assert DINOHead(1, 1, 1, 1, nlayers=2)(torch.randn(3, 1)).shape == (3, 1)
    with pytest.raises(ValueError, match="nlayers must be >= 1, got 0"):
        DINOHead(4, 4, 4, 4, nlayers=0)
    for i, name in enumerate(("in_dim", "out_dim", "hidden_dim", "bottleneck_dim")):
        sizes = [4, 4, 4, 4]
        sizes[i] = 0
        with pytest.raises(ValueError, match=f"^{name} must be >= 1, got 0$"):
            DINOHead(*sizes)
    with pytest.raises(ValueError, match=r"expects \[N, D\] features"):
        DINOHead(4, 4, 4, 4)(torch.randn(4))


def test_weight_norm_linear_fixed_norm_default() -> None:
    lin = WeightNormLinear(3, 2)
    assert not lin.weight_g.requires_grad
    torch.testing.assert_close(lin.weight.norm(dim=1), torch.ones(2))


# ---------------------------------------------------------------------------------- backbone_dim


class _Dims(nn.Module):
    def __init__(self, **attrs) -> None:
        super().__init__()
        for k, v in attrs.items():
            setattr(self, k, v)


def test_backbone_dim_prefers_num_features_then_embed_dim() -> None:
    assert backbone_dim(_Dims(num_features=7)) == 7
    assert backbone_dim(_Dims(embed_dim=5)) == 5
    assert backbone_dim(_Dims(num_features=7, embed_dim=5)) == 7
    assert backbone_dim(_Dims(num_features=1, embed_dim=5)) == 1
    assert backbone_dim(_Dims(num_features=0, embed_dim=5)) == 5  # 0 is not a size
    assert backbone_dim(_Dims(num_features=None, embed_dim=1)) == 1
    assert backbone_dim(_Dims(num_features="12", embed_dim=3)) == 3
    with pytest.raises(TypeError, match="_Dims has no integer `num_features`/`embed_dim`"):
        backbone_dim(_Dims(embed_dim=-2))


# ------------------------------------------------------------------------------ concat / wrapper


def test_concat_keeps_the_single_batch_and_positional_ids() -> None:
    a = ChannelBatch.from_images([torch.rand(2, 4, 4)])
    b = ChannelBatch.from_images([torch.rand(1, 4, 4), torch.rand(3, 4, 4)])
    assert concat_channel_batches([a]) is a
    c = concat_channel_batches([a, b])
    assert c.channel_ids is None  # no batch named its channels: positional ids stay implicit
    assert torch.equal(c.pixels, torch.cat([a.pixels, b.pixels])) and c.counts.tolist() == [2, 1, 3]
    a2 = ChannelBatch.from_images([torch.rand(2, 4, 4)], channel_ids=[[5, 6]])
    b2 = ChannelBatch.from_images([torch.rand(1, 4, 4)], channel_ids=[[9]])
    assert concat_channel_batches([a2, b2]).channel_ids.tolist() == [5, 6, 9]
    with pytest.raises(
        ValueError, match=r"^cannot concatenate ChannelBatches of different sizes \[\(4, 4\), \(8, 8\)\]$"
    ):
        concat_channel_batches([a, ChannelBatch.from_images([torch.rand(1, 8, 8)])])
    with pytest.raises(ValueError, match="^no batches to concatenate$"):
        concat_channel_batches([])


class _Probe(nn.Module):
    """Backbone that records each call and returns (features, junk): feature of an image = (mean, H)."""

    embed_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def forward(self, batch: ChannelBatch, **kwargs):
        self.calls.append((batch.image_size[0], batch.batch_size, kwargs))
        feats = torch.stack(
            [torch.stack([img.mean(), torch.tensor(float(img.shape[-1]))]) for img in batch.split()]
        )
        return feats, torch.full_like(feats, 99.0)


def _view(size: int, seed: int) -> ChannelBatch:
    g = torch.Generator().manual_seed(seed)
    return ChannelBatch.from_images([torch.rand(c, size, size, generator=g) for c in (1, 3)])


def _expected(views: list[ChannelBatch]) -> torch.Tensor:
    return torch.cat(
        [
            torch.stack([torch.stack([i.mean(), torch.tensor(float(i.shape[-1]))]) for i in v.split()])
            for v in views
        ]
    )


def test_wrapper_runs_consecutive_same_size_views_together_in_view_order() -> None:
    views = [_view(8, 0), _view(8, 1), _view(4, 2), _view(4, 3), _view(4, 4), _view(8, 5)]
    bb = _Probe()
    out = MultiCropWrapper(bb, nn.Identity())(views)
    # runs of consecutive equal sizes only: the last 8-px view is its own call
    assert bb.calls == [(8, 4, {}), (4, 6, {}), (8, 2, {})]
    torch.testing.assert_close(out, _expected(views))
    # a lone view before a size change is a run of its own
    views = [_view(8, 0), _view(4, 1), _view(4, 2), _view(8, 3), _view(4, 4)]
    bb = _Probe()
    out = MultiCropWrapper(bb, nn.Identity())(views)
    assert [c[:2] for c in bb.calls] == [(8, 2), (4, 4), (8, 2), (4, 2)]
    torch.testing.assert_close(out, _expected(views))


def test_wrapper_passes_pool_and_accepts_one_batch() -> None:
    bb = _Probe()
    v = _view(4, 0)
    out = MultiCropWrapper(bb, nn.Identity(), pool="mean")(v)
    assert bb.calls == [(4, 2, {"pool": "mean"})]
    torch.testing.assert_close(out, _expected([v]))
    with pytest.raises(ValueError, match="^MultiCropWrapper needs at least one view$"):
        MultiCropWrapper(bb, nn.Identity())([])


def test_wrapper_rejects_non_2d_features() -> None:
    class Bad(nn.Module):
        def forward(self, batch):
            return torch.zeros(batch.batch_size, 3, 2)

    with pytest.raises(ValueError, match=r"backbone must return \[B, D\]"):
        MultiCropWrapper(Bad(), nn.Identity())([_view(4, 0)])


# -------------------------------------------------------------------------------------------- loss


def _dino_loss(student, teacher, center, n_views, n_global, s_temp, t_temp):
    """DINO's DINOLoss.forward (official code), in float64."""
    s = student.double() / s_temp
    s = s.chunk(n_views)
    t = F.softmax((teacher.double() - center.double()) / t_temp, dim=-1).chunk(n_global)
    total, n = 0.0, 0
    for iq, q in enumerate(t):
        for v in range(len(s)):
            if v == iq:
                continue
            total += torch.sum(-q * F.log_softmax(s[v], dim=-1), dim=-1).mean()
            n += 1
    return total / n


def _center(k: int) -> torch.Tensor:
    return torch.linspace(-1.0, 2.0, k).view(1, k)  # not constant: a constant center cancels in the softmax


def test_loss_defaults_are_dinos_with_a_non_uniform_center() -> None:
    torch.manual_seed(0)
    B, K = 3, 6
    loss_fn = DINOLoss(K)  # n_global 2, student_temp 0.1, center_momentum 0.9
    loss_fn.center.copy_(_center(K))
    student, teacher = torch.randn(4 * B, K), torch.randn(2 * B, K)
    got = loss_fn(student, teacher, 0.04)
    want = _dino_loss(student, teacher, _center(K), 4, 2, 0.1, 0.04)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(loss_fn.center, 0.9 * _center(K) + 0.1 * teacher.mean(0, keepdim=True))
    assert tuple(loss_fn.center.shape) == (1, K) and "center" in loss_fn.state_dict()


@pytest.mark.parametrize(("n_global", "n_views"), [(1, 2), (2, 2), (1, 3), (3, 5)])
def test_loss_view_pairing(n_global: int, n_views: int) -> None:
    torch.manual_seed(n_global * 10 + n_views)
    B, K = 2, 5
    loss_fn = DINOLoss(K, n_global=n_global, student_temp=0.2, center_momentum=0.5)
    student, teacher = torch.randn(n_views * B, K), torch.randn(n_global * B, K)
    got = loss_fn(student, teacher, 0.07)
    want = _dino_loss(student, teacher, torch.zeros(1, K), n_views, n_global, 0.2, 0.07)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(loss_fn.center, 0.5 * teacher.mean(0, keepdim=True))


def test_loss_and_stats_run_without_warnings() -> None:
    # every softmax names its dimension (an implicit one warns, once per training step)
    loss_fn = DINOLoss(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(torch.randn(6, 4), torch.randn(4, 4), 0.04)
        loss_fn.stats(torch.randn(6, 4), torch.randn(4, 4), 0.04)


def test_loss_without_center_update_and_in_bf16() -> None:
    torch.manual_seed(1)
    K = 4
    loss_fn = DINOLoss(K, n_global=2)
    loss_fn.center.copy_(_center(K))
    student, teacher = torch.randn(6, K).bfloat16(), torch.randn(4, K).bfloat16()
    got = loss_fn(student, teacher, 0.05, update_center=False)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        _dino_loss(student, teacher, _center(K), 3, 2, 0.1, 0.05).item(), rel=1e-5
    )
    torch.testing.assert_close(loss_fn.center, _center(K))


def test_loss_rejects_each_bad_shape() -> None:
    loss_fn = DINOLoss(4, n_global=2)
    with pytest.raises(ValueError, match="expected student"):
        loss_fn(torch.randn(6, 4, 1), torch.randn(4, 4), 0.04)
    with pytest.raises(ValueError, match="expected student"):
        loss_fn(torch.randn(6, 4), torch.randn(4, 4, 1), 0.04)
    with pytest.raises(ValueError, match="expected student"):
        loss_fn(torch.randn(6, 5), torch.randn(4, 4), 0.04)
    with pytest.raises(ValueError, match=r"^teacher rows \(5\) are not a multiple of n_global=2$"):
        loss_fn(torch.randn(6, 4), torch.randn(5, 4), 0.04)
    with pytest.raises(ValueError, match=r"^student rows \(7\) are not a multiple of the batch size 2$"):
        loss_fn(torch.randn(7, 4), torch.randn(4, 4), 0.04)
    with pytest.raises(ValueError, match="^DINO needs at least 2 views"):
        DINOLoss(4, n_global=1)(torch.randn(2, 4), torch.randn(2, 4), 0.04)
    with pytest.raises(ValueError, match="^n_global must be >= 1$"):
        DINOLoss(4, n_global=0)


def test_center_is_averaged_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A second process holds `other`: all_reduce sums the per-process sums and row counts.
    torch.manual_seed(2)
    K = 3
    mine, other = torch.randn(4, K), torch.randn(6, K)
    calls = []

    def all_reduce(t: torch.Tensor) -> None:
        calls.append(tuple(t.shape))
        t += other.sum(0, keepdim=True) if t.shape == (1, K) else torch.tensor([6.0])

    monkeypatch.setattr(dino_mod.dist, "is_available", lambda: True)
    monkeypatch.setattr(dino_mod.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dino_mod.dist, "all_reduce", all_reduce)
    loss_fn = DINOLoss(K, center_momentum=0.8)
    loss_fn.center.copy_(_center(K))
    loss_fn.update_center(mine)
    assert calls == [(1, K), (1,)]
    want = 0.8 * _center(K) + 0.2 * torch.cat([mine, other]).mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, want)


def test_center_update_stays_on_the_teacher_device() -> None:
    # the meta device stands in for a GPU: a row count made on the CPU would not divide a meta tensor
    loss_fn = DINOLoss(4).to("meta")
    loss_fn.update_center(torch.empty(6, 4, device="meta"))
    assert loss_fn.center.device.type == "meta"


# ------------------------------------------------------------------------------- stats / collapse


def test_stats_are_the_documented_entropies_and_kl() -> None:
    torch.manual_seed(3)
    B, K = 2, 3  # G*B = 4 rows != K, so a mean over the wrong axis shows
    loss_fn = DINOLoss(K, n_global=2, student_temp=0.5)
    loss_fn.center.copy_(_center(K))
    student, teacher = torch.randn(3 * B, K), torch.randn(2 * B, K)
    st = loss_fn.stats(student, teacher, 0.3)
    q = F.softmax((teacher.double() - _center(K).double()) / 0.3, dim=1)
    logp = F.log_softmax(student[:4].double() / 0.5, dim=1)
    ent = -(q * q.log()).sum(1).mean()
    mq = q.mean(0)
    assert st["teacher_entropy"] == pytest.approx(ent.item(), rel=1e-5)
    assert st["teacher_batch_entropy"] == pytest.approx(-(mq * mq.log()).sum().item(), rel=1e-5)
    assert st["kl"] == pytest.approx((q * (q.log() - logp)).sum(1).mean().item(), rel=1e-4)
    assert st["max_entropy"] == pytest.approx(math.log(3))
    # local views (rows past G*B) do not enter the statistics
    student2 = student.clone()
    student2[4:] = 100.0
    assert loss_fn.stats(student2, teacher, 0.3) == st


def test_stats_of_a_one_hot_teacher_are_finite_zeros() -> None:
    # probabilities that underflow to exactly 0 must count as 0 log 0 = 0, not NaN
    peaked = torch.zeros(4, 5)
    peaked[:, 1] = 1000.0
    st = DINOLoss(5).stats(peaked, peaked, 0.01)
    assert st["teacher_entropy"] == 0.0 and st["teacher_batch_entropy"] == 0.0 and st["kl"] == 0.0


H = 2.0  # log K of the made-up statistics below; the thresholds are fractions of it


def _st(ent: float, kl: float, batch_ent: float) -> dict[str, float]:
    """Statistics with entropies given as fractions of log K."""
    return {"teacher_entropy": ent * H, "kl": kl, "teacher_batch_entropy": batch_ent * H, "max_entropy": H}


def test_collapse_kind_thresholds_are_strict() -> None:
    # defaults: uniform when entropy > 0.98 log K and KL < 1e-3; one prototype when batch entropy < 0.05 log K
    assert collapse_kind(_st(0.981, 0.0, 0.5)) == "uniform"
    assert collapse_kind(_st(0.98, 0.0, 0.5)) is None
    assert collapse_kind(_st(0.99, 0.0009, 0.5)) == "uniform"
    assert collapse_kind(_st(0.99, 0.001, 0.5)) is None
    assert collapse_kind(_st(0.99, 0.5, 0.5)) is None  # high entropy but the student disagrees: learning
    assert collapse_kind(_st(0.5, 0.0, 0.5)) is None
    assert collapse_kind(_st(0.5, 0.5, 0.049)) == "one_prototype"
    assert collapse_kind(_st(0.5, 0.5, 0.05)) is None
    assert collapse_kind(_st(0.5, 0.5, 0.2), onehot_frac=0.3) == "one_prototype"
    assert collapse_kind(_st(0.9, 0.01, 0.5), kl_eps=0.1, uniform_frac=0.8) == "uniform"


# ------------------------------------------------------------------------------------- schedules


def test_warmup_of_two_values_reaches_the_end() -> None:
    assert (
        warmup_value(0, 2, 0.5, 1.5) == 0.5 and warmup_value(1, 2, 0.5, 1.5) == 1.5
    )  # np.linspace(.5, 1.5, 2)
    assert warmup_value(1, 4, 0.0, 3.0, form="ramp") == 0.75
    with pytest.raises(ValueError, match="warm-up form must be one of"):
        warmup_value(0, 3, 0.0, 1.0, form="cosine")
    t = LinearWarmupConstant(0.04, 0.07, 2)
    assert [t(0), t(1), t(2)] == [0.04, 0.07, 0.07]


def test_cosine_edges() -> None:
    assert cosine_value(0, 1, 0.7, 0.1) == 0.7  # one step: base, no decay yet
    assert CosineSchedule(0.7, 0.1, 1)(0) == 0.7
    assert cosine_value(3, 4, 1.0, 0.0, warmup_steps=4) == 1.0  # all warm-up: np.linspace(0, 1, 4)[3]
    assert cosine_value(4, 4, 1.0, 0.2, warmup_steps=4) == 0.2  # past the end: final
    # a warm-up longer than the run is cut to the run: linspace(0.1, 1, 5) over the 5 steps
    assert [
        cosine_value(i, 5, 1.0, 0.0, warmup_steps=9, warmup_start=0.1) for i in range(5)
    ] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0])
    for bad in (0, -1):
        with pytest.raises(ValueError, match="total_steps must be positive"):
            cosine_value(0, bad, 1.0, 0.0)


def test_schedules_name_the_bad_argument() -> None:
    assert cosine_value(0, 10, 1.0, 0.0, warmup_steps=4) == 0.0  # warm-up starts at 0 by default, as in DINO
    with pytest.raises(ValueError, match="^warmup_steps must be >= 0, got -1$"):
        cosine_value(0, 10, 1.0, 0.0, warmup_steps=-1)
    with pytest.raises(ValueError, match="^step must be >= 0, got -3$"):
        cosine_value(-3, 10, 1.0, 0.0)
    with pytest.raises(ValueError, match="^total_steps must be positive, got 0$"):
        CosineSchedule(1.0, 0.0, 0)
    with pytest.raises(ValueError, match="^warmup must be one of"):
        CosineSchedule(1.0, 0.0, 10, warmup="cosine")
    with pytest.raises(ValueError, match="^index must be >= 0, got -1$"):
        LinearWarmupConstant(0.04, 0.07, 3)(-1)
    with pytest.raises(ValueError, match="^form must be one of"):
        LinearWarmupConstant(0.04, 0.07, 3, form="cosine")
