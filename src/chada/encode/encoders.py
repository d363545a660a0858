"""One interface for everything that turns images into feature vectors: models and hand-made features.

An :class:`Encoder` takes a :class:`~chada.models.batch.ChannelBatch` (or the per-image sample dicts a
:class:`~chada.data.dataset.ManifestDataset` yields) and returns ``{pool: float32 [B, D_pool]}``:

- :class:`ModelEncoder`: a frozen ChAda-ViT or baseline; ``forward_features`` runs once per batch and
  each pool (``"cls"``, ``"all"``, ...) is a ``forward_head`` on its output;
- :class:`FeatureKindEncoder`: the hand-made feature kinds of :mod:`chada.features` (``"handmade"``,
  ``"shortcut"``, ``"cellprofiler"``, ``"tissue"``), functions of numpy images ``[C_i, H, W]`` that
  also read each image's channel names (the nuclear stain) and name their columns; the same vector
  is stored under every pool name. ``chada embed --model handmade`` and ``chada features --kind
  handmade`` both run it through :func:`chada.encode.embed.embed_manifest`, so they write the same
  features.

:func:`resolve_encoder` turns what a user names (a saved model folder, a registered model name with
random weights from a seed, an ``nn.Module``, or ``"handmade"``) into an encoder; the manifest-level
drivers (:func:`chada.encode.embed.embed_manifest`, :func:`chada.encode.handmade.features_for_manifest`)
run any encoder over a manifest and write a feature file (:mod:`chada.encode.store`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from chada.encode.interface import Encoder
from chada.models.batch import ChannelBatch, as_channel_batch
from chada.models.precision import autocast

__all__ = [
    "DEFAULT_POOLS",
    "HANDMADE",
    "Encoder",
    "FeatureKindEncoder",
    "ModelEncoder",
    "embed_images",
    "resolve_encoder",
    "resolve_model",
]

log = logging.getLogger(__name__)

HANDMADE = "handmade"
DEFAULT_POOLS = ("cls", "all")


class ModelEncoder(Encoder):
    """A frozen model with ``forward_features`` / ``forward_head`` (every chada encoder)."""

    def __init__(self, module: nn.Module, info: dict[str, Any] | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.module = module
        self.info = dict(info or {})
        self.dtype = dtype

    @property
    def max_channels(self) -> int | None:
        limit = getattr(self.module, "max_channels", None)
        return int(limit) if isinstance(limit, int) else None

    @property
    def exact_channels(self) -> int | None:
        fixed = getattr(getattr(self.module, "config", None), "in_channels", None)
        return int(fixed) if getattr(self.module, "arch_name", None) == "fixed_channel_vit" and fixed else None

    @property
    def recorded_image_size(self) -> int | None:
        """``image_size`` in the model folder's ``config.json`` (``extra``), written by pretraining.

        Folders written before it was recorded: the pretraining config's ``augment.global_size``, the
        size of the global views the teacher was trained on.
        """
        extra = getattr(self.module, "pretrained_extra", None) or {}
        size = extra.get("image_size")
        if size is None:
            size = ((extra.get("pretrain_config") or {}).get("augment") or {}).get("global_size")
        return int(size) if isinstance(size, int) and size > 0 else None

    def fixed_pool(self, pool: str) -> str:
        variable = getattr(self.module, "variable_size_pools", {}) or {}
        if pool in variable:
            return variable[pool]
        known = tuple(getattr(self.module, "pools", DEFAULT_POOLS))
        if pool not in known:
            raise ValueError(f"pool {pool!r} not supported by {type(self.module).__name__}; choose from {known}")
        return pool

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
        with autocast(self.dtype, device):
            out = model.forward_features(batch.to(device, non_blocking=True))  # pinned by the loader on CUDA
            heads = {p: model.forward_head(out, pool=p) for p in pools}
        return {p: h.float().cpu().numpy() for p, h in heads.items()}


class FeatureKindEncoder(Encoder):
    """One hand-made feature kind (:data:`chada.features.extract.KINDS`) as an encoder.

    The one implementation behind ``chada embed --model handmade`` and ``chada features --kind``:
    the same ``[N, F]`` vector is stored under every pool name. Samples carry channel names, and the
    first channel named as a nuclear stain (DAPI, Hoechst, DNA, ...) is the nuclear channel (an image
    with such a channel is also never treated as RGB histology); without one, the nuclear channel is
    the most bimodal one (:func:`chada.features.nuclei.pick_nuclear_channel`). A bare batch
    (:meth:`encode_batch`) carries no names, so it always uses the pixel rule.
    """

    def __init__(self, kind: str = HANDMADE, layout: str = "pooled") -> None:
        from chada.features.extract import KINDS

        if kind not in KINDS:
            raise ValueError(f"unknown feature kind {kind!r}; choose one of {KINDS}")
        self.kind, self.layout = kind, layout
        self.columns: list[str] | None = None
        self.info = {"model": kind, "family": "handmade", "source": "handmade", "arch": HANDMADE, "kind": kind,
                     "layout": layout}  # fmt: skip

    def fixed_pool(self, pool: str) -> str:
        """Every pool name holds the same vector: the features are stored under the kind's name."""
        return self.kind

    def pool_map(self, pools: Sequence[str], channel_counts: set[int]) -> dict[str, str]:
        if self.layout == "per_channel" and len(channel_counts) > 1:
            raise ValueError(
                f"layout='per_channel' needs one fixed channel set, but the images have {sorted(channel_counts)} "
                "channels; use layout='pooled'"
            )
        return {p: p for p in pools}

    def features(self, samples: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
        """``([N, F] float64, column names)`` of samples with ``image`` ``[C, H, W]`` and ``channel_names``
        (``where``, if present, else ``image_id`` names the image in error messages)."""
        from chada.features.extract import extract_features
        from chada.features.nuclei import nuclear_index_from_names

        images, where, nuc, stains = [], [], [], []
        for s in samples:
            img = s["image"]
            images.append(img.numpy() if isinstance(img, Tensor) else np.asarray(img))
            where.append(str(s.get("where") or f"image {s.get('image_id')!r}"))
            idx = nuclear_index_from_names(s.get("channel_names"))
            nuc.append("auto" if idx is None else idx)
            stains.append("auto" if idx is None else "none")
        x, cols = extract_features(images, self.kind, layout=self.layout, nuclear_channel=nuc, names=where,
                                   stains=stains)  # fmt: skip
        self.columns = self.columns or list(cols)
        return x, cols

    def encode_samples(
        self,
        samples: list[dict[str, Any]],
        pool_map: dict[str, str],
        device: str | torch.device | None = None,
        policy: Any = None,
    ) -> dict[str, np.ndarray]:
        x = self.features(samples)[0].astype(np.float32)
        return {p: x for p in pool_map}

    def encode_batch(
        self, batch: ChannelBatch, pools: Sequence[str], device: str | torch.device | None = None
    ) -> dict[str, np.ndarray]:
        from chada.features.extract import extract_features

        arrays = [x.detach().cpu().float().numpy() for x in batch.split()]
        x = extract_features(arrays, self.kind, layout=self.layout)[0].astype(np.float32)
        return {p: x for p in pools}

    def finish(self, ds: Any, meta: Any, info: dict[str, Any], features: dict[str, np.ndarray]) -> None:
        """Name the columns in ``info``; the shortcut kind's columns also become meta columns."""
        if self.columns is None:  # every chunk came from an earlier run: name the columns from one image
            self.features([ds[0]])
        assert self.columns is not None
        info["feature_names"] = list(self.columns)
        info["note"] = "hand-made features: the same vector is stored under every pool name"
        if self.kind != "shortcut":
            return
        x = next(iter(features.values()))
        clash = [c for c in self.columns if c in meta.columns and c != "n_channels"]
        if clash:
            warnings.warn(
                f"manifest columns {clash} are replaced by the shortcut features of the same name in the meta",
                stacklevel=2,
            )
        for j, col in enumerate(self.columns):
            meta[col] = x[:, j].astype(np.float64)


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
        return None, dict(FeatureKindEncoder(HANDMADE).info)
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


def resolve_encoder(
    model: nn.Module | str | os.PathLike | Encoder, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Encoder:
    """The :class:`Encoder` for what a user names (see :func:`resolve_model`), running its model in
    ``dtype`` (:func:`chada.models.precision.resolve_precision`); an encoder passes through."""
    if isinstance(model, Encoder):
        return model
    module, info = resolve_model(model, seed=seed)
    return FeatureKindEncoder(HANDMADE) if module is None else ModelEncoder(module, info, dtype=dtype)


def embed_images(
    model: nn.Module | str,
    images: Sequence[Tensor] | ChannelBatch | Tensor,
    pools: Sequence[str] = DEFAULT_POOLS,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, np.ndarray]:
    """Embed one batch: ``{pool: float32 [B, D_pool]}``.

    Args:
        model: an encoder (ChAda-ViT or a baseline), or ``"handmade"``.
        images: list of ``[C_i, H, W]`` tensors, ``[B, C, H, W]`` or a :class:`ChannelBatch`.
        pools: e.g. ``("cls", "all")``; the backbone runs once, each pool is a head on its output.
        device: where to run (default: the model's device).
        dtype: precision of the forward pass (``torch.bfloat16``: autocast); features are float32.
    """
    pools = list(pools)
    if not pools:
        raise ValueError("pools is empty: ask for at least one of 'cls', 'all'")
    if isinstance(model, str):
        if model != HANDMADE:
            raise TypeError(f"embed_images takes a model or {HANDMADE!r}, got the string {model!r}")
        return FeatureKindEncoder(HANDMADE).encode_batch(as_channel_batch(images), pools)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or {HANDMADE!r}, got {type(model).__name__}")
    return ModelEncoder(model, dtype=dtype).encode_batch(as_channel_batch(images), pools, device=device)
