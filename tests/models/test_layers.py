"""The building blocks of ``chada.models.layers`` one by one: defaults, options, kernel selection,
stochastic depth on packed sequences, positional init. (The blocks' numbers inside a whole model are
checked against plain code in test_model_math.py.)"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from chada.models import layers
from chada.models.layers import (
    Attention,
    Block,
    LayerScale,
    Mlp,
    OfficialBlock,
    PatchEmbed,
    VarlenSegments,
    check_choice,
    init_pos_embed,
)


def test_check_choice_message_lists_the_allowed_values() -> None:
    check_choice("act", "gelu", ("gelu", "relu"))
    with pytest.raises(ValueError) as err:
        check_choice("act", "silu", ("gelu", "relu"))
    assert str(err.value) == "act must be one of 'gelu', 'relu'; got 'silu'"
    with pytest.raises(ValueError, match="got 3"):
        check_choice("act", 3, ("gelu", "relu"))


def test_mlp_activation_and_its_check() -> None:
    assert isinstance(Mlp(8, 16).act, torch.nn.GELU)
    assert isinstance(Mlp(8, 16, act="relu").act, torch.nn.ReLU)
    with pytest.raises(ValueError, match=r"^act must be one of 'gelu', 'relu'; got 'GELU'$"):
        Mlp(8, 16, act="GELU")


def test_attention_bias_default_and_head_check() -> None:
    assert Attention(8, 2).qkv.bias is not None
    assert Attention(8, 2, qkv_bias=False).qkv.bias is None
    a = Attention(12, 3)
    assert (a.num_heads, a.head_dim) == (3, 4) and a.scale == pytest.approx(0.5)
    with pytest.raises(ValueError, match="embed_dim 10 is not divisible by num_heads 3"):
        Attention(10, 3)


def test_blocks_pass_their_options_on() -> None:
    blk = Block(8, 2, 16)
    assert (blk.norm1.eps, blk.norm2.eps, blk.drop_path) == (1e-6, 1e-6, 0.0)
    assert blk.attn.qkv.bias is not None and isinstance(blk.ls1, torch.nn.Identity)
    blk = Block(8, 2, 16, qkv_bias=False, norm_eps=1e-3, act="relu", layer_scale=0.1, drop_path=0.2)
    assert (blk.norm1.eps, blk.norm2.eps, blk.drop_path) == (1e-3, 1e-3, 0.2)
    assert blk.attn.qkv.bias is None and isinstance(blk.mlp.act, torch.nn.ReLU)
    assert isinstance(blk.ls1, LayerScale) and isinstance(blk.ls2, LayerScale)
    assert torch.equal(blk.ls2.gamma, torch.full((8,), 0.1))
    off = OfficialBlock(8, 2, 16)
    assert (off.norm1.eps, off.norm2.eps) == (1e-5, 1e-5) and off.attn.qkv.bias is not None
    assert isinstance(off.mlp.act, torch.nn.ReLU)
    off = OfficialBlock(8, 2, 16, norm_eps=1e-3)
    assert (off.norm1.eps, off.norm2.eps) == (1e-3, 1e-3)


@pytest.mark.parametrize(
    "make", [lambda: Attention(8, 2), lambda: Block(8, 2, 16), lambda: OfficialBlock(8, 2, 16)]
)
def test_attention_weights_only_when_asked(make) -> None:
    m = make().eval()
    x = torch.randn(2, 5, 8)
    out, w = m(x)
    assert w is None
    out2, w2 = m(x, return_attention=True)
    assert w2.shape == (2, 2, 5, 5)
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=0)


def test_layer_scale_multiplies() -> None:
    ls = LayerScale(3, 0.5)
    with torch.no_grad():
        ls.gamma.copy_(torch.tensor([2.0, -1.0, 0.5]))
    assert torch.equal(ls(torch.ones(2, 3)), torch.tensor([[2.0, -1.0, 0.5]] * 2))


def test_patch_embed_is_one_shared_projection_per_channel() -> None:
    torch.manual_seed(0)
    pe = PatchEmbed(4, 6)
    assert pe.patch_size == 4 and pe.proj.in_channels == 1
    x = torch.randn(3, 8, 12)  # 3 channels, 2 x 3 patches
    out = pe(x)
    assert out.shape == (3, 6, 6)
    patches = x.reshape(3, 2, 4, 3, 4).permute(0, 1, 3, 2, 4).reshape(3, 6, 16)
    ref = patches @ pe.proj.weight.reshape(6, 16).T + pe.proj.bias
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_varlen_kernel_selection_rule() -> None:
    """FlashAttention varlen: CUDA, fp16/bf16, head width a multiple of 8 up to 256 (a stand-in tensor:
    the rule only reads ``is_cuda``, ``dtype`` and ``shape``)."""

    def q(hd: int, dtype=torch.bfloat16, cuda: bool = True):
        return SimpleNamespace(is_cuda=cuda, dtype=dtype, shape=(10, 2, hd))

    assert layers._varlen_kernel_available(q(64))
    assert layers._varlen_kernel_available(q(256, torch.float16))
    assert layers._varlen_kernel_available(q(8))
    for bad in (q(64, cuda=False), q(64, torch.float32), q(12), q(4), q(264), q(257)):
        assert not layers._varlen_kernel_available(bad)


def test_varlen_kernel_unavailable_without_the_varlen_module(monkeypatch) -> None:
    """A torch without ``torch.nn.attention.varlen`` (an older release) falls back to grouped attention."""
    import sys

    monkeypatch.setitem(sys.modules, "torch.nn.attention.varlen", None)  # makes the import fail
    assert not layers._varlen_kernel_available(
        SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(10, 2, 64))
    )


def test_bf16_cpu_kernel_choice_follows_gradients(monkeypatch) -> None:
    """bf16 on CPU takes the explicit kernel unless a gradient is needed through q, k or v; grad mode
    alone (tensors that need no gradient) does not count."""
    calls: list[int] = []
    real = layers._explicit_attention
    monkeypatch.setattr(layers, "_explicit_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(1, 2, 5, 4, generator=g).bfloat16() for _ in range(3)]
    layers.attention(*base)  # grad mode on, nothing requires grad
    assert calls == [1]
    for which in range(3):
        calls.clear()
        qkv = [t.clone().requires_grad_(i == which) for i, t in enumerate(base)]
        out = layers.attention(*qkv)
        assert calls == [], which
        out.float().sum().backward()
        with torch.no_grad():
            layers.attention(*qkv)
        assert calls == [1], which
    calls.clear()
    layers.attention(*(t.float() for t in base))  # fp32 never takes it
    assert calls == []


def test_explicit_attention_default_chunk_and_mask() -> None:
    """The default chunk (the whole score matrix here), a key mask, and a chunk that does not divide L:
    all equal the plain softmax formula."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., 6:] = False
    logits = q @ k.transpose(-2, -1) / 2.0
    ref = logits.masked_fill(~mask, -math.inf).softmax(-1) @ v
    for chunk in (None, 4, 1):
        got = layers._explicit_attention(q, k, v, mask, chunk=chunk)
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        layers._explicit_attention(q, k, v, None), logits.softmax(-1) @ v, atol=1e-12, rtol=0
    )
    # more batch x heads than keys: the default chunk is still a whole number of rows
    q, k, v = (torch.randn(4, 2, 3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ref = (q @ k.transpose(-2, -1) / 2.0).softmax(-1) @ v
    torch.testing.assert_close(layers._explicit_attention(q, k, v, None), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("part", ["attn", "mlp"])
def test_block_drops_whole_packed_sequences(part: str) -> None:
    """Stochastic depth in ``Block.forward`` on packed tokens: one draw per sequence for each residual
    branch, the kept branch scaled by 1 / keep. With the other branch silenced, every sequence's update
    is all-zero or the eval-mode update / keep, never a mix inside a sequence."""
    torch.manual_seed(0)
    blk = Block(8, 2, 16, drop_path=0.5)
    other = blk.mlp.fc2 if part == "attn" else blk.attn.proj
    with torch.no_grad():
        other.weight.zero_()
        other.bias.zero_()
    lengths = [6, 9, 4, 7, 5, 8, 6, 3]
    seg = VarlenSegments.from_lengths(lengths, "cpu")
    x = torch.randn(seg.total, 8)
    with torch.no_grad():
        full = blk.eval()(x, segments=seg)[0] - x
        got = blk.train()(x, segments=seg)[0] - x
    kept = []
    for a, b in zip(seg.cu_seqlens[:-1].tolist(), seg.cu_seqlens[1:].tolist()):
        if got[a:b].abs().max() == 0:
            kept.append(False)
        else:
            torch.testing.assert_close(got[a:b], full[a:b] / 0.5, atol=1e-5, rtol=1e-5)
            kept.append(True)
    assert any(kept) and not all(kept)


def test_block_drops_whole_samples_in_the_padded_layout() -> None:
    torch.manual_seed(1)
    blk = Block(8, 2, 16, drop_path=0.5)
    with torch.no_grad():
        blk.mlp.fc2.weight.zero_()
        blk.mlp.fc2.bias.zero_()
    x = torch.randn(12, 5, 8)
    with torch.no_grad():
        full = blk.eval()(x)[0] - x
        got = blk.train()(x)[0] - x
    dropped = got.flatten(1).abs().amax(1) == 0
    assert dropped.any() and not dropped.all()
    torch.testing.assert_close(got[~dropped], full[~dropped] / 0.5, atol=1e-5, rtol=1e-5)


def test_init_pos_embed_split_keeps_the_single_call_stream() -> None:
    """With equal stds the two-call init draws exactly what one call on the whole tensor draws (the
    docstring's promise: the default init did not change when the CLS slot got its own std). It holds
    for widths that are a multiple of 16 (torch's CPU generator fills 16 values at a time), every
    registered size; at D = 8 the streams differ."""
    a, b = torch.empty(1, 17, 32), torch.empty(1, 17, 32)
    torch.manual_seed(0)
    init_pos_embed(a)
    torch.manual_seed(0)
    torch.nn.init.trunc_normal_(b, std=0.02)
    assert torch.equal(a, b)
    big = torch.empty(1, 1 + 4096, 16)
    init_pos_embed(big, patch_std=0.5, cls_std=0.01)
    assert 0.48 < big[0, 1:].std().item() < 0.52
    assert big[0, 0].abs().max() < 0.03


# ------------------------------------------------------------------ helpers shared by every model
def test_check_pixels_reads_host_copies_only() -> None:
    """ChAda-ViT and the baselines share one input check; it reads the batch's host copies (counts, id
    range, the finite flag set on the CPU), so on the meta device, where nothing can be read back, a
    valid batch passes and a bad one is still refused by name. (The baselines' former copy read the
    counts and the pixels back from the device.)"""
    from chada.models import ChannelBatch

    cpu = ChannelBatch.from_images(
        [torch.rand(2, 16, 16), torch.rand(3, 16, 16)], channel_ids=[[0, 4], [1, 2, 7]]
    )
    meta = cpu.to("meta")
    layers.check_pixels(meta, 8, 8, min_size=1)
    msg = r"^images \[1\] have more than C_max=2 channels \(largest: 3\); this model cannot take them$"
    with pytest.raises(ValueError, match=msg):
        layers.check_pixels(meta, 2, 8)
    with pytest.raises(ValueError, match=r"^channel_ids must lie in 0\.\.6$"):
        layers.check_pixels(meta, 7, None)
    with pytest.raises(ValueError, match=r"^image size 16x16 is not divisible by the patch size 5; "):
        layers.check_pixels(meta, 8, 5)
    with pytest.raises(ValueError, match=r"^image size 16x16 is smaller than the minimum 17x17$"):
        layers.check_pixels(meta, 8, None, min_size=17)
