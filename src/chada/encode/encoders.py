"""One interface for everything that turns images into feature vectors: models and hand-made features.

An :class:`Encoder` takes a :class:`~chada.models.batch.ChannelBatch` (or the per-image sample dicts a
:class:`~chada.data.dataset.ManifestDataset` yields) and returns ``{pool: float32 [B, D_pool]}``:

- :class:`ModelEncoder`: a frozen ChAda-ViT or baseline; ``forward_features`` runs once per batch and
  each pool (``"cls"``, ``"all"``, ...) is a ``forward_head`` on its output;
- :class:`HandmadeEncoder`: a function of numpy images ``[C_i, H, W]`` -> ``[B, F]`` (by default
  :func:`chada.features.handmade_features`); the same vector is stored under every pool name;
- :class:`chada.encode.handmade.FeatureKindEncoder`: the ``chada features --kind`` extractors, which
  also read each image's channel names (nuclear stain) and name their columns.

:func:`resolve_encoder` turns what a user names (a saved model folder, a registered model name with
random weights from a seed, an ``nn.Module``, or ``"handmade"``) into an encoder; the manifest-level
drivers (:func:`chada.encode.embed.embed_manifest`, :func:`chada.encode.handmade.features_for_manifest`)
run any encoder over a manifest and write a feature file (:mod:`chada.encode.store`).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from chada.models.batch import ChannelBatch, as_channel_batch

__all__ = [
    "DEFAULT_POOLS",
    "HANDMADE",
    "Encoder",
    "HandmadeEncoder",
    "ModelEncoder",
    "embed_images",
    "handmade_function",
    "resolve_encoder",
    "resolve_model",
]

log = logging.getLogger(__name__)

HANDMADE = "handmade"
DEFAULT_POOLS = ("cls", "all")


class Encoder(ABC):
    """Images -> named feature vectors. ``info`` describes the encoder in the feature file."""

    info: dict[str, Any]
    module: nn.Module | None = None

    def pool_map(self, pools: Sequence[str], channel_counts: set[int]) -> dict[str, str]:
        """Requested pool -> pool actually computed (a model may fall back to a fixed-size pool)."""
        return {p: p for p in pools}

    @abstractmethod
    def encode_batch(
        self, batch: ChannelBatch, pools: Sequence[str], device: str | torch.device | None = None
    ) -> dict[str, np.ndarray]:
        """``{pool: float32 [B, D_pool]}`` for one batch of images of one size."""

    def encode_samples(
        self,
        samples: list[dict[str, Any]],
        pool_map: dict[str, str],
        device: str | torch.device | None = None,
        policy: Any = None,
    ) -> dict[str, np.ndarray]:
        """Embed dataset samples of possibly different sizes: one batch per (H, W), rows kept in order.

        ``policy`` (a :class:`chada.data.channels.ChannelPolicy`) gives each channel its slot from its
        name; without it, slot = position.
        """
        from chada.data.dataset import collate_channels

        groups: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(tuple(s["image"].shape[-2:]), []).append(i)
        actual = sorted(set(pool_map.values()))
        result: dict[str, np.ndarray] = {}
        for rows in groups.values():
            group = [samples[i] for i in rows]
            if policy is not None:
                from chada.data.channels import collate_with_policy

                batch = collate_with_policy(group, policy)["batch"]
            else:
                batch = collate_channels(group)["batch"]
            feats = self.encode_batch(batch, actual, device=device)
            for p, f in feats.items():
                if p not in result:
                    result[p] = np.zeros((len(samples), f.shape[1]), dtype=np.float32)
                elif result[p].shape[1] != f.shape[1]:
                    raise ValueError(f"pool {p!r} gave {f.shape[1]} and {result[p].shape[1]} features in one batch")
                result[p][rows] = f
        return {req: result[act] for req, act in pool_map.items()}


class ModelEncoder(Encoder):
    """A frozen model with ``forward_features`` / ``forward_head`` (every chada encoder)."""

    def __init__(self, module: nn.Module, info: dict[str, Any] | None = None) -> None:
        self.module = module
        self.info = dict(info or {})

    def pool_map(self, pools: Sequence[str], channel_counts: set[int]) -> dict[str, str]:
        """Requested pool -> pool computed: a concatenating pool (One-Channel ViT's ``C*D``) becomes its
        mean-over-channels form when the images have different channel counts (one array, one size)."""
        model = self.module
        known = tuple(getattr(model, "pools", DEFAULT_POOLS))
        unknown = [p for p in pools if p not in known]
        if unknown:
            raise ValueError(f"pool(s) {unknown} not supported by {type(model).__name__}; choose from {known}")
        variable = getattr(model, "variable_size_pools", {}) or {}
        out = {}
        for p in pools:
            if p in variable and len(channel_counts) > 1:
                out[p] = variable[p]
                log.warning(
                    "pool %r of %s concatenates one block per channel, but the images have %s channels: "
                    "storing %r (mean over channels) under %r instead. Embed one dataset at a time "
                    "(--dataset) for the concatenated form.",
                    p, type(model).__name__, sorted(channel_counts), variable[p], p,
                )  # fmt: skip
            else:
                out[p] = p
        return out

    @torch.inference_mode()
    def encode_batch(
        self, batch: ChannelBatch, pools: Sequence[str], device: str | torch.device | None = None
    ) -> dict[str, np.ndarray]:
        model = self.module
        assert model is not None
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        model.eval()
        out = model.forward_features(batch.to(device))
        return {p: model.forward_head(out, pool=p).float().cpu().numpy() for p in pools}


class HandmadeEncoder(Encoder):
    """A function of numpy images ``[C_i, H, W]`` -> ``[B, F]``; the same vector under every pool."""

    def __init__(self, fn: Callable[[list[np.ndarray]], np.ndarray] | None = None, info: dict[str, Any] | None = None):
        self.fn = fn
        self.info = dict(info or {"model": HANDMADE, "source": "handmade", "arch": HANDMADE})

    @torch.inference_mode()
    def encode_batch(
        self, batch: ChannelBatch, pools: Sequence[str], device: str | torch.device | None = None
    ) -> dict[str, np.ndarray]:
        arrays = [x.detach().cpu().float().numpy() for x in batch.split()]
        fn = self.fn if self.fn is not None else handmade_function()
        feats = np.asarray(fn(arrays), dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] != len(arrays):
            raise ValueError(f"handmade_features returned shape {feats.shape} for {len(arrays)} images")
        return {p: feats for p in pools}


def handmade_function() -> Callable[[list[np.ndarray]], np.ndarray]:
    """``chada.features.handmade_features`` (looked up at run time, so a test or plug-in can replace it)."""
    try:
        mod = importlib.import_module("chada.features")
    except ModuleNotFoundError as exc:
        if exc.name not in ("chada.features", "chada"):
            raise
        raise ValueError(
            "model 'handmade' needs chada.features.handmade_features, but chada.features is not installed "
            "in this version"
        ) from None
    fn = getattr(mod, "handmade_features", None)
    if not callable(fn):
        raise ValueError(
            "model 'handmade' needs chada.features.handmade_features(images: list[np.ndarray]) -> np.ndarray, "
            "which chada.features does not provide"
        )
    return fn


def resolve_model(model: nn.Module | str | os.PathLike, seed: int = 0) -> tuple[nn.Module | None, dict[str, Any]]:
    """Load ``model`` (folder, registered name, module, or ``"handmade"``) and describe it for ``info``.

    Returns ``(module or None for handmade, info dict)``. A registered name is built with random
    weights after ``torch.manual_seed(seed)``: that is how untrained baselines are made, and the seed
    is recorded.
    """
    from chada.models.hub import load_model
    from chada.models.registry import list_models

    if isinstance(model, nn.Module):
        desc: dict[str, Any] = {"model": getattr(model, "model_name", None) or type(model).__name__, "source": "module"}
        return model, desc | _describe(model)
    spec = str(model)
    if spec == HANDMADE:
        handmade_function()  # fail early with a clear message
        return None, {"model": HANDMADE, "source": "handmade", "arch": HANDMADE}
    path = Path(spec)
    if path.exists():
        module = load_model(path)
        return module, {"model": str(path.resolve()), "source": "pretrained", "seed": None} | _describe(module)
    if spec in list_models():
        torch.manual_seed(seed)
        module = load_model(spec)
        return module, {"model": spec, "source": "random_init", "untrained": True, "seed": seed} | _describe(module)
    raise FileNotFoundError(
        f"{spec!r} is neither a saved model folder, a registered model name ({', '.join(list_models())}), "
        f"nor {HANDMADE!r}"
    )


def _describe(module: nn.Module) -> dict[str, Any]:
    cfg = getattr(module, "config", None)
    return {
        "model_name": getattr(module, "model_name", None),
        "arch": getattr(module, "arch_name", type(module).__name__),
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
        "num_params": int(sum(p.numel() for p in module.parameters())),
    }


def resolve_encoder(model: nn.Module | str | os.PathLike | Encoder, seed: int = 0) -> Encoder:
    """The :class:`Encoder` for what a user names (see :func:`resolve_model`); an encoder passes through."""
    if isinstance(model, Encoder):
        return model
    module, info = resolve_model(model, seed=seed)
    return HandmadeEncoder(info=info) if module is None else ModelEncoder(module, info)


def embed_images(
    model: nn.Module | str,
    images: Sequence[Tensor] | ChannelBatch | Tensor,
    pools: Sequence[str] = DEFAULT_POOLS,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Embed one batch: ``{pool: float32 [B, D_pool]}``.

    Args:
        model: an encoder (ChAda-ViT or a baseline), or ``"handmade"``.
        images: list of ``[C_i, H, W]`` tensors, ``[B, C, H, W]`` or a :class:`ChannelBatch`.
        pools: e.g. ``("cls", "all")``; the backbone runs once, each pool is a head on its output.
        device: where to run (default: the model's device).
    """
    pools = list(pools)
    if not pools:
        raise ValueError("pools is empty: ask for at least one of 'cls', 'all'")
    if isinstance(model, str):
        if model != HANDMADE:
            raise TypeError(f"embed_images takes a model or {HANDMADE!r}, got the string {model!r}")
        return HandmadeEncoder().encode_batch(as_channel_batch(images), pools)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or {HANDMADE!r}, got {type(model).__name__}")
    return ModelEncoder(model).encode_batch(as_channel_batch(images), pools, device=device)
