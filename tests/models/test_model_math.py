"""ChAda-ViT's numbers against plain, hand-written code (tests/helpers/plain_vit.py: no nn.Module, no
F.interpolate, no SDPA).

- the interpolated positional grid against a hand-written separable resampler (torch's
  ``antialias=True`` convolution, PIL's algorithm, for ``bicubic``/``bilinear``; the cubic convolution
  with A = -0.75 and DINO's ``+0.1`` scale factor for ``dino_bicubic``);
- the whole forward pass (patch embedding as a matrix product over unfolded patches, LayerNorm,
  multi-head softmax attention, GELU by its erf formula, layer scale, final norm), image by image
  without any padding, in float64, against every attention mode of the model;
- initialisation, stochastic depth and the drop-path schedule against their definitions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import chada
from chada.models import ChannelBatch
from chada.models.layers import Block, VarlenSegments
from tests.helpers.plain_vit import (
    antialias_matrix,
    assert_directional_derivatives,
    dino_matrix,
    layer_norm,
    patches,
    positions,
    prenorm_blocks,
)

# ----------------------------------------------------------------------- reference resampling


def test_reference_resampler_sanity() -> None:
    """The reference itself: the identity at equal sizes, rows summing to 1, and PIL's resize of a
    float image (the same antialiased convolution, written in C) gives the same pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.standard_normal((5, 7)).astype(np.float32)
    for kind, flag in (("bicubic", Image.Resampling.BICUBIC), ("bilinear", Image.Resampling.BILINEAR)):
        np.testing.assert_allclose(antialias_matrix(4, 4, kind), np.eye(4), atol=1e-12)
        for n_out in (1, 2, 3, 6, 9):
            np.testing.assert_allclose(antialias_matrix(4, n_out, kind).sum(1), 1.0, atol=1e-12)
        for h, w in [(3, 11), (9, 4), (2, 2)]:
            pil = np.asarray(Image.fromarray(img, mode="F").resize((w, h), flag))
            ours = antialias_matrix(5, h, kind) @ img @ antialias_matrix(7, w, kind).T
            np.testing.assert_allclose(ours, pil, atol=1e-5)
    for n_out in (2, 3, 5, 7):
        np.testing.assert_allclose(dino_matrix(4, n_out).sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("kind", ["bicubic", "bilinear", "dino_bicubic"])
@pytest.mark.parametrize("hw", [(6, 6), (2, 3), (3, 5), (7, 2), (1, 1)])
def test_interpolated_positions_equal_hand_written_resampling(kind: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = chada.create_model("chada_vit_test", pos_interpolation=kind, pos_embed_std=1.0).double()
    g = model.config.grid_size
    assert g == 4
    h, w = hw
    got = model.interpolate_pos_embed(h, w)
    assert got.shape == (1 + h * w, model.embed_dim)
    # the model resizes in float32 whatever its dtype (a bf16 model keeps an fp32-quality grid)
    torch.testing.assert_close(got, positions(model.pos_embed.detach(), g, h, w, kind), atol=1e-5, rtol=0)
    assert torch.equal(got[0], model.pos_embed[0, 0])  # the CLS slot is never resized


@pytest.mark.parametrize(
    ("name", "kind"), [("one_channel_vit_test", "bicubic"), ("fixed_channel_vit_test", "bilinear")]
)
def test_baseline_interpolated_positions_equal_hand_written_resampling(name: str, kind: str) -> None:
    torch.manual_seed(0)
    model = chada.create_model(name, pos_interpolation=kind, pos_embed_std=1.0).double()
    for h, w in [(3, 5), (6, 2), (4, 4)]:
        ref = positions(model.pos_embed.detach(), 4, h, w, kind)
        torch.testing.assert_close(model.interpolate_pos_embed(h, w), ref, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------- reference forward pass


def reference_image(model, image: torch.Tensor, slots: list[int]) -> dict[str, torch.Tensor]:
    """ChAda-ViT (pre-norm blocks) on ONE ``[C, H, W]`` image, from the parameters and plain algebra.

    Returns ``cls [D]``, ``patch [C, N, D]``, every block's output ``hidden [depth][1 + C*N, D]`` and the
    last block's CLS attention row ``cls_attention [heads, 1 + C*N]``.
    """
    cfg = model.config
    P = {k: v.detach().double() for k, v in model.named_parameters()}
    D, p = cfg.embed_dim, cfg.patch_size
    C, H, W = image.shape
    h, w = H // p, W // p
    # the shared projection: every channel's patches through the same [D, p*p] matrix
    tokens = torch.stack([patches(image[c : c + 1].double(), p) for c in range(C)])  # [C, N, p*p]
    tokens = tokens @ P["patch_embed.proj.weight"].reshape(D, p * p).T + P["patch_embed.proj.bias"]
    pos = positions(model.pos_embed.detach(), cfg.grid_size, h, w, cfg.pos_interpolation)
    tokens = tokens + pos[1:][None] + P["channel_embed"][slots][:, None]
    x = torch.cat([P["cls_token"][0] + pos[:1], tokens.reshape(C * h * w, D)])
    hidden, att = prenorm_blocks(x, P, cfg.depth, cfg.num_heads, cfg.block_norm_eps, cfg.act)
    x = layer_norm(hidden[-1], P["norm.weight"], P["norm.bias"], cfg.norm_eps)
    return {"cls": x[0], "patch": x[1:].reshape(C, h * w, D), "hidden": hidden, "cls_attention": att[:, 0]}


def _perturbed(name: str = "chada_vit_test", seed: int = 0, **overrides):
    """A model in float64 whose every parameter is far from its init (LayerNorm affines off (1, 0),
    non-zero biases, a CLS token that matters), so a dropped term changes the output measurably."""
    torch.manual_seed(seed)
    model = chada.create_model(name, **overrides).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _images(counts: list[int], size: int, seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    """float32 by default: the float64 model casts them (the reference converts them itself)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, size, size, generator=g).to(dtype) for c in counts]


@pytest.mark.parametrize("mode", ["padded", "packed", "varlen"])
@pytest.mark.parametrize(
    ("size", "overrides"),
    [
        (32, {"layer_scale": 0.7}),
        (48, {}),
        (24, {"pos_interpolation": "bilinear", "max_channels": 4, "act": "relu"}),
    ],
)
def test_forward_equals_plain_reference(mode: str, size: int, overrides: dict) -> None:
    """Every output of ``forward_features`` in every mode equals the plain per-image reference: the CLS,
    the patch tokens of each real channel (zeros on padding), every block's hidden states in the
    padded layout, the last layer's CLS attention and its self-weight. Mixed channel counts, slots
    that are not 0..C-1, and an image size that resizes the positional grid."""
    model = _perturbed(attention=mode, **overrides)
    cmax, D = model.config.max_channels, model.embed_dim
    counts = [2, 1, cmax, 2]
    images = _images(counts, size, seed=3)
    g = torch.Generator().manual_seed(4)
    slots = [torch.randperm(cmax, generator=g)[:c].tolist() for c in counts]
    batch = ChannelBatch.from_images(images, channel_ids=slots)
    with torch.no_grad():
        out = model.forward_features(batch, return_attention=True, return_hidden_states=True)
    h, w = out.grid
    N = h * w
    assert (h, w) == (size // 8, size // 8)
    tol = 1e-10 if size == 32 else 1e-5  # other sizes: the positional grid is resized in float32
    for b, (img, sl) in enumerate(zip(images, slots)):
        ref = reference_image(model, img, sl)
        c = img.shape[0]
        L = 1 + c * N
        torch.testing.assert_close(out.cls[b], ref["cls"], atol=tol, rtol=0)
        torch.testing.assert_close(out.patch_tokens[b, :c], ref["patch"], atol=tol, rtol=0)
        assert not out.patch_tokens[b, c:].any()
        assert out.channel_mask[b].tolist() == [True] * c + [False] * (cmax - c)
        assert out.channel_ids[b].tolist() == sl + [-1] * (cmax - c)
        for layer, hs in enumerate(out.hidden_states):
            assert hs.shape == (len(images), 1 + cmax * N, D)
            torch.testing.assert_close(hs[b, :L], ref["hidden"][layer], atol=tol, rtol=0)
            assert not hs[b, L:].any()
        att = ref["cls_attention"]  # [heads, 1 + c*N]
        torch.testing.assert_close(out.cls_self_attention[b], att[:, 0], atol=tol, rtol=0)
        torch.testing.assert_close(out.attention[b, :, :c], att[:, 1:].reshape(-1, c, h, w), atol=tol, rtol=0)
        assert not out.attention[b, :, c:].any()
        # the pooled embedding: CLS, then the mean over the real patch tokens only
        emb = model.forward_head(out, "all")[b]
        torch.testing.assert_close(
            emb, torch.cat([ref["cls"], ref["patch"].reshape(-1, D).mean(0)]), atol=tol, rtol=0
        )
    torch.testing.assert_close(model.forward_head(out, "cls"), out.cls, atol=0, rtol=0)
    torch.testing.assert_close(model(batch), out.cls, atol=tol, rtol=0)


def test_reference_detects_a_changed_model() -> None:
    """The reference comparison is not trivially satisfied: moving one image to other slots, or
    scaling one weight, moves the model's output far beyond the tolerance used above."""
    model = _perturbed()
    img = _images([3], 32, seed=1)[0]
    ref = reference_image(model, img, [0, 1, 2])["cls"]
    with torch.no_grad():
        moved = model.forward_features(ChannelBatch.from_images([img], channel_ids=[[0, 2, 1]])).cls[0]
        assert (moved - ref).abs().max() > 1e-3
        model.blocks[1].mlp.fc2.bias.mul_(1.01)
        assert (model([img])[0] - ref).abs().max() > 1e-5


@pytest.mark.parametrize("mode", ["padded", "packed", "varlen"])
def test_gradients_equal_finite_differences(mode: str) -> None:
    """d(loss)/d(parameter) along a random direction, per parameter tensor, against a central finite
    difference of the forward pass (float64): each tensor gets its own, correct gradient."""
    model = _perturbed(attention=mode, depth=1, layer_scale=0.5)
    images = _images([2, 1, 3], 32, seed=5)  # the training size: no float32 resize of the grid
    g = torch.Generator().manual_seed(6)
    weights = None

    def loss() -> torch.Tensor:
        nonlocal weights
        out = model.forward_features(images)
        flat = torch.cat([out.cls.flatten(), out.patch_tokens.flatten()])
        if weights is None:
            weights = torch.randn(flat.shape, generator=g, dtype=flat.dtype)
        return (flat * weights).sum()

    model.zero_grad()
    loss().backward()
    assert_directional_derivatives(model, loss, g)


# ----------------------------------------------------------------------- init, drop path


def test_init_follows_the_documented_scheme() -> None:
    """trunc-normal(0.02) linears, patch projection and channel embedding; zero biases; unit LayerNorms;
    a near-zero CLS token; the positional CLS slot at 0.02 whatever pos_embed_std is."""
    torch.manual_seed(0)
    model = chada.create_model(
        "chada_vit_test", embed_dim=64, img_size=64, pos_embed_std=0.3, max_channels=40
    )
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert 0.018 < m.weight.std().item() < 0.022, name
            assert not m.bias.any(), name
        elif isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), name
    w = model.patch_embed.proj.weight
    assert 0.018 < w.std().item() < 0.022 and w.abs().max() < 0.1
    assert 0.018 < model.channel_embed.std().item() < 0.022
    assert 0 < model.cls_token.abs().max() < 1e-5
    assert 0.27 < model.pos_embed[0, 1:].std().item() < 0.33
    assert 0.01 < model.pos_embed[0, 0].std().item() < 0.03


def test_drop_path_schedule_and_per_sample_masks() -> None:
    model = chada.create_model("chada_vit_test", depth=5, drop_path_rate=0.4)
    assert [b.drop_path for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert chada.create_model("chada_vit_test", depth=1, drop_path_rate=0.4).blocks[0].drop_path == 0.0
    torch.manual_seed(0)
    blk = Block(8, 2, 16, drop_path=0.25).train()
    x = torch.ones(400, 3, 8)
    out = blk._drop(x)
    per_sample = out.flatten(1)
    # one draw per sample: a dropped sample is all zeros, a kept one is scaled by 1 / keep
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert (per_sample == per_sample[:, :1]).all()
    assert 0.65 < (per_sample[:, 0] > 0).float().mean().item() < 0.85
    # eval mode and drop_path = 0 are the identity
    assert blk.eval()._drop(x) is x
    assert Block(8, 2, 16, drop_path=0.0).train()._drop(x) is x
    seg = VarlenSegments.from_lengths([3, 5], "cpu")
    assert blk._drop(torch.ones(8, 8), seg).eq(1).all()  # eval: identity on packed tokens too
