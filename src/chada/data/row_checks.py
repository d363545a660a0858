"""Checks of one manifest row's pixels that ``chada data check`` adds to the reader's own errors.

- :func:`read_error_kind`: the problem kind of a read error (``permission_denied``, ``not_a_file`` for
  a FIFO, socket or device, ``inconsistent_size``, else ``unreadable``);
- :func:`patch_problems`: an image a ViT cannot cut into whole patches at its native size. Smaller
  than one patch (``H < p`` or ``W < p``) is an error; a size that is not a multiple of ``p`` is a
  warning, because ``chada embed`` resizes to the model's recorded size by default and only a native
  size run (``--image-size native``) refuses it.
"""

from __future__ import annotations

__all__ = ["read_error_kind", "patch_problems"]


def read_error_kind(message: str) -> str:
    """The :class:`chada.data.manifest.Problem` kind of a reader's error message."""
    if "differ in H/W" in message:
        return "inconsistent_size"
    if "permission denied" in message:
        return "permission_denied"
    if "not an image file" in message:
        return "not_a_file"
    return "unreadable"


def patch_problems(height: int, width: int, patch_size: int | None) -> list[tuple[str, str, str]]:
    """``[(kind, message, severity)]`` of an ``H x W`` image for patches of ``patch_size`` (None/0: none)."""
    p = patch_size or 0
    if p < 1 or height == 0 or width == 0:
        return []
    if height < p or width < p:
        return [("smaller_than_patch", f"image is {height}x{width} px, smaller than one {p}x{p} patch; a ViT cannot "
                 f"embed it at its native size (resize it, e.g. --image-size 224, or drop the row)", "error")]  # fmt: skip
    if height % p or width % p:
        return [("patch_multiple", f"image is {height}x{width} px, not a multiple of the {p} px patch: embedding at "
                 f"native size refuses it (the default resize to the model's size, or --image-size N, works)",
                 "warning")]  # fmt: skip
    return []
