"""What can be wrong with an image's pixels once it is read: the read error type and the NaN/inf rule.

NaN / inf pixels (:func:`check_finite_pixels`, applied by every reader of :mod:`chada.data.readers`):
``nan_policy="error"`` (default) raises :class:`NonFinitePixelError` naming the image id (when
known), every affected channel (index and name) with its NaN/inf counts, and the file.
``nan_policy="replace"`` replaces them, per channel, with ``nan_fill`` or, when ``nan_fill`` is None
(default), the median of the channel's finite pixels (0 for a channel with none), and emits one
:class:`NonFinitePixelWarning` per touched image naming it. ``nan_policy="keep"`` returns them
untouched (for callers that check themselves, e.g. ``chada data check``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chada.errors import InputError

__all__ = [
    "NAN_POLICIES",
    "ImageReadError",
    "NonFinitePixelError",
    "NonFinitePixelWarning",
    "check_finite_pixels",
    "check_nan_policy",
    "nonfinite_summary",
]

NAN_POLICIES = ("error", "replace", "keep")


class ImageReadError(InputError):
    """A file exists but cannot be read as a ``[C, H, W]`` image (also a ``ValueError``)."""


class NonFinitePixelError(ImageReadError):
    """An image has NaN or inf pixels and ``nan_policy="error"``."""


class NonFinitePixelWarning(UserWarning):
    """NaN/inf pixels of an image were replaced (``nan_policy="replace"``)."""


def check_nan_policy(nan_policy: str) -> None:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"unknown nan_policy {nan_policy!r}; choose one of {NAN_POLICIES}")


def _channel_label(k: int, names: Sequence[str]) -> str:
    return f"channel {k} {names[k]!r}" if k < len(names) else f"channel {k}"


def _nonfinite_detail(
    image: np.ndarray, channel_names: Sequence[str] | None, files: Sequence[str | Path] | None
) -> tuple[str, list[int]]:
    """``("channel 1 'Actin': 3 NaN, 1 inf pixel(s); ...", [1, ...])`` for the non-finite channels."""
    names = list(channel_names) if channel_names is not None else []
    file_list = [str(f) for f in files] if files is not None else []
    parts: list[str] = []
    bad: list[int] = []
    for k in range(image.shape[0]):
        n_nan = int(np.isnan(image[k]).sum())
        n_inf = int(np.isinf(image[k]).sum())
        if not (n_nan or n_inf):
            continue
        bad.append(k)
        counts = ", ".join(x for x in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if x)
        # per-channel files: name the channel's own file
        where = f" in {file_list[k]}" if len(file_list) == image.shape[0] and len(file_list) > 1 else ""
        parts.append(f"{_channel_label(k, names)}: {counts} pixel(s){where}")
    return "; ".join(parts), bad


def nonfinite_summary(
    image: np.ndarray,
    channel_names: Sequence[str] | None = None,
    files: Sequence[str | Path] | None = None,
) -> str:
    """Which channels of a ``[C, H, W]`` image hold NaN/inf pixels and how many ("" when none)."""
    if not np.issubdtype(image.dtype, np.floating) or np.isfinite(image).all():
        return ""
    return _nonfinite_detail(image, channel_names, files)[0]


def check_finite_pixels(
    image: np.ndarray,
    *,
    image_id: str | None = None,
    channel_names: Sequence[str] | None = None,
    files: Sequence[str | Path] | None = None,
    nan_policy: str = "error",
    nan_fill: float | None = None,
) -> np.ndarray:
    """Apply the NaN/inf rule (module docstring) to a raw ``[C, H, W]`` image.

    Args:
        image: ``[C, H, W]`` array, before normalisation.
        image_id: the image's id, named in the error / warning.
        channel_names: names of the C channels, named next to their indices.
        files: the image's file (one) or its per-channel files (C), named in the error.
        nan_policy: ``"error"``, ``"replace"`` or ``"keep"``.
        nan_fill: replacement value; None = the channel's finite median (0 if it has none).

    Returns:
        ``image`` itself when every pixel is finite (or ``nan_policy="keep"``), else a copy with the
        non-finite pixels replaced.

    Raises:
        NonFinitePixelError: non-finite pixels under ``nan_policy="error"``.
    """
    check_nan_policy(nan_policy)
    if nan_policy == "keep" or not np.issubdtype(image.dtype, np.floating) or np.isfinite(image).all():
        return image
    if nan_fill is not None and not np.isfinite(nan_fill):
        raise ValueError(f"nan_fill must be a finite number, got {nan_fill}")
    detail, bad = _nonfinite_detail(image, channel_names, files)
    names = list(channel_names) if channel_names is not None else []
    file_list = [str(f) for f in files] if files is not None else []
    who = f"image {image_id!r}" if image_id is not None else "image"
    src = f" ({file_list[0]})" if len(file_list) == 1 else ""
    if nan_policy == "error":
        raise NonFinitePixelError(
            f"{who}{src} has non-finite pixels: {detail}. Fix the file, or let chada replace them "
            "(nan_policy='replace': the channel's finite median, or nan_fill)"
        )
    out = np.array(image, copy=True)
    done = []
    for k in bad:
        plane = out[k]
        mask = ~np.isfinite(plane)
        if nan_fill is not None:
            value = float(nan_fill)
        else:
            finite = plane[~mask]
            value = float(np.median(finite)) if finite.size else 0.0
        plane[mask] = value
        done.append(f"{_channel_label(k, names)} with {value:g}")
    how = "nan_fill" if nan_fill is not None else "the channel's finite median"
    warnings.warn(
        f"{who}{src}: replaced non-finite pixels ({detail}): {', '.join(done)} ({how})",
        NonFinitePixelWarning,
        stacklevel=2,
    )
    return out
