"""``dense_from_tokens`` on hand-made tokens: layout, defaults, pooling over real channels only, the
upsampling sizes it takes and refuses (the models' ``forward_dense`` is tested in test_model.py)."""

from __future__ import annotations

import pytest
import torch

from chada.models.dense import dense_from_tokens


def _tokens():
    """Two images, C' = 3 slots, a 2 x 3 grid, D = 4; image 1 has one real channel."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    tokens[~mask] = 0.0
    return tokens, mask


def test_defaults_are_per_channel_maps_on_the_patch_grid() -> None:
    tokens, mask = _tokens()
    out = dense_from_tokens(tokens, mask, (2, 3), (16, 24))
    assert out.grid == (2, 3)
    assert out.maps.shape == (2, 2, 4, 2, 3)  # only the first max(C_b) = 2 positions
    assert out.channel_mask.tolist() == [[True, True], [True, False]]
    # map[b, c, :, i, j] is token i * w + j
    assert torch.equal(out.maps[1, 0, :, 1, 2], tokens[1, 0, 5])
    assert torch.equal(out.maps[0, 1, :, 0, 1], tokens[0, 1, 1])
    assert out.maps.is_contiguous()


def test_pooled_is_the_mean_over_real_channels() -> None:
    tokens, mask = _tokens()
    out = dense_from_tokens(tokens, mask, (2, 3), (16, 24), channels="pooled")
    assert out.grid == (2, 3) and out.maps.shape == (2, 4, 2, 3)
    ref0 = (tokens[0, 0] + tokens[0, 1]) / 2  # [6, 4]
    torch.testing.assert_close(out.maps[0], ref0.T.reshape(4, 2, 3), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.maps[1], tokens[1, 0].T.reshape(4, 2, 3), atol=1e-12, rtol=0)
    low = dense_from_tokens(tokens.bfloat16(), mask, (2, 3), (16, 24), channels="pooled")
    assert low.maps.dtype == torch.bfloat16


@pytest.mark.parametrize("channels", ["each", "pooled"])
def test_upsampling_sizes(channels: str) -> None:
    tokens, mask = _tokens()
    out = dense_from_tokens(tokens, mask, (2, 3), (16, 24), channels=channels, upsample=True)
    assert out.maps.shape[-2:] == (16, 24) and out.grid == (2, 3)
    thin = dense_from_tokens(tokens, mask, (2, 3), (16, 24), channels=channels, upsample=(1, 5))
    assert thin.maps.shape[-2:] == (1, 5)
    same = dense_from_tokens(tokens, mask, (2, 3), (16, 24), channels=channels, upsample=[2, 3])
    plain = dense_from_tokens(tokens, mask, (2, 3), (16, 24), channels=channels)
    torch.testing.assert_close(same.maps, plain.maps, atol=1e-12, rtol=0)  # bilinear at the same size
    for bad in ((0, 4), (2.0, 3), (4,), (1, 2, 3), "16x24"):
        with pytest.raises(
            ValueError, match=r"^upsample must be False, True or a \(H, W\) pair of positive ints, got "
        ):
            dense_from_tokens(tokens, mask, (2, 3), (16, 24), channels=channels, upsample=bad)


def test_bilinear_upsampling_values() -> None:
    """Half-pixel-centred bilinear (align_corners=False): a 1 x 2 grid [a, b] upsampled to 1 x 4 is
    [a, 0.75a + 0.25b, 0.25a + 0.75b, b] (edges clamp)."""
    tokens = torch.zeros(1, 1, 2, 1, dtype=torch.float64)
    tokens[0, 0, :, 0] = torch.tensor([1.0, 5.0])
    mask = torch.tensor([[True]])
    for channels in ("each", "pooled"):
        out = dense_from_tokens(tokens, mask, (1, 2), (8, 16), channels=channels, upsample=(1, 4))
        assert out.maps.flatten().tolist() == pytest.approx([1.0, 2.0, 4.0, 5.0])


def test_unknown_channel_mode() -> None:
    tokens, mask = _tokens()
    with pytest.raises(ValueError, match=r"^channels must be one of \('each', 'pooled'\), got 'mean'$"):
        dense_from_tokens(tokens, mask, (2, 3), (16, 24), channels="mean")
