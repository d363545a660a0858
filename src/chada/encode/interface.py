"""The :class:`Encoder` interface: what a run over a manifest (:mod:`chada.encode.embed`,
:mod:`chada.encode.loop`) and the tasks ask of anything that turns images into feature vectors.

An encoder maps a :class:`~chada.models.batch.ChannelBatch` (or the per-image sample dicts of a
:class:`~chada.data.dataset.ManifestDataset`) to ``{pool: float32 [B, D_pool]}`` and says what it is:
``info`` (written to the feature file), ``is_model`` (a torch module runs, or numpy hand-made
features), ``random_init``, ``precision``, ``weights_digest``; and what it needs: ``to(device)``,
``set_dtype``, ``check_forward`` (token count and memory before a forward pass), the channel counts
it takes. So callers never look at ``module`` or ``info["source"]`` themselves. The implementations
are in :mod:`chada.encode.encoders`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from chada.models.batch import ChannelBatch

__all__ = ["Encoder"]


class Encoder(ABC):
    """Images -> named feature vectors. ``info`` describes the encoder in the feature file."""

    info: dict[str, Any]
    module: nn.Module | None = None
    #: Precision of the model's forward pass (:mod:`chada.models.precision`); features are float32 anyway.
    dtype: torch.dtype = torch.float32

    @property
    def is_model(self) -> bool:
        """True when a torch module runs the images (False: hand-made features, numpy only)."""
        return self.module is not None

    @property
    def random_init(self) -> bool:
        """A registered name built with random weights from a seed (the seed, not the weights, names it)."""
        return self.info.get("source") == "random_init"

    @property
    def precision(self) -> str | None:
        """``"fp32"`` / ``"bf16"`` of the model's forward pass; None without a model."""
        from chada.models.precision import precision_name

        return precision_name(self.dtype) if self.is_model else None

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Run the forward pass in ``dtype`` (a model only: hand-made features have no forward pass)."""
        if self.is_model:
            self.dtype = dtype

    def to(self, device: torch.device) -> Encoder:
        """Move the model to ``device`` in eval mode (hand-made features: nothing to move); returns self."""
        if self.module is not None:
            self.module = self.module.to(device).eval()
        return self

    def weights_digest(self) -> str | None:
        """A digest of the weights, so a resumed run notices a folder re-saved with new weights; None
        when nothing but the settings names them (no model, or random weights from a recorded seed)."""
        from chada.encode.inputs import weights_digest

        if self.module is None or self.random_init:
            return None
        return weights_digest(self.module)

    def fingerprint(self) -> str:
        """Which exact encoder made a set of features: the SHA-1 of the model's weights
        (:func:`chada.encode.inputs.weights_sha1`), else the feature kind's name."""
        from chada.encode.inputs import weights_sha1

        return weights_sha1(self.module) if self.module is not None else self.name

    def check_forward(self, samples: Sequence[dict[str, Any]], device: torch.device, where: Any, warned: set[str]) -> None:
        """Before a forward pass: token count and memory of ``samples`` on ``device``
        (:func:`chada.encode.budget.check_forward`); nothing to check without a model."""
        if self.module is not None:
            from chada.encode.budget import check_forward

            check_forward(self.module, samples, device, where, warned)

    @property
    def name(self) -> str:
        """What error messages call the encoder: the module's class, else the feature kind."""
        return type(self.module).__name__ if self.module is not None else str(self.info.get("kind", "handmade"))

    def fixed_pool(self, pool: str) -> str:
        """The pool whose size does not depend on the channel count (a probe fitted on C channels reads
        k-channel features): ``pool`` itself, or its fixed-size form (One-Channel ViT's mean)."""
        return pool

    def pool_map(self, pools: Sequence[str], channel_counts: set[int]) -> dict[str, str]:
        """Requested pool -> pool actually computed (a model may fall back to a fixed-size pool)."""
        return {p: p for p in pools}

    @property
    def max_channels(self) -> int | None:
        """The largest channel count the encoder takes (None: no limit of its own)."""
        return None

    @property
    def exact_channels(self) -> int | None:
        """The one channel count the encoder takes, if it takes only one (a fixed-channel ViT)."""
        return None

    @property
    def recorded_image_size(self) -> int | None:
        """The square image size the encoder was trained and evaluated at, when it recorded one."""
        return None

    def finish(self, ds: Any, meta: Any, info: dict[str, Any], features: dict[str, np.ndarray]) -> None:
        """Last changes to the feature file's ``meta`` / ``info`` before it is written (default: none)."""
        return None

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

        self._check_channel_counts(samples)
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

    def _check_channel_counts(self, samples: Sequence[dict[str, Any]]) -> None:
        """Name the images (not their batch positions) whose channel count the encoder cannot take."""
        limit, exact = self.max_channels, self.exact_channels
        if exact is not None:
            bad = [s for s in samples if s["image"].shape[0] != exact]
            rule = (
                f"this model takes exactly {exact} channels per image; select {exact} channels (e.g. by name) "
                "or use a channel-adaptive model"
            )
        elif limit is not None:
            bad = [s for s in samples if s["image"].shape[0] > limit]
            rule = (
                f"more channels than this model's C_max={limit}; drop channels from the manifest row or use "
                "a model with a larger max_channels"
            )
        else:
            return
        if bad:
            from chada.errors import InputError

            listed = ", ".join(f"{s.get('image_id')!r} ({s['image'].shape[0]} channels)" for s in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise InputError(f"image {listed}{more}: {rule}")
