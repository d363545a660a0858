"""Frozen-encoder embeddings of every image of a manifest, written to one ``.npz`` (resumable).

::

    emb = embed_manifest("runs/chada/final", "data/manifest.csv", "emb/chada.npz")
    emb.features["cls"]      # [N, D]   CLS embedding
    emb.features["all"]      # [N, D2]  CLS concatenated with the mean of the real patch tokens
    emb.meta                 # manifest rows (same order) + channel_names used + n_channels

Models: a saved model folder, a registered name (random weights from ``seed``: the untrained
baselines), an ``nn.Module``, or ``"handmade"`` (hand-made features from
``chada.features.handmade_features``, stored under every requested pool name).

Channel-count-dependent embeddings (``one_channel_vit``'s ``"cls"``/``"all"`` concatenate one
block per channel, ``C*D``): one array needs one size, so when the embedded rows do not all have the
same channel count these pools fall back to their fixed-size form (``"mean"``/``"mean_all"``, the
mean over channels) with a logged note and ``info["pool_fallback"]`` recording it. To get the paper's
concatenated features on such a manifest, embed each dataset separately (``datasets=[name]``,
``chada embed --dataset NAME``).

Resuming: rows are cut into chunks of ``chunk_batches * batch_size``; every finished chunk is written
atomically to ``<out>.parts/chunk_XXXXXX.npz`` next to a ``fingerprint.json`` of the run settings.
A re-run with the same settings skips finished chunks; different settings discard the parts. The
final file is assembled with :func:`chada.eval.embeddings.save_embeddings` and the parts removed.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from chada.eval.embeddings import EmbeddingSet, save_embeddings
from chada.io import atomic_write_bytes
from chada.models.batch import ChannelBatch

__all__ = ["embed_manifest", "embed_images", "resolve_model", "handmade_function", "HANDMADE"]

log = logging.getLogger(__name__)

HANDMADE = "handmade"
DEFAULT_POOLS = ("cls", "all")


# ------------------------------------------------------------------------------------- models
def handmade_function() -> Callable[[list[np.ndarray]], np.ndarray]:
    """``chada.features.handmade_features`` (looked up at run time; it lives in another module)."""
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
    import dataclasses

    cfg = getattr(module, "config", None)
    return {
        "model_name": getattr(module, "model_name", None),
        "arch": getattr(module, "arch_name", type(module).__name__),
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
        "num_params": int(sum(p.numel() for p in module.parameters())),
    }


def _pools_of(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "pools", DEFAULT_POOLS))


def _effective_pools(model: nn.Module | None, pools: Sequence[str], channel_counts: set[int]) -> dict[str, str]:
    """Requested pool -> pool actually computed (the fixed-size fallback on mixed channel counts)."""
    if model is None:
        return {p: p for p in pools}
    known = _pools_of(model)
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
            )
        else:
            out[p] = p
    return out


# ------------------------------------------------------------------------------------ embedding
@torch.inference_mode()
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
        from chada.models.batch import as_channel_batch

        arrays = [x.detach().cpu().float().numpy() for x in as_channel_batch(images).split()]
        feats = np.asarray(handmade_function()(arrays), dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] != len(arrays):
            raise ValueError(f"handmade_features returned shape {feats.shape} for {len(arrays)} images")
        return {p: feats for p in pools}
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or {HANDMADE!r}, got {type(model).__name__}")
    from chada.models.batch import as_channel_batch

    batch = as_channel_batch(images)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    model.eval()
    out = model.forward_features(batch.to(device))
    return {p: model.forward_head(out, pool=p).float().cpu().numpy() for p in pools}


def _list_collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # batches are split by image size after loading (sizes are unknown before reading)
    return samples


def _embed_samples(
    model: nn.Module | str,
    samples: list[dict[str, Any]],
    pool_map: dict[str, str],
    device: torch.device,
    policy: Any = None,
) -> dict[str, np.ndarray]:
    """Embed samples of possibly different sizes: one forward per (H, W) group, rows kept in order."""
    from chada.data.dataset import collate_channels

    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(tuple(s["image"].shape[-2:]), []).append(i)
    actual = sorted(set(pool_map.values()))
    result: dict[str, np.ndarray] = {}
    for rows in groups.values():
        group = [samples[i] for i in rows]
        if policy is not None:  # slots from the channel names (chada.data.channels)
            from chada.data.channels import collate_with_policy

            batch = collate_with_policy(group, policy)["batch"]
        else:
            batch = collate_channels(group)["batch"]
        feats = embed_images(model, batch, actual, device=device)
        for p, f in feats.items():
            if p not in result:
                result[p] = np.zeros((len(samples), f.shape[1]), dtype=np.float32)
            elif result[p].shape[1] != f.shape[1]:
                raise ValueError(f"pool {p!r} gave {f.shape[1]} and {result[p].shape[1]} features in one batch")
            result[p][rows] = f
    return {req: result[act] for req, act in pool_map.items()}


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_chunk(path: Path, rows: np.ndarray, pools: Sequence[str]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["rows"], rows):
                return None
            feats = {p: z[f"feat_{p}"] for p in pools}
            names = json.loads(str(z["channel_names"]))
    except (OSError, KeyError, ValueError):
        return None
    return feats | {"__names__": names}  # type: ignore[dict-item]


def _write_chunk(path: Path, rows: np.ndarray, feats: dict[str, np.ndarray], names: list[list[str]]) -> None:
    buf = io.BytesIO()
    np.savez(
        buf, rows=rows, channel_names=np.array(json.dumps(names)), **{f"feat_{p}": v for p, v in feats.items()}
    )
    atomic_write_bytes(path, buf.getvalue())


def embed_manifest(
    model: nn.Module | str | os.PathLike,
    manifest: str | os.PathLike | pd.DataFrame,
    out: str | os.PathLike,
    batch_size: int = 32,
    pools: Sequence[str] = DEFAULT_POOLS,
    image_size: int | None = None,
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
) -> EmbeddingSet:
    """Embed every image of ``manifest`` with a frozen ``model`` and write ``out`` (``.npz``).

    Args:
        model: saved model folder, registered model name (random init from ``seed``), ``nn.Module``,
            or ``"handmade"``.
        manifest: manifest path (CSV/Parquet) or DataFrame (see :mod:`chada.data.manifest`).
        out: output ``.npz`` path (layout in :mod:`chada.eval.embeddings`).
        batch_size: images per forward pass.
        pools: feature kinds to store, e.g. ``("cls", "all")``.
        image_size: resize every image to this square size; ``None`` keeps native sizes (batches
            are then split by size, and sizes must suit the model, e.g. multiples of the patch).
        num_workers: DataLoader workers reading images.
        resume: reuse finished chunks under ``<out>.parts/`` from an interrupted run with the same
            settings; ``False`` starts over.
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

    Returns:
        the :class:`EmbeddingSet` that was written: ``features[pool]`` ``[N, D_pool]``, ``meta`` (one
        row per image: manifest columns, ``channel_names`` as the list of channels fed to the model,
        ``n_channels``), ``info`` (model, source, seed, pools and any fallback, image size, timings).
    """
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    from chada.data.dataset import ManifestDataset
    from chada.data.manifest import row_channel_names

    if batch_size < 1 or chunk_batches < 1:
        raise ValueError(f"batch_size and chunk_batches must be >= 1, got {batch_size}, {chunk_batches}")
    pools = list(dict.fromkeys(pools))
    if not pools:
        raise ValueError("pools is empty: ask for at least one of 'cls', 'all'")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size}")
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"output must be a .npz file, got {out}")
    t0 = time.time()
    module, model_info = resolve_model(model, seed=seed)
    dev = torch.device(device)
    if module is not None:
        module = module.to(dev).eval()
    from chada.data.channels import ChannelPolicy

    policy = ChannelPolicy.from_model(
        module, unknown=unknown_channels, aliases=channel_aliases, canonical=channel_order
    )

    ds = ManifestDataset(manifest, root=root, split=split, datasets=datasets, size=image_size, normalize=normalize)
    n = len(ds)
    if n == 0:
        raise ValueError("no image to embed: the manifest (after the dataset/split filters) is empty")
    counts = {len(row_channel_names(r)) for r in ds._rows}
    pool_map = _effective_pools(module, pools, counts)

    settings = {
        "model": model_info.get("model"),
        "seed": seed if model_info.get("source") == "random_init" else None,
        "manifest": str(Path(manifest).resolve()) if not isinstance(manifest, pd.DataFrame) else "<DataFrame>",
        "image_ids": hashlib.sha256("\n".join(map(str, ds.frame["image_id"])).encode()).hexdigest(),
        "pools": pool_map,
        "image_size": image_size,
        "batch_size": batch_size,
        "chunk_batches": chunk_batches,
        "normalize": normalize,
        "channel_policy": policy.to_dict(),
    }
    if module is not None and model_info.get("source") != "random_init":
        # a folder re-saved with new weights must not reuse old chunks
        with torch.no_grad():
            settings["weights"] = float(sum(p.double().abs().sum().item() for p in module.parameters()))
    fp = _fingerprint(settings)
    parts = Path(str(out) + ".parts")
    fp_file = parts / "fingerprint.json"
    if parts.exists():
        old = None
        if fp_file.exists():
            try:
                old = json.loads(fp_file.read_text()).get("fingerprint")
            except (OSError, ValueError):
                old = None
        if not resume or old != fp:
            if resume:
                log.warning("discarding partial results in %s: they were made with other settings", parts)
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(fp_file, json.dumps({"fingerprint": fp, "settings": settings}, indent=2, default=str).encode())

    chunk_rows = batch_size * chunk_batches
    chunks = [np.arange(s, min(s + chunk_rows, n)) for s in range(0, n, chunk_rows)]
    done: dict[int, dict[str, Any]] = {}
    for k, rows in enumerate(chunks):
        path = parts / f"chunk_{k:06d}.npz"
        if path.exists():
            got = _read_chunk(path, rows, pools)
            if got is not None:
                done[k] = got
    todo = [k for k in range(len(chunks)) if k not in done]
    if done:
        log.info("resuming: %d of %d chunks already embedded in %s", len(done), len(chunks), parts)

    if todo:
        indices = np.concatenate([chunks[k] for k in todo]).tolist()
        loader = DataLoader(
            Subset(ds, indices),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_list_collate,
            pin_memory=dev.type == "cuda",
        )
        n_batches = (len(indices) + batch_size - 1) // batch_size
        bar = tqdm(total=n_batches, desc=f"embed {model_info.get('model')}", unit="batch", disable=not progress)
        todo_iter = iter(todo)
        k = next(todo_iter)
        acc: dict[str, list[np.ndarray]] = {p: [] for p in pools}
        names: list[list[str]] = []
        for samples in loader:
            feats = _embed_samples(module if module is not None else HANDMADE, samples, pool_map, dev, policy)
            for p in pools:
                acc[p].append(feats[p])
            names.extend(list(s["channel_names"]) for s in samples)
            bar.update(1)
            # chunk sizes are multiples of batch_size (but the last), so batches never straddle chunks
            if len(names) == len(chunks[k]):
                chunk_feats = {p: np.concatenate(v) for p, v in acc.items()}
                _write_chunk(parts / f"chunk_{k:06d}.npz", chunks[k], chunk_feats, names)
                done[k] = chunk_feats | {"__names__": names}
                acc = {p: [] for p in pools}
                names = []
                k = next(todo_iter, -1)
        bar.close()

    features = {}
    for p in pools:
        arrays = [done[k][p] for k in range(len(chunks))]
        widths = {a.shape[1] for a in arrays}
        if len(widths) != 1:
            raise ValueError(f"pool {p!r}: chunks have different feature sizes {sorted(widths)}; re-run with resume=False")
        features[p] = np.concatenate(arrays).astype(np.float32, copy=False)
    used_names = [nm for k in range(len(chunks)) for nm in done[k]["__names__"]]

    meta = ds.frame.copy()
    for col in meta.columns:  # nullable pandas dtypes -> plain objects, so JSON keeps None
        if isinstance(meta[col].dtype, pd.StringDtype):
            meta[col] = meta[col].astype(object).where(meta[col].notna(), None)
    meta["channel_names"] = pd.Series(used_names, index=meta.index, dtype=object)
    meta["n_channels"] = [len(x) for x in used_names]
    meta["channel_slots"] = pd.Series(
        [policy.resolve(nm, str(i)) for nm, i in zip(used_names, meta["image_id"])], index=meta.index, dtype=object
    )
    fallback = {p: a for p, a in pool_map.items() if a != p}
    info = dict(model_info)
    info.update(
        {
            "pools": pools,
            "pool_fallback": fallback or None,
            "feature_dims": {p: int(v.shape[1]) for p, v in features.items()},
            "image_size": image_size,
            "normalize": normalize,
            "batch_size": batch_size,
            "device": str(dev),
            "manifest": settings["manifest"],
            "datasets": list(datasets) if datasets is not None else None,
            "split": split,
            "n_images": n,
            "channel_counts": sorted(counts),
            "channel_policy": policy.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - t0, 3),
            "torch": torch.__version__,
        }
    )
    if fallback:
        info["note"] = (
            "images have different channel counts: concatenating pools were replaced by their "
            "mean-over-channels form (pool_fallback); embed one dataset at a time for the concatenation"
        )
    if module is None:
        info["note"] = "hand-made features: the same vector is stored under every requested pool name"
    emb = EmbeddingSet(features, meta, info)
    save_embeddings(emb, out)
    shutil.rmtree(parts, ignore_errors=True)
    return emb
