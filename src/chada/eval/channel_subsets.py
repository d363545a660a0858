"""Channel-subset evaluation: what a frozen encoder's features are worth when stains are missing.

For a labelled dataset whose images all carry the same C named channels::

    df = run_channel_subsets(
        {"chada": "runs/chada/teacher", "chada_untrained": "chada_vit_test",
         "one_channel": "one_channel_vit_test", "handmade": "handmade"},
        "data/manifest.csv", label_column="label", out_dir="results/subsets", datasets=["coloc_5ch"],
    )

Protocol:

- **Subsets.** For every k in 1..C: all ``comb(C, k)`` subsets when there are at most ``max_subsets``
  of them, otherwise ``max_subsets`` distinct subsets drawn by ``numpy.random.default_rng([subset_seed,
  k])`` (:func:`enumerate_subsets`). The subsets are defined on channel *names*, so every model and
  every image sees the same stains whatever order its files list them in.
- **Channel identity is kept.** A subset keeps each channel's slot (its canonical id from
  :class:`chada.data.channels.ChannelPolicy`: ``channel_order``, else the names the checkpoint
  recorded, else the dataset's own order): for ChAda-ViT a missing stain is an absent set of tokens,
  never a shift of the remaining channels into other slots.
- **Embedding.** Images are read once (``image_size`` resizes them), then every subset is embedded by
  slicing channels, all images of a subset in batches of ``batch_size``. Deterministic models (saved
  folders, modules, ``"handmade"``) are embedded once; registered names (untrained baselines) are
  re-initialised with each seed. One-Channel ViT's concatenating pools become their mean over
  channels (``"mean"``/``"mean_all"``) so that one probe can read any k.
- **Two settings.** ``train_all``: probe fitted on the all-channel features of the training rows,
  tested on the subset features of the test rows (a stain missing at test time). ``train_subset``:
  fitted and tested on the subset features. With k = C both are the same computation.
- **Metrics.** ``linear_probe`` (:func:`chada.eval.probes.linear_probe_classification`) and ``knn``
  (:func:`chada.eval.knn.knn_accuracy`, weighted cosine k=20, T=0.07) top-1 accuracy.
- **Seeds.** Seeds drive the random weights of untrained models, the split when the data has no
  usable split column, and the probe's PCA; with deterministic features and a fixed split a score
  does not depend on the seed, so it is computed once and recorded for every seed (as the evaluation
  protocol does). The summary gives, per (model, setting, metric, k), the mean over seeds of the
  mean over subsets, its std over seeds (``std``), and the spread over subsets (``subset_std``).

Outputs in ``out_dir``: ``channel_subsets.csv`` (one row per model x setting x metric x subset x
seed), ``channel_subsets_summary.csv``, ``channel_subsets.md``, ``channel_subsets.json`` (settings,
subsets, slots, timings) and ``channel_subsets.png`` / ``.svg`` (score against k, one line per model,
one column per setting, one row per metric).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from chada.data.channels import ChannelPolicy
from chada.io import atomic_write_bytes

__all__ = [
    "SETTINGS",
    "METRICS",
    "SubsetData",
    "enumerate_subsets",
    "load_subset_data",
    "embed_subsets",
    "summarize_subsets",
    "subsets_markdown",
    "plot_channel_subsets",
    "run_channel_subsets",
]

log = logging.getLogger(__name__)

SETTINGS = ("train_all", "train_subset")
SETTING_TITLES = {
    "train_all": "probe trained on all channels, tested on the subset",
    "train_subset": "probe trained and tested on the subset",
}
METRICS = ("linear_probe", "knn")
METRIC_TITLES = {"linear_probe": "linear probe accuracy", "knn": "kNN accuracy (k=20)"}


# --------------------------------------------------------------------------------- subsets
def enumerate_subsets(n_channels: int, max_subsets: int = 20, seed: int = 0) -> dict[int, list[tuple[int, ...]]]:
    """Channel subsets per size: ``{k: [sorted index tuples]}`` for k = 1..n_channels.

    All ``comb(C, k)`` subsets (lexicographic order) when there are at most ``max_subsets``; else
    ``max_subsets`` distinct ones drawn without replacement by ``default_rng([seed, k])``, sorted.
    """
    if n_channels < 1:
        raise ValueError(f"n_channels must be >= 1, got {n_channels}")
    if max_subsets < 1:
        raise ValueError(f"max_subsets must be >= 1, got {max_subsets}")
    out: dict[int, list[tuple[int, ...]]] = {}
    for k in range(1, n_channels + 1):
        total = math.comb(n_channels, k)
        if total <= max_subsets:
            out[k] = list(itertools.combinations(range(n_channels), k))
            continue
        rng = np.random.default_rng([seed, k])
        if total <= 200_000:
            every = list(itertools.combinations(range(n_channels), k))
            pick = rng.choice(total, size=max_subsets, replace=False)
            out[k] = sorted(every[i] for i in pick)
        else:  # too many to list: rejection-sample distinct sorted tuples
            chosen: set[tuple[int, ...]] = set()
            while len(chosen) < max_subsets:
                chosen.add(tuple(sorted(rng.choice(n_channels, size=k, replace=False).tolist())))
            out[k] = sorted(chosen)
    return out


# ------------------------------------------------------------------------------------ data
class SubsetData:
    """Images of a labelled dataset held in memory, with per-image channel positions by name.

    Attributes:
        images: ``N`` tensors ``[C, H, W]`` (the file's channel order).
        names: per image, its channel names (file order).
        channels: the dataset's C channel names in the reference order (subsets index into it).
        positions: ``[N, C]`` int, position in image i of reference channel j.
        labels: ``[N]`` object array; ``splits``: ``[N]`` str array; ``image_ids``: ``[N]``.
    """

    def __init__(
        self,
        images: list[Tensor],
        names: list[list[str]],
        labels: np.ndarray,
        splits: np.ndarray,
        image_ids: list[str],
        reference: Sequence[str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        if not images:
            raise ValueError("no labelled image to evaluate")
        self.images, self.names, self.labels, self.splits, self.image_ids = images, names, labels, splits, image_ids
        keyer = ChannelPolicy(None, aliases=aliases)
        keys = [[keyer.canonical_name(n).lower() for n in nm] for nm in names]
        for i, k in enumerate(keys):
            if len(set(k)) != len(k):
                keyer.resolve(names[i], image_ids[i])  # raises the duplicate-name error
        first = set(keys[0])
        odd = [image_ids[i] for i, k in enumerate(keys) if set(k) != first]
        if odd:
            raise ValueError(
                f"channel-subset evaluation needs the same channels in every image: {image_ids[0]} has "
                f"{names[0]} but {len(odd)} image(s) differ (e.g. {odd[0]}: {names[image_ids.index(odd[0])]}); "
                "select one dataset (datasets=[...] / --dataset)"
            )
        ref_names = [keyer.canonical_name(n) for n in names[0]]
        if reference is not None:
            ordered = []
            by_key = {n.lower(): n for n in ref_names}
            for r in reference:
                key = keyer.canonical_name(r).lower()
                if key in by_key and by_key[key] not in ordered:
                    ordered.append(by_key[key])
            ordered += [n for n in ref_names if n not in ordered]  # channels the order does not list
            ref_names = ordered
        self.channels = ref_names
        ref_keys = [n.lower() for n in ref_names]
        self.positions = np.array([[k.index(r) for r in ref_keys] for k in keys], dtype=np.int64)
        self._groups: list[tuple[list[int], Tensor, Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def groups(self) -> list[tuple[list[int], Tensor, Tensor]]:
        """Images grouped by size: ``(rows, [n, C, H, W] stack, [n, C] positions)`` (cached)."""
        if self._groups is None:
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, img in enumerate(self.images):
                by_size.setdefault(tuple(img.shape[-2:]), []).append(i)
            self._groups = [
                (rows, torch.stack([self.images[i] for i in rows]), torch.as_tensor(self.positions[rows]))
                for rows in by_size.values()
            ]
        return self._groups

    @property
    def n_channels(self) -> int:
        return len(self.channels)


def load_subset_data(
    manifest: str | os.PathLike | pd.DataFrame,
    label_column: str = "label",
    datasets: Sequence[str] | None = None,
    image_size: int | None = None,
    normalize: str = "percentile",
    root: str | os.PathLike | None = None,
    reference: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
    split_column: str = "split",
    progress: bool = True,
) -> SubsetData:
    """Read every labelled image of ``manifest`` (rows with a missing label are skipped)."""
    from tqdm.auto import tqdm

    from chada.data.dataset import ManifestDataset

    ds = ManifestDataset(manifest, root=root, datasets=datasets, size=image_size, normalize=normalize,
                         label_column=label_column)  # fmt: skip
    if label_column not in ds.frame.columns:
        raise ValueError(f"label column {label_column!r} not in the manifest (columns: {list(ds.frame.columns)})")
    keep = np.flatnonzero(ds.frame[label_column].notna().to_numpy())
    if len(keep) == 0:
        raise ValueError(f"no row of the manifest has a {label_column!r} label")
    images, names, ids = [], [], []
    for i in tqdm(keep.tolist(), desc="read images", unit="img", disable=not progress):
        img, nm = ds.read(i)
        images.append(img)
        names.append(list(nm))
        ids.append(str(ds.frame["image_id"].iloc[i]))
    labels = ds.frame[label_column].to_numpy(dtype=object)[keep]
    if split_column in ds.frame.columns:
        splits = ds.frame[split_column].fillna("").astype(str).to_numpy()[keep]
    else:
        splits = np.array([""] * len(keep))
    return SubsetData(images, names, labels, splits, ids, reference=reference, aliases=aliases)


# ------------------------------------------------------------------------------- embedding
def _pool_for(module: nn.Module | None, pool: str) -> str:
    if module is None:
        return "handmade"
    variable = getattr(module, "variable_size_pools", {}) or {}
    if pool in variable:  # the probe trained on C channels must read k-channel features: fixed size
        return variable[pool]
    known = tuple(getattr(module, "pools", ("cls", "all")))
    if pool not in known:
        raise ValueError(f"pool {pool!r} not supported by {type(module).__name__}; choose from {known}")
    return pool


def embed_subsets(
    module: nn.Module | None,
    data: SubsetData,
    subsets: Sequence[tuple[int, ...]],
    slots: np.ndarray,
    pool: str = "cls",
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    progress: Any = None,
) -> dict[tuple[int, ...], np.ndarray]:
    """Features ``{subset: [N, D]}`` of every image restricted to each subset's channels.

    Args:
        module: encoder, or None for the hand-made features.
        subsets: tuples of reference-channel indices.
        slots: ``[N, C]`` channel-embedding slot of reference channel j in image i.
        pool: pool already mapped by the caller to a fixed-size one.
        progress: a tqdm bar to advance by one per subset (or None).
    """
    from chada.eval.embed import HANDMADE, embed_images
    from chada.models.batch import ChannelBatch

    model: nn.Module | str = module if module is not None else HANDMADE
    slots_t = torch.as_tensor(slots, dtype=torch.long)
    out: dict[tuple[int, ...], np.ndarray] = {}
    for subset in subsets:
        cols = torch.tensor(list(subset), dtype=torch.long)
        k = len(subset)
        feats: np.ndarray | None = None
        for rows, stack, pos in data.groups():
            for start in range(0, len(rows), batch_size):
                idx = rows[start : start + batch_size]
                local = torch.arange(start, start + len(idx))
                # [n, k, H, W]: each image's own positions of the subset's channels (names, not slots)
                picked = stack[local[:, None], pos[local][:, cols]]
                n, _, h, w = picked.shape
                batch = ChannelBatch(
                    picked.reshape(n * k, h, w),
                    torch.full((n,), k, dtype=torch.long),
                    slots_t[torch.as_tensor(idx)][:, cols].reshape(-1),
                )
                try:
                    f = embed_images(model, batch, [pool], device=device)[pool]
                except (ValueError, RuntimeError) as exc:
                    names = "+".join(data.channels[j] for j in subset)
                    raise ValueError(f"{type(module).__name__ if module is not None else HANDMADE} failed on "
                                     f"channels {names}: {exc}") from exc  # fmt: skip
                if feats is None:
                    feats = np.zeros((len(data), f.shape[1]), dtype=np.float32)
                feats[idx] = f
        assert feats is not None
        out[tuple(subset)] = feats
        if progress is not None:
            progress.update(1)
    return out


def _slots_for(policy: ChannelPolicy, data: SubsetData) -> np.ndarray:
    """``[N, C]`` slot of reference channel j in image i under ``policy``."""
    slots = np.empty((len(data), data.n_channels), dtype=np.int64)
    for i in range(len(data)):
        s = np.asarray(policy.resolve(data.names[i], data.image_ids[i]))
        slots[i] = s[data.positions[i]]
    return slots


# ------------------------------------------------------------------------------- scoring
def _split_indices(
    data: SubsetData, train_split: str | Sequence[str], test_split: str | Sequence[str], test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(train_idx, test_idx, fixed)``: the split column when it has both parts, else a seeded split."""
    from chada.eval.lowdata import stratified_split

    tr_set = {train_split} if isinstance(train_split, str) else set(train_split)
    te_set = {test_split} if isinstance(test_split, str) else set(test_split)
    tr = np.flatnonzero(np.isin(data.splits, list(tr_set)))
    te = np.flatnonzero(np.isin(data.splits, list(te_set)))
    if len(tr) and len(te):
        return tr, te, True
    tr, te = stratified_split([str(v) for v in data.labels], test_fraction, seed)
    return tr, te, False


def _fit_predictor(
    metric: str, x_tr: np.ndarray, y_tr: np.ndarray, n_classes: int, probe: Mapping[str, Any],
    knn: Mapping[str, Any], seed: int,
) -> Callable[[np.ndarray], np.ndarray]:  # fmt: skip
    """Fit once on ``x_tr [N_train, D]`` (integer labels), return ``predict(x [N, D]) -> [N]`` ints.

    ``linear_probe`` is :func:`chada.eval.probes.linear_probe_classification`'s protocol (train-row
    standardisation, PCA past ``max_dim``, L2 logistic regression with one ``C``) split into fit and
    predict, so the all-channel probe of setting ``train_all`` is fitted once and read on every subset.
    ``knn`` is :func:`chada.eval.knn.knn_predict`.
    """
    from chada.eval.knn import knn_predict

    if metric == "knn":
        return lambda x: knn_predict(x_tr, y_tr, x, num_classes=n_classes, **knn)
    if metric != "linear_probe":
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from chada.eval.probes import FeaturePrep

    c = probe.get("C", 1.0)
    if not np.isscalar(c):
        raise ValueError(f"the channel-subset probe takes one C value, got {c!r}")
    if not np.isfinite(x_tr).all():
        raise ValueError("features contain NaN or inf")
    prep = FeaturePrep(max_dim=probe.get("max_dim", 256), seed=seed).fit(x_tr)
    if np.unique(y_tr).size == 1:
        only = int(y_tr[0])
        return lambda x: np.full(len(x), only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the iteration budget is part of the protocol
        clf = LogisticRegression(C=float(c), max_iter=int(probe.get("max_iter", 300))).fit(prep.transform(x_tr), y_tr)
    return lambda x: clf.predict(prep.transform(x))


def _score_all(
    feats: Mapping[tuple[int, ...], np.ndarray], full: tuple[int, ...], subsets: Sequence[tuple[int, ...]],
    settings: Sequence[str], metrics: Sequence[str], y: np.ndarray, tr: np.ndarray, te: np.ndarray,
    n_classes: int, probe: Mapping[str, Any], knn: Mapping[str, Any], seed: int,
) -> dict[tuple[tuple[int, ...], str, str], float]:  # fmt: skip
    """Accuracy of every (subset, setting, metric); the all-channel predictor is fitted once per metric."""
    out: dict[tuple[tuple[int, ...], str, str], float] = {}
    for metric in metrics:
        pred_all = None
        if "train_all" in settings:
            pred_all = _fit_predictor(metric, feats[full][tr], y[tr], n_classes, probe, knn, seed)
        for subset in subsets:
            x_te = feats[subset][te]
            for setting in settings:
                if setting == "train_all":
                    fit = pred_all
                else:
                    fit = _fit_predictor(metric, feats[subset][tr], y[tr], n_classes, probe, knn, seed)
                assert fit is not None
                out[(subset, setting, metric)] = float(np.mean(fit(x_te) == y[te]))
    return out


def _blas_limit(threads: int | None) -> Any:
    """BLAS/OpenMP thread cap for the many small probe fits (threaded BLAS makes each ~20x slower)."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(threads))


def summarize_subsets(results: pd.DataFrame) -> pd.DataFrame:
    """Per (model, setting, metric, k): mean over seeds of the subset-mean score, its std over seeds
    (sample std; 0 with one seed), the std over subsets of the seed-mean score, and counts."""
    keys = ["model", "setting", "metric", "k"]
    per_seed = results.groupby([*keys, "seed"], sort=False)["score"].mean().reset_index()
    per_subset = results.groupby([*keys, "subset"], sort=False)["score"].mean().reset_index()
    agg = per_seed.groupby(keys, sort=False)["score"].agg(
        mean="mean", std=lambda s: float(s.std(ddof=1)) if len(s) > 1 else 0.0, n_seeds="count"
    )
    sub = per_subset.groupby(keys, sort=False)["score"].agg(
        subset_std=lambda s: float(s.std(ddof=1)) if len(s) > 1 else 0.0,
        subset_min="min", subset_max="max", n_subsets="count",
    )  # fmt: skip
    out = agg.join(sub).reset_index()
    extra = results.groupby(keys, sort=False)[["chance", "pool"]].first().reset_index()
    return out.merge(extra, on=keys, how="left")


def subsets_markdown(summary: pd.DataFrame, channels: Sequence[str] | None = None) -> str:
    """Markdown tables (one per metric): rows = model x setting, columns = k, cells ``mean ± std``."""
    lines = ["# Channel-subset evaluation", ""]
    if channels:
        lines += [f"Channels ({len(channels)}): {', '.join(channels)}.", ""]
    lines += [
        "`train_all`: probe trained on all channels, tested on the subset (a stain missing at test time); "
        "`train_subset`: trained and tested on the subset. Cells: mean ± std over seeds of the mean over "
        "the subsets of size k; in brackets, the spread (std) over subsets.",
        "",
    ]
    ks = sorted(summary["k"].unique())
    for metric in [m for m in METRICS if m in set(summary["metric"])] + sorted(set(summary["metric"]) - set(METRICS)):
        part = summary[summary["metric"] == metric]
        chance = part["chance"].iloc[0] if "chance" in part and len(part) else float("nan")
        lines += [f"## {METRIC_TITLES.get(metric, metric)} (chance {chance:.3f})", ""]
        lines.append("| model | setting | " + " | ".join(f"k={k}" for k in ks) + " |")
        lines.append("|---|---|" + "---|" * len(ks))
        for (model, setting), grp in part.groupby(["model", "setting"], sort=False):
            cells = []
            for k in ks:
                row = grp[grp["k"] == k]
                if row.empty:
                    cells.append("")
                    continue
                r = row.iloc[0]
                cells.append(f"{r['mean']:.3f} ± {r['std']:.3f} [{r['subset_std']:.3f}]")
            lines.append(f"| {model} | {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_channel_subsets(summary: pd.DataFrame, out: str | os.PathLike, title: str | None = None) -> list[Path]:
    """Score against k: one column per setting, one row per metric, one line per model (PNG + SVG).

    Error bars: std over seeds; shaded band: min-max over the subsets of each k; dashed: chance.
    """
    from chada.viz.style import categorical_colors, save_figure, use_agg

    use_agg()
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in set(summary["metric"])]
    settings = [s for s in SETTINGS if s in set(summary["setting"])]
    if not metrics or not settings:
        raise ValueError("nothing to plot: the summary has no known metric/setting rows")
    models = list(dict.fromkeys(summary["model"]))
    colors = dict(zip(models, categorical_colors(len(models))))
    fig, axes = plt.subplots(
        len(metrics), len(settings), figsize=(4.6 * len(settings), 3.4 * len(metrics)), squeeze=False, sharey="row"
    )
    for r, metric in enumerate(metrics):
        for c, setting in enumerate(settings):
            ax = axes[r][c]
            part = summary[(summary["metric"] == metric) & (summary["setting"] == setting)]
            for model in models:
                g = part[part["model"] == model].sort_values("k")
                if g.empty:
                    continue
                col = colors[model]
                ax.fill_between(g["k"], g["subset_min"], g["subset_max"], color=col, alpha=0.12, linewidth=0)
                ax.errorbar(g["k"], g["mean"], yerr=g["std"], color=col, marker="o", ms=4, capsize=3, label=model)
            if len(part) and np.isfinite(part["chance"].iloc[0]):
                ax.axhline(part["chance"].iloc[0], color="0.5", ls="--", lw=1, label="chance")
            ax.set_xticks(sorted(summary["k"].unique()))
            ax.set_xlabel("channels kept (k)")
            if c == 0:
                ax.set_ylabel(METRIC_TITLES.get(metric, metric))
            if r == 0:
                ax.set_title(SETTING_TITLES.get(setting, setting), fontsize=9)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)


# ----------------------------------------------------------------------------------- driver
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
    from chada.eval.embed import HANDMADE
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


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


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

    Returns:
        long DataFrame: ``model, source, setting, metric, k, subset, channels, slots, seed, score,
        chance, pool, n_train, n_test, dim``; ``attrs["summary"]`` holds :func:`summarize_subsets`.
    """
    from tqdm.auto import tqdm

    from chada.eval.embed import resolve_model

    t0 = time.time()
    if not models:
        raise ValueError("models is empty: give at least one {name: model}")
    bad = [m for m in metrics if m not in METRICS] + [s for s in settings if s not in SETTINGS]
    if bad or not metrics or not settings:
        raise ValueError(f"metrics must be among {METRICS} and settings among {SETTINGS}; got {list(metrics)}, "
                         f"{list(settings)}")  # fmt: skip
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
    fixed_split = all(v[2] for v in splits.values())
    classes, y = np.unique(np.asarray([str(v) for v in data.labels]), return_inverse=True)
    n_classes = len(classes)

    # resolve each model once per distinct weights: registered names get one init per seed
    plans: list[tuple[str, Any, str]] = []  # (name, spec, source)
    for name, spec in models.items():
        plans.append((name, spec, _source_of(spec)))
    n_embed = sum(len(seed_list) if src == "random_init" else 1 for _, _, src in plans) * len(subsets)
    bar = tqdm(total=n_embed, desc="embed subsets", unit="subset", disable=not progress)

    rows: list[dict[str, Any]] = []
    meta_models: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name, spec, source in plans:
        t_model = time.time()
        seed_dep = source == "random_init"
        scores: dict[tuple, float] = {}
        feats_by_seed: dict[int, dict[tuple[int, ...], np.ndarray]] = {}
        for seed in seed_list:
            if seed_dep or not feats_by_seed:
                module, info = resolve_model(spec, seed=seed)
                if module is not None:
                    module = module.to(torch.device(device)).eval()
                policy = ChannelPolicy.from_model(module, unknown=unknown_channels, aliases=channel_aliases,
                                                  canonical=channel_order)  # fmt: skip
                if policy.positional:  # no order anywhere: the dataset's reference order is the canonical one
                    policy = ChannelPolicy(data.channels, unknown=unknown_channels, aliases=channel_aliases,
                                           max_slots=policy.max_slots)  # fmt: skip
                slots = _slots_for(policy, data)
                used_pool = _pool_for(module, pool)
                feats = embed_subsets(module, data, subsets, slots, used_pool, batch_size, device, bar)
                meta_models[name] = {
                    "source": source, "pool": used_pool, "policy": policy.to_dict(),
                    "slots": dict(zip(data.channels, slots[0].tolist())), "model": info.get("model"),
                }  # fmt: skip
            else:
                feats = feats_by_seed[seed_list[0]]
            feats_by_seed[seed] = feats
            tr, te, _ = splits[seed]
            chance = float(np.mean(y[te] == np.bincount(y[tr], minlength=n_classes).argmax()))
            # deterministic features + fixed split: every score is the same for every seed, so it is
            # computed once (probe seed 0) and recorded under each seed, as the evaluation protocol does
            det = not seed_dep and fixed_split
            if det and scores:
                seed_scores = scores
            else:
                with _blas_limit(blas_threads):
                    seed_scores = _score_all(feats, full, subsets, settings, metrics, y, tr, te, n_classes,
                                             probe_kw, knn_kw, seed=0 if det else seed)  # fmt: skip
                if det:
                    scores = seed_scores
            for (subset, setting, metric), score in seed_scores.items():
                rows.append({
                    "model": name, "source": source, "setting": setting, "metric": metric,
                    "k": len(subset), "subset": "+".join(data.channels[j] for j in subset),
                    "channels": list(subset), "slots": [int(slots[0, j]) for j in subset],
                    "seed": seed, "score": score, "chance": chance, "pool": meta_models[name]["pool"],
                    "n_train": len(tr), "n_test": len(te), "dim": int(feats[subset].shape[1]),
                })  # fmt: skip
        timings[name] = round(time.time() - t_model, 3)
    bar.close()

    results = pd.DataFrame(rows)
    summary = summarize_subsets(results)
    results.attrs["summary"] = summary
    info = {
        "channels": data.channels,
        "n_images": len(data),
        "n_train": {str(s): len(v[0]) for s, v in splits.items()},
        "n_test": {str(s): len(v[1]) for s, v in splits.items()},
        "split": "split column" if fixed_split else f"seeded stratified split (test_fraction={test_fraction})",
        "subsets": {str(k): ["+".join(data.channels[j] for j in s) for s in v] for k, v in per_k.items()},
        "subsets_total": {str(k): math.comb(C, k) for k in per_k},
        "max_subsets": max_subsets,
        "subset_seed": subset_seed,
        "seeds": seed_list,
        "models": meta_models,
        "probe": probe_kw,
        "knn": knn_kw,
        "image_size": image_size,
        "label_column": label_column,
        "seconds": {"read": round(t_read, 3), **timings, "total": round(time.time() - t0, 3)},
    }
    results.attrs["info"] = info
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        flat = results.copy()
        flat["channels"] = flat["channels"].map(lambda v: ";".join(map(str, v)))
        flat["slots"] = flat["slots"].map(lambda v: ";".join(map(str, v)))
        _write_text(out / "channel_subsets.csv", flat.to_csv(index=False))
        _write_text(out / "channel_subsets_summary.csv", summary.to_csv(index=False))
        _write_text(out / "channel_subsets.md", subsets_markdown(summary, data.channels))
        if plot:
            plot_channel_subsets(summary, out / "channel_subsets",
                                 title=f"{label_column}: {len(data)} images, channels {', '.join(data.channels)}")  # fmt: skip
        info["seconds"]["total"] = round(time.time() - t0, 3)
        _write_text(out / "channel_subsets.json", json.dumps(info, indent=2, default=str) + "\n")
    return results
