"""Build an IDRCell100k-style pretraining corpus: N images per study, resized and normalised.

The paper's recipe (supplementary A): from every study with at least 1,300 images, 1,300 images drawn
uniformly at random, each channel resized to 224 x 224. :func:`build_corpus` applies it to any set of
manifests: rows are grouped by a source column (``study`` if the manifest has one, else ``dataset``),
``per_source`` rows are drawn per group with a generator seeded by ``(seed, group name)`` (so adding a
source never changes the others' draw), every image is resized to ``size`` (bilinear, antialiased),
then normalised per channel and stored as a ``C``-page uint16 TIFF (``round(x * 65535)``, exact for the
[0, 1] range). Normalising after resizing makes every non-constant channel span exactly 0..1, so
``normalize="minmax"`` when reading the corpus is the identity. Writes are atomic; a re-run with the
same settings skips every image already written (resumable).

Outputs in ``OUT``: ``images/<source>/<id>.tif``, ``manifest.csv``, ``corpus.json`` (settings + counts),
``summary.png`` (images per source, channel-count histogram) and, with ``shards``, ``shards/``.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["build_corpus", "select_rows", "plot_corpus"]

log = logging.getLogger(__name__)


def _slug(text: Any) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def select_rows(
    frame: pd.DataFrame, column: str, per_source: int, seed: int, drop_small: bool = False
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Seeded balanced draw: ``per_source`` rows of every value of ``column`` (all rows if fewer).

    Returns ``(selected rows, {source: available rows})``; the draw of a source depends only on
    ``seed`` and its name. Sources with fewer rows are kept whole (a warning) or dropped (``drop_small``).
    """
    if per_source < 1:
        raise ValueError(f"per_source must be >= 1, got {per_source}")
    parts, available = [], {}
    for name, group in frame.groupby(column, sort=True):
        available[str(name)] = len(group)
        if len(group) < per_source:
            if drop_small:
                log.warning("source %s has %d images < %d: dropped", name, len(group), per_source)
                continue
            log.warning("source %s has %d images < %d: all kept", name, len(group), per_source)
            parts.append(group)
            continue
        rng = np.random.default_rng([int(seed), zlib.crc32(str(name).encode())])
        pick = np.sort(rng.choice(len(group), size=per_source, replace=False))
        parts.append(group.iloc[pick])
    if not parts:
        raise ValueError("no source has enough images; lower --per-source or drop --drop-small")
    return pd.concat(parts).reset_index(drop=True), available


def _load_sources(sources: Sequence[str | os.PathLike], column: str | None) -> tuple[pd.DataFrame, str]:
    from chada.data.manifest import REQUIRED_COLUMNS, load_manifest, row_paths

    frames = []
    for src in sources:
        path = Path(src)
        df = load_manifest(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: manifest lacks column(s) {missing}")
        df = df.copy()
        # absolute paths, so rows of different manifests can be mixed
        base = path.resolve().parent
        kinds, files = [], []
        for row in df.to_dict("records"):
            kind, paths = row_paths(row, base)
            kinds.append(kind)
            files.append(";".join(str(p) for p in paths))
        df["_kind"], df["_files"], df["source_manifest"] = kinds, files, str(path.resolve())
        frames.append(df)
    frame = pd.concat(frames, ignore_index=True)
    col = column or ("study" if "study" in frame.columns and frame["study"].notna().all() else "dataset")
    if col not in frame.columns:
        raise ValueError(f"source column {col!r} is not in the manifests (columns: {list(frame.columns)})")
    return frame, col


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tifffile.imwrite(tmp, arr, metadata={"axes": "CYX"}, photometric="minisblack", compression="zlib")
    os.replace(tmp, path)


def plot_corpus(manifest: pd.DataFrame, out: Path) -> Path:
    """Bar charts of images per source and of the channel-count histogram (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_source = manifest["dataset"].value_counts().sort_index()
    counts = manifest["n_channels"].value_counts().sort_index()
    fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.3 * len(per_source) + 1.5)))
    axes[0].barh([str(k) for k in per_source.index], per_source.to_numpy(), color="tab:blue")
    axes[0].set_title("images per source")
    axes[0].invert_yaxis()
    axes[1].bar([str(k) for k in counts.index], counts.to_numpy(), color="tab:green")
    axes[1].set_title("channel-count histogram")
    axes[1].set_xlabel("channels per image")
    axes[1].set_ylabel("images")
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def build_corpus(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    per_source: int = 1300,
    size: int = 224,
    seed: int = 0,
    source_column: str | None = None,
    drop_small: bool = False,
    normalize: str = "percentile",
    shards: bool = False,
    shard_size: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the corpus (see the module docstring); return a summary dict.

    Returns:
        ``manifest`` (path), ``n_images``, ``per_source`` ({source: images}), ``written`` / ``skipped``
        (images converted now / found from an earlier run), ``plot`` (path), ``shards`` (index or None).
    """
    import torch
    from tqdm.auto import tqdm

    from chada.data.dataset import resize_image
    from chada.data.manifest import write_manifest
    from chada.data.normalize import normalize_channels
    from chada.data.readers import read_channels, read_image
    from chada.io import atomic_write_bytes

    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame, col = _load_sources(sources, source_column)
    picked, available = select_rows(frame, col, per_source, seed, drop_small)
    rows, written, skipped = [], 0, 0
    for r in tqdm(picked.to_dict("records"), desc="corpus", disable=not progress):
        src = str(r[col])
        names = [s.strip() for s in str(r["channel_names"]).split(";") if s.strip()]
        rel = f"images/{_slug(src)}/{_slug(r['image_id'])}.tif"
        dest = out / rel
        if dest.exists():
            skipped += 1
        else:
            files = r["_files"].split(";")
            arr = read_channels(files) if r["_kind"] == "channel_files" else read_image(files[0])
            if arr.shape[0] != len(names):
                raise ValueError(f"{r['image_id']}: {len(names)} channel names for {arr.shape[0]} channels")
            img = resize_image(torch.from_numpy(arr), size)
            img = torch.as_tensor(normalize_channels(img, normalize)).clamp(0, 1)
            _write_tiff(dest, np.round(img.numpy() * 65535.0).astype(np.uint16))
            written += 1
        row = {
            "image_id": f"{_slug(src)}/{r['image_id']}",
            "dataset": src,
            "file": rel,
            "channel_names": ";".join(names),
            "split": "train",
            "label": r.get("label"),
            "n_channels": len(names),
            "orig_image_id": r["image_id"],
            "orig_dataset": r["dataset"],
            "orig_split": r.get("split"),
            "source_manifest": r["source_manifest"],
        }
        rows.append(row)
    manifest = pd.DataFrame(rows)
    mpath = out / "manifest.csv"
    tmp = out / ".manifest.tmp.csv"
    write_manifest(manifest, tmp)
    os.replace(tmp, mpath)
    plot = plot_corpus(manifest, out / "summary.png")
    per = manifest["dataset"].value_counts().sort_index().to_dict()
    info: dict[str, Any] = {
        "manifest": str(mpath),
        "n_images": len(manifest),
        "per_source": {str(k): int(v) for k, v in per.items()},
        "available": available,
        "channel_counts": {
            int(k): int(v) for k, v in manifest["n_channels"].value_counts().sort_index().items()
        },
        "written": written,
        "skipped": skipped,
        "plot": str(plot),
        "settings": {
            "per_source": per_source,
            "size": size,
            "seed": seed,
            "source_column": col,
            "drop_small": drop_small,
            "normalize": normalize,
            "sources": [str(Path(s).resolve()) for s in sources],
            "storage": "uint16 = round(x * 65535)",
        },  # fmt: skip
        "shards": None,
    }
    if shards:
        from chada.data.shards import write_shards

        # stored images are already normalised: minmax is the identity on them
        info["shards"] = str(write_shards(mpath, out / "shards", shard_size=shard_size, normalize="minmax"))
    atomic_write_bytes(out / "corpus.json", json.dumps(info, indent=2).encode())
    return info
