"""The models' feature files as the protocol reads them: each loaded once, the feature kind, and
the images models share (so models ranked in one table are scored on the same images).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from chada.encode.store import EmbeddingSet, load_embeddings
from chada.eval.config import TaskSpec

__all__ = ["Loader", "align_rows", "common_images", "resolve_kind"]


class Loader:
    """Loads each embedding file once, with its rows sorted by image_id (same split for every model)."""

    def __init__(self) -> None:
        self.cache: dict[Path, EmbeddingSet] = {}

    def __call__(self, path: Path) -> EmbeddingSet:
        if path not in self.cache:
            emb = load_embeddings(path)
            if "image_id" in emb.meta.columns:
                order = np.argsort(emb.meta["image_id"].astype(str).to_numpy(), kind="stable")
                emb = emb.subset(order)
            self.cache[path] = emb
        return self.cache[path]


def resolve_kind(emb: EmbeddingSet, kind: str) -> str | None:
    """The feature kind to use for ``kind``: itself, or the only kind of a single-kind file."""
    if kind in emb.features:
        return kind
    if len(emb.features) == 1:
        return next(iter(emb.features))
    return None


def align_rows(a: EmbeddingSet, b: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """Row positions ``(ia, ib)`` of the images present in both sets, matched by ``image_id``."""
    for e in (a, b):
        if "image_id" not in e.meta.columns:
            raise ValueError("cannot align embedding files without an image_id column")
    ids_a = a.meta["image_id"].astype(str).to_numpy()
    ids_b = b.meta["image_id"].astype(str).to_numpy()
    pos_b = {v: i for i, v in enumerate(ids_b)}
    ia = np.array([i for i, v in enumerate(ids_a) if v in pos_b], dtype=np.int64)
    ib = np.array([pos_b[ids_a[i]] for i in ia], dtype=np.int64)
    return ia, ib


def common_images(task: TaskSpec, embs: dict[str, EmbeddingSet]) -> dict[str, EmbeddingSet]:
    """Each model's embeddings restricted to the labelled images every model of the task holds.

    Models ranked in one table must be scored on the same images: when the files hold different
    labelled images, a warning names each model's count and the common count; no common image (or one
    only) is an error.
    """
    if len(embs) < 2:
        return embs
    labelled = {}
    for name, emb in embs.items():
        if "image_id" not in emb.meta.columns:
            return embs  # nothing to match on: align_rows-style matching is impossible, keep the files as they are
        col = emb.meta.get(task.label_column)
        ids = emb.meta["image_id"].astype(str)
        labelled[name] = set(ids[col.notna()]) if col is not None else set(ids)
    common = set.intersection(*labelled.values())
    if all(len(v) == len(common) for v in labelled.values()):
        return embs
    counts = ", ".join(f"{n}: {len(v)}" for n, v in labelled.items())
    if len(common) < 2:
        raise ValueError(
            f"task {task.name!r}: the feature files hold different images ({counts} labelled images) and share "
            f"{len(common)}; embed the same manifest with every model"
        )
    warnings.warn(
        f"task {task.name!r}: the feature files hold different images ({counts} labelled images); every model "
        f"is scored on the {len(common)} images they share",
        stacklevel=2,
    )
    out = {}
    for name, emb in embs.items():
        ids = emb.meta["image_id"].astype(str).to_numpy()
        out[name] = emb.subset(np.flatnonzero([i in common for i in ids]))
    return out
