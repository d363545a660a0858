"""The CHAMMI scorer: the ``morphem`` protocol (broadinstitute/MorphEm ``morphem/evaluation.py`` and
``benchmark.py``) re-implemented in numpy/scikit-learn, without faiss.

Protocol, per sub-dataset (``Allen`` = WTC-11, ``HPA``, ``CP``), on features ``[N, D]`` in the row order
of its ``enriched_meta.csv``:

- tasks = the values of ``train_test_split`` other than ``Train``, in order of first appearance; the
  test rows of task ``T`` are the rows whose boolean column ``T`` is true;
- labels: ``Label`` encoded by order of first appearance;
- classifier: 1-nearest neighbour fitted on the ``Train`` rows; ``l2`` (Euclidean) or ``cosine``
  (rows L2-normalised, largest inner product); ties go to the lowest training index;
- leave-one-group-out for ``HPA`` ``Task_three`` (groups = ``cell_type``) and ``CP`` ``Task_four``
  (groups = ``Plate``): for each group of that task's rows, the classifier is fitted on ``Train`` plus
  the task's rows of the OTHER groups and predicts the group; predictions are concatenated;
- accuracy = mean(prediction == truth); macro-F1 = ``f1_score(..., labels=unique(truth),
  average="macro")`` (only the labels present in the task's ground truth count).

CHAMMI score (macro-F1, as in CHAMMI-75): ``WTC2/3 + (HPA2 + HPA3)/6 + (CP2 + CP3 + CP4)/9`` where
``WTC2`` is Allen ``Task_two``, ``HPA2``/``HPA3`` HPA ``Task_two``/``Task_three`` and ``CP2..CP4`` CP
``Task_two``..``Task_four`` (the mean over the three datasets of each one's out-of-distribution tasks).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chada.eval.markdown import markdown_table

__all__ = [
    "DATASETS",
    "LEAVE_OUT",
    "ANCHORS",
    "nn1_predict",
    "evaluate_dataset",
    "score_features",
    "chammi_score",
    "results_markdown",
    "write_results",
]

DATASETS = ("Allen", "HPA", "CP")
LEAVE_OUT: dict[str, tuple[str, str] | None] = {
    "Allen": None,
    "HPA": ("Task_three", "cell_type"),
    "CP": ("Task_four", "Plate"),
}
DISPLAY = {"Allen": "WTC", "HPA": "HPA", "CP": "CP"}
TASK_NUM = {"Task_one": 1, "Task_two": 2, "Task_three": 3, "Task_four": 4}
SCORE_TERMS = {("Allen", "Task_two"): 1 / 3, ("HPA", "Task_two"): 1 / 6, ("HPA", "Task_three"): 1 / 6,
               ("CP", "Task_two"): 1 / 9, ("CP", "Task_three"): 1 / 9, ("CP", "Task_four"): 1 / 9}  # fmt: skip

# Published macro-F1 (1-NN) per task: DINOv2 ViT-S/14 with registers (the README of
# broadinstitute/MorphEm) and Channel-Adaptive DINO (its paper, TMLR 2025, given there in %).
ANCHORS: dict[str, dict[tuple[str, str], float]] = {
    "DINOv2 ViT-S/14-reg (MorphEm README)": {
        ("Allen", "Task_one"): 0.61, ("Allen", "Task_two"): 0.46,
        ("HPA", "Task_one"): 0.69, ("HPA", "Task_two"): 0.50, ("HPA", "Task_three"): 0.26,
        ("CP", "Task_one"): 0.81, ("CP", "Task_two"): 0.46, ("CP", "Task_three"): 0.24, ("CP", "Task_four"): 0.11,
    },
    "Channel-Adaptive DINO (paper)": {
        ("Allen", "Task_one"): 0.794, ("Allen", "Task_two"): 0.790,
        ("HPA", "Task_one"): 0.866, ("HPA", "Task_two"): 0.593, ("HPA", "Task_three"): 0.296,
        ("CP", "Task_one"): 0.926, ("CP", "Task_two"): 0.576, ("CP", "Task_three"): 0.221, ("CP", "Task_four"): 0.185,
    },
}  # fmt: skip


def nn1_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, metric: str = "l2", chunk: int = 2048
) -> np.ndarray:
    """Label of the nearest training row for every test row (``[N_test]``).

    Args:
        train_x: ``[N_train, D]``; train_y: ``[N_train]``; test_x: ``[N_test, D]``.
        metric: ``"l2"`` (Euclidean) or ``"cosine"``.
    """
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    tr = np.asarray(train_x, dtype=np.float64)
    te = np.asarray(test_x, dtype=np.float64)
    if tr.ndim != 2 or te.ndim != 2 or tr.shape[1] != te.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {tr.shape} and {te.shape}")
    if len(tr) == 0:
        raise ValueError("no training row to fit the 1-NN classifier on")
    train_y = np.asarray(train_y)
    if metric == "cosine":
        tr = tr / np.maximum(np.linalg.norm(tr, axis=1, keepdims=True), 1e-12)
        te = te / np.maximum(np.linalg.norm(te, axis=1, keepdims=True), 1e-12)
    sq_tr = (tr**2).sum(1)
    out = np.empty(len(te), dtype=train_y.dtype)
    for s in range(0, len(te), chunk):
        block = te[s : s + chunk]
        if metric == "cosine":
            best = np.argmax(block @ tr.T, axis=1)  # argmax: first index on ties
        else:
            d2 = sq_tr[None, :] - 2.0 * block @ tr.T  # + |b|^2, constant per row
            best = np.argmin(d2, axis=1)
        out[s : s + chunk] = train_y[best]
    return out


def _metrics(truth: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, Any]:
    from sklearn.metrics import classification_report, f1_score

    labels = np.unique(truth)
    return {
        "accuracy": float(np.mean(pred == truth)),
        "f1_macro": float(f1_score(truth, pred, labels=labels, average="macro", zero_division=0)),
        "n_test": int(len(truth)),
        "report": classification_report(
            truth,
            pred,
            labels=labels,
            target_names=[names[i] for i in labels],
            output_dict=True,
            zero_division=0,
        ),
    }


def evaluate_dataset(
    features: np.ndarray,
    meta: pd.DataFrame,
    leave_out: tuple[str, str] | None = None,
    metric: str = "l2",
) -> list[dict[str, Any]]:
    """Score one sub-dataset; one dict per task: ``task``, ``accuracy``, ``f1_macro``, ``n_test``, ``report``.

    Args:
        features: ``[N, D]`` in the row order of ``meta`` (``enriched_meta.csv``).
        meta: with ``Label``, ``train_test_split`` and one boolean column per task.
        leave_out: ``(task, group column)`` scored leave-one-group-out, e.g. ``("Task_three", "cell_type")``.
    """
    feats = np.asarray(features)
    if feats.ndim != 2 or len(feats) != len(meta):
        raise ValueError(f"features have shape {feats.shape} for {len(meta)} rows of enriched_meta.csv")
    split = meta["train_test_split"].astype(str)
    tasks = [t for t in split.unique() if t != "Train"]
    codes, uniques = pd.factorize(meta["Label"], sort=False)  # order of first appearance
    names = [str(u) for u in uniques]
    y = codes.astype(np.int64)
    train_idx = np.flatnonzero((split == "Train").to_numpy())
    results = []
    for task in tasks:
        if task not in meta.columns:
            raise ValueError(f"task {task!r} has no boolean column in enriched_meta.csv")
        mask = (
            meta[task].astype(str).str.lower().isin(("true", "1")) if meta[task].dtype != bool else meta[task]
        )
        test_idx = np.flatnonzero(mask.to_numpy())
        if leave_out is not None and task == leave_out[0]:
            gcol = leave_out[1]
            if gcol not in meta.columns:
                raise ValueError(f"leave-one-out column {gcol!r} not in enriched_meta.csv")
            groups = meta[gcol].to_numpy()[test_idx]
            preds, truths = [], []
            for g in pd.unique(groups):
                held = test_idx[groups == g]
                rest = test_idx[groups != g]
                fit = np.concatenate([train_idx, rest])
                preds.append(nn1_predict(feats[fit], y[fit], feats[held], metric))
                truths.append(y[held])
            pred, truth = np.concatenate(preds), np.concatenate(truths)
        else:
            pred = nn1_predict(feats[train_idx], y[train_idx], feats[test_idx], metric)
            truth = y[test_idx]
        results.append({"task": task} | _metrics(truth, pred, names))
    return results


def chammi_score(f1: Mapping[tuple[str, str], float]) -> float | None:
    """``WTC2/3 + (HPA2+HPA3)/6 + (CP2+CP3+CP4)/9`` from ``{(dataset, task): macro-F1}``; None if a term is missing."""
    if any(k not in f1 for k in SCORE_TERMS):
        return None
    return float(sum(w * f1[k] for k, w in SCORE_TERMS.items()))


def score_features(
    root: str | os.PathLike,
    feature_dir: str | os.PathLike,
    feature_file: str,
    metric: str = "l2",
    datasets: Iterable[str] = DATASETS,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score ``FEATURE_DIR/<dataset>/<feature_file>`` against ``ROOT/<dataset>/enriched_meta.csv``.

    Returns ``(table, reports)``: one table row per (dataset, task) with ``accuracy`` and
    ``f1_score_macro`` (the official CSV's columns) and ``reports[dataset][task]`` = the per-class
    classification report.
    """
    from chada.data.importers.chammi import load_meta

    rows, reports = [], {}
    for ds in datasets:
        fpath = Path(feature_dir) / ds / feature_file
        if not fpath.exists():
            raise FileNotFoundError(f"features {fpath} not found")
        meta = load_meta(Path(root), ds)
        res = evaluate_dataset(np.load(fpath), meta, LEAVE_OUT.get(ds), metric)
        reports[ds] = {r["task"]: r["report"] for r in res}
        for r in res:
            rows.append({"dataset": ds, "task": r["task"], "classifier": f"1nn_{metric}", "accuracy": r["accuracy"],
                         "f1_score_macro": r["f1_macro"], "n_test": r["n_test"]})  # fmt: skip
    return pd.DataFrame(rows), reports


def _f1_map(table: pd.DataFrame) -> dict[tuple[str, str], float]:
    return {(r.dataset, r.task): float(r.f1_score_macro) for r in table.itertuples()}


def results_markdown(table: pd.DataFrame, model: str) -> str:
    """Markdown table: our accuracy / macro-F1 per task beside the published macro-F1 anchors."""
    ours = _f1_map(table)
    head = ["dataset", "task", f"{model} acc", f"{model} macro-F1"] + [f"{a} macro-F1" for a in ANCHORS]
    rows = []
    for r in table.itertuples():
        cells = [DISPLAY.get(r.dataset, r.dataset), r.task, f"{r.accuracy:.3f}", f"{r.f1_score_macro:.3f}"]
        cells += [
            f"{a[(r.dataset, r.task)]:.3f}" if (r.dataset, r.task) in a else "-" for a in ANCHORS.values()
        ]
        rows.append(cells)
    score = chammi_score(ours)
    cells = [
        "**CHAMMI score**",
        "WTC2/3+(HPA2+HPA3)/6+(CP2+CP3+CP4)/9",
        "",
        f"{score:.3f}" if score is not None else "n/a",
    ]
    cells += [f"{s:.3f}" if (s := chammi_score(a)) is not None else "-" for a in ANCHORS.values()]
    lines = [markdown_table(head, [*rows, cells])]
    lines.append(
        "Anchors: published per-task macro-F1 (1-NN); their CHAMMI scores are computed here from those numbers."
    )
    return "\n".join(lines) + "\n"


def write_results(
    table: pd.DataFrame, reports: dict[str, Any], out_dir: str | os.PathLike, model: str, metric: str
) -> dict[str, Path]:
    """Write ``<model>_1nn_<metric>_results.{csv,json,md}`` into ``out_dir`` (atomic writes)."""
    from chada.io import atomic_write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{model}_1nn_{metric}_results"
    score = chammi_score(_f1_map(table))
    payload = {
        "model": model,
        "metric": metric,
        "chammi_score": score,
        "tasks": table.to_dict("records"),
        "reports": reports,
        "anchors": {a: {f"{d}/{t}": v for (d, t), v in vals.items()} for a, vals in ANCHORS.items()},
    }
    paths = {"csv": out / f"{stem}.csv", "json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    atomic_write_bytes(paths["csv"], table.to_csv(index=False).encode())
    atomic_write_bytes(paths["json"], json.dumps(payload, indent=2, default=float).encode())
    atomic_write_bytes(paths["md"], results_markdown(table, model).encode())
    return paths


def model_label(model: str | os.PathLike) -> str:
    """File-name stem for a model: a registered name as is, a folder by its name."""
    p = Path(str(model))
    return p.name if p.exists() else str(model).replace("/", "_")


def embed_chammi(
    model: Any,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str | None = None,
    pool: str = "cls",
    *,
    image: Any = None,
    run: Any = None,
    datasets: Iterable[str] = DATASETS,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Embed every CHAMMI image; write ``OUT/features/<dataset>/<name>.npy`` (``[N, D]`` float32).

    Rows follow ``enriched_meta.csv``. Each side-by-side image is split into ``[C, H, W]``, normalised
    per channel, resized to ``image_size`` and fed with its true channel count (batches mix nothing:
    one sub-dataset at a time). A feature file whose row count already matches is kept unless
    ``overwrite``.

    ``image``: :class:`chada.encode.options.ImageOptions` (``size``, default 224 here, and
    ``normalize``); ``run``: :class:`chada.encode.options.RunOptions` (``batch_size``, ``device``,
    ``dtype`` of the forward pass: ``torch.bfloat16`` runs it under autocast, features stay float32;
    ``seed`` of a registered name's random weights; ``progress``).
    """
    import torch
    from tqdm.auto import tqdm

    from chada.data.dataset import resize_image
    from chada.data.importers.chammi import N_CHANNELS, chammi_image_path, load_meta, read_chammi_image
    from chada.data.normalize import normalize_channels
    from chada.encode.encoders import resolve_encoder
    from chada.encode.options import ImageOptions, RunOptions
    from chada.io import atomic_write_json, atomic_write_npy
    from chada.models.batch import as_channel_batch
    from chada.models.precision import precision_name

    image, run = image or ImageOptions(size=224), run or RunOptions()
    if not isinstance(image.size, int):
        raise ValueError(f"CHAMMI images are resized to one square size: image size must be an int, got {image.size!r}")
    encoder = resolve_encoder(model, seed=run.seed, dtype=run.dtype).to(run.device)
    name = name or model_label(model if not isinstance(model, torch.nn.Module) else type(model).__name__)
    # What the features depend on, kept beside each .npy: a file made another way is embedded again.
    settings = {
        "weights_sha1": encoder.fingerprint(), "image_size": image.size, "pool": pool, "normalize": image.normalize,
        "precision": precision_name(run.dtype),
    }  # fmt: skip
    written = {}
    for ds in datasets:
        meta = load_meta(Path(root), ds)
        dest = Path(out_dir) / "features" / ds / f"{name}.npy"
        if dest.exists() and not overwrite:
            why = _stale_features(dest, settings, len(meta))
            if why is None:
                written[ds] = dest
                continue
            if run.progress:
                print(f"CHAMMI {ds}: {dest} {why}; embedding again", file=sys.stderr, flush=True)
        feats: list[np.ndarray] = []
        batch: list[torch.Tensor] = []
        rows = list(meta.itertuples(index=False))
        for i, r in enumerate(tqdm(rows, desc=f"CHAMMI {ds}", disable=not run.progress)):
            arr = read_chammi_image(
                chammi_image_path(Path(root), ds, str(r.file_path)), int(r.channel_width), N_CHANNELS[ds]
            )
            img = torch.from_numpy(normalize_channels(arr.astype(np.float32), image.normalize))
            batch.append(resize_image(img, image.size))
            if len(batch) == run.batch_size or i == len(rows) - 1:
                feats.append(encoder.encode_batch(as_channel_batch(batch), [pool], device=run.device)[pool])
                batch = []
        atomic_write_npy(dest, np.concatenate(feats).astype(np.float32))
        atomic_write_json(dest.with_suffix(".json"), {"settings": settings, "rows": len(meta)}, indent=1)
        written[ds] = dest
    return written


def _stale_features(dest: Path, settings: dict[str, Any], rows: int) -> str | None:
    """None when ``dest`` holds ``rows`` features made with ``settings``; else why it cannot be reused."""
    try:
        n = len(np.load(dest, mmap_mode="r"))
    except (OSError, ValueError):
        return "is unreadable"
    if n != rows:
        return f"has {n} rows, not {rows}"
    try:
        made = json.loads(dest.with_suffix(".json").read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return "has no record of the settings it was made with"
    changed = [f"{k}: {made.get(k)!r} -> {v!r}" for k, v in settings.items() if made.get(k) != v]
    return f"was made with other settings ({', '.join(changed)})" if changed else None
