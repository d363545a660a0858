"""Before a forward pass: does every image fit the model's patches, and the batch the machine's memory?

:func:`check_forward` runs on each loader batch of ``chada embed`` before the model sees it:

- an image smaller than one patch, or whose height or width is not a multiple of the patch size, is
  an error naming the image id and its file, and saying how to resize (``--image-size``);
- the token count of each image, ``T = 1 + C (H / p) (W / p)`` (CLS plus every channel's patches,
  ChAda-ViT's layout; a patch-per-channel baseline holds the same number of tokens), gives the peak
  memory of one block over the images of one size
  (:func:`chada.models.memory.forward_bytes`, ``B T (7 D + 2 Hd)`` values, the attention scores
  left out because the fused kernels never hold them) plus the ``[B, C_max, N, D]`` output; a batch
  beyond the memory of the device (:func:`chada.models.memory.machine_memory`) is refused before
  it is allocated, naming the largest image and the size to resize to;
- an image of more than :data:`LONG_SEQUENCE` tokens gets one warning: attention time grows with
  ``T^2``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from chada.errors import InputError
from chada.models.memory import forward_bytes, gib, machine_memory

__all__ = ["LONG_SEQUENCE", "check_forward", "files_of", "image_tokens"]

#: Tokens of one image above which ``chada embed`` warns: attention cost grows with T^2.
LONG_SEQUENCE = 65_536


def image_tokens(channels: int, height: int, width: int, patch: int) -> int:
    """``1 + C (H / p) (W / p)``: the sequence length of one image (CLS included)."""
    return 1 + channels * (height // patch) * (width // patch)


def files_of(ds: Any) -> Callable[[str], str]:
    """Image id -> its file(s) in a :class:`chada.data.dataset.ManifestDataset`, for messages."""
    from chada.data.manifest import row_paths

    def where(image_id: str) -> str:
        row = next((r for r in ds._rows if str(r.get("image_id")) == image_id), None)
        return "file unknown" if row is None else ", ".join(str(f) for f in row_paths(row, ds.root)[1])

    return where


def _config(module: Any) -> Any:
    return getattr(module, "config", None)


def _check_patches(samples: Sequence[dict[str, Any]], p: int, where: Callable[[str], str]) -> None:
    for s in samples:
        h, w = (int(v) for v in s["image"].shape[-2:])
        if h < p or w < p or h % p or w % p:
            iid = str(s.get("image_id"))
            what = (
                f"smaller than one {p}x{p} patch"
                if h < p or w < p
                else f"not a multiple of the patch size {p}"
            )
            raise InputError(
                f"image {iid!r} ({where(iid)}): {h}x{w} px is {what}; resize with --image-size N (a multiple of "
                f"{p}, e.g. --image-size 224) or crop the image"
            )


def check_forward(
    module: Any,
    samples: Sequence[dict[str, Any]],
    device: str | torch.device | None = None,
    where: Callable[[str], str] = lambda iid: "file unknown",
    warned: set[str] | None = None,
) -> None:
    """Refuse a batch of samples (``image`` ``[C_i, H, W]``) that the model cannot take or the device cannot hold.

    Args:
        module: the model (``config`` with ``patch_size``, ``embed_dim``, ...); models without a patch
            size (the conv tokenizer) are not checked.
        samples: one loader batch of :class:`chada.data.dataset.ManifestDataset` samples.
        device: where the forward pass runs (its memory is the limit).
        where: image id -> its file, for the messages.
        warned: image sizes already warned about (one warning per size and run).
    """
    cfg = _config(module)
    p = getattr(cfg, "patch_size", None)
    if not isinstance(p, int) or p < 1 or not samples:
        return
    _check_patches(samples, p, where)
    D = int(cfg.embed_dim)
    hidden = int(getattr(cfg, "mlp_hidden", None) or D * float(getattr(cfg, "mlp_ratio", 4.0)))
    cmax = int(getattr(cfg, "max_channels", 1) or 1)
    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for s in samples:
        groups.setdefault(tuple(int(v) for v in s["image"].shape[-2:]), []).append(s)
    have = machine_memory(device)
    for (h, w), group in groups.items():
        big = max(group, key=lambda s: int(s["image"].shape[0]))
        tokens = image_tokens(int(big["image"].shape[0]), h, w, p)
        n = (h // p) * (w // p)
        need = (
            forward_bytes(tokens, D, hidden, int(cfg.num_heads), batch=len(group))
            + len(group) * cmax * n * D * 4
        )
        iid = str(big.get("image_id"))
        if need > have:
            raise InputError(
                f"image {iid!r} ({where(iid)}): {h}x{w} px with {big['image'].shape[0]} channels is {tokens:,} tokens; "
                f"a batch of {len(group)} needs about {gib(need)} of memory and this machine has {gib(have)}: "
                f"resize with --image-size 224 (or a smaller --batch-size)"
            )
        if tokens > LONG_SEQUENCE and warned is not None and f"{h}x{w}" not in warned:
            warned.add(f"{h}x{w}")
            warnings.warn(
                f"image {iid!r} ({where(iid)}): {h}x{w} px is {tokens:,} tokens per image; attention time grows "
                f"with the square of it: resize with --image-size 224 unless the native size is the point",
                stacklevel=2,
            )
