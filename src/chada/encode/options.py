"""The option bundles of a run over a manifest: built once (``chada.cli.options`` from the command line,
or by hand in Python) and passed whole to :func:`chada.encode.embed.embed_manifest` and the tasks.

::

    embed_manifest("runs/chada/final", "m.csv", "emb.npz",
                   image=ImageOptions(size=224, nan_policy="replace"),
                   run=RunOptions(batch_size=64, device="cuda", progress=False),
                   select=Selection(datasets=["hpa"]))

Each bundle checks its values once, when it is built (``ValueError`` with one line naming the
option), so a run fails before it loads a model. They are frozen: a changed value is
``dataclasses.replace(bundle, field=value)``.

- :class:`ImageOptions`: what a pixel goes through before the encoder (size, normalisation, NaN/inf);
- :class:`ChannelOptions`: which slot each named channel takes (:class:`chada.data.channels.ChannelPolicy`);
- :class:`RunOptions`: how the encoder runs (batch, loader workers, device, precision, seed, progress bar);
- :class:`Selection`: which rows of the manifest (datasets, splits) and where relative paths start;
- :class:`OutputOptions`: the resumable output (resume, chunk size, input checks, shard).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from chada.data.channels import UNKNOWN_POLICIES
from chada.data.pixel_checks import NAN_POLICIES as NAN_POLICIES_ALL
from chada.encode.inputs import VERIFY_CHOICES

__all__ = [
    "MODEL_SIZE",
    "NAN_POLICIES",
    "NORMALIZE_CHOICES",
    "ChannelOptions",
    "ImageOptions",
    "OutputOptions",
    "RunOptions",
    "Selection",
]

#: ``ImageOptions.size`` default: the size the model recorded, else native sizes.
MODEL_SIZE = "model"
NORMALIZE_CHOICES = ("percentile", "minmax", "none")
#: The NaN/inf policies of a run over a manifest (``"keep"`` of :mod:`chada.data.pixel_checks` is for readers only).
NAN_POLICIES = NAN_POLICIES_ALL[:2]


@dataclass(frozen=True)
class ImageOptions:
    """What every image goes through before the encoder.

    ``size``: ``"model"`` (the size the model recorded at pretraining, else native), an int (every
    image resized to ``size x size``) or None / ``"native"`` (each image keeps its size).
    ``normalize``: per-channel intensity normalisation (a name of :data:`NORMALIZE_CHOICES`
    or a :class:`chada.data.normalize.Normalizer`, checked by :func:`chada.data.normalize.get_normalizer`). ``nan_policy`` / ``nan_fill``: NaN/inf pixels
    raise (``"error"``, naming the image and channel) or become ``nan_fill`` (None: the channel's
    finite median).
    """

    size: int | str | None = MODEL_SIZE
    normalize: Any = "percentile"
    nan_policy: str = "error"
    nan_fill: float | None = None

    def __post_init__(self) -> None:
        if self.size == "native":
            object.__setattr__(self, "size", None)
        size = self.size
        if size not in (None, MODEL_SIZE) and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"image_size must be a positive int, 'model' or None (native), got {size!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        if self.nan_fill is not None and not math.isfinite(self.nan_fill):
            raise ValueError(f"nan_fill must be a finite number, got {self.nan_fill}")

    def dataset_kwargs(self) -> dict[str, Any]:
        """The pixel keyword arguments of :class:`chada.data.dataset.ManifestDataset` (size apart)."""
        return {"normalize": self.normalize, "nan_policy": self.nan_policy, "nan_fill": self.nan_fill}


@dataclass(frozen=True)
class ChannelOptions:
    """Channel names -> slots: ``order`` (canonical order; None: the names the model recorded, else
    slot = position), ``unknown`` (a name outside it: ``"warn"``, ``"error"``, ``"append"``),
    ``aliases`` (``{name in the manifest: canonical name}``)."""

    order: Sequence[str] | None = None
    unknown: str = "warn"
    aliases: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown_channels must be one of {UNKNOWN_POLICIES}, got {self.unknown!r}")

    def policy(self, module: Any) -> Any:
        """The :class:`chada.data.channels.ChannelPolicy` for ``module`` (None: hand-made features)."""
        from chada.data.channels import ChannelPolicy

        aliases = dict(self.aliases) if self.aliases is not None else None
        return ChannelPolicy.from_model(module, unknown=self.unknown, aliases=aliases, canonical=self.order)


@dataclass(frozen=True)
class RunOptions:
    """How the encoder runs: ``batch_size`` images (cells) per forward pass, ``num_workers`` loader
    processes, ``device``, ``dtype`` of the forward pass (:mod:`chada.models.precision`; features are
    float32 either way), ``seed`` of a registered name's random weights, ``progress`` bars."""

    batch_size: int = 32
    num_workers: int = 0
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class Selection:
    """Which manifest rows: only ``datasets`` / ``split`` (None: all); ``root``: the folder relative image
    paths start from (None: the manifest's folder)."""

    datasets: Sequence[str] | None = None
    split: str | Sequence[str] | None = None
    root: str | os.PathLike | None = None

    def dataset_kwargs(self) -> dict[str, Any]:
        """The row keyword arguments of :class:`chada.data.dataset.ManifestDataset`."""
        return {"root": self.root, "split": self.split, "datasets": self.datasets}


@dataclass(frozen=True)
class OutputOptions:
    """The resumable output: ``resume`` finished chunks of an interrupted run with the same settings,
    ``chunk_batches`` batches (with objects: fields) per chunk, ``verify_inputs`` (``"stat"``: size +
    mtime; ``"hash"``: SHA-256) of a reused chunk's files, ``shard`` ``(I, N)``: only the I-th of N
    blocks of chunks (:mod:`chada.encode.shards`)."""

    resume: bool = True
    chunk_batches: int = 20
    verify_inputs: str = "stat"
    shard: tuple[int, int] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.chunk_batches < 1:
            raise ValueError(f"chunk_batches must be >= 1, got {self.chunk_batches}")
        if self.verify_inputs not in VERIFY_CHOICES:
            raise ValueError(f"verify_inputs must be one of {VERIFY_CHOICES}, got {self.verify_inputs!r}")
