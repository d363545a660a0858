"""Channel-reconstruction decoder sizing and the tiny end-to-end protocol on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from chada.tasks.reconstruction import (
    ChannelDecoder,
    DecoderFit,
    build_decoder,
    decoder_budget,
    fit_decoder,
    reconstruction_metrics,
    run_channel_reconstruction,
    size_decoder,
)


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("dims", [(192, 576), (32, 1920), (384, 768)])
def test_decoder_param_parity_paper_size(dims):
    counts = [_n(build_decoder(d, 224)) for d in dims]
    for c in counts:
        assert abs(c - 5_200_000) / 5_200_000 < 0.01
    assert abs(counts[0] - counts[1]) / counts[0] < 0.01
    assert size_decoder(dims[0]).num_params() == counts[0]


def test_decoder_output_shape_and_range():
    dec = build_decoder(48, (40, 24), target_params=60_000, base_channels=32)
    with torch.no_grad():
        y = dec(torch.randn(3, 48))
    assert y.shape == (3, 1, 40, 24) and float(y.min()) >= 0 and float(y.max()) <= 1
    with pytest.raises(ValueError):
        size_decoder(48, 224, target_params=1000)


def test_metrics_closed_form():
    t = torch.tensor([0.0, 1.0, 2.0, 3.0])
    m = reconstruction_metrics(t + 1, t)
    assert m["mse"] == pytest.approx(1.0) and m["mae"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 4 / 5)


class _Encoder(nn.Module):
    """Mean-pools each remaining channel to a few numbers, projected to D (channel-count agnostic)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(16, dim)

    def forward(self, images):
        feats = [nn.functional.adaptive_avg_pool2d(im.mean(0, keepdim=True), 4).flatten() for im in images]
        return self.proj(torch.stack(feats))


def test_run_channel_reconstruction_tiny_and_parity():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(24, 1, 16, 16, generator=g)
    images = torch.cat([base, 1 - base, base**2], dim=1)  # the target is a function of the inputs
    results = []
    for dim in (8, 40):
        torch.manual_seed(0)
        r = run_channel_reconstruction(
            _Encoder(dim), images, target_channel=2, epochs=3, batch_size=8,
            target_params=40_000, base_channels=16, seed=0, num_threads=1,
        )  # fmt: skip
        results.append(r)
        assert r["n_test"] == 5 and r["n_train"] == 19 and r["embed_dim"] == dim
        assert set(r) >= {"mse", "mae", "r2"} and r["mse"] >= 0 and r["mae"] >= 0
    a, b = (r["decoder_params"] for r in results)
    assert abs(a - b) / a < 0.01
    with pytest.raises(ValueError, match="channels"):
        run_channel_reconstruction(_Encoder(8), images[:, :1], target_channel=0, epochs=1)


def test_run_channel_reconstruction_with_chada_vit():
    from chada.models import create_model

    model = create_model("chada_vit_test")
    images = [torch.rand(3, 32, 32) for _ in range(6)] + [torch.rand(4, 32, 32) for _ in range(6)]
    r = run_channel_reconstruction(
        model,
        images,
        target_channel=1,
        epochs=1,
        batch_size=4,
        target_params=30_000,
        base_channels=16,
        num_threads=1,
    )
    assert r["embed_dim"] == model.embed_dim and abs(r["decoder_params"] - 30_000) / 30_000 < 0.01
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())  # encoder untouched


def test_small_images_keep_a_spatial_seed_grid():
    # 224 px: the paper's layout (5 upsamplings from 7 x 7); 32 px: a 4 x 4 seed, not 1 x 1
    assert (size_decoder(192).seed_size, size_decoder(192).n_upsample) == (7, 5)
    spec = size_decoder(32, 32, target_params=106_122, base_channels=32)
    assert (spec.seed_size, spec.n_upsample) == (4, 3)
    assert min(spec.conv_channels[:-1]) >= 8
    dec = ChannelDecoder(spec)
    assert sum(p.numel() for p in dec.parameters()) == spec.num_params()
    with torch.no_grad():
        y = dec(torch.randn(5, 32))
    assert y.shape == (5, 1, 32, 32)
    assert float(y.std(dim=(0, 1)).min()) > 0  # output varies across inputs at every pixel


def test_decoder_budget_scales_with_pixels():
    assert decoder_budget(224) == (5_200_000, 256)
    params, width = decoder_budget(32)
    assert params == round(5_200_000 * 32 * 32 / 224**2) and width == 32
    # rounding error <= (D + 1 + c0 * s0^2) / 2 parameters: < 1 % of 106 k for D up to ~1600
    for dim in (32, 64, 960):  # (one-channel ViT: (C-1) * D)
        n = size_decoder(dim, 32, params, width).num_params()
        assert abs(n - params) / params < 0.01


def test_fit_decoder_chance_is_train_mean():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 6, generator=g)
    y = torch.rand(12, 8, 8, generator=g)
    r = fit_decoder(z[:8], y[:8], z[8:], y[8:], DecoderFit(epochs=1, batch_size=4, target_params=20_000, base_channels=16),
                    keep=[0, 2])  # fmt: skip
    lo, hi = r["target_range"]
    yt = ((y[8:] - lo) / (hi - lo)).clamp(0, 1)
    ytr = ((y[:8] - lo) / (hi - lo)).clamp(0, 1)
    expected = reconstruction_metrics(torch.full_like(yt, float(ytr.mean())), yt)
    assert r["chance"] == pytest.approx(expected)
    assert r["examples"]["prediction"].shape == (2, 8, 8)
    with pytest.raises(ValueError, match="same number of rows"):
        fit_decoder(z[:8], y[:7], z[8:], y[8:], DecoderFit(epochs=1))
