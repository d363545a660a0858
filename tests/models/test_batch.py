"""``ChannelBatch`` and ``as_channel_batch``: every input form, the stacked layout, the default channel
slots, ``to`` / ``pin_memory`` and each refusal with its message."""

from __future__ import annotations

import pytest
import torch

from chada.models.batch import ChannelBatch, as_channel_batch, check_pixel_dtype


def _imgs(*counts: int, size: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(c, size, size + 1, generator=g) for c in counts]


def test_from_images_stacks_channels_in_image_order() -> None:
    images = _imgs(2, 1, 3)
    b = ChannelBatch.from_images(images)
    assert b.pixels.shape == (6, 4, 5) and torch.equal(b.pixels, torch.cat(images))
    assert b.counts.dtype == torch.long and b.counts.tolist() == [2, 1, 3]
    assert (b.batch_size, len(b), b.image_size, b.max_channels) == (3, 3, (4, 5), 3)
    assert b.channel_ids is None
    assert b.resolved_channel_ids().tolist() == [0, 1, 0, 0, 1, 2]
    assert [torch.equal(x, y) for x, y in zip(b.split(), images)] == [True] * 3
    ids = ChannelBatch.from_images(images, channel_ids=[[4, 0], [9], [1, 2, 3]])
    assert ids.channel_ids.dtype == torch.long and ids.channel_ids.tolist() == [4, 0, 9, 1, 2, 3]
    assert ids.resolved_channel_ids() is ids.channel_ids


def test_counts_and_ids_become_long_tensors() -> None:
    b = ChannelBatch(torch.rand(3, 2, 2), [2, 1], [0, 1, 5])
    assert b.counts.dtype == torch.long and b.counts.tolist() == [2, 1]
    assert b.channel_ids.dtype == torch.long and b.channel_ids.tolist() == [0, 1, 5]
    b = ChannelBatch(
        torch.rand(3, 2, 2),
        torch.tensor([2, 1], dtype=torch.int32),
        torch.tensor([0, 1, 5], dtype=torch.int32),
    )
    assert b.counts.dtype == torch.long and b.channel_ids.dtype == torch.long


def test_as_channel_batch_input_forms() -> None:
    x = torch.rand(2, 3, 4, 4)
    b = as_channel_batch(x)
    assert b.counts.dtype == torch.long and b.counts.tolist() == [3, 3]
    assert torch.equal(b.pixels, x.reshape(6, 4, 4))
    one = as_channel_batch(torch.rand(1, 1, 4, 4))  # a single one-channel image
    assert one.counts.tolist() == [1]
    single = as_channel_batch(x[0])  # one [C, H, W] image
    assert single.counts.tolist() == [3] and torch.equal(single.pixels, x[0])
    assert as_channel_batch(b) is b
    from_tuple = as_channel_batch(tuple(_imgs(1, 2)))
    assert from_tuple.counts.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("bad", "err", "message"),
    [
        (torch.rand(0, 3, 4, 4), ValueError, r"^empty input of shape \(0, 3, 4, 4\)$"),
        (torch.rand(2, 0, 4, 4), ValueError, r"^empty input of shape \(2, 0, 4, 4\)$"),
        (torch.rand(4, 4), ValueError, r"got a tensor of shape \(4, 4\)$"),
        ("image.tif", TypeError, r"list of \[C_i, H, W\] tensors, got str$"),
        ([torch.rand(1, 4, 4), 3], TypeError, r"^image 1 is a int, expected a torch\.Tensor \[C, H, W\]$"),
        ([], ValueError, r"^empty batch: at least one image is needed$"),
        ([torch.rand(4, 4)], ValueError, r"^image 0 has shape \(4, 4\); expected \[C, H, W\] \(3 dims\)$"),
        ([torch.rand(1, 4, 4), torch.rand(0, 4, 4)], ValueError, r"^image 1 has 0 channels"),
        ([torch.rand(1, 4, 4), torch.rand(1, 4, 5)], ValueError, r"got sizes \[\(4, 4\), \(4, 5\)\]"),
        ([torch.rand(2, 4, 4), torch.rand(2, 5, 4)], ValueError, r"got sizes \[\(4, 4\), \(5, 4\)\]"),
        (
            [torch.rand(1, 4, 4), torch.ones(2, 4, 4, dtype=torch.uint8)],
            TypeError,
            r"^image 1 must be a floating-point",
        ),
    ],
)
def test_as_channel_batch_refusals(bad, err, message: str) -> None:
    with pytest.raises(err, match=message):
        as_channel_batch(bad)


def test_from_images_refusals() -> None:
    with pytest.raises(
        TypeError, match=r"^from_images takes a list of \[C_i, H, W\] tensors; use as_channel_batch"
    ):
        ChannelBatch.from_images(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"^channel_ids has 1 entries for 2 images$"):
        ChannelBatch.from_images(_imgs(1, 2), channel_ids=[[0]])
    with pytest.raises(ValueError, match=r"^image 1: 1 channel ids for 2 channels$"):
        ChannelBatch.from_images(_imgs(1, 2), channel_ids=[[0], [1]])


def test_constructor_refusals() -> None:
    with pytest.raises(TypeError, match=r"^ChannelBatch\.pixels must be a torch\.Tensor, got list$"):
        ChannelBatch([[0.0]], torch.tensor([1]))
    with pytest.raises(ValueError, match=r"must be \[sum C_i, H, W\] \(3 dims\), got shape \(2, 4\)$"):
        ChannelBatch(torch.rand(2, 4), torch.tensor([2]))
    with pytest.raises(
        TypeError, match=r"^pixels must be a floating-point tensor, got torch\.int64: normalise"
    ):
        ChannelBatch(torch.ones(2, 4, 4, dtype=torch.long), torch.tensor([2]))
    for counts, shape in (([], r"\(0,\)"), ([[1, 1]], r"\(1, 2\)")):
        with pytest.raises(
            ValueError, match=rf"^ChannelBatch\.counts must be a non-empty 1-D tensor, got shape {shape}$"
        ):
            ChannelBatch(torch.rand(2, 4, 4), torch.tensor(counts, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"^every image needs at least one channel; images \[1, 3\] have C_i = 0$"
    ):
        ChannelBatch(torch.rand(3, 4, 4), torch.tensor([2, 0, 1, -1, 1]))
    with pytest.raises(ValueError, match=r"^counts sum to 2 channels but pixels holds 3$"):
        ChannelBatch(torch.rand(3, 5, 4), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"^channel_ids must have one entry per channel \(3\), got \(2,\)$"):
        ChannelBatch(torch.rand(3, 5, 4), torch.tensor([3]), torch.tensor([0, 1]))
    ChannelBatch(torch.rand(1, 4, 4), torch.tensor([1]))  # one channel is enough


def test_check_pixel_dtype_names_what_it_checks() -> None:
    check_pixel_dtype(torch.rand(2, dtype=torch.float16))
    with pytest.raises(TypeError) as err:
        check_pixel_dtype(torch.ones(2, dtype=torch.uint8), "image 7")
    assert str(err.value) == (
        "image 7 must be a floating-point tensor, got torch.uint8: normalise the image first "
        "(chada.data.normalize.normalize_channels, or e.g. img.float() / 255 for 8-bit data)"
    )
    with pytest.raises(TypeError, match=r"^pixels must be"):
        check_pixel_dtype(torch.ones(2, dtype=torch.bool))


def test_to_moves_and_casts_every_field() -> None:
    b = ChannelBatch.from_images(_imgs(2, 1), channel_ids=[[3, 1], [0]])
    d = b.to(torch.float64)
    assert d.pixels.dtype == torch.float64 and torch.equal(d.pixels, b.pixels.double())
    assert d.counts.tolist() == [2, 1] and d.channel_ids.tolist() == [3, 1, 0]
    d = b.to("cpu", dtype=torch.float16)
    assert d.pixels.dtype == torch.float16 and d.channel_ids.tolist() == [3, 1, 0]
    plain = ChannelBatch.from_images(_imgs(1)).to(torch.float64)
    assert plain.channel_ids is None and plain.pixels.dtype == torch.float64


def test_pin_memory_pins_every_tensor(monkeypatch) -> None:
    """DataLoader's pin protocol: a new batch whose tensors are all pinned (pinning needs an
    accelerator, so a stand-in marks the tensors it is called on)."""
    pinned: list[torch.Tensor] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:
        out = self.clone()
        pinned.append(out)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    b = ChannelBatch.from_images(_imgs(2, 1), channel_ids=[[3, 1], [0]])
    p = b.pin_memory()
    assert len(pinned) == 3 and all(any(t is q for q in pinned) for t in (p.pixels, p.counts, p.channel_ids))
    assert (
        torch.equal(p.pixels, b.pixels)
        and p.counts.tolist() == [2, 1]
        and p.channel_ids.tolist() == [3, 1, 0]
    )
    pinned.clear()
    q = ChannelBatch.from_images(_imgs(1)).pin_memory()
    assert len(pinned) == 2 and q.channel_ids is None


def test_counts_and_ids_follow_the_pixels_device() -> None:
    """Counts and channel ids given on the CPU move to the pixels' device (``meta`` stands in for a GPU:
    it has no data, so only the devices are compared)."""
    b = ChannelBatch(torch.empty(3, 4, 4, device="meta"), torch.tensor([2, 1]), [0, 1, 5])
    assert (b.counts.device.type, b.channel_ids.device.type) == ("meta", "meta")
    assert b.channel_ids.dtype == torch.long
    cpu = ChannelBatch(torch.rand(3, 4, 4), torch.tensor([2, 1]))
    assert cpu.counts.device.type == "cpu"
