"""Packed and varlen attention (no padding) must equal the padded paper reference.

Every real token at every layer, the final CLS/patch tokens, the CLS attention maps and every
parameter gradient are compared between ``attention="packed"`` (one dense batch per channel count)
or ``attention="varlen"`` (one packed sequence; on CPU its grouped fallback) and
``attention="padded"`` on the same weights, for random channel mixes that include C=1 and C=C_max.
"""

from __future__ import annotations

import copy

import pytest
import torch

from chada.models import create_model
from chada.models.batch import ChannelBatch
from chada.models.layers import Block, VarlenSegments

FWD_TOL = 1e-5
GRAD_TOL = 1e-4


def _model(name: str = "chada_vit_test", **overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    # Make the positional/channel/CLS embeddings and biases non-trivial so a wrong slot or a
    # leaked padding token changes the result measurably.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _mix(counts: list[int], size: int, seed: int, with_ids: bool = False, c_max: int = 10) -> ChannelBatch:
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(c, size, size, generator=g) for c in counts]
    ids = None
    if with_ids:
        # Distinct slots per image, in an arbitrary order (not 0..C-1).
        ids = [torch.randperm(c_max, generator=g)[:c].tolist() for c in counts]
    return ChannelBatch.from_images(images, channel_ids=ids)


def _random_counts(seed: int, n: int, c_max: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, c_max + 1, (n,), generator=g).tolist()
    # Always cover both ends of the range.
    counts[0], counts[-1] = 1, c_max
    return counts


def _real_rows(out, N: int) -> torch.Tensor:
    """``[B, 1 + C_max*N]`` bool: CLS and the patch tokens of real channels."""
    mask = out.channel_mask.repeat_interleave(N, dim=1)
    return torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)


def _both(model, batch, mode: str = "packed", **kw):
    packed = model.set_attention(mode).forward_features(batch, **kw)
    padded = model.set_attention("padded").forward_features(batch, **kw)
    return packed, padded


MODES = ["packed", "varlen"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_ids", [False, True])
def test_forward_every_layer_matches(seed: int, with_ids: bool, mode: str) -> None:
    model = _model().eval()
    c_max = model.config.max_channels
    batch = _mix(_random_counts(seed, 7, c_max), 32, seed, with_ids=with_ids, c_max=c_max)
    with torch.no_grad():
        pk, pd = _both(model, batch, mode, return_attention=True, return_hidden_states=True)
    N = pk.grid[0] * pk.grid[1]
    real = _real_rows(pd, N)
    assert pk.hidden_states is not None and pd.hidden_states is not None
    assert len(pk.hidden_states) == len(pd.hidden_states) == model.config.depth
    for layer, (a, b) in enumerate(zip(pk.hidden_states, pd.hidden_states)):
        assert a.shape == b.shape
        diff = (a - b)[real].abs().max().item()
        assert diff < FWD_TOL, f"layer {layer}: max |{mode} - padded| on real tokens = {diff}"
        # Both layouts report zeros on padding rows.
        assert not a[~real].any() and not b[~real].any()
    assert torch.equal(pk.channel_mask, pd.channel_mask)
    assert torch.equal(pk.channel_ids, pd.channel_ids)
    torch.testing.assert_close(pk.cls, pd.cls, atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(pk.patch_tokens, pd.patch_tokens, atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(pk.attention, pd.attention, atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(pk.cls_self_attention, pd.cls_self_attention, atol=FWD_TOL, rtol=0)
    # The CLS attention is a distribution over the real tokens (padding gets exactly zero).
    total = pk.attention.sum(dim=(2, 3, 4)) + pk.cls_self_attention
    torch.testing.assert_close(total, torch.ones_like(total))
    pad = ~pk.channel_mask[:, None, :, None, None].expand_as(pk.attention)
    assert not pk.attention[pad].any()
    # The pooled outputs follow.
    torch.testing.assert_close(
        model.set_attention(mode).forward_head(pk, "all"),
        model.forward_head(pd, "all"),
        atol=FWD_TOL,
        rtol=0,
    )


@pytest.mark.parametrize("mode", MODES)
def test_packed_is_not_trivially_equal(mode: str) -> None:
    """Sanity check of the test itself: the comparison detects a changed channel slot."""
    model = _model().eval()
    batch = _mix([2, 3], 32, 0)
    moved = ChannelBatch(batch.pixels, batch.counts, torch.tensor([0, 1, 0, 2, 1]))
    with torch.no_grad():
        a = model.set_attention(mode).forward_features(batch).cls
        b = model.set_attention("padded").forward_features(moved).cls
    assert (a - b).abs().max().item() > 100 * FWD_TOL


@pytest.mark.parametrize("mode", MODES)
def test_uniform_batches_all_counts(mode: str) -> None:
    """Batches where every image has the same count C, for C = 1 .. C_max (a single group)."""
    model = _model(max_channels=4).eval()
    for c in range(1, 5):
        batch = _mix([c] * 3, 32, c)
        with torch.no_grad():
            pk, pd = _both(model, batch, mode)
        torch.testing.assert_close(pk.cls, pd.cls, atol=FWD_TOL, rtol=0)
        torch.testing.assert_close(pk.patch_tokens, pd.patch_tokens, atol=FWD_TOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_non_training_image_size_matches(mode: str) -> None:
    """Interpolated positional embedding (48 px on a 32 px model): both paths still agree."""
    model = _model().eval()
    batch = _mix([1, 4, 10, 2], 48, 5)
    with torch.no_grad():
        pk, pd = _both(model, batch, mode, return_attention=True)
    assert pk.grid == (6, 6)
    torch.testing.assert_close(pk.cls, pd.cls, atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(pk.patch_tokens, pd.patch_tokens, atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(pk.attention, pd.attention, atol=FWD_TOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("c", [1, 4, 10])
def test_gradients_match_single_count(c: int, mode: str) -> None:
    """A batch with one channel count takes the no-gather/no-scatter shortcut of the packed path
    (and the no-reorder shortcut of the varlen fallback)."""
    model = _model(drop_path_rate=0.0).train()
    batch = _mix([c] * 3, 32, c)
    padded = copy.deepcopy(model).set_attention("padded")
    g_pk = _grads(model.set_attention(mode), batch)
    g_pd = _grads(padded, batch)
    assert set(g_pk) == set(g_pd)
    for n in g_pk:
        assert (g_pk[n] - g_pd[n]).abs().max().item() < GRAD_TOL, n


def _grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model.forward_features(batch)
    # A sum over every output (CLS and all real patch tokens), with fixed random weights so
    # each token contributes a different gradient.
    g = torch.Generator().manual_seed(123)
    w_cls = torch.randn(out.cls.shape, generator=g)
    w_patch = torch.randn(out.patch_tokens.shape, generator=g)
    loss = (out.cls * w_cls).sum() + (out.patch_tokens * w_patch).sum()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("name", "overrides", "with_ids"),
    [
        ("chada_vit_test", {}, False),
        ("chada_vit_test", {}, True),
        ("chada_vit_test", {"layer_scale": 0.5}, False),
        ("chada_vit_test", {"max_channels": 3}, False),  # C in 1..3: small C_max, C = C_max often
        ("chada_vit_moyen_official", {"depth": 2, "img_size": 32, "patch_size": 8, "mlp_hidden": 64}, False),
    ],
)
def test_gradients_match(name: str, overrides: dict, with_ids: bool, mode: str) -> None:
    model = _model(name, drop_path_rate=0.0, **overrides).train()
    c_max = model.config.max_channels
    batch = _mix(_random_counts(11, 6, c_max), 32, 11, with_ids=with_ids, c_max=c_max)
    padded = copy.deepcopy(model).set_attention("padded")
    g_pk = _grads(model.set_attention(mode), batch)
    g_pd = _grads(padded, batch)
    names = {n for n, _ in model.named_parameters()}
    assert set(g_pk) == set(g_pd) == names, "every parameter must receive a gradient on both paths"
    for n in names:
        diff = (g_pk[n] - g_pd[n]).abs().max().item()
        assert diff < GRAD_TOL, f"{n}: max |grad {mode} - grad padded| = {diff}"
    # Slots never used by this batch get exactly zero gradient on both paths.
    if not with_ids:
        used = int(batch.counts.max())
        assert not g_pk["channel_embed"][used:].any()


@pytest.mark.parametrize("mode", MODES)
def test_official_block_forward_matches(mode: str) -> None:
    model = _model("chada_vit_moyen_official", depth=2, img_size=32, patch_size=8, mlp_hidden=64).eval()
    batch = _mix(_random_counts(3, 5, model.config.max_channels), 32, 3, with_ids=True)
    with torch.no_grad():
        pk, pd = _both(model, batch, mode, return_attention=True, return_hidden_states=True)
    real = _real_rows(pd, pk.grid[0] * pk.grid[1])
    for a, b in zip(pk.hidden_states, pd.hidden_states):
        assert (a - b)[real].abs().max().item() < FWD_TOL
    torch.testing.assert_close(pk.cls, pd.cls, atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(pk.patch_tokens, pd.patch_tokens, atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(pk.attention, pd.attention, atol=FWD_TOL, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_packed_does_not_depend_on_batch_order(mode: str) -> None:
    """An image's embedding is the same whatever else is in the batch (no cross-image leak)."""
    model = _model().eval().set_attention(mode)
    counts = [3, 1, 10, 3, 7]
    batch = _mix(counts, 32, 9)
    perm = [2, 4, 0, 1, 3]
    images = batch.split()
    with torch.no_grad():
        full = model(batch)
        shuffled = model([images[i] for i in perm])
        alone = torch.cat([model([img]) for img in images])
    torch.testing.assert_close(shuffled, full[perm], atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(alone, full, atol=FWD_TOL, rtol=0)


def test_packed_is_default() -> None:
    assert create_model("chada_vit_test").attention_mode == "packed"


def test_varlen_segments_layout() -> None:
    """The grouping plan: rows of equal-length sequences gathered together, and put back in order."""
    seg = VarlenSegments.from_lengths([3, 5, 3, 2], "cpu")
    assert seg.cu_seqlens.tolist() == [0, 3, 8, 11, 13] and seg.cu_seqlens.dtype == torch.int32
    assert seg.groups == [(2, 1), (3, 2), (5, 1)] and seg.max_len == 5
    assert seg.order.tolist() == [11, 12, 0, 1, 2, 8, 9, 10, 3, 4, 5, 6, 7]
    assert torch.equal(seg.order[seg.inverse], torch.arange(13))
    assert VarlenSegments.from_lengths([4, 4], "cpu").order is None  # already in group order
    with pytest.raises(ValueError, match="at least one token"):
        VarlenSegments.from_lengths([3, 0], "cpu")


def test_varlen_attention_equals_per_sequence_attention() -> None:
    """The fallback kernel against attention run on each sequence alone, CLS rows included."""
    g = torch.Generator().manual_seed(0)
    lengths = [3, 5, 3, 2]
    q, k, v = (torch.randn(sum(lengths), 2, 4, generator=g) for _ in range(3))
    seg = VarlenSegments.from_lengths(lengths, "cpu")
    out, cls_w = seg.attention(q, k, v, want_cls_row=True)
    out_fast, none = seg.attention(q, k, v)
    assert none is None
    torch.testing.assert_close(out_fast, out, atol=1e-6, rtol=0)
    for i, (a, b) in enumerate(zip(seg.cu_seqlens[:-1].tolist(), seg.cu_seqlens[1:].tolist())):
        qi, ki, vi = (t[a:b].transpose(0, 1) for t in (q, k, v))  # [h, n, hd]
        w = ((qi @ ki.transpose(-2, -1)) / 2.0).softmax(-1)
        torch.testing.assert_close(out[a:b], (w @ vi).transpose(0, 1), atol=1e-6, rtol=0)
        torch.testing.assert_close(cls_w[i, :, : b - a], w[:, 0], atol=1e-6, rtol=0)
        assert not cls_w[i, :, b - a :].any()


def test_varlen_drop_path_drops_whole_images() -> None:
    """Stochastic depth on packed tokens draws one mask per sequence, not per token."""
    torch.manual_seed(0)
    blk = Block(8, 2, 16, drop_path=0.5).train()
    seg = VarlenSegments.from_lengths([3, 5, 4, 2, 6, 1], "cpu")
    out = blk._drop(torch.ones(seg.total, 8), seg)
    values = [
        out[a:b].unique().tolist() for a, b in zip(seg.cu_seqlens[:-1].tolist(), seg.cu_seqlens[1:].tolist())
    ]
    assert all(len(v) == 1 for v in values), values
    assert {v[0] for v in values} == {0.0, 2.0}


def test_varlen_calls_the_cuda_kernel_api_correctly(monkeypatch) -> None:
    """The CUDA branch, run on CPU with a stand-in for ``varlen_attn`` that follows its documented
    contract (``[T, h, hd]`` inputs, int32 cumulative lengths, max lengths): same result as padded."""
    import torch.nn.attention.varlen as varlen_mod

    from chada.models import varlen as varlen_segments

    calls = []

    def fake_varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, **kw):
        assert q.ndim == 3 and q.shape == k.shape == v.shape and q.is_contiguous()
        assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k) and max_q == max_k
        lengths = (cu_seq_q[1:] - cu_seq_q[:-1]).tolist()
        assert max(lengths) == max_q and int(cu_seq_q[-1]) == q.shape[0]
        calls.append(len(lengths))
        out = []
        for a, b in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist()):
            qi, ki, vi = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
            out.append(torch.nn.functional.scaled_dot_product_attention(qi, ki, vi)[0].transpose(0, 1))
        return torch.cat(out)

    monkeypatch.setattr(varlen_mod, "varlen_attn", fake_varlen_attn)
    monkeypatch.setattr(varlen_segments, "_varlen_kernel_available", lambda q: True)
    monkeypatch.setattr(varlen_segments, "varlen_kernel_supported", lambda device: True)
    model = _model().eval()
    batch = _mix([3, 1, 10, 3], 32, 4)
    with torch.no_grad():
        vl, pd = _both(model, batch, "varlen")
    assert calls == [4] * model.config.depth  # one call per block for the whole batch
    torch.testing.assert_close(vl.cls, pd.cls, atol=FWD_TOL, rtol=0)
    torch.testing.assert_close(vl.patch_tokens, pd.patch_tokens, atol=FWD_TOL, rtol=0)


def test_varlen_kernel_only_on_cuda_half_precision() -> None:
    from chada.models.layers import _varlen_kernel_available

    assert not _varlen_kernel_available(torch.empty(4, 2, 16, dtype=torch.bfloat16))  # CPU
    assert not _varlen_kernel_available(torch.empty(4, 2, 16))
