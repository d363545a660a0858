"""Attention maps per channel and the inter-channel matrix (chada.viz.attention)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import chada
from chada.viz.attention import (
    AttentionUnavailable,
    attention_maps,
    compute_model_attention,
    fit_image_size,
    inter_channel_matrix,
    last_layer_attention,
)
from chada.viz.attention_figure import plot_attention_grid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = chada.create_model("chada_vit_test").eval()
    # Random init gives near-uniform attention; sharpen the last layer so the tests see real structure.
    with torch.no_grad():
        m.blocks[-1].attn.qkv.weight.mul_(20.0)
        m.channel_embed.normal_(0, 1.0)
    return m


@pytest.mark.parametrize("mode", ["packed", "padded"])
def test_cls_attention_sums_to_one_and_zero_on_padding(model, mode):
    torch.manual_seed(1)
    model.set_attention(mode)
    images = [torch.rand(3, 32, 32), torch.rand(1, 32, 32), torch.rand(5, 32, 32)]
    out = model.forward_features(images, return_attention=True)
    att, cls_self = out.attention, out.cls_self_attention  # [B, heads, C_max, h, w], [B, heads]
    assert att.shape == (3, 2, model.max_channels, 4, 4)
    total = att.sum(dim=(2, 3, 4)) + cls_self
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
    for b, img in enumerate(images):
        c = img.shape[0]
        assert torch.count_nonzero(att[b, :, c:]) == 0  # padding positions: exactly zero
        assert bool((att[b, :, :c] > 0).all())
    model.set_attention("packed")


def test_attention_maps_single_image(model):
    torch.manual_seed(2)
    img = torch.rand(3, 32, 32)
    d = attention_maps(model, img)
    assert d["kind"] == "joint"
    assert d["per_head"].shape == (2, 3, 32, 32) and d["mean"].shape == (3, 32, 32)
    total = d["channel_mass_per_head"].sum(-1) + d["cls_self"]
    torch.testing.assert_close(total, torch.ones(2), atol=1e-5, rtol=0)
    # Nearest upsampling: each 8x8 block carries its patch's weight, so the sum is mass * 64.
    torch.testing.assert_close(d["per_head"].sum(dim=(-2, -1)) / 64.0, d["channel_mass_per_head"])
    torch.testing.assert_close(d["mean"], d["per_head"].mean(0))
    # Same numbers as the model's own CLS attention.
    ref = model.forward_features([img], return_attention=True).attention[0, :, :3]
    torch.testing.assert_close(d["patch_attention"], ref)


@pytest.mark.parametrize("channel_ids", [None, [4, 0, 7]])
def test_last_layer_cls_row_matches_forward_features(model, channel_ids):
    torch.manual_seed(3)
    img = torch.rand(3, 32, 32)
    weights, C, (h, w) = last_layer_attention(model, img, channel_ids)
    assert weights.shape == (2, 1 + 3 * 16, 1 + 3 * 16) and C == 3 and (h, w) == (4, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 49), atol=1e-5, rtol=0)
    batch = chada.ChannelBatch.from_images([img], channel_ids=None if channel_ids is None else [channel_ids])
    out = model.forward_features(batch, return_attention=True)
    torch.testing.assert_close(
        weights[:, 0, 1:].reshape(2, 3, 4, 4), out.attention[0, :, :3], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(weights[:, 0, 0], out.cls_self_attention[0], atol=1e-6, rtol=0)


def _reference_matrix(model, img, normalize):
    """Independent computation from the model's hidden states (padded path) and the last block's weights."""
    model.set_attention("padded")
    out = model.forward_features([img], return_hidden_states=True)
    model.set_attention("packed")
    C, N = img.shape[0], 16
    x = out.hidden_states[-2][0, : 1 + C * N]  # input of the last block, real tokens only
    blk = model.blocks[-1]
    heads, hd = blk.attn.num_heads, blk.attn.head_dim
    qkv = blk.attn.qkv(blk.norm1(x)).reshape(-1, 3, heads, hd).detach().numpy().astype(np.float64)
    m = np.zeros((C, C))
    for hh in range(heads):
        q, k = qkv[:, 0, hh], qkv[:, 1, hh]
        logits = q @ k.T / np.sqrt(hd)
        a = np.exp(logits - logits.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        for i in range(C):
            for t in range(N):
                row = a[1 + i * N + t, 1:]
                if normalize:
                    row = row / row.sum()
                for j in range(C):
                    m[i, j] += row[j * N : (j + 1) * N].sum()
    return m / (heads * N)


@pytest.mark.parametrize("normalize", [True, False])
def test_inter_channel_matrix(model, normalize):
    torch.manual_seed(4)
    img = torch.rand(4, 32, 32)
    m = inter_channel_matrix(model, img, normalize=normalize)
    assert m.shape == (4, 4)
    np.testing.assert_allclose(m.numpy(), _reference_matrix(model, img, normalize), atol=1e-5)
    if normalize:
        torch.testing.assert_close(m.sum(1), torch.ones(4), atol=1e-5, rtol=0)
    else:
        weights, _, _ = last_layer_attention(model, img)
        cls_key = weights[:, 1:, 0].reshape(2, 4, 16).mean(dim=(0, 2))  # per query channel, on the CLS key
        torch.testing.assert_close(m.sum(1), 1.0 - cls_key, atol=1e-5, rtol=0)
        assert bool((m.sum(1) < 1.0).all())
    assert float(m.max() - m.min()) > 1e-3  # the sharpened model is not uniform


class _NoAttention(nn.Module):
    config = SimpleNamespace(patch_size=8)

    def forward_features(self, images):
        return SimpleNamespace(cls=torch.zeros(1, 4))


class _PerChannel(nn.Module):
    """Each channel has its own CLS softmax over its patches (One-Channel-ViT-like)."""

    config = SimpleNamespace(patch_size=8)

    def forward_features(self, images, return_attention=False):
        img = images[0]
        C, heads = img.shape[0], 2
        logits = torch.randn(1, heads, C, 1 + 16, generator=torch.Generator().manual_seed(0))
        a = logits.softmax(-1)
        return SimpleNamespace(attention=a[..., 1:].reshape(1, heads, C, 4, 4), cls_self_attention=a[..., 0])


def test_models_without_or_with_per_channel_attention(model, tmp_path):
    img = torch.rand(3, 32, 32)
    with pytest.raises(AttentionUnavailable):
        attention_maps(_NoAttention(), img)
    with pytest.raises(AttentionUnavailable):
        inter_channel_matrix(_NoAttention(), img)
    none = compute_model_attention(_NoAttention(), img, "plain")
    assert none.maps is None and "provides no attention maps" in none.map_note and none.matrix is None
    per = compute_model_attention(_PerChannel(), img, "one-channel")
    assert per.maps["kind"] == "per_channel" and per.matrix is None
    torch.testing.assert_close(per.maps["channel_mass_per_head"] + per.maps["cls_self"], torch.ones(2, 3))
    joint = compute_model_attention(model, img, "chada")
    paths = plot_attention_grid(img, [joint, per, none], ["DAPI", "Actin", "Tubulin"], tmp_path / "grid.png")
    assert [p.name for p in paths] == ["grid.png", "grid.svg"]
    png = (tmp_path / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    svg = (tmp_path / "grid.svg").read_text()
    for text in ("DAPI", "Tubulin", "provides no", "chada: inter-channel attention", "mean of heads"):
        assert text in svg
    with pytest.raises(ValueError, match="channel names"):
        plot_attention_grid(img, [joint], ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=".png or .svg"):
        plot_attention_grid(img, [joint], None, tmp_path / "bad.jpg")


def test_fit_image_size():
    img = torch.rand(2, 30, 41)
    assert fit_image_size(img, 8).shape == (2, 24, 40)
    assert fit_image_size(img, 8, 32).shape == (2, 32, 32)
    same = torch.rand(2, 32, 16)
    assert fit_image_size(same, 8) is same
    with pytest.raises(ValueError, match="multiple of the patch size"):
        fit_image_size(img, 8, 30)
