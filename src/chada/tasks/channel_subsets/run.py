"""The channel-subset driver: :func:`run_channel_subsets` (``chada subsets``)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from chada.data.channels import ChannelPolicy
from chada.encode.encoders import HANDMADE, resolve_model
from chada.io import atomic_write_text
from chada.models.precision import precision_name
from chada.tasks.channel_subsets.data import (
    SubsetData,
    _pool_for,
    _slots_for,
    embed_subsets,
    enumerate_subsets,
    load_subset_data,
)
from chada.tasks.channel_subsets.plot import plot_channel_subsets
from chada.tasks.channel_subsets.scoring import (
    METRICS,
    SETTINGS,
    _blas_limit,
    _score_all,
    _split_indices,
    subsets_markdown,
    summarize_subsets,
)

__all__ = ["run_channel_subsets"]

log = logging.getLogger(__name__)


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("seeds is empty")
    return out


def _source_of(spec: Any) -> str:
    """``module`` / ``handmade`` / ``pretrained`` / ``random_init`` without loading any weights."""
    from chada.models.registry import list_models

    if isinstance(spec, nn.Module):
        return "module"
    if str(spec) == HANDMADE:
        return "handmade"
    if Path(spec).exists():
        return "pretrained"
    if str(spec) in list_models():
        return "random_init"
    raise FileNotFoundError(
        f"{spec!r} is neither a saved model folder, a registered model name ({', '.join(list_models())}), "
        f"nor {HANDMADE!r}"
    )


def run_channel_subsets(
    models: Mapping[str, str | os.PathLike | nn.Module],
    manifest: str | os.PathLike | pd.DataFrame,
    label_column: str = "label",
    out_dir: str | os.PathLike | None = "channel_subsets",
    max_subsets: int = 20,
    seeds: int | Sequence[int] = 3,
    image_size: int | None = None,
    *,
    train_split: str | Sequence[str] = "train",
    test_split: str | Sequence[str] = "test",
    split_column: str = "split",
    test_fraction: float = 0.3,
    datasets: Sequence[str] | None = None,
    channel_order: Sequence[str] | None = None,
    unknown_channels: str = "warn",
    channel_aliases: Mapping[str, str] | None = None,
    pool: str = "cls",
    metrics: Sequence[str] = METRICS,
    settings: Sequence[str] = SETTINGS,
    subset_seed: int = 0,
    batch_size: int = 128,
    normalize: str = "percentile",
    root: str | os.PathLike | None = None,
    probe: Mapping[str, Any] | None = None,
    knn: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    blas_threads: int | None = 1,
    plot: bool = True,
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> pd.DataFrame:
    """Score every model on channel subsets (protocol in the module docstring).

    Args:
        models: ``{name: saved folder | registered name (random init per seed) | nn.Module | "handmade"}``.
        manifest: manifest path or DataFrame; all selected images must carry the same channel names.
        label_column: classification label column.
        out_dir: where the tables and the plot go (None: write nothing).
        max_subsets: subsets per k beyond which a seeded sample of this many is used.
        seeds: number of seeds (0..n-1) or the list of seeds.
        image_size: resize every image to this square size (None: native sizes).
        train_split, test_split: values of ``split_column`` for fitting / testing; when either is
            empty, a seeded stratified split with ``test_fraction`` is used instead.
        datasets: keep only these datasets of the manifest.
        channel_order: canonical channel order (slot of each name); default: each model's recorded
            names, else the first image's order. Also the order subsets are listed in.
        unknown_channels: ``"warn"``, ``"error"`` or ``"append"`` (see :mod:`chada.data.channels`).
        channel_aliases: ``{name in the manifest: canonical name}``.
        pool: ``"cls"`` or ``"all"`` (One-Channel ViT uses the mean-over-channels form).
        metrics, settings: subsets of :data:`METRICS` / :data:`SETTINGS`.
        subset_seed: seed of the subset sample when a k has more than ``max_subsets`` subsets.
        probe: keyword arguments of the linear probe (``C``, ``max_iter``, ``max_dim``).
        knn: keyword arguments of the kNN (``k``, ``temperature``).
        blas_threads: BLAS/OpenMP threads while fitting probes (None: library default).
        dtype: precision of the models' forward pass (``torch.bfloat16``: autocast; recorded in the info).

    Returns:
        long DataFrame: ``model, source, setting, metric, k, subset, channels, slots, seed, score,
        chance, pool, n_train, n_test, dim``; ``attrs["summary"]`` holds :func:`summarize_subsets`.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    _check(models, metrics, settings)
    seed_list = _seed_list(seeds)
    probe_kw = {"C": 1.0, "max_iter": 300, "max_dim": 256} | dict(probe or {})
    knn_kw = {"k": 20, "temperature": 0.07} | dict(knn or {})

    data = load_subset_data(manifest, label_column, datasets, image_size, normalize, root,
                            reference=channel_order, aliases=channel_aliases, split_column=split_column,
                            progress=progress)  # fmt: skip
    C = data.n_channels
    per_k = enumerate_subsets(C, max_subsets, subset_seed)
    subsets = [s for k in sorted(per_k) for s in per_k[k]]
    full = tuple(range(C))
    if full not in subsets:  # pragma: no cover - comb(C, C) = 1 is always listed
        subsets.append(full)
    log.info("%d images, channels %s, %d subsets", len(data), data.channels, len(subsets))
    t_read = time.time() - t0

    splits = {s: _split_indices(data, train_split, test_split, test_fraction, s) for s in seed_list}
    run = _Run(
        data=data, subsets=subsets, full=full, seeds=seed_list, splits=splits,
        fixed_split=all(v[2] for v in splits.values()), settings=settings, metrics=metrics, probe=probe_kw,
        knn=knn_kw, pool=pool, batch_size=batch_size, device=device, dtype=dtype, blas_threads=blas_threads,
        channel_order=channel_order, unknown_channels=unknown_channels, channel_aliases=channel_aliases,
    )  # fmt: skip
    # resolve each model once per distinct weights: registered names get one init per seed
    plans = [(name, spec, _source_of(spec)) for name, spec in models.items()]
    n_embed = sum(len(seed_list) if src == "random_init" else 1 for _, _, src in plans) * len(subsets)
    bar = tqdm(total=n_embed, desc="embed subsets", unit="subset", disable=not progress)
    rows: list[dict[str, Any]] = []
    meta_models: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name, spec, source in plans:
        t_model = time.time()
        rows += run.score_model(name, spec, source, meta_models, bar)
        timings[name] = round(time.time() - t_model, 3)
    bar.close()

    results = pd.DataFrame(rows)
    summary = summarize_subsets(results)
    results.attrs["summary"] = summary
    info = _info(data, run, per_k, meta_models, timings, t_read, t0, test_fraction=test_fraction,
                 max_subsets=max_subsets, subset_seed=subset_seed, image_size=image_size,
                 label_column=label_column)  # fmt: skip
    results.attrs["info"] = info
    if out_dir is not None:
        _write_outputs(Path(out_dir), results, summary, info, data, label_column, plot, t0)
    return results


def _check(models: Mapping[str, Any], metrics: Sequence[str], settings: Sequence[str]) -> None:
    if not models:
        raise ValueError("models is empty: give at least one {name: model}")
    bad = [m for m in metrics if m not in METRICS] + [s for s in settings if s not in SETTINGS]
    if bad or not metrics or not settings:
        raise ValueError(f"metrics must be among {METRICS} and settings among {SETTINGS}; got {list(metrics)}, "
                         f"{list(settings)}")  # fmt: skip


def _info(
    data: SubsetData, run: _Run, per_k: dict[int, list[tuple[int, ...]]], meta_models: dict[str, Any],
    timings: dict[str, float], t_read: float, t0: float, **settings: Any,
) -> dict[str, Any]:  # fmt: skip
    """What ``channel_subsets.json`` records: data, splits, subsets, models, settings, timings."""
    return {
        "channels": data.channels,
        "n_images": len(data),
        "n_train": {str(s): len(v[0]) for s, v in run.splits.items()},
        "n_test": {str(s): len(v[1]) for s, v in run.splits.items()},
        "split": "split column" if run.fixed_split
        else f"seeded stratified split (test_fraction={settings['test_fraction']})",
        "subsets": {str(k): ["+".join(data.channels[j] for j in s) for s in v] for k, v in per_k.items()},
        "subsets_total": {str(k): math.comb(data.n_channels, k) for k in per_k},
        "max_subsets": settings["max_subsets"],
        "subset_seed": settings["subset_seed"],
        "seeds": run.seeds,
        "models": meta_models,
        "probe": run.probe,
        "knn": run.knn,
        "image_size": settings["image_size"],
        "precision": precision_name(run.dtype),
        "label_column": settings["label_column"],
        "seconds": {"read": round(t_read, 3), **timings, "total": round(time.time() - t0, 3)},
    }


@dataclass
class _Run:
    """What every model of one run shares: the data, subsets, splits and scoring settings."""

    data: SubsetData
    subsets: list[tuple[int, ...]]
    full: tuple[int, ...]
    seeds: list[int]
    splits: dict[int, tuple[np.ndarray, np.ndarray, bool]]
    fixed_split: bool
    settings: Sequence[str]
    metrics: Sequence[str]
    probe: dict[str, Any]
    knn: dict[str, Any]
    pool: str
    batch_size: int
    device: str | torch.device
    dtype: torch.dtype
    blas_threads: int | None
    channel_order: Sequence[str] | None
    unknown_channels: str
    channel_aliases: Mapping[str, str] | None

    def __post_init__(self) -> None:
        self.classes, self.y = np.unique(np.asarray([str(v) for v in self.data.labels]), return_inverse=True)
        self.n_classes = len(self.classes)

    def _embed(self, spec: Any, seed: int, meta_models: dict[str, Any], name: str, source: str, bar: Any):
        """Every subset's features for one model (weights from ``seed`` for a registered name)."""
        module, info = resolve_model(spec, seed=seed)
        if module is not None:
            module = module.to(torch.device(self.device)).eval()
        policy = ChannelPolicy.from_model(module, unknown=self.unknown_channels, aliases=self.channel_aliases,
                                          canonical=self.channel_order)  # fmt: skip
        if policy.positional:  # no order anywhere: the dataset's reference order is the canonical one
            policy = ChannelPolicy(self.data.channels, unknown=self.unknown_channels, aliases=self.channel_aliases,
                                   max_slots=policy.max_slots)  # fmt: skip
        slots = _slots_for(policy, self.data)
        used_pool = _pool_for(module, self.pool)
        feats = embed_subsets(module, self.data, self.subsets, slots, used_pool, self.batch_size, self.device, bar,
                              dtype=self.dtype)  # fmt: skip
        meta_models[name] = {
            "source": source, "pool": used_pool, "policy": policy.to_dict(),
            "slots": dict(zip(self.data.channels, slots[0].tolist())), "model": info.get("model"),
        }  # fmt: skip
        return feats, slots

    def score_model(
        self, name: str, spec: Any, source: str, meta_models: dict[str, Any], bar: Any
    ) -> list[dict[str, Any]]:
        """Result rows of one model: every seed x subset x setting x metric."""
        seed_dep = source == "random_init"
        scores: dict[tuple, float] = {}
        feats_by_seed: dict[int, dict[tuple[int, ...], np.ndarray]] = {}
        rows: list[dict[str, Any]] = []
        y, n_classes = self.y, self.n_classes
        for seed in self.seeds:
            if seed_dep or not feats_by_seed:
                feats, slots = self._embed(spec, seed, meta_models, name, source, bar)
            else:
                feats = feats_by_seed[self.seeds[0]]
            feats_by_seed[seed] = feats
            tr, te, _ = self.splits[seed]
            chance = float(np.mean(y[te] == np.bincount(y[tr], minlength=n_classes).argmax()))
            # deterministic features + fixed split: every score is the same for every seed, so it is
            # computed once (probe seed 0) and recorded under each seed, as the evaluation protocol does
            det = not seed_dep and self.fixed_split
            if det and scores:
                seed_scores = scores
            else:
                with _blas_limit(self.blas_threads):
                    seed_scores = _score_all(feats, self.full, self.subsets, self.settings, self.metrics, y, tr, te,
                                             n_classes, self.probe, self.knn, seed=0 if det else seed)  # fmt: skip
                if det:
                    scores = seed_scores
            for (subset, setting, metric), score in seed_scores.items():
                rows.append({
                    "model": name, "source": source, "setting": setting, "metric": metric,
                    "k": len(subset), "subset": "+".join(self.data.channels[j] for j in subset),
                    "channels": list(subset), "slots": [int(slots[0, j]) for j in subset],
                    "seed": seed, "score": score, "chance": chance, "pool": meta_models[name]["pool"],
                    "n_train": len(tr), "n_test": len(te), "dim": int(feats[subset].shape[1]),
                })  # fmt: skip
        return rows


def _write_outputs(
    out: Path, results: pd.DataFrame, summary: pd.DataFrame, info: dict[str, Any], data: SubsetData,
    label_column: str, plot: bool, t0: float,
) -> None:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    flat = results.copy()
    flat["channels"] = flat["channels"].map(lambda v: ";".join(map(str, v)))
    flat["slots"] = flat["slots"].map(lambda v: ";".join(map(str, v)))
    atomic_write_text(out / "channel_subsets.csv", flat.to_csv(index=False))
    atomic_write_text(out / "channel_subsets_summary.csv", summary.to_csv(index=False))
    atomic_write_text(out / "channel_subsets.md", subsets_markdown(summary, data.channels))
    if plot:
        plot_channel_subsets(summary, out / "channel_subsets",
                             title=f"{label_column}: {len(data)} images, channels {', '.join(data.channels)}")  # fmt: skip
    info["seconds"]["total"] = round(time.time() - t0, 3)
    atomic_write_text(out / "channel_subsets.json", json.dumps(info, indent=2, default=str) + "\n")
