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
keeps native sizes (also the default for models that record no size).

Channel-count-dependent embeddings (``one_channel_vit``'s ``"cls"``/``"all"`` concatenate one
block per channel, ``C*D``): one array needs one size, so when the embedded rows do not all have the
same channel count these pools fall back to their fixed-size form (``"mean"``/``"mean_all"``, the
mean over channels) with a logged note and ``info["pool_fallback"]`` recording it. To get the paper's
concatenated features on such a manifest, embed each dataset separately (``datasets=[name]``,
``chada embed --dataset NAME``).

Resuming: rows are cut into chunks of ``chunk_batches * batch_size``; every finished chunk is written
atomically to ``<out>.parts/chunk_XXXXXX.npz`` (:class:`chada.encode.chunks.ChunkStore`). A re-run
with the same settings reuses a finished chunk only when each of its rows still reads the same files
(size + mtime, or a content hash with ``verify_inputs="hash"``; :mod:`chada.encode.inputs`); chunks
whose images changed, and damaged chunk files, are recomputed with a message; other settings discard
every chunk. The final file is assembled one chunk at a time (memory: the output once, plus one
chunk), written with :func:`chada.encode.store.save_embeddings`, and the parts removed.
"""

from __future__ import annotations

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

from chada.encode.budget import check_forward, files_of
from chada.encode.chunks import ChunkStore
from chada.encode.encoders import DEFAULT_POOLS, Encoder, resolve_encoder
from chada.encode.inputs import VERIFY_CHOICES, refuse_duplicate_ids, row_signatures, weights_digest
from chada.encode.store import EmbeddingSet, save_embeddings
from chada.io import check_writable_file

__all__ = ["MODEL_SIZE", "embed_manifest"]

log = logging.getLogger(__name__)

#: ``image_size`` default: the size the model recorded, else native sizes.
MODEL_SIZE = "model"


def _list_collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # batches are split by image size after loading (sizes are unknown before reading)
    return samples


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
    batch_size: int = 32,
    pools: Sequence[str] = DEFAULT_POOLS,
    image_size: int | str | None = MODEL_SIZE,
    num_workers: int = 0,
    resume: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    datasets: Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
    normalize: str = "percentile",
    chunk_batches: int = 20,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    channel_order: Sequence[str] | None = None,
    unknown_channels: str = "warn",
    channel_aliases: dict[str, str] | None = None,
    nan_policy: str = "error",
    nan_fill: float | None = None,
    verify_inputs: str = "stat",
    dtype: torch.dtype = torch.float32,
) -> EmbeddingSet:
    """Embed every image of ``manifest`` with a frozen ``model`` and write ``out`` (``.npz``).

    Args:
        model: saved model folder, registered model name (random init from ``seed``), ``nn.Module``,
            ``"handmade"``, or an :class:`~chada.encode.encoders.Encoder`.
        manifest: manifest path (CSV/Parquet) or DataFrame (see :mod:`chada.data.manifest`).
        out: output ``.npz`` path (layout in :mod:`chada.encode.store`); checked writable first.
        batch_size: images per forward pass.
        pools: feature kinds to store, e.g. ``("cls", "all")``.
        image_size: ``"model"`` (default): the size the model recorded at pretraining, else native
            sizes; an int: resize every image to this square size; ``None``: native sizes (batches
            are then split by size, and sizes must suit the model, e.g. multiples of the patch).
        num_workers: DataLoader workers reading images.
        resume: reuse finished chunks under ``<out>.parts/`` from an interrupted run with the same
            settings and unchanged input files; ``False`` starts over.
        seed: torch seed for building a registered name with random weights (recorded in ``info``).
        device: ``"cpu"``, ``"cuda"``, ...
        datasets, split: embed only these datasets / splits of the manifest.
        normalize: per-channel intensity normalisation (``"percentile"``, ``"minmax"``, ``"none"``).
        chunk_batches: batches per resumable chunk.
        root: folder relative image paths are resolved against (default: the manifest's folder).
        progress: show a tqdm bar.
        channel_order: canonical channel order (name -> slot); default: the names the checkpoint
            recorded, else slot = position (see :mod:`chada.data.channels`).
        unknown_channels: ``"warn"`` (default), ``"error"`` (strict) or ``"append"`` for names outside it.
        channel_aliases: ``{name in the manifest: canonical name}``.
        nan_policy, nan_fill: NaN/inf pixels: ``"error"`` (default, naming the image and channel) or
            ``"replace"`` by ``nan_fill`` (None: the channel's finite median), with a warning per image.
        verify_inputs: how a resumed run checks that a finished chunk's files are unchanged:
            ``"stat"`` (size + mtime, default) or ``"hash"`` (SHA-256 of the content).
        dtype: precision of the model's forward pass (``torch.bfloat16``: autocast, see
            :mod:`chada.models.precision`); features are stored as float32 either way, and the
            precision is recorded in ``info`` and in the resume settings (fp32 and bf16 chunks never mix).

    Returns:
        the :class:`EmbeddingSet` that was written: ``features[pool]`` ``[N, D_pool]``, ``meta`` (one
        row per image: manifest columns, ``channel_names`` as the list of channels fed to the model,
        ``n_channels``), ``info`` (model, source, seed, pools and any fallback, image size, timings).

    Raises:
        InputError: duplicate image ids, an image with more channels than the model takes (naming
            the image), bad pixels or files (naming the image and file); ``IsADirectoryError`` /
            ``NotADirectoryError`` / ``PermissionError`` for an unusable ``out``, before any work.
    """
    from chada.data.channels import ChannelPolicy
    from chada.data.dataset import ManifestDataset
    from chada.data.manifest import row_channel_names

    pools, out, image_size = _check_args(out, pools, batch_size, chunk_batches, image_size, verify_inputs)
    check_writable_file(out, what="embeddings file")
    t0 = time.time()
    encoder = resolve_encoder(model, seed=seed, dtype=dtype)
    if encoder.module is not None:
        encoder.dtype = dtype  # also for an encoder passed in
    size, size_source = _image_size(encoder, image_size)
    dev = torch.device(device)
    if encoder.module is not None:
        encoder.module = encoder.module.to(dev).eval()
    policy = ChannelPolicy.from_model(
        encoder.module, unknown=unknown_channels, aliases=channel_aliases, canonical=channel_order
    )
    ds = ManifestDataset(manifest, root=root, split=split, datasets=datasets, size=size, normalize=normalize,
                         nan_policy=nan_policy, nan_fill=nan_fill)  # fmt: skip
    n = len(ds)
    if n == 0:
        raise ValueError("no image to embed: the manifest (after the dataset/split filters) is empty")
    refuse_duplicate_ids(ds.frame, manifest)
    counts = {len(row_channel_names(r)) for r in ds._rows}
    pool_map = encoder.pool_map(pools, counts)
    settings = _run_settings(encoder, seed, manifest, ds, pool_map, size, batch_size, chunk_batches,
                             normalize, policy)  # fmt: skip
    settings.update(nan_policy=nan_policy, nan_fill=nan_fill, verify_inputs=verify_inputs,
                    precision=_precision(encoder))  # fmt: skip
    inputs = row_signatures(ds._rows, ds.root, verify_inputs, progress=progress)
    store = ChunkStore(out, settings, resume=resume)
    chunk_rows = batch_size * chunk_batches
    chunks = [np.arange(s, min(s + chunk_rows, n)) for s in range(0, n, chunk_rows)]
    names = _encode_chunks(encoder, ds, chunks, store, inputs, pools, pool_map, dev, policy, batch_size,
                           num_workers, progress)  # fmt: skip
    features = store.assemble(chunks, pools)
    used_names = [nm for k in range(len(chunks)) for nm in names[k]]
    info = dict(encoder.info)
    info.update(
        {
            "pools": pools,
            "pool_fallback": {p: a for p, a in pool_map.items() if a != p} or None,
            "feature_dims": {p: int(v.shape[1]) for p, v in features.items()},
            "image_size": size,
            "image_size_source": size_source,
            "normalize": normalize,
            "nan_policy": nan_policy,
            "nan_fill": nan_fill,
            "batch_size": batch_size,
            "device": str(dev),
            "precision": settings["precision"],
            "manifest": settings["manifest"],
            "datasets": list(datasets) if datasets is not None else None,
            "split": split,
            "n_images": n,
            "channel_counts": sorted(counts),
            "channel_policy": policy.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
        }
    )
    _add_notes(info, encoder)
    meta = _meta(ds.frame, used_names, policy)
    encoder.finish(ds, meta, info, features)
    info["seconds"] = round(time.time() - t0, 3)
    emb = EmbeddingSet(features, meta, info)
    save_embeddings(emb, out)
    store.remove()
    return emb


def _precision(encoder: Encoder) -> str | None:
    """``"fp32"`` / ``"bf16"`` of a model's forward pass; None for hand-made features (no model)."""
    from chada.models.precision import precision_name

    return precision_name(encoder.dtype) if encoder.module is not None else None


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
            log.warning("native image sizes, but the model was trained at %d px (recorded in its config.json)", recorded)
        return None, "native"
    if recorded is not None and image_size != recorded:
        log.warning(
            "image size %d px, but the model was trained at %d px (recorded in its config.json): features "
            "differ from the ones at the recorded size", image_size, recorded,
        )  # fmt: skip
    return int(image_size), "given"


def _run_settings(
    encoder: Encoder, seed: int, manifest: Any, ds: Any, pool_map: dict[str, str], image_size: int | None,
    batch_size: int, chunk_batches: int, normalize: str, policy: Any,
) -> dict[str, Any]:  # fmt: skip
    """Everything but the input files that changes the output: chunks are reused only when all of it is the same."""
    settings = {
        "model": encoder.info.get("model"),
        "encoder": {k: v for k, v in encoder.info.items() if k in ("kind", "layout", "arch")},
        "seed": seed if encoder.info.get("source") == "random_init" else None,
        "manifest": str(Path(manifest).resolve()) if not isinstance(manifest, pd.DataFrame) else "<DataFrame>",
        "image_ids": hashlib.sha256("\n".join(map(str, ds.frame["image_id"])).encode()).hexdigest(),
        "pools": pool_map,
        "image_size": image_size,
        "batch_size": batch_size,
        "chunk_batches": chunk_batches,
        "normalize": normalize,
        "channel_policy": policy.to_dict(),
    }
    if encoder.module is not None and encoder.info.get("source") != "random_init":
        settings["weights"] = weights_digest(encoder.module)  # a folder re-saved with new weights
    return settings


def _check_args(
    out: str | os.PathLike, pools: Sequence[str], batch_size: int, chunk_batches: int, image_size: Any,
    verify_inputs: str,
) -> tuple[list[str], Path, int | str | None]:  # fmt: skip
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError(f"batch_size and chunk_batches must be >= 1, got {batch_size}, {chunk_batches}")
    pools = list(dict.fromkeys(pools))
    if not pools:
        raise ValueError("pools is empty: ask for at least one of 'cls', 'all'")
    if image_size == "native":
        image_size = None
    if image_size not in (None, MODEL_SIZE) and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int, 'model' or None (native), got {image_size!r}")
    if verify_inputs not in VERIFY_CHOICES:
        raise ValueError(f"verify_inputs must be one of {VERIFY_CHOICES}, got {verify_inputs!r}")
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"output must be a .npz file, got {out}")
    return pools, out, image_size


def _reusable_chunks(
    store: ChunkStore, chunks: list[np.ndarray], inputs: list[str], pools: list[str], ds: Any
) -> dict[int, list[list[str]]]:
    """Channel names of every chunk that can be reused; says why the others are recomputed."""
    names: dict[int, list[list[str]]] = {}
    changed: list[str] = []
    redo: list[int] = []
    for k, rows in enumerate(chunks):
        got, why = store.check(k, rows, pools, [inputs[i] for i in rows])
        if got is not None:
            names[k] = got
        elif why is not None and why.startswith("changed:"):
            redo.append(k)
            changed += [str(ds.frame["image_id"].iloc[rows[int(i)]]) for i in why.split(":", 1)[1].split(",")]
        elif why is not None:
            log.warning("recomputing chunk %d: %s", k, why)
    if changed:
        shown = ", ".join(repr(c) for c in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        log.warning(
            "%d image(s) read other or changed files since the interrupted run (%s): recomputing %d chunk(s)",
            len(changed), shown, len(redo),
        )  # fmt: skip
    if names:
        log.info("resuming: %d of %d chunks already embedded in %s", len(names), len(chunks), store.dir)
    return names


def _encode_chunks(
    encoder: Encoder,
    ds: Any,
    chunks: list[np.ndarray],
    store: ChunkStore,
    inputs: list[str],
    pools: list[str],
    pool_map: dict[str, str],
    dev: torch.device,
    policy: Any,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> dict[int, list[list[str]]]:
    """Every chunk's channel names per row: finished chunks are reused, the others encoded now (each
    written to ``store`` as soon as it is complete; only one chunk's features are held in memory)."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    done = _reusable_chunks(store, chunks, inputs, pools, ds)
    todo = [k for k in range(len(chunks)) if k not in done]
    if not todo:
        return done
    indices = np.concatenate([chunks[k] for k in todo]).tolist()
    loader = DataLoader(
        Subset(ds, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=_list_collate, pin_memory=dev.type == "cuda",
    )  # fmt: skip
    n_batches = (len(indices) + batch_size - 1) // batch_size
    bar = tqdm(total=n_batches, desc=f"embed {encoder.info.get('model')}", unit="batch", disable=not progress)
    todo_iter = iter(todo)
    k = next(todo_iter)
    acc: dict[str, list[np.ndarray]] = {p: [] for p in pools}
    names: list[list[str]] = []
    warned: set[str] = set()
    for samples in loader:
        if encoder.module is not None:  # before the forward pass allocates anything
            check_forward(encoder.module, samples, dev, files_of(ds), warned)
        feats = _embed_samples(encoder, samples, pool_map, dev, policy)
        for p in pools:
            acc[p].append(feats[p])
        names.extend(list(s["channel_names"]) for s in samples)
        bar.update(1)
        # chunk sizes are multiples of batch_size (but the last), so batches never straddle chunks
        if len(names) == len(chunks[k]):
            rows = chunks[k]
            store.save(k, rows, {p: np.concatenate(v) for p, v in acc.items()}, names, [inputs[i] for i in rows])
            done[k] = names
            acc = {p: [] for p in pools}
            names = []
            k = next(todo_iter, -1)
    bar.close()
    return done


def _meta(frame: pd.DataFrame, used_names: list[list[str]], policy: Any) -> pd.DataFrame:
    """The manifest rows plus the channel names, count and slots each image was encoded with."""
    meta = frame.copy()
    for col in meta.columns:  # nullable pandas dtypes -> plain objects, so JSON keeps None
        if isinstance(meta[col].dtype, pd.StringDtype):
            meta[col] = meta[col].astype(object).where(meta[col].notna(), None)
    meta["channel_names"] = pd.Series(used_names, index=meta.index, dtype=object)
    meta["n_channels"] = [len(x) for x in used_names]
    meta["channel_slots"] = pd.Series(
        [policy.resolve(nm, str(i)) for nm, i in zip(used_names, meta["image_id"])], index=meta.index, dtype=object
    )
    return meta


def _add_notes(info: dict[str, Any], encoder: Encoder) -> None:
    if info["pool_fallback"]:
        info["note"] = (
            "images have different channel counts: concatenating pools were replaced by their "
            "mean-over-channels form (pool_fallback); embed one dataset at a time for the concatenation"
        )
