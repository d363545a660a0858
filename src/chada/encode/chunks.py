"""Resumable chunks of a long encoding run: ``<out>.parts/chunk_XXXXXX.npz`` + ``fingerprint.json``.

Rows are cut into chunks; every finished chunk is written atomically. What a chunk's features depend
on is checked at two levels before it is reused:

- the run settings (model and its weights, pools, image size, normalisation, NaN policy, batch and
  chunk sizes, channel policy, manifest path and ids): their hash is the folder's fingerprint. A
  run with other settings (or ``resume=False``) discards every chunk first, with a message.
- each row's input files (:mod:`chada.encode.inputs`: size + mtime, or a content hash): stored per
  row inside the chunk. A chunk whose rows now read other or changed files is recomputed, and the
  run names the images that changed.

A chunk file that is unreadable, truncated, holds other rows, or fails its content digest (a
SHA-256 over rows, input signatures, channel names and features, stored in the file) is recomputed
too, with a message. The final file is assembled chunk by chunk into preallocated arrays
(:meth:`ChunkStore.assemble`), so memory holds the output once plus one chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chada.io import atomic_write_json, atomic_write_npz, remove_stale_temps

__all__ = ["ChunkStore", "fingerprint"]

log = logging.getLogger(__name__)

# Everything np.load can raise on a truncated, garbage or hand-edited .npz.
_BAD_FILE = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, TypeError, IndexError)


def fingerprint(settings: dict[str, Any]) -> str:
    """Short stable hash of JSON-able run settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _digest(
    rows: np.ndarray, inputs: np.ndarray, names_json: str, feats: dict[str, np.ndarray],
    objects: dict[str, np.ndarray] | None = None,
) -> str:  # fmt: skip
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    h.update("\n".join(map(str, inputs)).encode())
    h.update(names_json.encode())
    for c in sorted(objects or {}):
        assert objects is not None
        h.update(f"|obj_{c}|".encode())
        h.update(np.ascontiguousarray(objects[c]).tobytes())
    for p in sorted(feats):
        a = np.ascontiguousarray(feats[p])
        h.update(f"|{p}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class ChunkStore:
    """The ``<out>.parts`` folder of one output file, valid for one settings fingerprint."""

    def __init__(self, out: str | Path, settings: dict[str, Any], resume: bool = True) -> None:
        self.dir = Path(str(out) + ".parts")
        fp = fingerprint(settings)
        fp_file = self.dir / "fingerprint.json"
        if self.dir.exists():
            old = None
            if fp_file.exists():
                try:
                    old = json.loads(fp_file.read_text()).get("fingerprint")
                except (OSError, ValueError, AttributeError):
                    old = None
            if not resume or old != fp:
                if resume:
                    log.warning(
                        "discarding partial results in %s: they were made with other settings", self.dir
                    )
                shutil.rmtree(self.dir)
            else:
                remove_stale_temps(self.dir)  # chunks half-written by a killed run
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(fp_file, {"fingerprint": fp, "settings": settings}, indent=2, default=str)

    def path(self, k: int) -> Path:
        return self.dir / f"chunk_{k:06d}.npz"

    def check(
        self, k: int, rows: np.ndarray, pools: Sequence[str], inputs: Sequence[str]
    ) -> tuple[list[list[str]] | None, str | None]:
        """``(channel names per row, None)`` when chunk ``k`` can be reused, else ``(None, why)``.

        ``why`` is None for a chunk that was never written, else a reason to recompute it: the file is
        damaged, holds other rows, or rows whose input files changed (naming them).
        """
        path = self.path(k)
        if not path.exists():
            return None, None
        try:
            with np.load(path, allow_pickle=False) as z:
                stored_rows = z["rows"]
                stored_inputs = z["inputs"]
                names_json = str(z["channel_names"])
                feats = {p: z[f"feat_{p}"] for p in pools}
                digest = str(z["digest"])
                objects = {f[4:]: z[f] for f in z.files if f.startswith("obj_")} or None
            names = json.loads(names_json)
        except _BAD_FILE as exc:
            return None, f"{path.name} is unreadable ({type(exc).__name__})"
        if not np.array_equal(stored_rows, rows):
            return None, f"{path.name} holds other rows"
        n_out = len(objects["field"]) if objects and "field" in objects else len(rows)
        bad = [p for p, v in feats.items() if v.ndim != 2 or v.shape[0] != n_out or v.dtype != np.float32]
        if (
            bad
            or len(names) != len(rows)
            or digest != _digest(stored_rows, stored_inputs, names_json, feats, objects)
        ):
            return None, f"{path.name} does not match its content digest (damaged or edited)"
        changed = [i for i, (a, b) in enumerate(zip(stored_inputs.tolist(), inputs)) if a != b]
        if len(stored_inputs) != len(rows) or changed:
            return None, "changed:" + ",".join(map(str, changed))
        return names, None

    def read_objects(self, k: int) -> dict[str, np.ndarray] | None:
        """Chunk ``k``'s object table (``field`` = the global row of each cell), None for whole images."""
        with np.load(self.path(k), allow_pickle=False) as z:
            return {f[4:]: z[f] for f in z.files if f.startswith("obj_")} or None

    def read_names(self, k: int) -> list[list[str]]:
        """Chunk ``k``'s channel names, one list per input row."""
        with np.load(self.path(k), allow_pickle=False) as z:
            return json.loads(str(z["channel_names"]))

    def read(self, k: int, pools: Sequence[str]) -> dict[str, np.ndarray]:
        """Chunk ``k``'s features ``{pool: [n, D] float32}`` (checked before with :meth:`check`)."""
        with np.load(self.path(k), allow_pickle=False) as z:
            return {p: z[f"feat_{p}"] for p in pools}

    def save(
        self, k: int, rows: np.ndarray, feats: dict[str, np.ndarray], names: list[list[str]], inputs: Sequence[str],
        objects: dict[str, np.ndarray] | None = None,
    ) -> None:  # fmt: skip
        """Write chunk ``k``: ``feats`` ``{pool: [n, D]}``, ``names`` per input row; ``objects``
        (single cells) ``{column: [n]}`` with ``field`` = the global input row of each of the n cells."""
        feats = {p: np.ascontiguousarray(v, dtype=np.float32) for p, v in feats.items()}
        objects = {c: np.ascontiguousarray(v) for c, v in objects.items()} if objects is not None else None
        inputs_arr = np.asarray(list(inputs), dtype=str)
        names_json = json.dumps(names)
        atomic_write_npz(
            self.path(k), rows=rows, inputs=inputs_arr, channel_names=np.array(names_json),
            digest=np.array(_digest(rows, inputs_arr, names_json, feats, objects)),
            **{f"feat_{p}": v for p, v in feats.items()},
            **{f"obj_{c}": v for c, v in (objects or {}).items()},
        )  # fmt: skip

    def assemble(
        self, chunks: Sequence[np.ndarray] | dict[int, np.ndarray], pools: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """``{pool: [N, D] float32}`` of every chunk in order (a list, or ``{k: rows}`` for a shard's
        chunks), read one chunk at a time."""
        items = list(chunks.items() if isinstance(chunks, dict) else enumerate(chunks))
        n = sum(self.count(k, rows) for k, rows in items)
        out: dict[str, np.ndarray] = {}
        start = 0
        for k, _rows in items:
            feats = self.read(k, pools)
            count = next(iter(feats.values())).shape[0]
            if count == 0:  # a chunk of fields without any cell: [0, 0], no width to check
                continue
            for p in pools:
                if p not in out:
                    out[p] = np.empty((n, feats[p].shape[1]), dtype=np.float32)
                elif out[p].shape[1] != feats[p].shape[1]:
                    raise ValueError(
                        f"pool {p!r}: chunks have different feature sizes ({out[p].shape[1]} and "
                        f"{feats[p].shape[1]}); re-run with resume=False (--no-resume)"
                    )
                out[p][start : start + count] = feats[p]
            start += count
        for p in pools:  # no cell at all: an empty [0, 0] table
            out.setdefault(p, np.zeros((0, 0), dtype=np.float32))
        return out

    def count(self, k: int, rows: np.ndarray) -> int:
        """Output rows of chunk ``k``: its input rows, or its cells."""
        objects = self.read_objects(k)
        return len(rows) if objects is None else len(objects["field"])

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
