"""Baseline encoders: shapes, channel handling, padding invariance, errors, save/load."""

from __future__ import annotations

import pytest
import torch

from chada.models import ChannelBatch, create_model, list_models, load_model
from chada.models.fixed_channel_vit import FixedChannelViT
from chada.models.inter_channel_vit import InterChannelViT
from chada.models.one_channel_vit import OneChannelViT
from tests.helpers.plain_vit import assert_directional_derivatives

C_MAX = 10
BASELINES = ["one_channel_vit_test", "inter_channel_vit_test", "fixed_channel_vit_test"]


def _model(name: str, **kw):
    torch.manual_seed(0)
    return create_model(name, **kw).eval()


def test_registered():
    names = set(list_models())
    for n in BASELINES + ["one_channel_vit_tiny", "inter_channel_vit_tiny", "fixed_channel_vit_tiny"]:
        assert n in names


def test_tiny_sizes_and_param_counts():
    # the compared encoders are of the same order of size as chada_vit_moyen (5.43 M)
    counts = {}
    for n in ["one_channel_vit_tiny", "inter_channel_vit_tiny", "fixed_channel_vit_tiny", "chada_vit_moyen"]:
        with torch.device("meta"):  # shapes only: skip allocating and initialising 5 M weights
            m = create_model(n)
        counts[n] = m.num_params()
        assert m.embed_dim == 192
        assert m.config.depth == 12
    for n in BASELINES:
        counts[n] = create_model(n).num_params()
    print("\nparameter counts:", counts)
    # one-channel ViT-Tiny = ChAda-ViT Moyen minus its channel embedding (10 x 192)
    assert counts["chada_vit_moyen"] - counts["one_channel_vit_tiny"] == C_MAX * 192
    # 3-channel patch embedding: 2 x 16 x 16 x 192 more weights than the 1-channel one
    assert counts["fixed_channel_vit_tiny"] - counts["one_channel_vit_tiny"] == 2 * 16 * 16 * 192


@pytest.mark.parametrize("C", range(1, C_MAX + 1))
def test_one_channel_shapes(C):
    m = _model("one_channel_vit_test")
    with torch.no_grad():
        f = m.forward_features(torch.rand(2, C, 32, 32))
    assert m.forward_head(f, "cls").shape == (2, C * 32) == (2, m.embedding_dim("cls", C))
    assert m.forward_head(f, "all").shape == (2, C * 64) == (2, m.embedding_dim("all", C))
    assert m.forward_head(f, "mean").shape == (2, 32) == (2, m.embedding_dim("mean"))
    assert m.forward_head(f, "mean_all").shape == (2, 64) == (2, m.embedding_dim("mean_all"))


@pytest.mark.parametrize("C", range(1, C_MAX + 1))
def test_inter_channel_shapes(C):
    m = _model("inter_channel_vit_test")
    with torch.no_grad():
        f = m.forward_features(torch.rand(2, C, 32, 32))
    assert m.forward_head(f, "cls").shape == (2, 32) == (2, m.embedding_dim("cls", C))
    assert m.forward_head(f, "all").shape == (2, 64) == (2, m.embedding_dim("all"))


def test_fixed_channel_shapes():
    m = _model("fixed_channel_vit_test")
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 32)
        assert m([torch.rand(3, 32, 32)] * 3, pool="all").shape == (3, 64) == (3, m.embedding_dim("all"))
        assert m(torch.rand(2, 3, 48, 64)).shape == (2, 32)  # other sizes: interpolated positions


def test_one_channel_concat_follows_channel_order():
    m = _model("one_channel_vit_test")
    img = torch.rand(3, 32, 32)
    D = m.embed_dim
    with torch.no_grad():
        out = m([img])[0]
        alone = [m([img[c : c + 1]])[0] for c in range(3)]
        perm = m([img[[2, 0, 1]]])[0]
    for c in range(3):  # block c of the concatenation is channel c encoded alone
        torch.testing.assert_close(out[c * D : (c + 1) * D], alone[c], atol=1e-5, rtol=0)
    torch.testing.assert_close(perm, torch.cat([alone[2], alone[0], alone[1]]), atol=1e-5, rtol=0)
    # "all": per channel [CLS, mean patch], channel after channel
    with torch.no_grad():
        all_feat = m([img], pool="all")[0]
        ch1 = m([img[1:2]], pool="all")[0]
    torch.testing.assert_close(all_feat[2 * D : 4 * D], ch1, atol=1e-5, rtol=0)


def test_one_channel_mean_pool_mixed_counts_and_error():
    m = _model("one_channel_vit_test")
    a, b = torch.rand(2, 32, 32), torch.rand(4, 32, 32)
    with torch.no_grad():
        mixed = m([a, b], pool="mean")
        alone = m([b], pool="mean")
        per_channel = torch.stack([m([b[c : c + 1]])[0] for c in range(4)]).mean(0)
    torch.testing.assert_close(mixed[1], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone[0], per_channel, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pool='mean'"):
        m([a, b], pool="cls")
    with pytest.raises(ValueError, match="pool='mean_all'"):
        m([a, b], pool="all")
    with pytest.raises(ValueError, match="channels="):
        m.embedding_dim("cls")


@pytest.mark.parametrize("mode", ["packed", "padded"])
def test_inter_channel_padding_invariance(mode):
    m = _model("inter_channel_vit_test", attention=mode)
    torch.manual_seed(1)
    imgs = [torch.rand(c, 32, 32) for c in (1, 5, 3, 10, 3, 2)]
    with torch.no_grad():
        mixed = m(imgs, pool="all")
        alone = torch.cat([m([x], pool="all") for x in imgs])
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=0)


def test_inter_channel_packed_equals_padded():
    m = _model("inter_channel_vit_test")
    imgs = [torch.rand(c, 32, 32) for c in (4, 1, 7)]
    with torch.no_grad():
        packed = m(imgs, pool="all")
        padded = m.set_attention("padded")(imgs, pool="all")
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


def test_inter_channel_uses_channel_ids_and_order():
    m = _model("inter_channel_vit_test")
    img = torch.rand(2, 32, 32)
    with torch.no_grad():
        base = m([img])
        other_slots = m(ChannelBatch(img, torch.tensor([2]), torch.tensor([3, 7])))
    assert not torch.allclose(base, other_slots)  # the channel embedding is used


def test_fixed_channel_rejects_other_counts():
    m = _model("fixed_channel_vit_test")
    with pytest.raises(ValueError, match="exactly 3 channels"):
        m(torch.rand(2, 4, 32, 32))
    with pytest.raises(ValueError, match=r"images \[1\]"):
        m([torch.rand(3, 32, 32), torch.rand(2, 32, 32)])


@pytest.mark.parametrize("name", BASELINES)
def test_bad_input_errors(name):
    m = _model(name)
    if name == "inter_channel_vit_test":  # no patches: any size works through the TokenLearner
        assert m(torch.rand(1, 3, 30, 30)).shape == (1, 32)
    else:
        with pytest.raises(ValueError, match="divisible by the patch size"):
            m(torch.rand(1, 3, 30, 30))
    bad = torch.rand(1, 3, 32, 32)
    bad[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad)
    with pytest.raises(TypeError):
        m(torch.randint(0, 5, (1, 3, 32, 32)))
    with pytest.raises(TypeError):
        m("not an image")
    with pytest.raises(ValueError):
        m(torch.rand(32, 32))
    with pytest.raises(ValueError, match="pool"):
        m(torch.rand(1, 3, 32, 32), pool="bogus")
    if name != "fixed_channel_vit_test":
        with pytest.raises(ValueError, match="C_max=10"):
            m(torch.rand(1, 11, 32, 32))


@pytest.mark.parametrize("name", BASELINES)
def test_save_load_round_trip(name, tmp_path):
    m = _model(name)
    x = torch.rand(2, 3, 32, 32)
    m.save_pretrained(tmp_path / name)
    m2 = load_model(tmp_path / name)
    assert type(m2) is type(m)
    assert m2.model_name == name
    with torch.no_grad():
        torch.testing.assert_close(m(x, pool="all"), m2(x, pool="all"), atol=0, rtol=0)


def test_classes():
    for name, cls in zip(BASELINES, (OneChannelViT, InterChannelViT, FixedChannelViT)):
        assert isinstance(create_model(name), cls)


def _perturbed64(name: str, **kw):
    """float64 model whose parameters are all far from their init (LayerNorm affines off (1, 0))."""
    torch.manual_seed(0)
    m = create_model(name, **kw).double().train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


@pytest.mark.parametrize(
    ("name", "pool", "images"),
    [
        ("one_channel_vit_test", "cls", [(3, 32), (3, 32)]),
        ("one_channel_vit_test", "mean_all", [(2, 32), (1, 32)]),
        ("inter_channel_vit_test", "all", [(3, 32), (1, 32), (3, 32)]),
        ("fixed_channel_vit_test", "all", [(3, 32), (3, 32)]),
    ],
)
def test_gradients_equal_finite_differences(name, pool, images):
    """Every parameter tensor gets a gradient, and the right one: the directional derivative along a
    random direction equals a central finite difference of the loss (float64). The loss weighs every
    output with a fixed random weight: a plain ``.sum()`` of a LayerNorm output is ~0 whatever the
    input, so its gradients are ~0 and checking ``grad is not None`` would pass with any model."""
    m = _perturbed64(name, depth=1)
    g = torch.Generator().manual_seed(2)
    x = [torch.randn(c, s, s, generator=g, dtype=torch.float64) for c, s in images]
    out = m(x, pool=pool)
    w = torch.randn(out.shape, generator=g, dtype=out.dtype)

    def loss():
        return (m(x, pool=pool) * w).sum()

    m.zero_grad()
    loss().backward()
    used_slots = max(c for c, _ in images)
    for pname, p in m.named_parameters():
        grad = p.grad
        if pname.endswith("attn.qkv.bias"):  # the key bias adds q.b_k to every logit of a row: the
            grad = torch.cat([grad[: m.embed_dim], grad[2 * m.embed_dim :]])  # softmax ignores it
        if pname == "channel_embed":  # only the slots this batch uses
            assert not grad[used_slots:].any()
            grad = grad[:used_slots]
        # every entry moves the loss: a term dropped from the forward pass (a positional slot, a
        # channel embedding, a bias) leaves zeros here even when the tensor as a whole gets a gradient
        assert bool((grad.abs() > 1e-12).all()), pname
    assert_directional_derivatives(m, loss, g)


# ------------------------------------------------------------------ details pinned by mutation testing
@pytest.mark.parametrize("name", BASELINES)
def test_forward_head_and_embedding_dim_default_to_cls(name):
    m = _model(name)
    x = torch.rand(2, 3, 32, 32)
    feats = m.forward_features(x)
    cls = feats.cls.reshape(2, -1)  # one-channel ViT: the 3 per-channel CLS tokens concatenated
    assert torch.equal(m.forward_head(feats), cls)
    assert m.embedding_dim(channels=3) == cls.shape[1] == (3 * 32 if name.startswith("one") else 32)


def test_inter_channel_padded_mode_masks_and_packed_mode_does_not(monkeypatch):
    """Equal values (tested above) hide which path ran: padded runs every block once on ``1 + C_max``
    tokens with a key mask, packed once per channel count on ``1 + C`` tokens with none."""
    from chada.models import layers

    seen = []
    real = layers.Block.forward
    monkeypatch.setattr(
        layers.Block,
        "forward",
        lambda self, x, key_mask=None, *a, **k: (
            seen.append((x.shape[1], key_mask is not None)) or real(self, x, key_mask, *a, **k)
        ),
    )
    images = [torch.rand(2, 32, 32), torch.rand(3, 32, 32)]
    _model("inter_channel_vit_test", attention="padded")(images)
    assert seen == [(1 + C_MAX, True)] * 2
    seen.clear()
    _model("inter_channel_vit_test")(images)
    assert seen == [(3, False), (3, False), (4, False), (4, False)]


def test_drop_path_rates_rise_linearly_to_the_last_block():
    for name in BASELINES:
        m = create_model(name, drop_path_rate=0.3)  # depth 2: 0, then the full rate
        assert [b.drop_path for b in m.blocks] == [0.0, 0.3]
    m = create_model("one_channel_vit_test", drop_path_rate=0.3, depth=3)
    assert [b.drop_path for b in m.blocks] == [0.0, 0.15, 0.3]
    assert [
        b.drop_path for b in create_model("one_channel_vit_test", drop_path_rate=0.3, depth=1).blocks
    ] == [0.0]


def test_one_channel_tokens_is_an_int_and_bf16_positions_stay_bf16():
    n = OneChannelViT.config_class(img_size=32, patch_size=8).tokens(3)
    assert n == 17 and type(n) is int  # 1 + (32 / 8)^2 tokens per channel sequence
    m = _model("one_channel_vit_test").to(torch.bfloat16)
    pos = m.interpolate_pos_embed(3, 2)
    assert pos.shape == (1 + 6, 32) and pos.dtype == torch.bfloat16


@pytest.mark.parametrize("upsample, size", [(True, (32, 40)), ((12, 20), (12, 20))])
def test_one_channel_dense_upsampling(upsample, size):
    m = _model("one_channel_vit_test")
    images = [torch.rand(2, 32, 40), torch.rand(1, 32, 40)]
    out = m.forward_dense(images, upsample=upsample)
    assert out.maps.shape == (2, 2, 32, *size) and out.grid == (4, 5)
    assert out.channel_mask.tolist() == [[True, True], [True, False]]
    assert out.maps[1, 1].abs().max() == 0  # the missing channel stays zero after upsampling


def test_baselines_module_still_exports_every_family() -> None:
    """``from chada.models.baselines import ...`` keeps working for code written before the families
    moved to one file each (issue 27): every public name of the three family modules, the same object."""
    from chada.models import baselines, fixed_channel_vit, inter_channel_vit, one_channel_vit

    families = (one_channel_vit, inter_channel_vit, fixed_channel_vit)
    assert sorted(baselines.__all__) == sorted(n for m in families for n in m.__all__)
    for m in families:
        for name in m.__all__:
            assert getattr(baselines, name) is getattr(m, name), name
