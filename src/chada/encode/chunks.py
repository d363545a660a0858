"""Resumable chunks of a long encoding run: ``<out>.parts/chunk_XXXXXX.npz`` + ``fingerprint.json``.

Rows are cut into chunks; every finished chunk is written atomically. The folder belongs to one set
of run settings (their hash is the fingerprint): a re-run with the same settings reuses finished
chunks, a run with other settings (or ``resume=False``) discards them first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chada.io import atomic_write_json, atomic_write_npz

__all__ = ["ChunkStore", "fingerprint"]

log = logging.getLogger(__name__)


def fingerprint(settings: dict[str, Any]) -> str:
    """Short stable hash of JSON-able run settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
                except (OSError, ValueError):
                    old = None
            if not resume or old != fp:
                if resume:
                    log.warning("discarding partial results in %s: they were made with other settings", self.dir)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(fp_file, {"fingerprint": fp, "settings": settings}, indent=2, default=str)

    def path(self, k: int) -> Path:
        return self.dir / f"chunk_{k:06d}.npz"

    def load(self, k: int, rows: np.ndarray, pools: Sequence[str]) -> dict[str, Any] | None:
        """Chunk ``k``'s features ``{pool: [n, D]}`` plus ``"__names__"`` (channel names per row), or None
        when it is missing, unreadable or was made for other rows."""
        path = self.path(k)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if not np.array_equal(z["rows"], rows):
                    return None
                feats = {p: z[f"feat_{p}"] for p in pools}
                names = json.loads(str(z["channel_names"]))
        except (OSError, KeyError, ValueError):
            return None
        return feats | {"__names__": names}

    def save(self, k: int, rows: np.ndarray, feats: dict[str, np.ndarray], names: list[list[str]]) -> None:
        atomic_write_npz(
            self.path(k), rows=rows, channel_names=np.array(json.dumps(names)),
            **{f"feat_{p}": v for p, v in feats.items()},
        )  # fmt: skip

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
