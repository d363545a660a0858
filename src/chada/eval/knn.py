"""k-nearest-neighbour evaluation on frozen features (DINO's weighted cosine kNN and 1-NN).

DINO's rule (Caron et al. 2021, ``eval_knn.py``): L2-normalise train and test features, take the
k train rows of highest cosine similarity s, weight each by ``exp(s / T)`` and sum the weights per
class; the prediction is the class with the largest sum. Defaults k=20, T=0.07. 1-NN is k=1.
For regression targets the same weights give a weighted mean of the neighbours' targets.

Pure numpy, no faiss. Test rows go through in chunks: each chunk holds one ``[chunk, N_train]`` block of
similarities (float32) and the partition indices (int64), 12 bytes per pair, so its row count is chosen
to keep that block under ``max_bytes`` (default 256 MiB): memory is bounded whatever the corpus size,
and time grows as ``N_train x N_test x D`` (one matrix product per chunk).
Shapes: ``train [N_train, D]``, ``test [N_test, D]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chada.eval.probes import encode_labels

__all__ = [
    "MAX_BLOCK_BYTES",
    "chunk_rows",
    "knn_accuracy",
    "knn_correct",
    "knn_predict",
    "knn_regress",
    "knn_r2",
]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


#: Memory budget of one chunk's similarity block (float32 similarities + int64 partition indices).
MAX_BLOCK_BYTES = 256 * 2**20
_BYTES_PER_PAIR = 4 + 8


def chunk_rows(n_train: int, max_bytes: int = MAX_BLOCK_BYTES, chunk: int | None = None) -> int:
    """Test rows per chunk: ``chunk`` if given, else as many as fit ``max_bytes`` (at least 1, at most 1024:
    below about 22k training rows that is the fixed chunk of earlier versions, so their results are unchanged)."""
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        return int(chunk)
    return int(min(1024, max(1, max_bytes // (_BYTES_PER_PAIR * max(n_train, 1)))))


def _neighbours(train: np.ndarray, test: np.ndarray, k: int, chunk: int | None):
    """Yield ``(rows, idx [n, k], sim [n, k])`` chunks of the k most similar train rows."""
    tr, te = _normalise(train), _normalise(test)
    if tr.shape[1] != te.shape[1]:
        raise ValueError(f"train/test feature dims differ: {tr.shape[1]} vs {te.shape[1]}")
    if len(tr) == 0 or len(te) == 0:
        raise ValueError("empty train or test set")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(tr))
    step = chunk_rows(len(tr), chunk=chunk)
    for start in range(0, len(te), step):
        sim = te[start : start + step] @ tr.T  # [n, N_train]
        if k < sim.shape[1]:
            # partition the negated block in place: the same selection as argpartition(-sim), no copy
            np.negative(sim, out=sim)
            idx = np.argpartition(sim, k - 1, axis=1)[:, :k]
            s = -np.take_along_axis(sim, idx, axis=1)
        else:
            idx = np.broadcast_to(np.arange(sim.shape[1]), sim.shape).copy()
            s = np.take_along_axis(sim, idx, axis=1)
        yield slice(start, start + len(sim)), idx, s


def knn_predict(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int | None = None,
) -> np.ndarray:
    """Predicted integer class ``[N_test]`` by DINO's weighted vote; ``train_labels`` are ints >= 0.

    Ties (equal vote sums) go to the smallest class index.
    """
    y = np.asarray(train_labels)
    if y.ndim != 1 or len(y) != len(train):
        raise ValueError(f"train_labels must be [N_train]={len(train)}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
        raise TypeError("train_labels must be non-negative integers (use chada.eval.probes.encode_labels)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n_cls = int(num_classes if num_classes is not None else y.max() + 1)
    out = np.empty(len(test), dtype=np.int64)
    for rows, idx, s in _neighbours(train, test, k, chunk):
        # exp((s - 1)/T) differs from exp(s/T) by a constant factor only: same argmax, no overflow.
        w = np.exp((s.astype(np.float64) - 1.0) / temperature)
        votes = np.zeros((len(idx), n_cls))
        np.add.at(votes, (np.arange(len(idx))[:, None], y[idx]), w)
        out[rows] = votes.argmax(1)
    return out


def knn_accuracy(
    train: np.ndarray,
    train_labels: Sequence,
    test: np.ndarray,
    test_labels: Sequence,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of the weighted cosine kNN; labels may be any hashable values."""
    return float(knn_correct(train, train_labels, test, test_labels, k=k, temperature=temperature).mean())


def knn_correct(
    train: np.ndarray,
    train_labels: Sequence,
    test: np.ndarray,
    test_labels: Sequence,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> np.ndarray:
    """``[N_test]`` bool: which test rows the weighted cosine kNN gets right (for paired comparisons)."""
    ytr, yte, classes = encode_labels(train_labels, test_labels)
    pred = knn_predict(train, ytr, test, k=k, temperature=temperature, num_classes=len(classes))
    return pred == yte


def knn_regress(
    train: np.ndarray,
    train_targets: Sequence[float],
    test: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int | None = None,
) -> np.ndarray:
    """``[N_test]`` weighted mean of the k nearest train targets (weights ``exp(s / T)``)."""
    y = np.asarray(train_targets, dtype=np.float64)
    if y.ndim != 1 or len(y) != len(train):
        raise ValueError(f"train_targets must be [N_train]={len(train)}, got shape {y.shape}")
    out = np.empty(len(test))
    for rows, idx, s in _neighbours(train, test, k, chunk):
        w = np.exp((s.astype(np.float64) - 1.0) / temperature)
        out[rows] = (w * y[idx]).sum(1) / w.sum(1)
    return out


def knn_r2(
    train: np.ndarray,
    train_targets: Sequence[float],
    test: np.ndarray,
    test_targets: Sequence[float],
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """R2 of :func:`knn_regress` predictions on the test targets."""
    from sklearn.metrics import r2_score

    pred = knn_regress(train, train_targets, test, k=k, temperature=temperature)
    return float(r2_score(np.asarray(test_targets, dtype=np.float64), pred))
