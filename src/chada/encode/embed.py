"""Frozen-encoder embeddings of every image of a manifest, written to one ``.npz`` (resumable).

::

    emb = embed_manifest("runs/chada/final", "data/manifest.csv", "emb/chada.npz")
    emb.features["cls"]      # [N, D]   CLS embedding
    emb.features["all"]      # [N, D2]  CLS concatenated with the mean of the real patch tokens
    emb.meta                 # manifest rows (same order) + channel_names used + n_channels

Models: a saved model folder, a registered name (random weights from ``seed``: the untrained
baselines), an ``nn.Module``, ``"handmade"`` (the hand-made features of
:class:`chada.encode.encoders.FeatureKindEncoder`, stored under every requested pool name, the same
as ``chada features --kind handmade``), or any :class:`chada.encode.encoders.Encoder`.

Image size: a model folder written by pretraining records the size it was trained at (``image_size``
in its ``config.json``); by default every image is resized to it, and the run says so. ``image_size=N``
resizes to N instead (with a warning when N differs from the recorded size), ``image_size=None``
keeps native sizes (``image=ImageOptions(size=...)``, :mod:`chada.encode.options`) (also the default for models that record no size).

Channel-count-dependent embeddings (``one_channel_vit``'s ``"cls"``/``"all"`` concatenate one
block per channel, ``C*D``): one array needs one size, so when the embedded rows do not all have the
same channel count these pools fall back to their fixed-size form (``"mean"``/``"mean_all"``, the
mean over channels) with a logged note and ``info["pool_fallback"]`` recording it. To get the paper's
concatenated features on such a manifest, embed each dataset separately (``select=Selection(datasets=[name])``,
``chada embed --dataset NAME``).

Resuming: rows are cut into chunks of ``chunk_batches * batch_size``; every finished chunk is written
atomically to ``<out>.parts/chunk_XXXXXX.npz`` (:class:`chada.encode.chunks.ChunkStore`). A re-run
with the same settings reuses a finished chunk only when each of its rows still reads the same files
(size + mtime, or a content hash with ``OutputOptions(verify_inputs="hash")``; :mod:`chada.encode.inputs`); chunks
whose images changed, and damaged chunk files, are recomputed with a message; other settings discard
every chunk. The final file is assembled one chunk at a time (memory: the output once, plus one
chunk), written with :func:`chada.encode.store.save_embeddings`, and the parts removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from chada.data.objects import ObjectOptions
from chada.encode.assemble import write_output
from chada.encode.chunks import ChunkStore
from chada.encode.encoders import DEFAULT_POOLS, Encoder, resolve_encoder
from chada.encode.formats import output_format
from chada.encode.inputs import refuse_duplicate_ids, row_signatures
from chada.encode.loop import encode_chunks
from chada.encode.options import (
    MODEL_SIZE,
    ChannelOptions,
    ImageOptions,
    OutputOptions,
    RunOptions,
    Selection,
)
from chada.encode.shards import shard_chunks, shard_path
from chada.encode.store import EmbeddingSet, EmbeddingSummary
from chada.errors import InputError
from chada.io import check_writable_file

__all__ = ["MODEL_SIZE", "embed_manifest", "run_settings"]

log = logging.getLogger(__name__)


def _embed_samples(
    encoder: Encoder,
    samples: list[dict[str, Any]],
    pool_map: dict[str, str],
    device: torch.device,
    policy: Any = None,
) -> dict[str, np.ndarray]:
    """One loader batch through the encoder (a seam: tests interrupt a run here)."""
    return encoder.encode_samples(samples, pool_map, device, policy)


def embed_manifest(
    model: nn.Module | str | os.PathLike | Encoder,
    manifest: str | os.PathLike | pd.DataFrame,
    out: str | os.PathLike,
    pools: Sequence[str] = DEFAULT_POOLS,
    *,
    image: ImageOptions | None = None,
    channels: ChannelOptions | None = None,
    run: RunOptions | None = None,
    select: Selection | None = None,
    output: OutputOptions | None = None,
    objects: ObjectOptions | None = None,
) -> EmbeddingSet | EmbeddingSummary:
    """Embed every image of ``manifest`` with a frozen ``model`` and write ``out`` (``.npz``).

    Args:
        model: saved model folder, registered model name (random init from ``run.seed``), ``nn.Module``,
            ``"handmade"``, or an :class:`~chada.encode.encoders.Encoder`.
        manifest: manifest path (CSV/Parquet) or DataFrame (see :mod:`chada.data.manifest`).
        out: output ``.npz``, ``.parquet`` or ``.h5ad`` path (:mod:`chada.encode.store`,
            :mod:`chada.encode.formats`); checked writable first.
        pools: feature kinds to store, e.g. ``("cls", "all")``.
        image, channels, run, select, output: the option bundles of :mod:`chada.encode.options` (None:
            their defaults).
        image: :class:`~chada.encode.options.ImageOptions`: ``size`` ``"model"`` (default: the size
            the model recorded at pretraining, else native sizes), an int (resize every image to this
            square size) or None (native sizes: batches are then split by size, and sizes must suit the
            model); ``normalize``; ``nan_policy`` / ``nan_fill`` (NaN/inf pixels: ``"error"`` naming
            the image and channel, or ``"replace"`` with a warning per image).
        channels: :class:`~chada.encode.options.ChannelOptions`: canonical channel order (default: the
            names the checkpoint recorded, else slot = position; :mod:`chada.data.channels`), names
            outside it, aliases.
        run: :class:`~chada.encode.options.RunOptions`: ``batch_size`` images (with ``objects``: cells)
            per forward pass, ``num_workers``, ``device``, ``dtype`` of the forward pass
            (``torch.bfloat16``: autocast; features are float32 either way, the precision is recorded
            in ``info`` and in the resume settings, so fp32 and bf16 chunks never mix), ``seed`` of a
            registered name's random weights (recorded in ``info``), ``progress`` bar.
        select: :class:`~chada.encode.options.Selection`: only these ``datasets`` / ``split``; ``root``
            of relative image paths (default: the manifest's folder).
        output: :class:`~chada.encode.options.OutputOptions`: ``resume`` finished chunks under
            ``<out>.parts/`` of an interrupted run with the same settings and unchanged input files
            (``verify_inputs``: ``"stat"`` size + mtime, or ``"hash"``), ``chunk_batches`` per chunk
            (with ``objects``: fields per chunk), ``shard`` ``(I, N)``: only the I-th of N contiguous
            blocks of chunks into :func:`chada.encode.shards.shard_path`.
        objects: single cells (:class:`chada.data.objects.ObjectOptions`): one row per object of each
            row's label image (``objects_file``), a crop centred on its centroid resized to the image
            size; the meta gets the object columns (:data:`chada.data.objects.OBJECT_COLUMNS`, ``cell_id``).

    Returns:
        for ``.parquet`` an :class:`EmbeddingSummary` (the table is never held whole), else
        the :class:`EmbeddingSet` that was written: ``features[pool]`` ``[N, D_pool]``, ``meta`` (one
        row per image: manifest columns, ``channel_names`` as the list of channels fed to the model,
        ``n_channels``), ``info`` (model, source, seed, pools and any fallback, image size, timings).

    Raises:
        InputError: duplicate image ids, an image with more channels than the model takes (naming
            the image), bad pixels or files (naming the image and file); ``IsADirectoryError`` /
            ``NotADirectoryError`` / ``PermissionError`` for an unusable ``out``, before any work.
    """
    from chada.data.dataset import ManifestDataset
    from chada.data.manifest import row_channel_names

    image, channels, run = image or ImageOptions(), channels or ChannelOptions(), run or RunOptions()
    select, output = select or Selection(), output or OutputOptions()
    pools, out = _check_args(out, pools)
    check_writable_file(out, what="embeddings file")
    t0 = time.time()
    encoder = resolve_encoder(model, seed=run.seed, dtype=run.dtype)
    encoder.set_dtype(run.dtype)  # also for an encoder passed in
    size, size_source = _image_size(encoder, image.size)
    dev = torch.device(run.device)
    encoder.to(dev)
    policy = channels.policy(encoder.module)
    ds = ManifestDataset(
        manifest, size=None if objects else size, **select.dataset_kwargs(), **image.dataset_kwargs()
    )
    n = len(ds)
    if n == 0:
        raise ValueError("no image to embed: the manifest (after the dataset/split filters) is empty")
    refuse_duplicate_ids(ds.frame, manifest)
    counts = {len(row_channel_names(r)) for r in ds._rows}
    pool_map = encoder.pool_map(pools, counts)
    settings = run_settings(encoder, manifest, ds, pool_map, size, image, run, output, policy)
    inputs = row_signatures(ds._rows, ds.root, output.verify_inputs, progress=run.progress)
    data: Any = ds
    if objects is not None:
        data, objects, inputs = _cell_data(ds, objects, size, inputs, output.verify_inputs, manifest)
        settings["objects"] = objects.to_dict()  # only then: chunks of whole-image runs stay valid
    # cells: a chunk is chunk_batches fields (a field holds tens to thousands of cells)
    chunk_rows = output.chunk_batches if objects is not None else run.batch_size * output.chunk_batches
    chunks = [np.arange(s, min(s + chunk_rows, n)) for s in range(0, n, chunk_rows)]
    shard = output.shard
    target = out if shard is None else shard_path(out, shard)
    mine = shard_chunks(chunks, shard or (0, 1))
    store = ChunkStore(target, settings, resume=output.resume)
    encode_chunks(_seam, encoder, data, mine, store, inputs, pools, pool_map, dev, policy, run.batch_size,
                  run.num_workers, run.progress, cells=objects is not None)  # fmt: skip
    info = _info(encoder, pools, pool_map, size_source, settings, select, n, counts, dev)
    if objects is not None:
        info["objects"] = objects.to_dict()
    if shard is not None:
        info["shard"] = list(shard)
        info["n_images"] = int(sum(len(r) for r in mine.values()))
    result = write_output(
        target, store, mine, ds, policy, pools, encoder, info, t0, cells=objects is not None
    )
    store.remove()
    return result


def _seam(
    encoder: Encoder,
    samples: list[dict[str, Any]],
    pool_map: dict[str, str],
    device: torch.device,
    policy: Any,
) -> dict[str, np.ndarray]:
    # looked up at call time, so tests can replace _embed_samples to interrupt a run
    return _embed_samples(encoder, samples, pool_map, device, policy)


def _cell_data(
    ds: Any, objects: ObjectOptions, size: int | None, inputs: list[str], verify: str, manifest: Any
) -> tuple[Any, ObjectOptions, list[str]]:
    """The cell dataset over ``ds``'s fields, the options with the crop size filled in, and input
    signatures that cover each row's label image too."""
    from chada.data.cells import CellDataset, objects_path
    from chada.encode.inputs import row_signature

    if objects.column not in ds.frame.columns:
        where = "the manifest" if isinstance(manifest, pd.DataFrame) else str(manifest)
        raise InputError(
            f"{where} has no {objects.column!r} column: --objects needs a label image per row "
            "(`chada data scan --objects-pattern`)"
        )
    if objects.crop_size is None:
        if size is None:
            raise InputError(
                "--objects needs a crop size: --crop-size N, or a model that recorded its image size"
            )
        objects = dataclasses.replace(objects, crop_size=size)
        log.info("crop size %d px: the model's image size (--crop-size to change)", size)
    data = CellDataset(ds, objects, size)
    labels = [
        row_signature({"file": str(objects_path(r, ds.root, objects.column))}, ds.root, verify)
        for r in ds._rows
    ]
    return data, objects, [a + b for a, b in zip(inputs, labels)]


def _info(
    encoder: Encoder, pools: list[str], pool_map: dict[str, str], size_source: str, settings: dict[str, Any],
    select: Selection, n: int, counts: set[int], dev: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """The run's description stored in the feature file (``feature_dims``, ``seconds`` come later): the
    options as :func:`run_settings` recorded them, plus what only the file needs."""
    info = dict(encoder.info)
    info.update(
        {
            "pools": pools,
            "pool_fallback": {p: a for p, a in pool_map.items() if a != p} or None,
            "image_size": settings["image_size"],
            "image_size_source": size_source,
            "normalize": settings["normalize"],
            "nan_policy": settings["nan_policy"],
            "nan_fill": settings["nan_fill"],
            "batch_size": settings["batch_size"],
            "device": str(dev),
            "precision": settings["precision"],
            "manifest": settings["manifest"],
            "datasets": list(select.datasets) if select.datasets is not None else None,
            "split": select.split,
            "n_images": n,
            "channel_counts": sorted(counts),
            "channel_policy": settings["channel_policy"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
        }
    )
    _add_notes(info)
    return info


def _image_size(encoder: Encoder, image_size: int | str | None) -> tuple[int | None, str]:
    """``(size or None for native sizes, where it comes from)``, said in the log."""
    recorded = encoder.recorded_image_size
    if image_size == MODEL_SIZE:
        if recorded is None:
            return None, "native"
        log.info(
            "image size %d px: the size the model was trained at (recorded in its config.json); "
            "--image-size N or --image-size native to change it", recorded,
        )  # fmt: skip
        return recorded, "model"
    if image_size is None:
        if recorded is not None:
            log.warning(
                "native image sizes, but the model was trained at %d px (recorded in its config.json)",
                recorded,
            )
        return None, "native"
    if recorded is not None and image_size != recorded:
        log.warning(
            "image size %d px, but the model was trained at %d px (recorded in its config.json): features "
            "differ from the ones at the recorded size", image_size, recorded,
        )  # fmt: skip
    return int(image_size), "given"


def run_settings(
    encoder: Encoder, manifest: Any, ds: Any, pool_map: dict[str, str], image_size: int | None,
    image: ImageOptions, run: RunOptions, output: OutputOptions, policy: Any,
) -> dict[str, Any]:  # fmt: skip
    """The one record of a run's options: everything but the input files that changes the output
    (chunks are reused only when all of it is the same); the feature file's ``info`` copies its values."""
    settings = {
        "model": encoder.info.get("model"),
        "encoder": {k: v for k, v in encoder.info.items() if k in ("kind", "layout", "arch")},
        "seed": run.seed if encoder.random_init else None,
        "manifest": str(Path(manifest).resolve())
        if not isinstance(manifest, pd.DataFrame)
        else "<DataFrame>",
        "image_ids": hashlib.sha256("\n".join(map(str, ds.frame["image_id"])).encode()).hexdigest(),
        "pools": pool_map,
        "image_size": image_size,
        "batch_size": run.batch_size,
        "chunk_batches": output.chunk_batches,
        "normalize": image.normalize,
        "channel_policy": policy.to_dict(),
    }
    digest = encoder.weights_digest()  # a folder re-saved with new weights
    if digest is not None:
        settings["weights"] = digest
    settings.update(nan_policy=image.nan_policy, nan_fill=image.nan_fill, verify_inputs=output.verify_inputs,
                    precision=encoder.precision)  # fmt: skip
    return settings


def _check_args(out: str | os.PathLike, pools: Sequence[str]) -> tuple[list[str], Path]:
    pools = list(dict.fromkeys(pools))
    if not pools:
        raise ValueError("pools is empty: ask for at least one of 'cls', 'all'")
    out = Path(out)
    output_format(out)
    return pools, out


def _add_notes(info: dict[str, Any]) -> None:
    if info["pool_fallback"]:
        info["note"] = (
            "images have different channel counts: concatenating pools were replaced by their "
            "mean-over-channels form (pool_fallback); embed one dataset at a time for the concatenation"
        )
