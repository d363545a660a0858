"""The ``chada features`` route: a hand-made feature kind over a manifest, into a feature file.

``features_for_manifest(M, "shortcut", "emb/shortcut.npz")`` is
:func:`chada.encode.embed.embed_manifest` with the
:class:`~chada.encode.encoders.FeatureKindEncoder` of that kind: the same loop, chunks, resume,
input checks and file as ``chada embed``, so ``chada features --kind handmade`` and ``chada embed
--model handmade`` write the same features. The file is an :class:`chada.encode.store.EmbeddingSet`
that the evaluation treats like any model's embeddings: ``features = {"cls": X, "all": X}`` (the same
``[N, F]`` matrix under both pool names), ``info = {"model": kind, "family": "handmade",
"feature_names": [...], ...}``, ``meta`` = the manifest rows (same order as the images) +
``channel_names`` (list) + ``n_channels``; for ``kind="shortcut"`` the shortcut columns
(``cell_count``, ``mean_intensity``, ...) are meta columns too, so shortcut probes can read them by
name.
"""

from __future__ import annotations

import os

from chada.encode.embed import embed_manifest
from chada.encode.encoders import FeatureKindEncoder
from chada.encode.options import ImageOptions, OutputOptions, RunOptions
from chada.encode.store import EmbeddingSet

__all__ = ["FeatureKindEncoder", "features_for_manifest"]


#: ``chada features``' defaults: native sizes, 64 images per pass, 4 passes per resumable chunk.
FEATURES_IMAGE = ImageOptions(size=None)
FEATURES_RUN = RunOptions(batch_size=64)
FEATURES_OUTPUT = OutputOptions(chunk_batches=4)


def features_for_manifest(
    manifest_path: str | os.PathLike,
    kind: str,
    out_path: str | os.PathLike,
    *,
    layout: str = "pooled",
    image: ImageOptions = FEATURES_IMAGE,
    run: RunOptions = FEATURES_RUN,
    output: OutputOptions = FEATURES_OUTPUT,
) -> EmbeddingSet:
    """Compute ``kind`` features for every image of a manifest and write an embeddings ``.npz``.

    Images are read through :class:`chada.data.ManifestDataset` with ``image``
    (:class:`chada.encode.options.ImageOptions`: per-channel normalisation, optional square resize,
    NaN/inf pixels; default native sizes). The nuclear channel of each image is the first channel whose
    name marks a nuclear stain (DAPI, Hoechst, DNA, ...), else the most bimodal channel; for
    ``kind="tissue"`` an image with a named nuclear stain is treated as fluorescence (no H&E
    separation). Images are processed ``run.batch_size`` at a time in resumable chunks of
    ``output.chunk_batches`` batches (``<out>.parts/``), so memory stays bounded on large manifests.

    Returns:
        the written :class:`chada.encode.store.EmbeddingSet` (``features["cls"]`` ==
        ``features["all"]``, ``[N, F]`` float32).
    """
    return embed_manifest(FeatureKindEncoder(kind, layout), manifest_path, out_path, ("cls", "all"), image=image,
                          run=run, output=output)  # fmt: skip
