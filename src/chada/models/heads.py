"""The image-embedding head shared by models whose embedding is their CLS token, or CLS + mean token.

ChAda-ViT, the Inter-Channel-only ViT and the fixed-channel ViT all embed an image as ``"cls"``
(``[B, D]``) or ``"all"`` (CLS and the mean of the real tokens, ``[B, 2D]``, the paper's all-token
evaluation). They differ only in which tokens are averaged, which their output's ``mean_tokens()``
says; the One-Channel ViT has its own pools (one CLS per channel) and its own head.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["ClsAllHead", "TokenFeatures"]


class TokenFeatures(Protocol):
    """What :class:`ClsAllHead` reads of a model's ``forward_features`` output."""

    cls: Tensor  # [B, D]

    def mean_tokens(self) -> Tensor:
        """``[B, D]`` mean over the real (not padded) tokens."""
        ...


class ClsAllHead:
    """``forward_head``, ``forward`` and ``embedding_dim`` for the ``"cls"`` / ``"all"`` pools.

    Mixed into an ``nn.Module`` that has ``embed_dim`` and ``forward_features(images)``.
    """

    pools: tuple[str, ...] = ("cls", "all")
    embed_dim: int

    def _check_pool(self, pool: str) -> None:
        if pool not in self.pools:
            raise ValueError(f"pool must be one of {self.pools}, got {pool!r}")

    def forward_head(self, features: TokenFeatures, pool: str = "cls") -> Tensor:
        """Image embedding from features: ``"cls"`` -> ``[B, D]``; ``"all"`` -> ``[B, 2D]``."""
        self._check_pool(pool)
        if pool == "all":
            return torch.cat([features.cls, features.mean_tokens()], dim=-1)
        return features.cls

    def forward(self, images: Any, pool: str = "cls") -> Tensor:
        """``[B, D]`` CLS embeddings (``[B, 2D]`` with ``pool="all"``) of ``images`` (see ``forward_features``)."""
        return self.forward_head(self.forward_features(images), pool=pool)  # type: ignore[attr-defined]

    def embedding_dim(self, pool: str = "cls", channels: int | None = None) -> int:
        """Width of ``forward(images, pool)``'s output; ``channels`` does not change it for these pools."""
        self._check_pool(pool)
        return self.embed_dim * (2 if pool == "all" else 1)
