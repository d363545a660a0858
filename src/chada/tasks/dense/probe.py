"""A trained dense probe on disk, and applying it to a whole image (``chada segment``).

A probe is two files with one stem: ``STEM.safetensors`` (the head's weights and its feature
mean/std) and ``STEM.json`` (what it needs to be applied again: head shape, the feature source and
its exact model, channel names, tile and input size, normalisation, threshold). Nothing is
unpickled.

The model a probe was fit on is pinned by a SHA-1 of its weights (:func:`.features.fingerprint`):
applying a probe with another model, even one of the same architecture, is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from chada.errors import InputError
from chada.io import atomic_write_bytes, atomic_write_text
from chada.tasks.dense.heads import DenseHead, predict_probabilities

__all__ = ["PROBE_FORMAT", "DenseProbe", "load_probe", "probe_paths", "segment_image"]

PROBE_FORMAT = "chada-dense-probe/1"


def probe_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(STEM.safetensors, STEM.json)`` for a stem or either file."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


@dataclass(eq=False)
class DenseProbe:
    """A head plus what it was trained on (``meta``, see the module docstring)."""

    head: DenseHead
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def channel_names(self) -> list[str]:
        return list(self.meta.get("channel_names") or [])

    def save(self, stem: str | os.PathLike) -> tuple[Path, Path]:
        from safetensors.torch import save

        st, js = probe_paths(stem)
        st.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        atomic_write_bytes(st, save(tensors))
        meta = {"format": PROBE_FORMAT, **self.head.config(), **self.meta}
        atomic_write_text(js, json.dumps(meta, indent=1, default=str))
        return st, js


def load_probe(path: str | os.PathLike) -> DenseProbe:
    """Read a probe saved by :meth:`DenseProbe.save` (either file or the common stem)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st, js = probe_paths(path)
    for p in (js, st):
        if not p.exists():
            raise FileNotFoundError(
                f"probe file {p} does not exist (a probe is STEM.json + STEM.safetensors)"
            )
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{js}: not a probe description (invalid JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != PROBE_FORMAT:
        raise InputError(
            f"{js}: not a chada dense probe (format {meta.get('format') if isinstance(meta, dict) else None!r})"
        )
    try:
        state = load_file(str(st))
        head = DenseHead(int(meta["in_dim"]), str(meta["head"]), int(meta.get("hidden", 64)))
        head.load_state_dict(state, strict=True)
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{st}: cannot read the probe's weights ({exc})") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise InputError(f"{st}: the weights do not fit {js} ({str(exc).splitlines()[0]})") from None
    return DenseProbe(
        head.eval(), {k: v for k, v in meta.items() if k not in ("format", "head", "in_dim", "hidden")}
    )


def _check_model(probe: DenseProbe, module: nn.Module | None, label: str) -> None:
    from chada.tasks.dense.features import fingerprint

    kind = probe.meta.get("features")
    if kind == "handmade":
        if module is not None:
            raise InputError(
                f"the probe was trained on hand-made pixel features; use --model handmade, not {label}"
            )
        return
    if module is None:
        raise InputError(
            f"the probe was trained on model {probe.meta.get('model')!r}; --model handmade does not fit it"
        )
    want, got = probe.meta.get("fingerprint"), fingerprint(module)
    if want != got:
        raise InputError(
            f"model {label} is not the model the probe was trained on ({probe.meta.get('model')!r}, "
            f"{probe.meta.get('arch')}): its weights differ (SHA-1 {got[:12]} vs {str(want)[:12]})"
        )


def order_channels(probe: DenseProbe, names: list[str] | None, n_channels: int) -> list[int]:
    """Positions of the image's channels in the probe's channel order (names matched ignoring case)."""
    want = probe.channel_names
    if n_channels != len(want):
        raise InputError(
            f"the image has {n_channels} channel(s) but the probe was trained on {len(want)} ({', '.join(want)})"
        )
    if names is None:
        return list(range(n_channels))
    if len(names) != n_channels:
        raise InputError(
            f"{len(names)} channel names ({', '.join(names)}) for an image with {n_channels} channels"
        )
    low = [n.strip().lower() for n in names]
    if len(set(low)) != len(low):
        raise InputError(f"a channel name appears twice in {names}")
    missing = [w for w in want if w.lower() not in low]
    if missing:
        raise InputError(f"the probe needs channels {want}; {missing} not among --channel-names {names}")
    return [low.index(w.lower()) for w in want]


def segment_image(
    probe: DenseProbe,
    module: nn.Module | None,
    image: np.ndarray,
    *,
    model_label: str = "--model",
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Foreground probability ``[H, W]`` of a raw ``[C, H, W]`` image whose channels are already in the
    probe's order: normalised as a whole, cut into the probe's tiles (the border padded by
    reflection), each tile probed, the tiles put back together. ``dtype``: precision of the model's
    forward pass (``torch.bfloat16``: autocast)."""
    from chada.data.normalize import normalize_channels
    from chada.tasks.dense.features import handmade_maps, model_maps

    _check_model(probe, module, model_label)
    m = probe.meta
    tile = int(m["tile"])
    x = normalize_channels(np.asarray(image, np.float32), m.get("normalize", "percentile"))
    c, h, w = x.shape
    ph, pw = -h % tile, -w % tile
    mode = "reflect" if ph < h and pw < w else "edge"
    x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)
    origins = [(y, xx) for y in range(0, h + ph, tile) for xx in range(0, w + pw, tile)]
    tiles = np.stack([x[:, y : y + tile, xx : xx + tile] for y, xx in origins])
    with torch.inference_mode():
        if module is None:
            maps = handmade_maps(tiles, m.get("sigmas"), m.get("tensor_sigmas"))
        else:
            maps = model_maps(
                module,
                tiles,
                probe.channel_names,
                image_size=m.get("image_size"),
                channels=m.get("channels", "each"),
                dtype=dtype,
            )
    if maps.shape[1] != probe.head.in_dim:
        raise InputError(
            f"the features have {maps.shape[1]} dimensions but the probe takes {probe.head.in_dim}"
        )
    prob = predict_probabilities(probe.head, maps, (tile, tile))
    out = np.zeros((h + ph, w + pw), np.float32)
    for (y, xx), p in zip(origins, prob):
        out[y : y + tile, xx : xx + tile] = p
    return out[:h, :w]
