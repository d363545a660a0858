"""The input resize of chada.tasks.dense.features (``_resize``), by hand on tiny tensors."""

from __future__ import annotations

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
