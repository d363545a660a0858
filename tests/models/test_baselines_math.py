"""The three baselines against plain code (tests/helpers/plain_vit.py), image by image, in float64: every
pool, the per-channel attention of the One-Channel ViT, the TokenLearner's convolutions; plus their
configuration, initialisation and input checks."""

from __future__ import annotations

import pytest
import torch

import chada
from chada.models import ChannelBatch
from chada.models.inter_channel_vit import ConvTokenLearner
from tests.helpers.plain_vit import conv2d, gelu, group_norm_1, layer_norm, patches, positions, prenorm_blocks


def _perturbed(name: str, **overrides):
    """float64 model, every parameter moved well away from its init."""
    torch.manual_seed(0)
    model = chada.create_model(name, **overrides).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _images(counts, size, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, size, size, generator=g) for c in counts]  # float32: the model casts


def _params(model):
    return {k: v.detach() for k, v in model.named_parameters()}


def plain_trunk(model, P, tokens: torch.Tensor, h: int, w: int):
    """CLS + positions + pre-norm blocks + final norm on one sequence of patch tokens ``[N, D]``."""
    c = model.config
    pos = positions(P["pos_embed"], c.img_size // c.patch_size, h, w, c.pos_interpolation)
    x = torch.cat([P["cls_token"][0] + pos[:1], tokens + pos[1:]])
    hidden, att = prenorm_blocks(x, P, c.depth, c.num_heads, c.norm_eps)
    x = layer_norm(hidden[-1], P["norm.weight"], P["norm.bias"], c.norm_eps)
    return x[0], x[1:], att[:, 0]  # cls [D], patch [N, D], CLS attention row [heads, 1 + N]


def plain_one_channel(model, image: torch.Tensor):
    """Per channel: (cls [D], patch [N, D], CLS row [heads, 1 + N]) of that channel encoded alone."""
    P, p, D = _params(model), model.config.patch_size, model.embed_dim
    h, w = image.shape[1] // p, image.shape[2] // p
    out = []
    for ch in image.double():
        tokens = (
            patches(ch[None], p) @ P["patch_embed.proj.weight"].reshape(D, p * p).T
            + P["patch_embed.proj.bias"]
        )
        out.append(plain_trunk(model, P, tokens, h, w))
    return out


@pytest.mark.parametrize("size", [32, 40])
def test_one_channel_vit_equals_plain_code(size: int) -> None:
    model = _perturbed("one_channel_vit_test", layer_scale=0.5, pos_interpolation="bilinear")
    D, heads, cmax = model.embed_dim, model.config.num_heads, model.config.max_channels
    images = _images([2, 3, 1], size)
    tol = 1e-10 if size == 32 else 1e-5  # other sizes: the positional grid is resized in float32
    with torch.no_grad():
        feats = model.forward_features(images, return_attention=True)
        h, w = feats.grid
        assert (h, w) == (size // 8, size // 8)
        refs = [plain_one_channel(model, img) for img in images]
        rows = [r for ref in refs for r in ref]
        torch.testing.assert_close(feats.cls, torch.stack([r[0] for r in rows]), atol=tol, rtol=0)
        torch.testing.assert_close(feats.patch_tokens, torch.stack([r[1] for r in rows]), atol=tol, rtol=0)
        assert feats.counts.tolist() == [2, 3, 1]
        for b, ref in enumerate(refs):
            for c, (_, _, att) in enumerate(ref):
                torch.testing.assert_close(feats.cls_self_attention[b, :, c], att[:, 0], atol=tol, rtol=0)
                torch.testing.assert_close(
                    feats.attention[b, :, c], att[:, 1:].reshape(heads, h, w), atol=tol, rtol=0
                )
            assert (
                not feats.attention[b, :, len(ref) :].any()
                and not feats.cls_self_attention[b, :, len(ref) :].any()
            )
        assert feats.attention.shape == (3, heads, cmax, h, w)
        # pools: per-channel [CLS] or [CLS, mean patch], concatenated (one count) or averaged (mixed counts)
        per_all = [torch.stack([torch.cat([r[0], r[1].mean(0)]) for r in ref]) for ref in refs]  # [C_b, 2D]
        mean_all = model(images, pool="mean_all")
        mean = model(images, pool="mean")
        for b in range(3):
            torch.testing.assert_close(mean_all[b], per_all[b].mean(0), atol=tol, rtol=0)
            torch.testing.assert_close(mean[b], per_all[b][:, :D].mean(0), atol=tol, rtol=0)
        same = images[1:2] * 2  # two 3-channel images
        ref3 = plain_one_channel(model, same[0])
        cat_cls = model(same, pool="cls")
        cat_all = model(same, pool="all")
        torch.testing.assert_close(cat_cls[0], torch.cat([r[0] for r in ref3]), atol=tol, rtol=0)
        torch.testing.assert_close(
            cat_all[1], torch.cat([torch.cat([r[0], r[1].mean(0)]) for r in ref3]), atol=tol, rtol=0
        )


def test_fixed_channel_vit_equals_plain_code() -> None:
    model = _perturbed("fixed_channel_vit_test", in_channels=2, qkv_bias=False)
    P, D, p = _params(model), model.embed_dim, 8
    assert "blocks.0.attn.qkv.bias" not in P
    images = _images([2, 2], 48)
    with torch.no_grad():
        feats = model.forward_features(images)
        out_all = model(images, pool="all")
    assert feats.grid == (6, 6)
    for b, img in enumerate(images):
        tokens = (
            patches(img.double(), p) @ P["patch_embed.proj.weight"].reshape(D, 2 * p * p).T
            + P["patch_embed.proj.bias"]
        )
        cls, patch, _ = plain_trunk(model, P, tokens, 6, 6)
        torch.testing.assert_close(feats.cls[b], cls, atol=1e-5, rtol=0)
        torch.testing.assert_close(feats.patch_tokens[b], patch, atol=1e-5, rtol=0)
        torch.testing.assert_close(out_all[b], torch.cat([cls, patch.mean(0)]), atol=1e-5, rtol=0)


def plain_token_learner(P, widths, image_channel: torch.Tensor, act) -> torch.Tensor:
    """One channel ``[H, W]`` -> one token ``[D]``: conv 7x7/4 then 3x3/2 (padding k // 2, no bias),
    GroupNorm(1), activation, global average pooling, linear."""
    x = image_channel[None]
    for i in range(len(widths)):
        k, s = (7, 4) if i == 0 else (3, 2)
        x = conv2d(x, P[f"token_learner.convs.{3 * i}.weight"], s, k // 2)
        x = group_norm_1(
            x, P[f"token_learner.convs.{3 * i + 1}.weight"], P[f"token_learner.convs.{3 * i + 1}.bias"]
        )
        x = act(x)
    return x.mean(dim=(1, 2)) @ P["token_learner.proj.weight"].T + P["token_learner.proj.bias"]


@pytest.mark.parametrize(("mode", "act"), [("packed", "gelu"), ("padded", "relu")])
def test_inter_channel_vit_equals_plain_code(mode: str, act: str) -> None:
    model = _perturbed(
        "inter_channel_vit_test",
        attention=mode,
        act=act,
        tokenizer_widths=[4, 6, 8],
        layer_scale=0.5,
        max_channels=5,
    )
    assert model.attention_mode == mode
    P, c = _params(model), model.config
    activation = gelu if act == "gelu" else (lambda t: t.clamp(min=0))
    images = _images([2, 1, 3], 29)  # any size: the TokenLearner pools globally
    slots = [[4, 0], [2], [1, 3, 0]]
    batch = ChannelBatch.from_images(images, channel_ids=slots)
    with torch.no_grad():
        feats = model.forward_features(batch)
        out_all = model(batch, pool="all")
    for b, (img, sl) in enumerate(zip(images, slots)):
        tokens = torch.stack(
            [plain_token_learner(P, c.tokenizer_widths, ch.double(), activation) for ch in img]
        )
        x = torch.cat([P["cls_token"][0], tokens + P["channel_embed"][sl]])
        hidden, _ = prenorm_blocks(x, P, c.depth, c.num_heads, c.norm_eps, act)
        x = layer_norm(hidden[-1], P["norm.weight"], P["norm.bias"], c.norm_eps)
        n = img.shape[0]
        torch.testing.assert_close(feats.cls[b], x[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(feats.channel_tokens[b, :n], x[1:], atol=1e-10, rtol=0)
        assert not feats.channel_tokens[b, n:].any()
        assert feats.channel_mask[b].tolist() == [True] * n + [False] * (5 - n)
        torch.testing.assert_close(out_all[b], torch.cat([x[0], x[1:].mean(0)]), atol=1e-10, rtol=0)
    torch.testing.assert_close(model(batch), feats.cls, atol=0, rtol=0)


def test_token_learner_layers() -> None:
    tl = ConvTokenLearner([4, 6], 8)
    convs = [m for m in tl.convs if isinstance(m, torch.nn.Conv2d)]
    assert [(m.kernel_size, m.stride, m.padding, m.bias) for m in convs] == [
        ((7, 7), (4, 4), (3, 3), None),
        ((3, 3), (2, 2), (1, 1), None),
    ]
    norms = [m for m in tl.convs if isinstance(m, torch.nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in norms] == [(1, 4), (1, 6)]
    assert isinstance(tl.convs[2], torch.nn.GELU) and isinstance(
        ConvTokenLearner([4], 8, act="relu").convs[2], torch.nn.ReLU
    )
    assert (tl.proj.in_features, tl.proj.out_features) == (6, 8)
    with pytest.raises(ValueError, match=r"^tokenizer_widths needs at least one conv width$"):
        ConvTokenLearner([], 8)
    with pytest.raises(ValueError, match=r"^act must be one of 'gelu', 'relu'; got 'tanh'$"):
        ConvTokenLearner([4], 8, act="tanh")
    torch.manual_seed(0)
    model = chada.create_model("inter_channel_vit_test", act="relu")
    assert isinstance(model.token_learner.convs[2], torch.nn.ReLU)


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("name", ["one_channel_vit_test", "fixed_channel_vit_test", "inter_channel_vit_test"])
def test_options_reach_the_blocks(name: str) -> None:
    model = chada.create_model(
        name,
        depth=3,
        drop_path_rate=0.4,
        layer_scale=0.2,
        qkv_bias=False,
        norm_eps=1e-3,
        act="relu",
        mlp_ratio=1.5,
    )
    assert [b.drop_path for b in model.blocks] == pytest.approx([0.0, 0.2, 0.4])
    for blk in model.blocks:
        assert blk.attn.qkv.bias is None and blk.norm1.eps == 1e-3 and isinstance(blk.mlp.act, torch.nn.ReLU)
        assert torch.equal(blk.ls1.gamma, torch.full((32,), 0.2)) and blk.mlp.fc1.out_features == 48
    assert model.norm.eps == 1e-3 and model.cls_token.shape == (1, 1, 32)
    assert chada.create_model(name, depth=1, drop_path_rate=0.4).blocks[0].drop_path == 0.0


def test_baseline_init() -> None:
    torch.manual_seed(0)
    for name in ("one_channel_vit_test", "fixed_channel_vit_test", "inter_channel_vit_test"):
        model = (
            chada.create_model(name, embed_dim=64, max_channels=40)
            if name != "fixed_channel_vit_test"
            else chada.create_model(name, embed_dim=64)
        )
        for mname, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                assert 0.018 < m.weight.std().item() < 0.022 and not m.bias.any(), mname
            elif isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), mname
        assert 0 < model.cls_token.abs().max() < 1e-5
        if name == "inter_channel_vit_test":
            assert 0.018 < model.channel_embed.std().item() < 0.022
            for m in model.token_learner.modules():
                if isinstance(
                    m, torch.nn.Conv2d
                ):  # Kaiming normal, fan_out, for ReLU: std = sqrt(2 / fan_out)
                    fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                    assert abs(m.weight.std().item() / (2 / fan_out) ** 0.5 - 1) < 0.15
        else:
            w = model.patch_embed.proj.weight
            assert 0.017 < w.std().item() < 0.023 and w.abs().max() < 0.1
            assert 0.016 < model.pos_embed[0, 1:].std().item() < 0.024
    wide = chada.create_model("fixed_channel_vit_test", pos_embed_std=0.5)
    assert 0.4 < wide.pos_embed[0, 1:].std().item() < 0.6


def test_small_api() -> None:
    one = chada.create_model("one_channel_vit_test")
    fixed = chada.create_model("fixed_channel_vit_test")
    inter = chada.create_model("inter_channel_vit_test")
    assert one.no_weight_decay() == {"pos_embed", "cls_token"} == fixed.no_weight_decay()
    assert inter.no_weight_decay() == {"cls_token", "channel_embed"}
    assert one.config.tokens(3) == 17 and inter.config.tokens(3) == 4
    assert (
        fixed.embedding_dim(),
        fixed.embedding_dim("all"),
        inter.embedding_dim(),
        inter.embedding_dim("all"),
    ) == (32, 64, 32, 64)
    assert (one.embedding_dim("cls", 3), one.embedding_dim("all", 10), one.embedding_dim("mean")) == (
        96,
        640,
        32,
    )
    for m in (one, fixed, inter):
        with pytest.raises(ValueError, match=r"^pool must be one of \(.*\), got 'max'$"):
            m.embedding_dim("max")
    for bad in (0, 11):
        with pytest.raises(ValueError, match=rf"^channels must be in 1\.\.10, got {bad}$"):
            one.embedding_dim("cls", bad)
    assert (
        inter.set_attention("padded") is inter and inter.attention_mode == inter.config.attention == "padded"
    )
    with pytest.raises(ValueError, match=r"^attention must be one of 'packed', 'padded'; got 'varlen'$"):
        inter.set_attention("varlen")
    with pytest.raises(ValueError, match=r"^in_channels must be >= 1, got 0$"):
        chada.create_model("fixed_channel_vit_test", in_channels=0)
    assert chada.create_model("fixed_channel_vit_test", in_channels=1).max_channels == 1
    with pytest.raises(ValueError, match=r"^img_size 36 is not a multiple of patch_size 8$"):
        chada.create_model("one_channel_vit_test", img_size=36)
    for name, field, value in [
        ("one_channel_vit_test", "pos_interpolation", "area"),
        ("inter_channel_vit_test", "attention", "Packed"),
        ("inter_channel_vit_test", "act", "tanh"),
        ("fixed_channel_vit_test", "act", "tanh"),
    ]:
        with pytest.raises(ValueError, match=rf"^{field} must be one of "):
            chada.create_model(name, **{field: value})
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 48)
        assert one.forward_features(x).grid == (4, 6) and fixed.forward_features(x).grid == (4, 6)


def test_input_checks() -> None:
    inter = chada.create_model("inter_channel_vit_test", max_channels=4)
    one = chada.create_model("one_channel_vit_test", max_channels=4)
    with torch.no_grad():
        assert inter(torch.rand(1, 2, 1, 1)).shape == (1, 32)  # a 1 x 1 image is big enough
        with pytest.raises(ValueError, match=r"^image size 0x5 is smaller than the minimum 1x1$"):
            inter(torch.rand(1, 2, 0, 5))
        for m in (inter, one):
            with pytest.raises(ValueError) as err:
                m([torch.rand(4, 32, 32), torch.rand(5, 32, 32), torch.rand(6, 32, 32)])
            assert (
                str(err.value)
                == "images [1, 2] have more than C_max=4 channels (largest: 6); this model cannot take them"
            )
        for ids in ([0, 4], [-1, 0]):
            with pytest.raises(ValueError, match=r"^channel_ids must lie in 0\.\.3$"):
                inter(ChannelBatch(torch.rand(2, 32, 32), torch.tensor([2]), torch.tensor(ids)))
        inter(ChannelBatch(torch.rand(2, 32, 32), torch.tensor([2]), torch.tensor([3, 0])))
        with pytest.raises(
            ValueError, match=r"^image size 32x36 is not divisible by the patch size 8; crop or resize"
        ):
            one(torch.rand(1, 1, 32, 36))
        with pytest.raises(ValueError, match=r"^image size 36x32 is not divisible"):
            one(torch.rand(1, 1, 36, 32))
        x = [torch.rand(1, 32, 32), torch.rand(2, 32, 32), torch.rand(3, 32, 32)]
        x[2][1, 5, 5] = float("nan")
        x[1][1, 0, 0] = float("inf")
        with pytest.raises(ValueError, match=r"^NaN or inf pixels in images \[1, 2\]$"):
            one(x)
        batch = ChannelBatch.from_images([torch.rand(2, 32, 32)])
        batch.pixels = batch.pixels.to(torch.int32)  # changed after the batch checked it
        with pytest.raises(TypeError, match=r"^pixels must be floating point, got torch\.int32$"):
            inter(batch)
    fixed = chada.create_model("fixed_channel_vit_test")
    with pytest.raises(ValueError) as err:
        fixed([torch.rand(3, 32, 32), torch.rand(2, 32, 32), torch.rand(4, 32, 32)])
    assert str(err.value) == (
        "this fixed-channel ViT takes exactly 3 channels per image; images [1, 2] have [2, 3, 4] channels. "
        "Select 3 channels (e.g. by name) or use a channel-adaptive model"
    )
