"""Baseline encoders compared with ChAda-ViT (paper Section 4.4, Table 2; supplementary C and Table 3).

One module per family (:mod:`~chada.models.one_channel_vit`, :mod:`~chada.models.inter_channel_vit`,
:mod:`~chada.models.fixed_channel_vit`, on the trunk of :mod:`~chada.models.standard_vit`); this
module is their overview and re-exports their public names for code that imports them from here.

All three take the same inputs as :class:`~chada.models.chada_vit.ChAdaViT` (a list of ``[C_i, H, W]``
tensors, a ``[B, C, H, W]`` tensor or a :class:`ChannelBatch`) and expose the same methods
(``forward_features``, ``forward_head``, ``forward(images, pool)``, ``embedding_dim(pool, channels)``,
``save_pretrained``), so every command (embed, evaluate, pretrain) runs them unchanged.

- ``one_channel_vit`` (Microsnoop-style One Channel Encoding, paper Eq. 3-6): a standard ViT with a
  ``Conv2d(1, D, p, p)`` patch embedding, CLS token and positional embedding, NO channel embedding,
  encodes every channel alone (Eq. 4-5). Image embedding (Eq. 6): the per-channel CLS tokens
  concatenated in the image's channel order, ``[B, C*D]``; so it needs one channel count per batch.
  All channels of a batch run through the ViT as ONE batch of ``sum C_i`` single-channel images.
- ``inter_channel_vit`` (Inter-Channel only ablation, supplementary Section C): a convolutional
  TokenLearner (strided conv stack + global average pooling + linear, shared by all channels) turns
  each whole channel into ONE token; a learned channel embedding per slot, a CLS token and a
  transformer that attends across channels only. Output ``[B, D]``.
- ``fixed_channel_vit`` (the standard "3 Ch. ViT" of supplementary Table 3): a standard ViT with a
  ``Conv2d(C_fixed, D, p, p)`` patch embedding; every image must have exactly ``C_fixed`` channels.

Pools (``forward(images, pool=...)``):

=================  ======================================================  =====================
model              pool                                                    size
=================  ======================================================  =====================
one_channel_vit    ``"cls"``: per-channel CLS concatenated (paper Eq. 6)   ``C * D``
                   ``"all"``: per channel ``[CLS_c, mean patch_c]``,       ``C * 2D``
                   concatenated channel after channel
                   ``"mean"``: mean over channels of the CLS tokens        ``D``
                   ``"mean_all"``: mean over channels of ``[CLS, patch]``  ``2D``
inter_channel_vit  ``"cls"``; ``"all"`` = CLS + mean of real channel tokens ``D``; ``2D``
fixed_channel_vit  ``"cls"``; ``"all"`` = CLS + mean patch token            ``D``; ``2D``
=================  ======================================================  =====================

``"mean"``/``"mean_all"`` are OUR addition (not in the paper): a fixed-size embedding for batches that
mix channel counts, used for DINO pretraining of the one-channel model on heterogeneous data and as
the embedding fallback on manifests whose images do not all have the same channel count.
"""

from chada.models.fixed_channel_vit import FixedChannelOutput, FixedChannelViT, FixedChannelViTConfig
from chada.models.inter_channel_vit import (
    ConvTokenLearner,
    InterChannelOutput,
    InterChannelViT,
    InterChannelViTConfig,
)
from chada.models.one_channel_vit import OneChannelOutput, OneChannelViT, OneChannelViTConfig

__all__ = [
    "OneChannelViTConfig",
    "OneChannelViT",
    "OneChannelOutput",
    "InterChannelViTConfig",
    "InterChannelViT",
    "InterChannelOutput",
    "FixedChannelViTConfig",
    "FixedChannelViT",
    "FixedChannelOutput",
    "ConvTokenLearner",
]
