"""Channel-aware augmentation: geometry shared by all channels, intensity per channel, multi-crop."""

from __future__ import annotations

import torch

from chada.data.augment import (
    ChannelDropout,
    ChannelGaussianBlur,
    ChannelIntensityJitter,
    ChannelShuffle,
    ChannelSolarize,
    MultiCropAugment,
    RandomFlipRotate,
    RandomResizedCrop,
)


def _aligned_image(c: int = 4, size: int = 48) -> torch.Tensor:
    """Channels are exact copies up to a per-channel affine intensity map (k+1)*x + k."""
    base = torch.rand(1, size, size)
    return torch.cat([base * (k + 1) + k for k in range(c)]) / (2 * c)


def _still_aligned(view: torch.Tensor, c: int) -> bool:
    base = view[0] * (2 * c)
    return all(torch.allclose(view[k] * (2 * c), base * (k + 1) + k, atol=1e-4) for k in range(c))


def test_geometry_keeps_channels_aligned():
    torch.manual_seed(0)
    x = _aligned_image()
    crop, geom = RandomResizedCrop(24, scale=(0.1, 0.6)), RandomFlipRotate(0.5, 0.5, 0.9)
    for _ in range(30):
        y = geom(crop(x))
        assert y.shape == (4, 24, 24)
        assert _still_aligned(y, 4)


def test_multicrop_views_aligned_without_intensity_ops():
    torch.manual_seed(1)
    aug = MultiCropAugment(
        global_size=32, local_size=16, n_global=2, n_local=3, jitter_p=0.0,
        global_blur_p=(0.0,), local_blur_p=0.0, global_solarize_p=(0.0,), p_rot90=1.0,
    )  # fmt: skip
    x = _aligned_image(5)
    views = aug(x)
    assert len(views) == 5 == aug.n_views
    assert [tuple(v.shape) for v in views] == [(5, 32, 32)] * 2 + [(5, 16, 16)] * 3
    assert all(_still_aligned(v, 5) for v in views)


def test_shifted_channels_stay_shifted_after_flip_rotate():
    # Channel 1 is channel 0 shifted right by 3 px: after any dihedral transform, undoing it must
    # give back exactly that relation.
    size = 32
    base = torch.rand(size, size)
    x = torch.stack([base, torch.roll(base, 3, dims=1)])
    geom = RandomFlipRotate(0.5, 0.5, 1.0)
    torch.manual_seed(3)
    for _ in range(20):
        y = geom(x)
        found = False
        # find the transform applied to channel 0 and check channel 1 underwent the same one
        for k in range(4):
            for fh in (False, True):
                for fv in (False, True):
                    z = y
                    z = torch.rot90(z, -k, dims=(-2, -1))
                    z = z.flip(-2) if fv else z
                    z = z.flip(-1) if fh else z
                    if torch.equal(z[0], base):
                        found = True
                        assert torch.equal(z[1], torch.roll(base, 3, dims=1))
        assert found


def test_intensity_ops_are_per_channel():
    torch.manual_seed(0)
    x = torch.rand(6, 32, 32).clamp(0.05, 0.95)
    j = ChannelIntensityJitter(0.4, 0.4, 0.3, p=1.0)(x)
    ratios = j.mean(dim=(1, 2)) / x.mean(dim=(1, 2))
    assert ratios.std() > 1e-3  # channels got different factors
    blurred = ChannelGaussianBlur((0.1, 3.0), p=1.0)(x)
    assert blurred.shape == x.shape and torch.isfinite(blurred).all()
    smooth = (blurred[:, 1:] - blurred[:, :-1]).abs().mean(dim=(1, 2))
    assert smooth.std() > 1e-4  # per-channel sigma
    s = ChannelSolarize(0.5, p=1.0)(x)
    assert torch.allclose(s, torch.where(x >= 0.5, 1 - x, x))


def test_channel_dropout_never_drops_all_and_shuffle_returns_perm():
    torch.manual_seed(0)
    drop = ChannelDropout(max_drop=10, p=1.0)
    x = torch.arange(4.0)[:, None, None].expand(4, 5, 5).clone()
    for _ in range(50):
        y, keep = drop(x)
        assert 1 <= y.shape[0] <= 3
        assert torch.equal(y[:, 0, 0], keep.float())
    one, keep1 = drop(x[:1])
    assert one.shape[0] == 1 and keep1.tolist() == [0]
    y, perm = ChannelShuffle(p=1.0)(x)
    assert sorted(perm.tolist()) == [0, 1, 2, 3] and torch.equal(y[:, 0, 0], perm.float())


def test_multicrop_channel_index_consistent_across_views():
    aug = MultiCropAugment(
        24,
        12,
        n_local=2,
        channel_drop_max=2,
        channel_drop_p=1.0,
        channel_shuffle_p=1.0,
        jitter_p=0.0,
        global_blur_p=(0.0,),
        local_blur_p=0.0,
        global_solarize_p=(0.0,),
        return_channel_index=True,
        seed=5,
    )
    x = torch.arange(5.0)[:, None, None].expand(5, 40, 40).clone()
    views, index = aug(x)
    assert 3 <= len(index) <= 4
    for v in views:
        assert v.shape[0] == len(index)
        assert torch.allclose(v[:, 0, 0], index.float(), atol=1e-5)


def test_seeded_multicrop_is_reproducible():
    x = torch.rand(3, 40, 40)
    a = MultiCropAugment(24, 12, n_local=2, seed=7, noise_p=0.5)(x)
    b = MultiCropAugment(24, 12, n_local=2, seed=7, noise_p=0.5)(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
