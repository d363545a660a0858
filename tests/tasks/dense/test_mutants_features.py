"""The input resize of chada.tasks.dense.features (``_resize``), by hand on tiny tensors."""

from __future__ import annotations

import numpy as np
import torch

from chada.tasks.dense.features import _resize


def test_a_square_input_of_the_size_is_left_alone_and_others_are_resized() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert _resize(x, 4) is x
    for shape in ((1, 1, 4, 2), (1, 1, 2, 4)):  # one side already right is not enough
        assert _resize(torch.zeros(shape), 4).shape == (1, 1, 4, 4)


def test_upsampling_is_bilinear_with_pixel_centres() -> None:
    # columns [0, 1] doubled: output centres at input x = -0.25, 0.25, 0.75, 1.25 (align_corners=False),
    # clamped at the border -> 0, 0.25, 0.75, 1
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0]])[None, None]
    out = _resize(x, 4)[0, 0]
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.25, 0.75, 1.0]] * 4))


def test_shrinking_averages_over_the_footprint_antialias() -> None:
    # stripes 1, 0, 0, 0 (period 4) shrunk 4x: an antialiased resize averages each output pixel's
    # footprint (mean 0.25); a plain bilinear one samples between input pixels 1 and 2 (both 0) -> 0
    row = torch.tensor([1.0, 0.0, 0.0, 0.0] * 8)
    x = row.expand(32, 32)[None, None].clone()
    out = _resize(x, 8)[0, 0]
    assert out.shape == (8, 8)
    inner = out[:, 1:-1]  # away from the border, where the filter is clipped
    assert torch.all((inner - 0.25).abs() < 0.05), inner


def test_handmade_maps_pass_the_scales_through() -> None:
    # custom scales reach the pixel filters: fewer scales, fewer feature planes, and the values of
    # pixel_features at those scales (the wrapper's job is the stacking and the dtype)
    from chada.features.pixels import pixel_features
    from chada.tasks.dense.features import handmade_maps

    rng = np.random.default_rng(0)
    tiles = rng.random((2, 1, 16, 16)).astype(np.float32)
    default = handmade_maps(tiles)
    custom = handmade_maps(tiles, sigmas=(1.0,), tensor_sigmas=(2.0,))
    assert custom.dtype == np.float32 and custom.shape[0] == 2
    expected = np.stack([pixel_features(t, sigmas=(1.0,), tensor_sigmas=(2.0,)) for t in tiles])
    np.testing.assert_allclose(custom, expected, rtol=1e-6)
    assert custom.shape[1] < default.shape[1]
    only_tensor = handmade_maps(tiles, tensor_sigmas=(2.0,))
    assert only_tensor.shape[1] < default.shape[1] and not np.array_equal(
        only_tensor, default[:, : only_tensor.shape[1]]
    )
