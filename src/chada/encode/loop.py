"""The encoding loop of :func:`chada.encode.embed.embed_manifest`: chunks in, chunk files out.

Rows (images, or fields when cells are cut) are grouped in chunks of ``chunk_batches * batch_size``
rows; a chunk is encoded only when no reusable chunk file exists
(:class:`chada.encode.chunks.ChunkStore`), and written as soon as it is complete, so memory holds one
chunk. In cell mode each loader item is a field's list of crops (:class:`chada.data.cells.CellDataset`,
cut in the DataLoader workers); the cells are encoded ``batch_size`` at a time and stored with their
object table.

:func:`chunk_meta` turns a chunk back into metadata rows (the manifest's columns, the channel names,
count and slots, and for cells the object columns), which is how every output format is assembled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from chada.encode.budget import files_of
from chada.encode.chunks import ChunkStore
from chada.encode.encoders import Encoder

__all__ = ["chunk_meta", "encode_chunks", "meta_frame"]

log = logging.getLogger(__name__)

EncodeFn = Callable[[Encoder, list[dict[str, Any]], dict[str, str], torch.device, Any], dict[str, np.ndarray]]


def _list_collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # batches are split by image size after loading (sizes are unknown before reading)
    return samples


def reusable_chunks(
    store: ChunkStore, chunks: dict[int, np.ndarray], inputs: list[str], pools: list[str], frame: pd.DataFrame
) -> dict[int, list[list[str]]]:
    """Channel names of every chunk that can be reused; says why the others are recomputed."""
    names: dict[int, list[list[str]]] = {}
    changed: list[str] = []
    redo: list[int] = []
    for k, rows in chunks.items():
        got, why = store.check(k, rows, pools, [inputs[i] for i in rows])
        if got is not None:
            names[k] = got
        elif why is not None and why.startswith("changed:"):
            redo.append(k)
            changed += [str(frame["image_id"].iloc[rows[int(i)]]) for i in why.split(":", 1)[1].split(",")]
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


class _Chunk:
    """What one chunk has gathered so far: features, channel names per row, the cells' objects."""

    def __init__(self, pools: list[str]) -> None:
        self.feats: dict[str, list[np.ndarray]] = {p: [] for p in pools}
        self.names: list[list[str]] = []
        self.objects: list[dict[str, np.ndarray]] = []
        self.pending: list[dict[str, Any]] = []  # cells read but not encoded yet

    def add(self, feats: dict[str, np.ndarray], names: list[list[str]]) -> None:
        for p, v in feats.items():
            if len(v):
                self.feats[p].append(v)
        self.names.extend(names)

    def arrays(self) -> dict[str, np.ndarray]:
        return {p: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for p, v in self.feats.items()}

    def object_table(self) -> dict[str, np.ndarray] | None:
        if not self.objects:
            return None
        return {c: np.concatenate([o[c] for o in self.objects]) for c in self.objects[0]}


def _encode_cells(
    encode: EncodeFn, encoder: Encoder, items: list[dict[str, Any]], pool_map: dict[str, str], dev: torch.device,
    policy: Any, batch_size: int, acc: _Chunk, last: bool,
) -> None:  # fmt: skip
    """Queue the crops of the fields ``items`` and encode full batches of ``batch_size`` cells (every
    queued cell when ``last``: a batch never straddles chunks, so a shard sees the batches of a
    one-process run and its features are identical)."""
    from chada.data.cells import cells_of

    for it in items:
        acc.pending.extend(cells_of(it))
        acc.names.append(it["channel_names"])
        table = dict(it["objects"])
        table["field"] = np.full(len(table["object_id"]), it["field"], dtype=np.int64)
        acc.objects.append(table)
    while len(acc.pending) >= batch_size or (last and acc.pending):
        batch, acc.pending = acc.pending[:batch_size], acc.pending[batch_size:]
        acc.add(encode(encoder, batch, pool_map, dev, policy), [])


def encode_chunks(
    encode: EncodeFn,
    encoder: Encoder,
    ds: Any,
    chunks: dict[int, np.ndarray],
    store: ChunkStore,
    inputs: list[str],
    pools: list[str],
    pool_map: dict[str, str],
    dev: torch.device,
    policy: Any,
    batch_size: int,
    num_workers: int,
    progress: bool,
    cells: bool = False,
) -> None:
    """Encode every chunk of ``chunks`` (``{k: rows}``) that ``store`` cannot reuse, each written to
    ``store`` as soon as it is complete (only one chunk's features are held in memory). With ``cells``
    the loader yields one field at a time and ``batch_size`` counts cells per forward pass."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    done = reusable_chunks(store, chunks, inputs, pools, ds.frame)
    todo = [k for k in chunks if k not in done]
    if not todo:
        return
    indices = np.concatenate([chunks[k] for k in todo]).tolist()
    per_item = 1 if cells else batch_size
    loader = DataLoader(
        Subset(ds, indices), batch_size=per_item, shuffle=False, num_workers=num_workers,
        collate_fn=_list_collate, pin_memory=dev.type == "cuda",
    )  # fmt: skip
    n_batches = (len(indices) + per_item - 1) // per_item
    bar = tqdm(total=n_batches, desc=f"embed {encoder.info.get('model')}", unit="field" if cells else "batch",
               disable=not progress)  # fmt: skip
    todo_iter = iter(todo)
    k = next(todo_iter)
    acc = _Chunk(pools)
    where, warned = files_of(ds), set[str]()

    def checked(enc: Encoder, samples: list[dict[str, Any]], *rest: Any) -> dict[str, np.ndarray]:
        enc.check_forward(samples, dev, where, warned)  # before the forward pass allocates anything
        return encode(enc, samples, *rest)

    for items in loader:
        if cells:
            last = len(acc.names) + len(items) == len(chunks[k])
            _encode_cells(checked, encoder, items, pool_map, dev, policy, batch_size, acc, last)
        else:
            acc.add(checked(encoder, items, pool_map, dev, policy), [list(s["channel_names"]) for s in items])
        bar.update(1)
        # chunk sizes are multiples of batch_size (but the last), so batches never straddle chunks
        if len(acc.names) == len(chunks[k]):
            rows = chunks[k]
            store.save(k, rows, acc.arrays(), acc.names, [inputs[i] for i in rows], acc.object_table())
            acc = _Chunk(pools)
            k = next(todo_iter, -1)
    bar.close()


def meta_frame(frame: pd.DataFrame, used_names: list[list[str]], policy: Any) -> pd.DataFrame:
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


def chunk_meta(
    frame: pd.DataFrame, rows: np.ndarray, names: list[list[str]], policy: Any,
    objects: dict[str, np.ndarray] | None,
) -> pd.DataFrame:  # fmt: skip
    """Metadata rows of one chunk: one per input row, or (``objects``) one per cell, whose field's
    row is repeated and followed by the object columns (:data:`chada.data.objects.OBJECT_COLUMNS`)."""
    from chada.data.objects import OBJECT_COLUMNS

    meta = meta_frame(frame.iloc[rows].reset_index(drop=True), names, policy)
    if objects is None:
        return meta
    local = objects["field"] - int(rows[0])  # chunk rows are contiguous
    meta = meta.iloc[local].reset_index(drop=True)
    for c in OBJECT_COLUMNS:
        meta[c] = objects[c]
    meta["cell_id"] = [f"{i}_{o}" for i, o in zip(meta["image_id"], objects["object_id"])]
    return meta
