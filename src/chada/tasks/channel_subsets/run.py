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
from chada.encode.encoders import HANDMADE, resolve_encoder
from chada.encode.options import MODEL_SIZE, ChannelOptions, ImageOptions, RunOptions, Selection
from chada.io import atomic_write_text
from chada.models.precision import precision_name
from chada.tasks.channel_subsets.data import (
    SubsetData,
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


#: The defaults of a subsets run: native image sizes, 128 images per forward pass.
SUBSET_IMAGE = ImageOptions(size=None)
SUBSET_RUN = RunOptions(batch_size=128)


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
    *,
    image: ImageOptions = SUBSET_IMAGE,
    channels: ChannelOptions | None = None,
    run: RunOptions = SUBSET_RUN,
    select: Selection | None = None,
    train_split: str | Sequence[str] = "train",
    test_split: str | Sequence[str] = "test",
    split_column: str = "split",
    test_fraction: float = 0.3,
    pool: str = "cls",
    metrics: Sequence[str] = METRICS,
    settings: Sequence[str] = SETTINGS,
    subset_seed: int = 0,
    probe: Mapping[str, Any] | None = None,
    knn: Mapping[str, Any] | None = None,
    blas_threads: int | None = 1,
    plot: bool = True,
) -> pd.DataFrame:
    """Score every model on channel subsets (protocol in the module docstring).

    Args:
        models: ``{name: saved folder | registered name (random init per seed) | nn.Module | "handmade"}``.
        manifest: manifest path or DataFrame; all selected images must carry the same channel names.
        label_column: classification label column.
        out_dir: where the tables and the plot go (None: write nothing).
        max_subsets: subsets per k beyond which a seeded sample of this many is used.
        seeds: number of seeds (0..n-1) or the list of seeds.
        image: :class:`~chada.encode.options.ImageOptions`: ``size`` (an int: resize every image to
            this square size; None, the default here: native sizes), ``normalize``, ``nan_policy``.
        channels: :class:`~chada.encode.options.ChannelOptions`: ``order``, the canonical channel order
            (slot of each name; default: each model's recorded names, else the first image's order, and
            the order subsets are listed in), ``unknown`` (:mod:`chada.data.channels`), ``aliases``.
        run: :class:`~chada.encode.options.RunOptions`: ``batch_size`` (default 128 here), ``device``,
            ``dtype`` of the models' forward pass (recorded in the info), ``progress``. Registered names
            get their weights from ``seeds``, not ``run.seed``.
        select: :class:`~chada.encode.options.Selection`: only these ``datasets``; ``root`` of relative
            paths (the train/test rows come from ``train_split`` / ``test_split``).
        train_split, test_split: values of ``split_column`` for fitting / testing; when either is
            empty, a seeded stratified split with ``test_fraction`` is used instead.
        pool: ``"cls"`` or ``"all"`` (One-Channel ViT uses the mean-over-channels form).
        metrics, settings: subsets of :data:`METRICS` / :data:`SETTINGS`.
        subset_seed: seed of the subset sample when a k has more than ``max_subsets`` subsets.
        probe: keyword arguments of the linear probe (``C``, ``max_iter``, ``max_dim``).
        knn: keyword arguments of the kNN (``k``, ``temperature``).
        blas_threads: BLAS/OpenMP threads while fitting probes (None: library default).

    Returns:
        long DataFrame: ``model, source, setting, metric, k, subset, channels, slots, seed, score,
        chance, pool, n_train, n_test, dim``; ``attrs["summary"]`` holds :func:`summarize_subsets`.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    channels, select = channels or ChannelOptions(), select or Selection()
    _check(models, metrics, settings, image)
    seed_list = _seed_list(seeds)
    probe_kw = {"C": 1.0, "max_iter": 300, "max_dim": 256} | dict(probe or {})
    knn_kw = {"k": 20, "temperature": 0.07} | dict(knn or {})

    data = load_subset_data(manifest, label_column, select.datasets, image.size, image.normalize, select.root,
                            reference=channels.order, aliases=channels.aliases, split_column=split_column,
                            progress=run.progress, nan_policy=image.nan_policy, nan_fill=image.nan_fill)  # fmt: skip
    C = data.n_channels
    per_k = enumerate_subsets(C, max_subsets, subset_seed)
    subsets = [s for k in sorted(per_k) for s in per_k[k]]
    full = tuple(range(C))
    if full not in subsets:  # pragma: no cover - comb(C, C) = 1 is always listed
        subsets.append(full)
    log.info("%d images, channels %s, %d subsets", len(data), data.channels, len(subsets))
    t_read = time.time() - t0

    splits = {s: _split_indices(data, train_split, test_split, test_fraction, s) for s in seed_list}
    job = _Run(
        data=data, subsets=subsets, full=full, seeds=seed_list, splits=splits,
        fixed_split=all(v[2] for v in splits.values()), settings=settings, metrics=metrics, probe=probe_kw,
        knn=knn_kw, pool=pool, options=run, channels=channels, blas_threads=blas_threads,
    )  # fmt: skip
    # resolve each model once per distinct weights: registered names get one init per seed
    plans = [(name, spec, _source_of(spec)) for name, spec in models.items()]
    n_embed = sum(len(seed_list) if src == "random_init" else 1 for _, _, src in plans) * len(subsets)
    bar = tqdm(total=n_embed, desc="embed subsets", unit="subset", disable=not run.progress)
    rows: list[dict[str, Any]] = []
    meta_models: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name, spec, source in plans:
        t_model = time.time()
        rows += job.score_model(name, spec, source, meta_models, bar)
        timings[name] = round(time.time() - t_model, 3)
    bar.close()

    results = pd.DataFrame(rows)
    summary = summarize_subsets(results)
    results.attrs["summary"] = summary
    info = _info(data, job, per_k, meta_models, timings, t_read, t0, test_fraction=test_fraction,
                 max_subsets=max_subsets, subset_seed=subset_seed, image_size=image.size,
                 label_column=label_column)  # fmt: skip
    results.attrs["info"] = info
    if out_dir is not None:
        _write_outputs(Path(out_dir), results, summary, info, data, label_column, plot, t0)
    return results


def _check(models: Mapping[str, Any], metrics: Sequence[str], settings: Sequence[str], image: ImageOptions) -> None:
    if image.size == MODEL_SIZE:  # models of one run may record different sizes: every one reads the same pixels
        raise ValueError("channel subsets read every image once for all models: give image size N or native (None)")
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
        "precision": precision_name(run.options.dtype),
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
    options: RunOptions
    channels: ChannelOptions
    blas_threads: int | None

    def __post_init__(self) -> None:
        self.classes, self.y = np.unique(np.asarray([str(v) for v in self.data.labels]), return_inverse=True)
        self.n_classes = len(self.classes)

    def _embed(self, spec: Any, seed: int, meta_models: dict[str, Any], name: str, source: str, bar: Any):
        """Every subset's features for one model (weights from ``seed`` for a registered name)."""
        encoder = resolve_encoder(spec, seed=seed, dtype=self.options.dtype).to(torch.device(self.options.device))
        info, ch = encoder.info, self.channels
        policy = ch.policy(encoder.module)
        if policy.positional:  # no order anywhere: the dataset's reference order is the canonical one
            aliases = dict(ch.aliases) if ch.aliases is not None else None
            policy = ChannelPolicy(self.data.channels, unknown=ch.unknown, aliases=aliases, max_slots=policy.max_slots)
        slots = _slots_for(policy, self.data)
        used_pool = encoder.fixed_pool(self.pool)
        feats = embed_subsets(encoder, self.data, self.subsets, slots, used_pool, self.options.batch_size,
                              self.options.device, bar)  # fmt: skip
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
