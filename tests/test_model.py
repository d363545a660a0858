"""ChAda-ViT backbone: padding invariance, channel identity, shapes, save/load, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import chada
from chada.models import ChAdaViTConfig, ChannelBatch

TOL = 1e-5


def make(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return chada.create_model("chada_vit_test", **kw).eval()


def imgs(*counts: int, size: int = 32, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(c, size, size, generator=g) for c in counts]


@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_padding_invariance_alone_vs_mixed_batch(mode: str) -> None:
    model = make(attention=mode)
    batch = imgs(2, 10, 5, 1, 2)
    with torch.no_grad():
        together = model(batch)
        for i, img in enumerate(batch):
            alone = model([img])
            assert (alone[0] - together[i]).abs().max() < TOL


def test_padding_values_have_no_influence_in_padded_attention() -> None:
    """Write random garbage into the padded token slots of the padded layout: nothing real changes."""
    model = make(attention="padded")
    batch = ChannelBatch.from_images(imgs(3, 1, 7))
    with torch.no_grad():
        ref = model.forward_features(batch, return_hidden_states=True)
        blocks = model.blocks
        tokens, cls, (h, w) = model.embed(batch)
        B, Cmax, N, D = 3, model.max_channels, h * w, model.embed_dim
        grid = torch.randn(B, Cmax, N, D) * 100  # garbage everywhere ...
        counts = batch.counts
        start = 0
        for b, c in enumerate(counts.tolist()):  # ... then the real channels in place
            grid[b, :c] = tokens[start : start + c]
            start += c
        x = torch.cat([cls.expand(B, 1, D), grid.reshape(B, Cmax * N, D)], dim=1)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool), (torch.arange(Cmax)[None] < counts[:, None]).repeat_interleave(N, 1)], 1)
        for i, blk in enumerate(blocks):
            x, _ = blk(x, mask)
            real = x * mask[..., None]
            assert (real - ref.hidden_states[i]).abs().max() < 1e-4
        assert (model.norm(x)[:, 0] - ref.cls).abs().max() < TOL


def test_channel_identity_and_shared_patch_embedding() -> None:
    model = make()
    img = imgs(3)[0]
    swapped = img[[1, 0, 2]]
    with torch.no_grad():
        a = model([img])
        b = model([swapped])
        assert (a - b).abs().max() > 1e-3, "swapping channels must change the embedding"
        # Same channel content in the same slot -> identical token embedding.
        t1, _, _ = model.embed(ChannelBatch.from_images([img]))
        other = img.clone()
        other[1:] = torch.rand(2, 32, 32)
        t2, _, _ = model.embed(ChannelBatch.from_images([other]))
        assert torch.equal(t1[0], t2[0])
        assert not torch.allclose(t1[1], t2[1])


def test_channel_embedding_is_used_per_slot() -> None:
    model = make()
    img = imgs(1)[0]
    with torch.no_grad():
        t0, _, _ = model.embed(ChannelBatch.from_images([img], channel_ids=[[0]]))
        t5, _, _ = model.embed(ChannelBatch.from_images([img], channel_ids=[[5]]))
    diff = (t5 - t0)[0]
    expected = model.channel_embed[5] - model.channel_embed[0]
    assert torch.allclose(diff, expected.expand_as(diff), atol=1e-6)


def test_positional_embedding_shared_across_channels() -> None:
    model = make()
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.channel_embed.zero_()
        tokens, cls, _ = model.embed(ChannelBatch.from_images(imgs(4)))
    for c in range(1, 4):
        assert torch.equal(tokens[c], tokens[0])
    assert torch.equal(tokens[0], model.pos_embed[0, 1:])
    assert torch.equal(cls, model.cls_token[0] + model.pos_embed[0, :1])


@pytest.mark.parametrize("c", list(range(1, 11)))
def test_output_shapes_for_every_channel_count(c: int) -> None:
    model = make()
    cfg = model.config
    with torch.no_grad():
        out = model.forward_features(imgs(c, c), return_attention=True)
    D, N, g = cfg.embed_dim, cfg.num_patches, cfg.grid_size
    assert out.cls.shape == (2, D)
    assert out.patch_tokens.shape == (2, cfg.max_channels, N, D)
    assert out.channel_mask.sum(1).tolist() == [c, c]
    assert out.attention.shape == (2, cfg.num_heads, cfg.max_channels, g, g)
    assert torch.all(out.attention[:, :, c:] == 0)
    assert torch.all(out.patch_tokens[:, c:] == 0)
    total = out.attention.sum(dim=(2, 3, 4)) + out.cls_self_attention
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert model(imgs(c), pool="all").shape == (1, 2 * D)


def test_input_forms_agree() -> None:
    model = make()
    x = torch.rand(3, 4, 32, 32)
    with torch.no_grad():
        a = model(x)
        b = model(list(x))
        c = model(ChannelBatch(x.reshape(12, 32, 32), torch.tensor([4, 4, 4])))
    assert torch.allclose(a, b, atol=TOL) and torch.allclose(a, c, atol=TOL)


def test_other_image_sizes_interpolate_positions() -> None:
    model = make()
    with torch.no_grad():
        out = model.forward_features(imgs(2, 3, size=64))
        assert out.grid == (8, 8)
        out = model.forward_features([torch.rand(2, 16, 24)])
        assert out.grid == (2, 3)
        pos = model.interpolate_pos_embed(4, 4)
    assert torch.equal(pos, model.pos_embed[0])


def test_save_load_roundtrip_bit_identical(tmp_path) -> None:
    model = make(seed=3)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "config.json").exists()
    loaded = chada.load_model(tmp_path / "m")
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = imgs(1, 4, 10)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.config == model.config


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        chada.load_model(tmp_path / "nope")
    model = make()
    model.save_pretrained(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    state.pop("norm.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match="norm.bias"):
        chada.load_model(tmp_path / "m")


@pytest.mark.parametrize(
    "bad, err, match",
    [
        ([torch.rand(0, 32, 32)], ValueError, "0 channels"),
        ([torch.rand(11, 32, 32)], ValueError, "C_max"),
        ([torch.rand(32, 32)], ValueError, "3 dims"),
        (torch.rand(2, 3, 1, 32, 32), ValueError, "shape"),
        ([torch.full((2, 32, 32), float("nan"))], ValueError, "NaN"),
        ([torch.rand(2, 32, 32), torch.rand(1, 32, 32) * float("inf")], ValueError, r"NaN or inf pixels in images \[1\]"),
        ([torch.rand(2, 32, 32), torch.rand(2, 64, 64)], ValueError, "share H and W"),
        ([torch.rand(2, 30, 32)], ValueError, "not divisible by the patch size"),
        ([], ValueError, "empty"),
        ("not an image", TypeError, "expected"),
        ([torch.rand(2, 32, 32), "x"], TypeError, "image 1"),
    ],
)
def test_bad_input_errors(bad, err, match) -> None:
    model = make()
    with pytest.raises(err, match=match):
        model(bad)


def test_bad_channel_ids_and_counts() -> None:
    model = make()
    with pytest.raises(ValueError, match="channel_ids"):
        model(ChannelBatch.from_images(imgs(2), channel_ids=[[0, 10]]))
    with pytest.raises(ValueError, match="counts sum"):
        ChannelBatch(torch.rand(3, 32, 32), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="C_i = 0"):
        ChannelBatch(torch.rand(3, 32, 32), torch.tensor([3, 0]))


def test_unknown_model_and_override() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        chada.create_model("chada_vit_enorme")
    with pytest.raises(TypeError, match="unknown config keys"):
        chada.create_model("chada_vit_test", embed_dimm=3)
    with pytest.raises(ValueError, match="attention"):
        make().set_attention("sparse")


SIZES = ["chada_vit_test", "chada_vit_petit", "chada_vit_moyen", "chada_vit_grand", "chada_vit_moyen_official"]


@pytest.mark.parametrize("name", SIZES)
def test_parameter_count_matches_config(name: str) -> None:
    model = chada.create_model(name)
    cfg: ChAdaViTConfig = model.config
    n = model.num_params()
    print(f"{name}: {n:,} parameters; tokens at C=1: {cfg.tokens(1)}, at C_max={cfg.max_channels}: {cfg.tokens(cfg.max_channels)}")
    assert n == cfg.expected_num_params()
    if name == "chada_vit_moyen_official":
        assert math.isclose(n / 1e6, 11.34, abs_tol=0.005)  # the authors' released model
    if name == "chada_vit_moyen":
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size, cfg.max_channels) == (
            192, 12, 3, 16, 224, 10,
        )
        assert cfg.tokens(10) == 1961


def test_gradients_flow_to_every_parameter() -> None:
    model = make().train()
    out = model(imgs(1, 3, 10))
    # A plain sum would be blind: the final LayerNorm output sums to ~0 over D whatever its input.
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    assert model.channel_embed.grad.abs().sum(1).gt(0).all()  # slots 0..9 all used by the 10-channel image


def test_pos_embed_init_std_is_configurable() -> None:
    default = chada.create_model("chada_vit_test", img_size=64)
    wide = chada.create_model("chada_vit_test", img_size=64, pos_embed_std=0.5)
    assert 0.01 < default.pos_embed.std().item() < 0.03
    assert 0.3 < wide.pos_embed[:, 1:].std().item() < 0.7
    # The CLS slot keeps DINO's 0.02 whatever the patch slots take (a large constant there collapses DINO).
    assert wide.pos_embed[0, 0].std().item() < 0.04
    # The patch-based baselines take the same option with the same rule.
    one = chada.create_model("one_channel_vit_test", pos_embed_std=0.5)
    assert 0.3 < one.pos_embed[:, 1:].std().item() < 0.7 and one.pos_embed[0, 0].std().item() < 0.04
