"""The batched input form of ChAda-ViT: every channel of every image stacked on one axis.

A batch of B images with C_1..C_B channels (same H, W) is held as::

    pixels       [sum C_i, H, W]   floating point, channels of image 0, then image 1, ...
    counts       [B]               long, C_i per image
    channel_ids  [sum C_i]         long, the channel-embedding slot (0..C_max-1) of each channel

``channel_ids`` defaults to ``0..C_i-1`` for every image (the paper's "slot = position" rule). A
canonical channel order (names -> slots) fills it with other values, e.g. ``[0, 2]`` for an image
that has the 1st and 3rd stain of the canonical list.

Pixel dtype rule (every API path builds a ChannelBatch, so it holds everywhere: ``model(list)``,
``model(tensor)``, ``ChannelBatch(...)``, ``from_images``, ``forward_features``, ``forward_dense``):
pixels must be a floating-point tensor (any float dtype; the model casts to its own). Integer and
bool tensors are refused with a TypeError: a uint8/uint16 image cast to float unnormalised would
sit on a scale (0..255 or 0..65535) the model never saw, so normalise first (e.g.
``chada.data.normalize.normalize_channels``, or ``img.float() / 255`` for 8-bit data).

This is the layout the data loader's collate function produces and the model consumes: no padding
is materialised in memory; the padded view is built inside the model only when the paper-faithful
``"padded"`` attention is selected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ChannelBatch", "as_channel_batch", "check_pixel_dtype", "host_to_device"]


def check_pixel_dtype(pixels: Tensor, what: str = "pixels") -> None:
    """Refuse non-floating-point pixels (see the module docstring's dtype rule)."""
    if not pixels.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point tensor, got {pixels.dtype}: normalise the image first "
            "(chada.data.normalize.normalize_channels, or e.g. img.float() / 255 for 8-bit data)"
        )


@dataclass
class ChannelBatch:
    """All channels of a batch of multiplexed images, stacked.

    Attributes:
        pixels: ``[sum C_i, H, W]`` float tensor.
        counts: ``[B]`` long tensor, number of channels of each image (all >= 1).
        channel_ids: optional ``[sum C_i]`` long tensor of channel-embedding slots; ``None`` means
            ``0..C_i-1`` for each image.
        host_counts: ``counts`` as Python ints, kept on the host so that nothing reads them back from
            a GPU (filled at construction; :meth:`to` carries it over).
        host_id_range: ``(min, max)`` of ``channel_ids`` when they were seen on the CPU, else None.
        finite_checked: the pixels were checked finite (on the CPU before :meth:`to`, or once by the
            model), so the model does not read a GPU tensor back to check them again.
    """

    pixels: Tensor
    counts: Tensor
    channel_ids: Tensor | None = None
    host_counts: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    host_id_range: tuple[int, int] | None = field(default=None, repr=False, compare=False)
    finite_checked: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, Tensor):
            raise TypeError(f"ChannelBatch.pixels must be a torch.Tensor, got {type(self.pixels).__name__}")
        if self.pixels.ndim != 3:
            raise ValueError(
                f"ChannelBatch.pixels must be [sum C_i, H, W] (3 dims), got shape {tuple(self.pixels.shape)}"
            )
        check_pixel_dtype(self.pixels)
        counts = torch.as_tensor(self.counts, dtype=torch.long)
        if counts.ndim != 1 or counts.numel() == 0:
            raise ValueError(
                f"ChannelBatch.counts must be a non-empty 1-D tensor, got shape {tuple(counts.shape)}"
            )
        if self.host_counts is None:  # validated on the host: one read-back only if counts live on a GPU
            host = counts.cpu()
            if bool((host <= 0).any()):
                bad = torch.nonzero(host <= 0).flatten().tolist()
                raise ValueError(f"every image needs at least one channel; images {bad} have C_i = 0")
            self.host_counts = tuple(host.tolist())
        elif len(self.host_counts) != counts.numel():
            raise ValueError(f"host_counts has {len(self.host_counts)} entries for {counts.numel()} images")
        if sum(self.host_counts) != self.pixels.shape[0]:
            raise ValueError(
                f"counts sum to {sum(self.host_counts)} channels but pixels holds {self.pixels.shape[0]}"
            )
        self.counts = counts.to(self.pixels.device) if counts.device != self.pixels.device else counts
        if self.channel_ids is not None:
            ids = torch.as_tensor(self.channel_ids, dtype=torch.long)
            if ids.shape != (self.pixels.shape[0],):
                raise ValueError(
                    f"channel_ids must have one entry per channel ({self.pixels.shape[0]}), got {tuple(ids.shape)}"
                )
            if self.host_id_range is None and ids.device.type == "cpu":
                self.host_id_range = (int(ids.min()), int(ids.max()))
            self.channel_ids = ids.to(self.pixels.device) if ids.device != self.pixels.device else ids

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return int(self.counts.numel())

    def __len__(self) -> int:
        return self.batch_size

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    @property
    def max_channels(self) -> int:
        assert self.host_counts is not None  # set by __post_init__
        return max(self.host_counts)

    def resolved_channel_ids(self) -> Tensor:
        """``[sum C_i]`` slots, filling the default ``0..C_i-1`` when none were given."""
        if self.channel_ids is not None:
            return self.channel_ids
        n, dev = self.pixels.shape[0], self.counts.device
        offsets = torch.cumsum(self.counts, 0) - self.counts
        # output_size: the result's length is known on the host, so no read-back of counts from a GPU
        image_of = torch.repeat_interleave(
            torch.arange(self.batch_size, device=dev), self.counts, output_size=n
        )
        return torch.arange(n, device=dev) - offsets[image_of]

    def split(self) -> list[Tensor]:
        """The images as a list of ``[C_i, H, W]`` tensors (views, no copy)."""
        return list(torch.split(self.pixels, list(self.host_counts or ()), dim=0))

    def nonfinite_images(self) -> list[int]:
        """Indices of the images holding a NaN or an infinite pixel (reads the pixels' device)."""
        bad_channel = ~torch.isfinite(self.pixels).flatten(1).all(1)
        if not bool(bad_channel.any()):
            return []
        image_of = [i for i, c in enumerate(self.host_counts or ()) for _ in range(c)]
        return sorted({image_of[j] for j in torch.nonzero(bad_channel).flatten().tolist()})

    def check_finite(self) -> None:
        """Raise ValueError naming the images with NaN/inf pixels; remembered once passed."""
        if self.finite_checked:
            return
        bad = self.nonfinite_images()
        if bad:
            raise ValueError(f"NaN or inf pixels in images {bad}")
        self.finite_checked = True

    def to(self, *args, **kwargs) -> ChannelBatch:
        """The batch on another device/dtype (``Tensor.to`` arguments; ``non_blocking`` applies to
        counts and ids too). Moving off the CPU checks the pixels there first, so that the model
        needs no read-back from the GPU; pixels are copied once."""
        device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if (
            device is not None
            and torch.device(device) != self.pixels.device
            and self.pixels.device.type == "cpu"
        ):
            self.check_finite()
        pixels = self.pixels.to(*args, **kwargs)
        dev = pixels.device

        def move(t: Tensor) -> Tensor:
            return t.to(dev, non_blocking=non_blocking) if t.device != dev else t

        ids = None if self.channel_ids is None else move(self.channel_ids)
        return ChannelBatch(
            pixels, move(self.counts), ids, self.host_counts, self.host_id_range, self.finite_checked
        )

    def pin_memory(self) -> ChannelBatch:
        """Page-locked copy (a DataLoader's pin-memory thread calls this); the pixels are checked there,
        off the training loop's thread, so the following :meth:`to` has nothing left to check."""
        self.check_finite()
        ids = None if self.channel_ids is None else self.channel_ids.pin_memory()
        return ChannelBatch(
            self.pixels.pin_memory(),
            self.counts.pin_memory(),
            ids,
            self.host_counts,
            self.host_id_range,
            True,
        )

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_images(
        cls, images: Sequence[Tensor], channel_ids: Sequence[Sequence[int]] | None = None
    ) -> ChannelBatch:
        """Stack a list of ``[C_i, H, W]`` images (same H, W) into one batch.

        Raises:
            TypeError: an element is not a tensor.
            ValueError: empty list, wrong ndim, C_i = 0, or H/W differing inside the batch.
        """
        if isinstance(images, Tensor):
            raise TypeError(
                "from_images takes a list of [C_i, H, W] tensors; use as_channel_batch for a 4-D tensor"
            )
        images = list(images)
        if not images:
            raise ValueError("empty batch: at least one image is needed")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor):
                raise TypeError(f"image {i} is a {type(img).__name__}, expected a torch.Tensor [C, H, W]")
            if img.ndim != 3:
                raise ValueError(f"image {i} has shape {tuple(img.shape)}; expected [C, H, W] (3 dims)")
            if img.shape[0] == 0:
                raise ValueError(f"image {i} has 0 channels; every image needs at least one")
        sizes = {tuple(img.shape[1:]) for img in images}
        if len(sizes) > 1:
            raise ValueError(
                f"images in one batch must share H and W, got sizes {sorted(sizes)}; resize them or batch them separately"
            )
        for i, img in enumerate(images):
            check_pixel_dtype(img, f"image {i}")
        counts = torch.tensor([img.shape[0] for img in images], dtype=torch.long)
        pixels = _cat_keep_pinned(images)
        ids = None
        if channel_ids is not None:
            if len(channel_ids) != len(images):
                raise ValueError(f"channel_ids has {len(channel_ids)} entries for {len(images)} images")
            for i, (img, cid) in enumerate(zip(images, channel_ids)):
                if len(cid) != img.shape[0]:
                    raise ValueError(f"image {i}: {len(cid)} channel ids for {img.shape[0]} channels")
            ids = torch.tensor([c for cid in channel_ids for c in cid], dtype=torch.long)
        return cls(pixels, counts.to(pixels.device), None if ids is None else ids.to(pixels.device))


def _cat_keep_pinned(images: list[Tensor]) -> Tensor:
    """``torch.cat(images)``; into page-locked memory when every image is page-locked (a DataLoader
    with ``pin_memory=True`` pins samples before a collate that stacks them), so the later
    ``.to(cuda, non_blocking=True)`` is a real asynchronous copy and not a staged, blocking one."""
    first = images[0]
    if first.device.type != "cpu" or not all(img.dtype == first.dtype and img.is_pinned() for img in images):
        return torch.cat(images, dim=0)
    out = torch.empty(
        (sum(img.shape[0] for img in images), *first.shape[1:]), dtype=first.dtype, pin_memory=True
    )
    return torch.cat(images, dim=0, out=out)


def host_to_device(values: list[int], device: torch.device) -> Tensor:
    """A long tensor of ``values`` on ``device``, copied from page-locked memory without blocking the
    host (a plain ``torch.tensor(values, device=cuda)`` waits for the GPU's queue to drain)."""
    t = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def as_channel_batch(images: ChannelBatch | Tensor | Sequence[Tensor]) -> ChannelBatch:
    """Accept every documented input form and return a :class:`ChannelBatch`.

    - a :class:`ChannelBatch` (returned as is);
    - a list/tuple of ``[C_i, H, W]`` tensors (C_i may differ);
    - a ``[B, C, H, W]`` tensor (all images with C channels) or a single ``[C, H, W]`` image.
    """
    if isinstance(images, ChannelBatch):
        return images
    if isinstance(images, Tensor):
        if images.ndim == 4:
            b, c, h, w = images.shape
            if b == 0 or c == 0:
                raise ValueError(f"empty input of shape {tuple(images.shape)}")
            counts = torch.full((b,), c, dtype=torch.long, device=images.device)
            return ChannelBatch(images.reshape(b * c, h, w), counts)
        if images.ndim == 3:
            return ChannelBatch.from_images([images])
        raise ValueError(
            f"expected [B, C, H, W], [C, H, W] or a list of [C_i, H, W] tensors, got a tensor of shape {tuple(images.shape)}"
        )
    if isinstance(images, (list, tuple)):
        return ChannelBatch.from_images(images)
    raise TypeError(
        f"expected a ChannelBatch, a tensor or a list of [C_i, H, W] tensors, got {type(images).__name__}"
    )
