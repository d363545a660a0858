"""One call for every hand-made feature kind: ``extract_features(images, kind)`` -> ``([N, F], names)``.

Pure numpy on images ``[C_i, H, W]``; running a kind over a manifest into a feature file is
:func:`chada.encode.handmade.features_for_manifest` (``chada features``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from chada.features.cellprofiler import cellprofiler_features
from chada.features.handmade import handmade_features
from chada.features.shortcut import shortcut_features
from chada.features.tissue import tissue_features

__all__ = ["KINDS", "extract_features"]

KINDS = ("shortcut", "handmade", "cellprofiler", "tissue")


def extract_features(
    images: Sequence[np.ndarray],
    kind: str,
    layout: str = "pooled",
    nuclear_channel: int | str | Sequence[int | str] = "auto",
    names: Sequence[str] | None = None,
    progress: bool = False,
    stains: str | Sequence[str] = "auto",
) -> tuple[np.ndarray, list[str]]:
    """Features of one kind for N images ``[C_i, H, W]``: ``([N, F] float64, column names)``.

    Args:
        kind: one of :data:`KINDS`.
        layout: ``"pooled"`` or ``"per_channel"`` (handmade and cellprofiler only; shortcut and
            tissue have one fixed layout and refuse ``"per_channel"``).
        nuclear_channel: per image or for all: nuclear channel index or ``"auto"``.
        names: image names for error messages.
        stains: tissue only, per image or for all: ``"auto"``, ``"hed"`` or ``"none"``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {KINDS}")
    if kind in ("shortcut", "tissue") and layout != "pooled":
        raise ValueError(f"kind={kind!r} has a single channel-independent layout; use layout='pooled'")
    common: dict[str, Any] = {"nuclear_channel": nuclear_channel, "names": names, "progress": progress}
    if kind == "shortcut":
        return shortcut_features(images, **common)
    if kind == "handmade":
        return handmade_features(images, layout=layout, return_names=True, **common)
    if kind == "cellprofiler":
        return cellprofiler_features(images, layout=layout, return_names=True, **common)
    return tissue_features(images, stains=stains, return_names=True, **common)
