"""ChAda-ViT backbone: padding invariance, channel identity, shapes, save/load, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import chada
from chada.models import ChAdaViTConfig, ChannelBatch, chada_paths

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


# ------------------------------------------------------------------ dense outputs (issue 21)
@pytest.mark.parametrize("mode", ["padded", "packed", "varlen"])
def test_forward_dense_is_the_patch_tokens_as_maps(mode: str) -> None:
    model = make(seed=4, attention=mode)
    x = imgs(2, 5, 1, size=32)
    with torch.no_grad():
        out = model.forward_features(x)
        dense = model.forward_dense(x)
        pooled = model.forward_dense(x, channels="pooled")
    h, w = out.grid
    B, C, D = 3, 5, model.embed_dim
    assert dense.maps.shape == (B, C, D, h, w)  # C = the batch's largest count, not C_max
    assert dense.channel_mask.tolist() == [[True] * 2 + [False] * 3, [True] * 5, [True] + [False] * 4]
    for b, c_b in enumerate([2, 5, 1]):
        for c in range(c_b):
            # map pixel (i, j) is patch token i * w + j of that channel
            torch.testing.assert_close(dense.maps[b, c].permute(1, 2, 0).reshape(h * w, D), out.patch_tokens[b, c])
        assert not dense.maps[b, c_b:].any()
        mean = out.patch_tokens[b, :c_b].mean(0).T.reshape(D, h, w)
        torch.testing.assert_close(pooled.maps[b], mean, atol=1e-6, rtol=1e-5)
    assert pooled.maps.shape == (B, D, h, w)


def test_forward_dense_same_in_every_mode_and_upsampled() -> None:
    model = make(seed=5)
    x = imgs(3, 1, 10, size=48, seed=2)
    maps = {}
    with torch.no_grad():
        for mode in ("padded", "packed", "varlen"):
            maps[mode] = model.set_attention(mode).forward_dense(x, upsample=True).maps
        pooled = model.forward_dense(x, channels="pooled", upsample=(20, 24)).maps
        each_small = model.forward_dense(x).maps
    assert maps["packed"].shape == (3, 10, model.embed_dim, 48, 48)
    torch.testing.assert_close(maps["packed"], maps["padded"], atol=TOL, rtol=0)
    torch.testing.assert_close(maps["varlen"], maps["padded"], atol=TOL, rtol=0)
    # bilinear upsampling of the token grid, and pooling commutes with it
    up = torch.nn.functional.interpolate(each_small[1], size=(48, 48), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps["varlen"][1], up, atol=1e-6, rtol=1e-5)
    assert pooled.shape == (3, model.embed_dim, 20, 24)
    ref = torch.nn.functional.interpolate(each_small[0, :3].mean(0, keepdim=True), size=(20, 24), mode="bilinear")
    torch.testing.assert_close(pooled[:1], ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="channels must be one of"):
        model.forward_dense(x, channels="mean")
    with pytest.raises(ValueError, match="upsample"):
        model.forward_dense(x, upsample=(0, 3))


def test_forward_dense_one_channel_vit() -> None:
    torch.manual_seed(0)
    model = chada.create_model("one_channel_vit_test").eval()
    x = imgs(3, 1, size=32)
    with torch.no_grad():
        out = model.forward_features(x)
        dense = model.forward_dense(x)
        alone = model.forward_dense([x[1]])
    h, w = out.grid
    assert dense.maps.shape == (2, 3, model.embed_dim, h, w)
    for row, (b, c) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0)]):
        torch.testing.assert_close(dense.maps[b, c].flatten(1).T, out.patch_tokens[row])
    assert not dense.maps[1, 1:].any() and dense.channel_mask.tolist() == [[True] * 3, [True, False, False]]
    torch.testing.assert_close(dense.maps[1, :1], alone.maps[0], atol=TOL, rtol=0)


# ------------------------------------------------------------------ one pixel dtype rule (issue 17)
@pytest.mark.parametrize(
    "build",
    [
        lambda px: [px],  # model(list)
        lambda px: px[None],  # model([B, C, H, W])
        lambda px: ChannelBatch(px, torch.tensor([2])),
        lambda px: ChannelBatch.from_images([torch.rand(1, 32, 32), px]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.bool])
def test_integer_pixels_refused_on_every_path(build, dtype) -> None:
    model = make()
    px = (torch.rand(2, 32, 32) * 200).to(dtype)
    for call in (model, model.forward_features, model.forward_dense):
        with pytest.raises(TypeError, match="floating-point.*normalise"):
            call(build(px))


def test_half_precision_pixels_accepted() -> None:
    model = make()
    x = imgs(2)
    with torch.no_grad():
        torch.testing.assert_close(model([x[0].double()]), model(x), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ config enumerations (issue 17)
@pytest.mark.parametrize(
    "name, field, value",
    [
        ("chada_vit_test", "act", "GELU"),
        ("chada_vit_test", "act", "silu"),
        ("chada_vit_test", "attention", "Packed"),
        ("chada_vit_test", "block", "postnorm"),
        ("chada_vit_test", "pos_interpolation", "nearest"),
        ("one_channel_vit_test", "act", "GELU"),
        ("fixed_channel_vit_test", "pos_interpolation", "Bicubic"),
        ("inter_channel_vit_test", "act", "Relu"),
        ("inter_channel_vit_test", "attention", "varlen"),
    ],
)
def test_config_enumerations_refuse_unknown_values(name: str, field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"{field} must be one of .*got {value!r}"):
        chada.create_model(name, **{field: value})


def test_act_builds_what_it_names() -> None:
    assert isinstance(make(act="relu").blocks[0].mlp.act, torch.nn.ReLU)
    assert isinstance(make(act="gelu").blocks[0].mlp.act, torch.nn.GELU)


# ------------------------------------------------------------------ damaged model folders (issue 17)
def _saved(tmp_path):
    make(seed=1).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_load_refuses_nan_weights_naming_the_tensor(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _saved(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["blocks.1.mlp.fc2.weight"][3, 4] = float("nan")
    state["norm.weight"][0] = float("inf")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.safetensors: NaN or inf weights in blocks\.1\.mlp\.fc2\.weight \(1 of .*and 1 more"):
        chada.load_model(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_load_refuses_corrupt_weights_file(tmp_path, damage: str) -> None:
    folder = _saved(tmp_path)
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\xff" * 500, "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file.*truncated or corrupt"):
        chada.load_model(folder)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.pop("arch"), r"config\.json has no 'arch'"),
        (lambda m: m.update(arch="chada_vit_xl"), r"config\.json: unknown architecture 'chada_vit_xl'"),
        (lambda m: m["config"].update(act="GELU"), r"config\.json: act must be one of"),
        (lambda m: m["config"].update(embed_dimm=3), r"config\.json: unknown config keys"),
        (lambda m: m["config"].update(embed_dim=64, num_heads=2), r"do not fit the config.*qkv\.weight \(96, 32\) \(config wants \(192, 64\)\).*and 26 more"),
    ],
)
def test_load_refuses_damaged_config(tmp_path, edit, match: str) -> None:
    import json

    folder = _saved(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        chada.load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        chada.load_model(folder)


# ------------------------------------------------------------------ config and checks (mutation testing)
def test_config_derived_sizes() -> None:
    cfg = ChAdaViTConfig(embed_dim=20, mlp_ratio=2.5, patch_size=8, img_size=48, max_channels=3)
    assert (cfg.grid_size, cfg.num_patches, cfg.hidden_dim, cfg.tokens(2)) == (6, 36, 50, 73)
    assert ChAdaViTConfig(mlp_hidden=64).hidden_dim == 64


@pytest.mark.parametrize(
    "overrides",
    [
        {"qkv_bias": False},
        {"layer_scale": 0.1},
        {"layer_scale": 0.1, "block": "official"},  # the official block has no layer scale
        {"mlp_hidden": 40, "max_channels": 3, "img_size": 48, "depth": 3},
    ],
)
def test_parameter_count_closed_form_with_options(overrides: dict) -> None:
    model = chada.create_model("chada_vit_test", **overrides)
    assert model.num_params() == model.config.expected_num_params()
    D, depth = model.embed_dim, model.config.depth
    counted = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))
    ls = 2 * D if (overrides.get("layer_scale") and overrides.get("block", "prenorm") == "prenorm") else 0
    qkv_bias = 0 if overrides.get("qkv_bias") is False else 3 * D
    H = model.config.hidden_dim
    assert counted == depth * (3 * D * D + qkv_bias + D * D + D + D * H + H + H * D + D + 4 * D + ls)


def test_model_options_and_small_api() -> None:
    with pytest.raises(ValueError, match=r"^img_size 36 is not a multiple of patch_size 8$"):
        chada.create_model("chada_vit_test", img_size=36)
    with pytest.raises(ValueError, match=r"^more channel_names than max_channels$"):
        chada.create_model("chada_vit_test", max_channels=2, channel_names=["a", "b", "c"])
    chada.create_model("chada_vit_test", max_channels=2, channel_names=["a", "b"])
    model = make()
    assert model.set_attention("varlen") is model and model.config.attention == "varlen"
    assert model.attention_mode == "varlen"
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "channel_embed"}
    assert (model.embedding_dim(), model.embedding_dim("all"), model.max_channels) == (32, 64, 10)
    assert isinstance(make(block="official").blocks[0], chada.models.layers.OfficialBlock)
    assert make(qkv_bias=False).blocks[1].attn.qkv.bias is None
    assert make(block_norm_eps=1e-3).blocks[0].norm2.eps == 1e-3 and make(norm_eps=1e-4).norm.eps == 1e-4
    out = model.forward_features(imgs(2))
    with pytest.raises(ValueError, match=r"^pool must be one of \('cls', 'all'\), got 'mean'$"):
        model.forward_head(out, "mean")
    with pytest.raises(ValueError, match=r"^pool must be one of"):
        model.embedding_dim("mean")
    assert model.embedding_dim("all") == 2 * model.embedding_dim("cls") == model(imgs(2), pool="all").shape[1]


def test_input_check_messages() -> None:
    model = make(max_channels=4)
    with pytest.raises(ValueError) as err:
        model(imgs(4, 5, 1, 6))  # exactly C_max channels is fine: image 0 is not named
    assert str(err.value) == "images [1, 3] have more than C_max=4 channels (largest: 6); this model cannot take them"
    for ids in ([0, 4], [-1, 0]):
        with pytest.raises(ValueError, match=r"^channel_ids must lie in 0\.\.3$"):
            model(ChannelBatch.from_images(imgs(2), channel_ids=[ids]))
    model(ChannelBatch.from_images(imgs(2), channel_ids=[[3, 0]]))
    with pytest.raises(ValueError, match=r"^image size 32x36 is not divisible by the patch size 8; crop or resize to a multiple of 8$"):
        model([torch.rand(1, 32, 36)])
    x = imgs(1, 2, 3)
    x[2][2, 0, 0] = float("inf")
    x[1][0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^NaN or inf pixels in images \[1, 2\]$"):
        model(x)
    batch = ChannelBatch.from_images(imgs(2))
    batch.pixels = batch.pixels.to(torch.int32)  # changed after the batch checked it
    with pytest.raises(TypeError, match=r"^pixels must be floating point, got torch\.int32$"):
        model(batch)


# ------------------------------------------------------------------ details pinned by mutation testing
@pytest.mark.parametrize("mode", ["padded", "packed", "varlen"])
def test_attention_and_hidden_states_only_when_asked(mode: str) -> None:
    model = make(attention=mode)
    out = model.forward_features(imgs(2, 1))
    assert (out.attention, out.cls_self_attention, out.hidden_states) == (None, None, None)
    assert torch.equal(model.forward_head(out), out.cls)  # pool defaults to "cls"


@pytest.mark.parametrize("mode", ["padded", "packed", "varlen"])
def test_each_attention_mode_runs_its_own_path(mode: str, monkeypatch) -> None:
    """The three modes give equal values (test_packed.py), so only the path taken tells them apart."""
    model = make(attention=mode)
    ran = []
    for name, real in list(chada_paths.PATHS.items()):
        monkeypatch.setitem(chada_paths.PATHS, name, lambda *a, _n=name, _r=real, **k: ran.append(_n) or _r(*a, **k))
    model(imgs(2, 1))
    assert ran == [mode]
    with pytest.raises(ValueError, match=r"^attention must be one of 'padded', 'packed', 'varlen'; got 'flash'$"):
        model.set_attention("flash")


def test_drop_path_rates_rise_linearly_to_the_last_block() -> None:
    assert [b.drop_path for b in make(drop_path_rate=0.3).blocks] == [0.0, 0.3]  # depth 2
    assert [b.drop_path for b in make(drop_path_rate=0.3, depth=3).blocks] == [0.0, 0.15, 0.3]
    assert [b.drop_path for b in make(drop_path_rate=0.3, depth=1).blocks] == [0.0]


@pytest.mark.parametrize("interp", ["bicubic", "dino_bicubic"])
def test_resized_positions_keep_the_model_dtype(interp: str) -> None:
    model = make(pos_interpolation=interp).to(torch.bfloat16)
    pos = model.interpolate_pos_embed(3, 5)
    assert pos.shape == (1 + 15, 32) and pos.dtype == torch.bfloat16


def test_dino_bicubic_grid_check_names_both_sizes(monkeypatch) -> None:
    """The +0.1 makes DINO's floor land on (h, w); were an interpolation to miss it, the error says so."""
    import torch.nn.functional as F

    model = make(pos_interpolation="dino_bicubic")
    real = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda x, **k: real(x, **k)[..., :-1])
    with pytest.raises(ValueError, match=r"^dino_bicubic interpolation gave grid \(3, 4\), expected \(3, 5\)$"):
        model.interpolate_pos_embed(3, 5)
